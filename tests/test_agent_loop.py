"""ReflectRetryAgentLoop on verl's real classes: a scripted fake server manager and the tiny ChatML tokenizer.

Every test pins the exact token stream against what the chat template renders for the same
conversation, and the exact reflection mask.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from loop_helpers import LOGPROB, REFLECTION_PROMPT, RETRY_PROMPT, ScriptedServer, standalone_kwargs
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, _agent_loop_registry
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

import verl_reflect.register  # noqa: F401
from verl_reflect.agent_loop import ReflectRetryAgentLoop

PROMPT = [{"role": "user", "content": "Using the numbers [1, 2, 3], create an equation that equals 9."}]
ROW = {
    "raw_prompt": PROMPT,
    "data_source": "countdown",
    "reward_model": {"style": "rule", "ground_truth": json.dumps({"target": 9, "numbers": [1, 2, 3]})},
    "extra_info": {"index": 0, "split": "test"},
}
WRONG = "<answer> 1 + 2 + 3 </answer>"
RIGHT = "<answer> (1 + 2) * 3 </answer>"
REFLECTION = "I added everything. I should multiply the sum of 1 and 2 by 3."


def run_loop(tokenizer, replies, *, response_length=512, stop=True, server=None, row=ROW, **loop_kwargs):
    server = server or ScriptedServer(tokenizer, replies, stop=stop)
    verl_kwargs = standalone_kwargs(
        tokenizer, prompt_length=256, response_length=response_length, hf_model_type="qwen2"
    )

    async def main():
        # AgentLoopBase captures the running event loop: build it inside one.
        loop = ReflectRetryAgentLoop(server_manager=server, **verl_kwargs, **loop_kwargs)
        return await loop.run({"temperature": 1.0, "logprobs": True}, **row)

    return asyncio.run(main()), server


def render(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    )


def conversation(*turns: str, reflection_prompt=REFLECTION_PROMPT, retry_prompt=RETRY_PROMPT):
    """PROMPT + assistant/user turns in reflect-retry order: attempt, reflect?, reflection, retry?, retry, ..."""
    messages = list(PROMPT)
    user_prompts = [reflection_prompt, retry_prompt]
    for i, text in enumerate(turns):
        if i:
            messages.append({"role": "user", "content": user_prompts[(i - 1) % 2]})
        messages.append({"role": "assistant", "content": text})
    return messages


def check_aligned(out):
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
    assert set(out.response_mask) <= {0, 1}
    # Generated tokens carry the server's logprob, template tokens carry 0.0.
    assert all(lp in (0.0, LOGPROB) for lp in out.response_logprobs)


def reflection_span(tokenizer, *turns_before: str) -> int:
    """Start, in the response, of the reflection that follows ``turns_before`` and its reflect prompt."""
    before = conversation(*turns_before) + [{"role": "user", "content": REFLECTION_PROMPT}]
    return len(render(tokenizer, before, add_generation_prompt=True)) - len(render(tokenizer, PROMPT, True))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) + 1  # + <|im_end|>


def test_registered_under_reflect_retry():
    assert _agent_loop_registry["reflect_retry"] == {"_target_": "verl_reflect.agent_loop.ReflectRetryAgentLoop"}


def test_first_try_success_stops_with_an_all_zero_mask(tiny_tokenizer):
    out, server = run_loop(tiny_tokenizer, [RIGHT])

    assert len(server.calls) == 1
    assert out.prompt_ids == render(tiny_tokenizer, PROMPT, add_generation_prompt=True)
    assert out.response_ids == tiny_tokenizer.encode(RIGHT, add_special_tokens=False) + [
        tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]
    assert out.response_mask == [0] * len(out.response_ids)
    assert out.reward_score == 1.0
    assert out.num_turns == 2
    fields = out.extra_fields
    assert (fields["first_try_correct"], fields["final_correct"]) == (True, True)
    assert (fields["num_reflections"], fields["reflection_tokens"]) == (0, 0)
    assert fields["turn_scores"] == [1.0]
    assert fields["reward_extra_info"] == {
        "first_try_correct": 1.0,
        "final_correct": 1.0,
        "num_reflections": 0.0,
        "reflection_tokens": 0.0,
        "replayed_attempt": 0.0,
        "verifier_errors": 0.0,
        "verifier_timeouts": 0.0,
    }
    check_aligned(out)


def test_failure_then_success_trains_exactly_the_reflection(tiny_tokenizer):
    out, server = run_loop(tiny_tokenizer, [WRONG, REFLECTION, RIGHT])

    # The whole sequence is exactly the chat template's rendering of the conversation
    # (minus the newline the template adds after the very last <|im_end|>).
    full = render(tiny_tokenizer, conversation(WRONG, REFLECTION, RIGHT))
    assert out.prompt_ids + out.response_ids == full[:-1]

    start, length = reflection_span(tiny_tokenizer, WRONG), n_tokens(tiny_tokenizer, REFLECTION)
    expected_mask = [0] * len(out.response_ids)
    expected_mask[start : start + length] = [1] * length
    assert out.response_mask == expected_mask
    assert tiny_tokenizer.decode(out.response_ids[start : start + length], skip_special_tokens=True) == REFLECTION
    check_aligned(out)

    # Each turn was generated on the exact rendered context, within one sticky request id.
    assert [call["prompt_ids"] for call in server.calls] == [
        render(tiny_tokenizer, PROMPT, True),
        render(tiny_tokenizer, conversation(WRONG) + [{"role": "user", "content": REFLECTION_PROMPT}], True),
        render(tiny_tokenizer, conversation(WRONG, REFLECTION) + [{"role": "user", "content": RETRY_PROMPT}], True),
    ]
    assert len({call["request_id"] for call in server.calls}) == 1
    assert all(call["temperature"] == 1.0 for call in server.calls)

    assert out.reward_score == 1.0
    assert out.num_turns == 6
    fields = out.extra_fields
    assert (fields["first_try_correct"], fields["final_correct"]) == (False, True)
    assert (fields["num_reflections"], fields["reflection_tokens"]) == (1, length)
    assert [turn["kind"] for turn in fields["turns"]] == ["attempt", "reflection", "retry"]
    assert [turn["text"] for turn in fields["turns"]] == [WRONG, REFLECTION, RIGHT]
    assert [turn["correct"] for turn in fields["turns"]] == [False, None, True]
    # Plain dicts, not the loop's Turn records: the v1 trainer serialises extra fields into TransferQueue.
    assert all(type(turn) is dict for turn in fields["turns"])
    assert json.loads(json.dumps(fields["turns"])) == fields["turns"]
    # Each turn knows where its generated tokens sit in the response.
    for turn in fields["turns"]:
        generated = out.response_ids[turn["start"] : turn["start"] + turn["num_tokens"]]
        assert tiny_tokenizer.decode(generated, skip_special_tokens=True) == turn["text"]
    assert (fields["turns"][1]["start"], fields["turns"][1]["num_tokens"]) == (start, length)
    assert fields["turn_scores"] == [0.0, 1.0]


def test_failure_twice_gets_zero_reward_but_keeps_the_reflection_span(tiny_tokenizer):
    out, server = run_loop(tiny_tokenizer, [WRONG, REFLECTION, WRONG])

    assert len(server.calls) == 3
    assert out.prompt_ids + out.response_ids == render(tiny_tokenizer, conversation(WRONG, REFLECTION, WRONG))[:-1]
    assert sum(out.response_mask) == n_tokens(tiny_tokenizer, REFLECTION)
    assert out.reward_score == 0.0
    assert (out.extra_fields["final_correct"], out.extra_fields["num_reflections"]) == (False, 1)
    assert out.extra_fields["turn_scores"] == [0.0, 0.0]
    check_aligned(out)


def test_server_fields_pass_through_like_verls_tool_loop(tiny_tokenizer):
    # Regression: the v1 trainer reads min/max_global_steps back per trajectory (int(None) crashed every step).
    # Weights synced between the attempt (version 3) and the retry (version 4).
    server = ScriptedServer(tiny_tokenizer, [WRONG, REFLECTION, RIGHT], weight_versions=[3, 3, 4], preempted=[1, 0, 2])
    out, _ = run_loop(tiny_tokenizer, None, server=server)
    assert (out.extra_fields["min_global_steps"], out.extra_fields["max_global_steps"]) == (3, 4)
    assert out.extra_fields["global_steps"] == 3  # the first turn's fields are kept whole, as tool_agent_loop does
    assert out.metrics.num_preempted == 3


def test_num_preempted_is_minus_one_when_the_server_does_not_say(tiny_tokenizer):
    server = ScriptedServer(tiny_tokenizer, [RIGHT])
    server.preempted = [None]
    out, _ = run_loop(tiny_tokenizer, None, server=server)
    assert out.metrics.num_preempted == -1


def test_multiple_rounds_mask_every_reflection(tiny_tokenizer):
    second = "Still wrong: 1 * 2 * 3 is 6. The sum 1 + 2 is 3, and 3 * 3 is 9."
    out, server = run_loop(tiny_tokenizer, [WRONG, REFLECTION, WRONG, second, RIGHT], max_reflections=2)

    assert len(server.calls) == 5
    assert (
        out.prompt_ids + out.response_ids
        == render(tiny_tokenizer, conversation(WRONG, REFLECTION, WRONG, second, RIGHT))[:-1]
    )
    first_start = reflection_span(tiny_tokenizer, WRONG)
    second_start = reflection_span(tiny_tokenizer, WRONG, REFLECTION, WRONG)
    expected = [0] * len(out.response_ids)
    expected[first_start : first_start + n_tokens(tiny_tokenizer, REFLECTION)] = [1] * n_tokens(
        tiny_tokenizer, REFLECTION
    )
    expected[second_start : second_start + n_tokens(tiny_tokenizer, second)] = [1] * n_tokens(tiny_tokenizer, second)
    assert out.response_mask == expected
    assert out.reward_score == 1.0
    assert out.extra_fields["num_reflections"] == 2
    assert out.extra_fields["turn_scores"] == [0.0, 0.0, 1.0]
    check_aligned(out)


def test_max_reflections_zero_is_plain_single_attempt(tiny_tokenizer):
    out, server = run_loop(tiny_tokenizer, [WRONG], max_reflections=0)
    assert len(server.calls) == 1
    assert out.reward_score == 0.0 and sum(out.response_mask) == 0


def test_per_turn_caps_reach_the_server(tiny_tokenizer):
    _, server = run_loop(tiny_tokenizer, [WRONG, REFLECTION, RIGHT], max_attempt_tokens=40, max_reflection_tokens=7)
    assert [call["max_tokens"] for call in server.calls] == [40, 7, 40]


def test_reflection_cut_short_by_the_budget_stays_aligned(tiny_tokenizer):
    start = reflection_span(tiny_tokenizer, WRONG)
    budget = start + 5  # room for 5 reflection tokens, none for the retry turn
    out, server = run_loop(tiny_tokenizer, [WRONG, REFLECTION, RIGHT], response_length=budget)

    assert len(server.calls) == 2
    assert server.calls[1]["max_tokens"] == 5
    assert len(out.response_ids) == budget
    assert out.response_mask == [0] * start + [1] * 5
    reflection_ids = tiny_tokenizer.encode(REFLECTION, add_special_tokens=False)[:5]
    assert out.response_ids[start:] == reflection_ids
    # The retry never happened: the trajectory failed.
    assert out.reward_score == 0.0
    assert out.extra_fields["final_correct"] is False
    assert (out.extra_fields["num_reflections"], out.extra_fields["reflection_tokens"]) == (1, 5)
    check_aligned(out)


def test_attempt_filling_the_budget_stops_before_reflecting(tiny_tokenizer):
    out, server = run_loop(tiny_tokenizer, [WRONG], response_length=6, stop=False)
    assert len(server.calls) == 1 and server.calls[0]["max_tokens"] == 6
    assert out.response_ids == tiny_tokenizer.encode(WRONG, add_special_tokens=False)[:6]
    assert out.response_mask == [0] * 6
    assert out.reward_score == 0.0 and out.extra_fields["num_reflections"] == 0


def test_unknown_data_source_is_a_clear_error(tiny_tokenizer):
    verl_kwargs = standalone_kwargs(tiny_tokenizer, prompt_length=64, response_length=64, hf_model_type="qwen2")

    async def main():
        loop = ReflectRetryAgentLoop(server_manager=ScriptedServer(tiny_tokenizer, [RIGHT]), **verl_kwargs)
        return await loop.run({}, **{**ROW, "data_source": "no_such_task"})

    with pytest.raises(ValueError, match="no_such_task"):
        asyncio.run(main())


class _Worker:
    """verl's AgentLoopWorker post-processing, bound to the tiny tokenizer (as verl's own CPU tests do)."""

    _agent_loop_postprocess = AgentLoopWorker._agent_loop_postprocess
    _postprocess = AgentLoopWorker._postprocess
    _pad_token_ids = AgentLoopWorker._pad_token_ids
    _compute_multi_modal_inputs = AgentLoopWorker._compute_multi_modal_inputs
    _compute_position_ids = AgentLoopWorker._compute_position_ids
    _get_mm_processor_kwargs = AgentLoopWorker._get_mm_processor_kwargs
    _compute_score = AgentLoopWorker._compute_score
    _compute_teacher_logprobs = AgentLoopWorker._compute_teacher_logprobs
    distillation_enabled = False
    reward_loop_worker_handles = None
    processor = None
    mm_processor_kwargs = {}

    def __init__(self, tokenizer, prompt_length, response_length):
        self.tokenizer = tokenizer
        self.rollout_config = OmegaConf.create({"prompt_length": prompt_length, "response_length": response_length})


def test_group_of_rollouts_through_verl_postprocessing_and_compute_advantage(tiny_tokenizer):
    scripts = [[RIGHT], [WRONG, REFLECTION, RIGHT], [WRONG, REFLECTION, WRONG], [WRONG, REFLECTION, RIGHT]]
    outputs = [run_loop(tiny_tokenizer, script)[0] for script in scripts]
    worker = _Worker(tiny_tokenizer, prompt_length=64, response_length=256)

    async def postprocess():
        return [await worker._agent_loop_postprocess(out, validate=False, raw_prompt=PROMPT) for out in outputs]

    batch = worker._postprocess(
        asyncio.run(postprocess()), input_non_tensor_batch={"uid": np.array(["p0"] * 4, dtype=object)}
    )

    response_mask = batch.batch["response_mask"]  # (4, 256)
    assert response_mask.shape == (4, 256)
    for row, out in enumerate(outputs):
        n = len(out.response_ids)
        assert batch.batch["responses"][row, :n].tolist() == out.response_ids
        assert response_mask[row].tolist() == out.response_mask + [0] * (256 - n)
        # The outcome reward sits on the last response token (a retry or attempt token, mask 0).
        assert batch.batch["rm_scores"][row].nonzero().flatten().tolist() == ([n - 1] if out.reward_score else [])
        assert batch.batch["rm_scores"][row, n - 1] == out.reward_score
    assert batch.non_tensor_batch["final_correct"].tolist() == [True, True, False, True]

    batch.batch["token_level_rewards"] = batch.batch["rm_scores"]
    advantages = compute_advantage(batch, adv_estimator="reflect_grpo", config=AlgoConfig()).batch["advantages"]

    # Reflecting rows 1..3 have rewards [1, 0, 1]: mean 2/3, unbiased std sqrt(1/3).
    std = (1 / 3) ** 0.5
    expected = torch.tensor([0.0, (1 / 3) / (std + 1e-6), (-2 / 3) / (std + 1e-6), (1 / 3) / (std + 1e-6)])
    torch.testing.assert_close(advantages, expected.unsqueeze(-1) * response_mask)
    assert torch.all(advantages[response_mask == 0] == 0)


def test_outputs_pack_for_verl_v1_transfer_queue(tiny_tokenizer):
    # verl's default (v1) trainer stores each AgentLoopOutput.as_dict() through list_of_dict_to_tensordict.
    outputs = [run_loop(tiny_tokenizer, script)[0] for script in ([RIGHT], [WRONG, REFLECTION, RIGHT])]
    fields = [{**out.as_dict(), "raw_prompt": PROMPT, "uid": "p0"} for out in outputs]
    packed = list_of_dict_to_tensordict(fields)

    for row, out in enumerate(outputs):
        assert packed["response_mask"][row].tolist() == out.response_mask
        assert packed["rm_scores"][row].tolist() == [0.0] * (len(out.response_ids) - 1) + [out.reward_score]
    extra_fields = list(packed["extra_fields"])
    assert [f["reward_extra_info"]["final_correct"] for f in extra_fields] == [1.0, 1.0]
    assert [f["reward_extra_info"]["first_try_correct"] for f in extra_fields] == [1.0, 0.0]
    assert [turn["kind"] for turn in extra_fields[1]["turns"]] == ["attempt", "reflection", "retry"]


# -----------------------------------------------------------------------------
# attempt: replay — the row's stored failed attempt stands in for the first attempt.


def generated_ids(tokenizer, text: str) -> list[int]:
    """What ScriptedServer returns for ``text``: its ids and the end-of-turn token."""
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def stored(tokenizer, token_ids: list[int]) -> dict:
    """One ``failed_attempts`` entry as build-failures writes it."""
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "max_attempt_tokens": 64}
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return {"token_ids": token_ids, "text": text, "model": "/models/m", "sampling": sampling}


def replay_row(*attempts: dict) -> dict:
    return {**ROW, "failed_attempts": list(attempts)}


def test_replay_stream_equals_the_generated_one_for_the_same_ids(tiny_tokenizer):
    generated, _ = run_loop(tiny_tokenizer, [WRONG, REFLECTION, RIGHT])
    attempt_ids = generated_ids(tiny_tokenizer, WRONG)
    replayed, server = run_loop(
        tiny_tokenizer, [REFLECTION, RIGHT], row=replay_row(stored(tiny_tokenizer, attempt_ids)), attempt="replay"
    )

    # Only the reflection and the retry reach the server, each on the exact rendered context.
    assert [call["prompt_ids"] for call in server.calls] == [
        render(tiny_tokenizer, conversation(WRONG) + [{"role": "user", "content": REFLECTION_PROMPT}], True),
        render(tiny_tokenizer, conversation(WRONG, REFLECTION) + [{"role": "user", "content": RETRY_PROMPT}], True),
    ]
    # The same stream and mask as if the server had generated those ids: reflection trained, nothing else.
    assert replayed.prompt_ids == generated.prompt_ids
    assert replayed.response_ids == generated.response_ids
    assert (
        replayed.prompt_ids + replayed.response_ids
        == render(tiny_tokenizer, conversation(WRONG, REFLECTION, RIGHT))[:-1]
    )
    assert replayed.response_ids[: len(attempt_ids)] == attempt_ids
    start, length = reflection_span(tiny_tokenizer, WRONG), n_tokens(tiny_tokenizer, REFLECTION)
    assert replayed.response_mask == generated.response_mask
    assert replayed.response_mask == [0] * start + [1] * length + [0] * (len(replayed.response_ids) - start - length)
    # The replayed attempt was not sampled now: logprob 0.0 like every other mask-0 token.
    assert replayed.response_logprobs[: len(attempt_ids)] == [0.0] * len(attempt_ids)
    assert replayed.response_logprobs[len(attempt_ids) :] == generated.response_logprobs[len(attempt_ids) :]
    check_aligned(replayed)

    fields = replayed.extra_fields
    assert replayed.reward_score == 1.0
    assert (fields["first_try_correct"], fields["final_correct"], fields["replayed_attempt"]) == (False, True, True)
    assert [(t["kind"], t["text"], t["correct"]) for t in fields["turns"]] == [
        ("attempt", WRONG, False),
        ("reflection", REFLECTION, None),
        ("retry", RIGHT, True),
    ]
    assert fields["turns"] == generated.extra_fields["turns"]
    assert fields["turn_scores"] == [0.0, 1.0]
    assert fields["reward_extra_info"]["replayed_attempt"] == 1.0
    # The weight version is the first generated turn's (the reflection's): the attempt used no weights.
    assert (fields["min_global_steps"], fields["max_global_steps"]) == (7, 7)
    assert replayed.metrics.num_preempted == 0


def test_replay_keeps_the_stored_ids_even_where_retokenizing_the_text_would_differ(tiny_tokenizer):
    # A model may generate a non-canonical tokenization; the stream must carry its ids, not the text re-encoded.
    attempt_ids = [t for ch in WRONG for t in tiny_tokenizer.encode(ch, add_special_tokens=False)]
    attempt_ids.append(tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert attempt_ids != generated_ids(tiny_tokenizer, WRONG)
    assert tiny_tokenizer.decode(attempt_ids, skip_special_tokens=True) == WRONG
    out, server = run_loop(
        tiny_tokenizer, [REFLECTION, RIGHT], row=replay_row(stored(tiny_tokenizer, attempt_ids)), attempt="replay"
    )

    prompt = render(tiny_tokenizer, PROMPT, True)
    canonical = n_tokens(tiny_tokenizer, WRONG)
    # Everything after the attempt is the template's rendering, as after a generated attempt.
    after_attempt = render(tiny_tokenizer, conversation(WRONG, REFLECTION, RIGHT))[len(prompt) + canonical : -1]
    reflect_request = after_attempt[: reflection_span(tiny_tokenizer, WRONG) - canonical]
    assert out.prompt_ids == prompt
    assert out.response_ids == attempt_ids + after_attempt
    assert server.calls[0]["prompt_ids"] == prompt + attempt_ids + reflect_request
    start, length = len(attempt_ids) + len(reflect_request), n_tokens(tiny_tokenizer, REFLECTION)
    assert out.response_mask == [0] * start + [1] * length + [0] * (len(out.response_ids) - start - length)
    check_aligned(out)


def test_every_row_of_a_replayed_group_reflects_on_the_same_stored_attempt(tiny_tokenizer):
    first, second = generated_ids(tiny_tokenizer, WRONG), generated_ids(tiny_tokenizer, "<answer> 1 * 2 * 3 </answer>")
    row = replay_row(stored(tiny_tokenizer, first), stored(tiny_tokenizer, second))
    # verl runs the same dataset row n times: the rows differ only in what the server samples after the attempt.
    scripts = [[REFLECTION, RIGHT], [REFLECTION, WRONG], ["Think again.", RIGHT], ["No idea.", WRONG]]
    outputs = [run_loop(tiny_tokenizer, script, row=row, attempt="replay")[0] for script in scripts]

    for out in outputs:
        assert out.response_ids[: len(first)] == first
        assert out.extra_fields["num_reflections"] == 1 and sum(out.response_mask) > 0
        assert out.extra_fields["first_try_correct"] is False
    assert [out.reward_score for out in outputs] == [1.0, 0.0, 1.0, 0.0]

    worker = _Worker(tiny_tokenizer, prompt_length=64, response_length=256)

    async def postprocess():
        return [await worker._agent_loop_postprocess(out, validate=False, raw_prompt=PROMPT) for out in outputs]

    batch = worker._postprocess(
        asyncio.run(postprocess()), input_non_tensor_batch={"uid": np.array(["p0"] * 4, dtype=object)}
    )
    batch.batch["token_level_rewards"] = batch.batch["rm_scores"]
    advantages = compute_advantage(batch, adv_estimator="reflect_grpo", config=AlgoConfig()).batch["advantages"]
    response_mask = batch.batch["response_mask"]
    # Every row carries gradient: rewards [1, 0, 1, 0], mean 1/2, unbiased std sqrt(1/3).
    std = (1 / 3) ** 0.5
    expected = torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-6)
    torch.testing.assert_close(advantages, expected.unsqueeze(-1) * response_mask)
    assert all((advantages[row] != 0).any() for row in range(4))


def test_generate_ignores_stored_attempts(tiny_tokenizer):
    # eval and build-failures measure first tries: a failure-set row under `generate` samples its attempt.
    row = replay_row(stored(tiny_tokenizer, generated_ids(tiny_tokenizer, WRONG)))
    out, server = run_loop(tiny_tokenizer, [RIGHT], row=row)
    assert len(server.calls) == 1
    assert out.extra_fields["first_try_correct"] is True and out.extra_fields["replayed_attempt"] is False


@pytest.mark.parametrize(
    "failed_attempts, match",
    [
        (None, "has no stored failed attempt"),
        ([], "has no stored failed attempt"),
        ("too long", "over this loop's attempt cap of 8"),
        ("other tokenizer", "does not decode to its stored text"),
        ("correct", "is correct by the current verifier"),
    ],
)
def test_replay_errors_before_generating_anything(tiny_tokenizer, failed_attempts, match):
    wrong = stored(tiny_tokenizer, generated_ids(tiny_tokenizer, WRONG))
    if failed_attempts == "too long":
        failed_attempts = [wrong]
    elif failed_attempts == "other tokenizer":
        failed_attempts = [{**wrong, "text": "what another tokenizer decoded"}]
    elif failed_attempts == "correct":
        failed_attempts = [stored(tiny_tokenizer, generated_ids(tiny_tokenizer, RIGHT))]
    row = {**ROW} if failed_attempts is None else replay_row(*failed_attempts)
    server = ScriptedServer(tiny_tokenizer, [REFLECTION, RIGHT])
    cap = 8 if match.startswith("over") else 64
    with pytest.raises(ValueError, match=match) as info:
        run_loop(tiny_tokenizer, None, server=server, row=row, attempt="replay", max_attempt_tokens=cap)
    assert "row 0 (countdown)" in str(info.value)
    assert server.calls == []


def test_attempt_setting_is_checked(tiny_tokenizer):
    verl_kwargs = standalone_kwargs(tiny_tokenizer, prompt_length=64, response_length=64, hf_model_type="qwen2")

    async def build():
        return ReflectRetryAgentLoop(server_manager=None, **verl_kwargs, attempt="reuse")

    with pytest.raises(ValueError, match=r"attempt must be one of \('generate', 'replay'\), got 'reuse'"):
        asyncio.run(build())
