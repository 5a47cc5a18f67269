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
from loop_helpers import LOGPROB, ScriptedServer
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, _agent_loop_registry
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

import verl_reflect.register  # noqa: F401
from verl_reflect.agent_loop import (
    DEFAULT_REFLECTION_PROMPT,
    DEFAULT_RETRY_PROMPT,
    ReflectRetryAgentLoop,
    standalone_kwargs,
)

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


def run_loop(tokenizer, replies, *, response_length=512, stop=True, server=None, **loop_kwargs):
    server = server or ScriptedServer(tokenizer, replies, stop=stop)
    verl_kwargs = standalone_kwargs(
        tokenizer, prompt_length=256, response_length=response_length, hf_model_type="qwen2"
    )

    async def main():
        # AgentLoopBase captures the running event loop: build it inside one.
        loop = ReflectRetryAgentLoop(server_manager=server, **verl_kwargs, **loop_kwargs)
        return await loop.run({"temperature": 1.0, "logprobs": True}, **ROW)

    return asyncio.run(main()), server


def render(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    )


def conversation(*turns: str, reflection_prompt=DEFAULT_REFLECTION_PROMPT, retry_prompt=DEFAULT_RETRY_PROMPT):
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
    before = conversation(*turns_before) + [{"role": "user", "content": DEFAULT_REFLECTION_PROMPT}]
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
        render(tiny_tokenizer, conversation(WRONG) + [{"role": "user", "content": DEFAULT_REFLECTION_PROMPT}], True),
        render(
            tiny_tokenizer, conversation(WRONG, REFLECTION) + [{"role": "user", "content": DEFAULT_RETRY_PROMPT}], True
        ),
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
