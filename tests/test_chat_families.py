"""Token exactness per model family: the loop's stream is the family's real chat template, turn for turn.

Each family runs with its own template and special tokens (``chat_families``) and the ``model_type`` its
checkpoints declare, so verl picks the continuous-token builder it would pick for that model: its Qwen builder
for ``qwen2``, the default builder (repaired by ``verl_reflect.turn_boundary``) for ``llama``, ``phi3`` and
``mistral``. The scripted model writes what the template renders for an assistant turn, end-of-turn included.
"""

from __future__ import annotations

import asyncio
import datetime
import json

import pytest
from chat_families import FAMILIES, family_tokenizer
from loop_helpers import LOGPROB, REFLECTION_PROMPT, RETRY_PROMPT, ScriptedServer, standalone_kwargs

import verl_reflect.agent_loop as agent_loop_module
from verl_reflect.agent_loop import ReflectRetryAgentLoop
from verl_reflect.turn_boundary import InexactChatTemplateError

TASK = "Using the numbers [1, 2, 3], create an equation that equals 9."
SYSTEM = "You are a helpful assistant. Return the final answer in <answer> </answer> tags."
PROMPTS = {
    "system+user": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}],
    "user": [{"role": "user", "content": TASK}],
}
GROUND_TRUTH = json.dumps({"target": 9, "numbers": [1, 2, 3]})
WRONG = "<answer> 1 + 2 + 3 </answer>"
RIGHT = "<answer> (1 + 2) * 3 </answer>"
REFLECTION = "I added everything. I should multiply the sum of 1 and 2 by 3."
SECOND_REFLECTION = "Still wrong: 1 * 2 * 3 is 6. The sum 1 + 2 is 3, and 3 * 3 is 9."

EXACT_FAMILIES = ["qwen2.5", "llama3.1", "llama3.2", "phi3.5", "mistral", "chatml-llama"]
# Families verl has no builder for: the loop takes their user turns from the template.
DEFAULT_BUILDER_FAMILIES = ["llama3.1", "llama3.2", "phi3.5", "mistral", "chatml-llama"]


class Family:
    """A family's tokenizer, prompt and template renders, as the tests need them."""

    def __init__(self, name: str, prompt_shape: str = "system+user"):
        spec = FAMILIES[name]
        self.name, self.model_type = name, spec.model_type
        self.tokenizer = family_tokenizer(name)
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(spec.end_of_turn)
        self.prompt = PROMPTS[prompt_shape]

    def render(self, messages, add_generation_prompt=False) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
            )
        )

    def conversation(self, *turns: str) -> list[dict]:
        """The prompt, then assistant turns in reflect-retry order with their user turns between."""
        messages = list(self.prompt)
        for i, text in enumerate(turns):
            if i:
                content = REFLECTION_PROMPT if i % 2 else RETRY_PROMPT
                messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": text})
        return messages

    def generated(self, reply: str) -> list[int]:
        """What the model writes for ``reply``: the template's assistant turn after its generation prompt."""
        prompt_ids = self.render(self.prompt, True)
        turn = self.render(self.prompt + [{"role": "assistant", "content": reply}])[len(prompt_ids) :]
        return turn[: turn.index(self.end_of_turn_id) + 1]

    def full_stream(self, *turns: str) -> list[int]:
        """The template's rendering of the conversation, up to the last assistant's end-of-turn token."""
        rendered = self.render(self.conversation(*turns))
        last_end = len(rendered) - 1 - rendered[::-1].index(self.end_of_turn_id)
        return rendered[: last_end + 1]

    def context_before(self, *turns: str) -> list[int]:
        """The prompt ids the model generates the turn after ``turns`` (and the user turn after them) on."""
        if not turns:
            return self.render(self.prompt, True)
        content = REFLECTION_PROMPT if len(turns) % 2 else RETRY_PROMPT
        return self.render(self.conversation(*turns) + [{"role": "user", "content": content}], True)

    def run(self, replies, monkeypatch, *, response_length=768, **loop_kwargs):
        """Run the loop on scripted replies; returns (output, server, the texts each reward call scored)."""
        server = ScriptedServer(self.tokenizer, [self.generated(reply) for reply in replies])
        scored: list[str] = []

        def recording_compute_score(data_source):
            compute_score = get_compute_score(data_source)

            def score(data_source, solution_str, ground_truth, extra_info):
                scored.append(solution_str)
                return compute_score(data_source, solution_str, ground_truth, extra_info)

            return score

        get_compute_score = agent_loop_module.get_compute_score
        monkeypatch.setattr(agent_loop_module, "get_compute_score", recording_compute_score)
        verl_kwargs = standalone_kwargs(
            self.tokenizer, prompt_length=256, response_length=response_length, hf_model_type=self.model_type
        )
        row = {
            "raw_prompt": self.prompt,
            "data_source": "countdown",
            "reward_model": {"style": "rule", "ground_truth": GROUND_TRUTH},
            "extra_info": {"index": 0, "split": "test"},
        }

        async def main():
            loop = ReflectRetryAgentLoop(server_manager=server, **verl_kwargs, **loop_kwargs)
            return await loop.run({"temperature": 1.0, "logprobs": True}, **row)

        return asyncio.run(main()), server, scored


def expected_mask_and_logprobs(out, trained_kinds=("reflection",)):
    """Mask 1 on trained turns' generated tokens; logprob from the server on every generated token, else 0."""
    mask, logprobs = [0] * len(out.response_ids), [0.0] * len(out.response_ids)
    for turn in out.extra_fields["turns"]:
        span = range(turn["start"], turn["start"] + turn["num_tokens"])
        for i in span:
            logprobs[i] = LOGPROB
            mask[i] = int(turn["kind"] in trained_kinds)
    return mask, logprobs


@pytest.fixture(params=["system+user", "user"])
def prompt_shape(request):
    return request.param


@pytest.mark.parametrize("name", EXACT_FAMILIES)
def test_first_try_success(name, prompt_shape, monkeypatch):
    family = Family(name, prompt_shape)
    out, server, scored = family.run([RIGHT], monkeypatch)

    assert out.prompt_ids == family.render(family.prompt, True)
    assert out.prompt_ids + out.response_ids == family.full_stream(RIGHT)
    assert out.response_ids == family.generated(RIGHT)
    assert out.response_mask == [0] * len(out.response_ids)
    assert out.response_logprobs == [LOGPROB] * len(out.response_ids)
    assert out.reward_score == 1.0
    assert scored == [family.tokenizer.decode(family.generated(RIGHT)[:-1])]
    assert scored[0].strip() == RIGHT


@pytest.mark.parametrize("name", EXACT_FAMILIES)
def test_fix_after_reflection(name, prompt_shape, monkeypatch):
    family = Family(name, prompt_shape)
    out, server, scored = family.run([WRONG, REFLECTION, RIGHT], monkeypatch)

    assert out.prompt_ids + out.response_ids == family.full_stream(WRONG, REFLECTION, RIGHT)
    # Each turn was generated on the template's rendering of the conversation so far.
    assert [call["prompt_ids"] for call in server.calls] == [
        family.context_before(),
        family.context_before(WRONG),
        family.context_before(WRONG, REFLECTION),
    ]
    # Exactly the reflection's generated tokens, its end-of-turn token included, are trained.
    start = len(family.context_before(WRONG)) - len(out.prompt_ids)
    reflection = family.generated(REFLECTION)
    assert out.response_ids[start : start + len(reflection)] == reflection
    assert reflection[-1] == family.end_of_turn_id
    after = len(out.response_ids) - start - len(reflection)
    assert out.response_mask == [0] * start + [1] * len(reflection) + [0] * after
    # Generated ids stay as generated; every template token carries mask 0 and logprob 0.
    for turn, reply in zip(out.extra_fields["turns"], [WRONG, REFLECTION, RIGHT]):
        assert out.response_ids[turn["start"] : turn["start"] + turn["num_tokens"]] == family.generated(reply)
    assert (out.response_mask, out.response_logprobs) == expected_mask_and_logprobs(out)
    # Every reward call scored the words the model wrote in that turn, and nothing else.
    assert scored == [family.tokenizer.decode(family.generated(reply)[:-1]) for reply in (WRONG, RIGHT)]
    assert [text.strip() for text in scored] == [WRONG, RIGHT]
    assert out.reward_score == 1.0


@pytest.mark.parametrize("name", EXACT_FAMILIES)
def test_two_rounds(name, prompt_shape, monkeypatch):
    family = Family(name, prompt_shape)
    turns = [WRONG, REFLECTION, WRONG, SECOND_REFLECTION, RIGHT]
    out, server, scored = family.run(turns, monkeypatch, max_reflections=2)

    assert out.prompt_ids + out.response_ids == family.full_stream(*turns)
    assert [call["prompt_ids"] for call in server.calls] == [family.context_before(*turns[:i]) for i in range(5)]
    expected_mask = [0] * len(out.response_ids)
    for before, reflection in ((turns[:1], REFLECTION), (turns[:3], SECOND_REFLECTION)):
        start = len(family.context_before(*before)) - len(out.prompt_ids)
        expected_mask[start : start + len(family.generated(reflection))] = [1] * len(family.generated(reflection))
    assert out.response_mask == expected_mask
    assert (out.response_mask, out.response_logprobs) == expected_mask_and_logprobs(out)
    assert [text.strip() for text in scored] == [WRONG, WRONG, RIGHT]
    assert (out.reward_score, out.extra_fields["num_reflections"]) == (1.0, 2)


@pytest.mark.parametrize("name", EXACT_FAMILIES)
def test_reflection_cut_by_the_budget(name, prompt_shape, monkeypatch):
    family = Family(name, prompt_shape)
    start = len(family.context_before(WRONG)) - len(family.context_before())
    out, server, scored = family.run([WRONG, REFLECTION, RIGHT], monkeypatch, response_length=start + 5)

    assert server.calls[1]["max_tokens"] == 5 and len(server.calls) == 2
    assert out.prompt_ids + out.response_ids == family.context_before(WRONG) + family.generated(REFLECTION)[:5]
    assert out.response_mask == [0] * start + [1] * 5
    assert (out.response_mask, out.response_logprobs) == expected_mask_and_logprobs(out)
    assert [text.strip() for text in scored] == [WRONG]
    assert out.reward_score == 0.0


@pytest.mark.parametrize("name", EXACT_FAMILIES)
def test_attempt_cut_by_its_cap_is_closed_as_the_template_closes_it(name, monkeypatch):
    # verl's builders (Qwen's too) append the next user turn straight after a cut turn; the template closes the
    # turn first.
    family = Family(name)
    out, server, scored = family.run([WRONG, REFLECTION, RIGHT], monkeypatch, max_attempt_tokens=4)

    attempt = family.generated(WRONG)
    assert len(attempt) > 4 and server.calls[0]["max_tokens"] == 4
    # The template's context with the attempt's words cut to the 4 generated tokens, its end-of-turn kept.
    prompt_length = len(family.context_before())
    reflect_context = family.context_before(WRONG)
    end_of_attempt = prompt_length + len(attempt) - 1
    expected_context = reflect_context[:prompt_length] + attempt[:4] + reflect_context[end_of_attempt:]
    assert server.calls[1]["prompt_ids"] == expected_context
    assert out.response_ids[4] == family.end_of_turn_id
    # The inserted end-of-turn token is the template's, not the model's: mask 0, logprob 0.
    assert (out.response_mask[4], out.response_logprobs[4]) == (0, 0.0)
    assert (out.response_mask, out.response_logprobs) == expected_mask_and_logprobs(out)
    assert out.response_ids[:4] == attempt[:4]


def test_fix_after_reflection_streams_read_as_each_template(monkeypatch):
    """The streams written out, so a reader sees each template's turn boundaries (user-only prompt)."""
    today = datetime.datetime.now().strftime("%d %b %Y")
    q, r, w = TASK, REFLECTION, WRONG
    reflect, retry, right = REFLECTION_PROMPT, RETRY_PROMPT, RIGHT
    llama = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: {date}\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{w}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "{reflect}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{r}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{retry}<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
        "\n\n{right}<|eot_id|>"
    )
    chatml = (
        "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{w}<|im_end|>\n<|im_start|>user\n{reflect}<|im_end|>\n"
        "<|im_start|>assistant\n{r}<|im_end|>\n<|im_start|>user\n{retry}<|im_end|>\n<|im_start|>assistant\n{right}"
        "<|im_end|>"
    )
    fields = dict(q=q, w=w, r=r, reflect=reflect, retry=retry, right=right)
    expected = {
        "qwen2.5": (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            + chatml.format(**fields)
        ),
        "llama3.1": llama.format(date="26 Jul 2024", **fields),
        "llama3.2": llama.format(date=today, **fields),
        "phi3.5": (
            f"<|user|>\n{q}<|end|>\n<|assistant|>\n{w}<|end|>\n<|user|>\n{reflect}<|end|>\n<|assistant|>\n{r}<|end|>\n"
            f"<|user|>\n{retry}<|end|>\n<|assistant|>\n{right}<|end|>"
        ),
        "mistral": (
            f"<s> [INST] {q} [/INST] {w}</s> [INST] {reflect} [/INST] {r}</s> [INST] {retry} [/INST] {right}</s>"
        ),
        "chatml-llama": chatml.format(**fields),
    }
    for name, text in expected.items():
        family = Family(name, "user")
        out, _, _ = family.run([WRONG, REFLECTION, RIGHT], monkeypatch)
        assert family.tokenizer.decode(out.prompt_ids + out.response_ids) == text, name


def test_default_builder_repair_matches_verls_qwen_builder_on_chatml(monkeypatch):
    # The same ChatML template under model_type qwen2 (verl's Qwen builder) and llama (the template repair).
    turns = [WRONG, REFLECTION, WRONG, SECOND_REFLECTION, RIGHT]
    outputs = {}
    for model_type in ("qwen2", "llama"):
        family = Family("chatml-llama")
        family.model_type = model_type
        out, server, _ = family.run(turns, monkeypatch, max_reflections=2)
        outputs[model_type] = (out.prompt_ids, out.response_ids, out.response_mask, out.response_logprobs)
    assert outputs["qwen2"] == outputs["llama"]


@pytest.mark.parametrize(
    "name, reason",
    [
        ("mistral-nemo", "adding an assistant turn changes how the turns before it render"),
        ("r1-distill-llama", "it renders an assistant turn other than as written"),
    ],
)
def test_a_template_that_rewrites_turns_fails_at_start_with_one_line(name, reason):
    family = Family(name)
    verl_kwargs = standalone_kwargs(family.tokenizer, prompt_length=256, response_length=64, hf_model_type="x")
    verl_kwargs["hf_model_type"] = family.model_type

    async def construct():
        return ReflectRetryAgentLoop(server_manager=ScriptedServer(family.tokenizer, []), **verl_kwargs)

    with pytest.raises(InexactChatTemplateError) as raised:
        asyncio.run(construct())
    message = str(raised.value)
    assert "\n" not in message
    assert f"model_type={family.model_type!r}" in message and reason in message
