"""``verl-reflect build-failures``: exact thresholds with a scripted backend, then end to end on the tiny model."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from verl.workers.rollout.replica import TokenOutput

from verl_reflect import data
from verl_reflect.commands import cli, evaluate, recipe, runner
from verl_reflect.commands.build_failures import build_failures, keep_failures
from verl_reflect.commands.errors import UserError

K = 4


def _row(a: int, b: int, index: int) -> dict:
    """A Countdown row whose answer is ``a + b``, in verl_reflect.data's schema."""
    return {
        "prompt": [
            {"role": "system", "content": data.COUNTDOWN_SYSTEM},
            {"role": "user", "content": data.COUNTDOWN_USER.format(numbers=[a, b], target=a + b)},
        ],
        "data_source": "countdown",
        "reward_model": {"style": "rule", "ground_truth": json.dumps({"target": a + b, "numbers": [a, b]})},
        "extra_info": {"index": index, "split": "train"},
        "agent_name": data.AGENT_NAME,
    }


def _runner(model_dir, backend, *flags: str) -> runner.Runner:
    """A runner of the default (tiny) recipe with ``flags`` applied, generating with ``backend``."""
    loop_recipe = recipe.load_recipe(evaluate.build_parser().parse_args(list(flags)), recipe.training_sampling)
    return runner.Runner(runner.ModelSpec(model_dir, "scripted"), backend, loop_recipe)


@pytest.fixture(autouse=True)
def tiny_cache(tiny_model_dir, monkeypatch):
    """The tiny recipe names the tiny model: reuse the session's build instead of building into ~/.cache."""
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


class ScriptedBackend:
    """Answers each Countdown prompt right or wrong as scripted: ``script[a]`` lists the verdicts of the
    attempts at the row with numbers ``[a, b]``, consumed in order."""

    def __init__(self, tokenizer, script: dict[int, list[bool]]):
        self.tokenizer = tokenizer
        self.script = {a: list(verdicts) for a, verdicts in script.items()}

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        await asyncio.sleep(0)  # let attempts interleave like real concurrent requests
        a, b = map(int, re.search(r"numbers \[(\d+), (\d+)\]", self.tokenizer.decode(prompt_ids)).groups())
        right = self.script[a].pop(0)
        return TokenOutput(token_ids=attempt_ids(self.tokenizer, a, b, right), log_probs=None, stop_reason="completed")


def attempt_text(a: int, b: int, right: bool) -> str:
    return f"<think> adding </think> <answer> {a} {'+' if right else '-'} {b} </answer>"


def attempt_ids(tokenizer, a: int, b: int, right: bool) -> list[int]:
    """What ScriptedBackend generates: a wrong answer comes one character per token, a tokenization that
    re-encoding its text would not give back, so a test sees whether the ids were stored as generated."""
    text = attempt_text(a, b, right)
    if right:
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = [token for char in text for token in tokenizer.encode(char, add_special_tokens=False)]
    return ids + [tokenizer.eos_token_id]


# Successes out of K=4 for rows 100..103: 0/4, 1/4, 2/4, 4/4.
SCRIPT = {
    10: [False] * 4,
    20: [True, False, False, False],
    30: [False, True, True, False],
    40: [True] * 4,
}


@pytest.fixture
def rows() -> list[dict]:
    return [_row(a, 5, 100 + i) for i, a in enumerate(SCRIPT)]


@pytest.mark.parametrize(
    "max_success_rate, kept_sources",
    [(0.0, [100]), (0.25, [100, 101]), (0.5, [100, 101, 102]), (1.0, [100, 101, 102, 103])],
)
@pytest.mark.parametrize("keep_attempts", [1, 3])
def test_threshold_is_exact(tmp_path, tiny_model_dir, rows, capsys, max_success_rate, kept_sources, keep_attempts):
    tokenizer = _tokenizer(tiny_model_dir)
    backend = ScriptedBackend(tokenizer, SCRIPT)
    model_runner = _runner(tiny_model_dir, backend, "--max-attempt-tokens", "128")  # room for one token per character
    out = tmp_path / "failures.parquet"
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False}
    kept = build_failures(
        model_runner,
        rows,
        out,
        sampling,
        k=K,
        max_success_rate=max_success_rate,
        concurrency=3,
        keep_attempts=keep_attempts,
    )

    assert all(not verdicts for verdicts in backend.script.values())  # exactly K attempts per prompt
    printed = capsys.readouterr().out
    assert "first-try accuracy: 43.8% (7/16 attempts)" in printed
    assert f"kept {len(kept_sources)} of 4 prompts" in printed
    assert ("1 kept prompts were never failed" in printed) == (103 in kept_sources)

    written = data.read_rows(out)
    assert written == kept
    assert [r["extra_info"]["source_index"] for r in written] == kept_sources
    assert [r["extra_info"]["index"] for r in written] == list(range(len(kept_sources)))
    originals = {r["extra_info"]["index"]: r for r in rows}
    provenance = {
        "model": str(tiny_model_dir),
        "sampling": {
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "repetition_penalty": 1.0,
            "max_attempt_tokens": 128,
        },
    }
    for r in written:
        original = originals[r["extra_info"]["source_index"]]
        assert r.keys() == original.keys() | {data.FAILED_ATTEMPTS}
        assert r["agent_name"] == data.FAILURES_AGENT_NAME
        assert all(r[column] == original[column] for column in original if column not in ("extra_info", "agent_name"))
        assert r["extra_info"]["split"] == "train"
        # The failed attempts, as generated (not re-encoded from their text), up to --keep-attempts of them.
        a = json.loads(original["reward_model"]["ground_truth"])["numbers"][0]
        failures = SCRIPT[a].count(False)
        wrong = {"token_ids": attempt_ids(tokenizer, a, 5, False), "text": attempt_text(a, 5, False), **provenance}
        assert r[data.FAILED_ATTEMPTS] == [wrong] * min(failures, keep_attempts)
        assert wrong["token_ids"] != tokenizer.encode(wrong["text"], add_special_tokens=False) + [
            tokenizer.eos_token_id
        ]


def test_keep_failures_stores_failed_attempts_in_sampling_order():
    rows = [{"prompt": [], "extra_info": {"index": 7}, "agent_name": data.AGENT_NAME}]
    sampled = [
        {"correct": False, "token_ids": [1], "text": "a"},
        {"correct": True, "token_ids": [2], "text": "b"},
        {"correct": False, "token_ids": [3], "text": "c"},
        {"correct": False, "token_ids": [4], "text": "d"},
    ]
    (kept,) = keep_failures(rows, [sampled], max_success_rate=0.25, keep_attempts=2, provenance={"model": "m"})
    assert kept[data.FAILED_ATTEMPTS] == [
        {"token_ids": [1], "text": "a", "model": "m"},
        {"token_ids": [3], "text": "c", "model": "m"},
    ]
    assert kept["extra_info"] == {"index": 0, "source_index": 7}
    assert kept["agent_name"] == data.FAILURES_AGENT_NAME
    assert keep_failures(rows, [sampled], max_success_rate=0.0) == []


def test_nothing_kept_writes_nothing(tmp_path, tiny_model_dir, rows):
    backend = ScriptedBackend(_tokenizer(tiny_model_dir), {a: [True] * K for a in SCRIPT})
    model_runner = _runner(tiny_model_dir, backend)
    out = tmp_path / "f.parquet"
    with pytest.raises(UserError, match="kept 0 of 4"):
        build_failures(model_runner, rows, out, {"temperature": 1.0}, k=K, max_success_rate=0, concurrency=2)
    assert not out.exists()


def test_bad_filter_arguments(tmp_path, tiny_model_dir, capsys):
    for args in (["--k", "0"], ["--max-success-rate", "1.5"], ["--keep-attempts", "0"]):
        rc = cli.main(["build-failures", "--model", str(tiny_model_dir), "--out", str(tmp_path / "f.parquet"), *args])
        assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "f.parquet").exists()


def test_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))  # no --model: the tiny default
    out = tmp_path / "fail" / "train.parquet"
    rc = cli.main(["build-failures", "--limit", "3", "--k", "2", "--max-attempt-tokens", "4", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    # Random weights never solve Countdown: every prompt is a failure.
    assert "first-try accuracy: 0.0% (0/6 attempts)" in printed and "kept 3 of 3 prompts" in printed
    written = data.read_rows(out)
    source = data.countdown_rows(runner.DEFAULT_TEST_ROWS, seed=0, split="test")[:3]
    assert [r["prompt"] for r in written] == [r["prompt"] for r in source]
    assert [(r["extra_info"]["index"], r["extra_info"]["source_index"]) for r in written] == [(0, 0), (1, 1), (2, 2)]
    # Each kept row stores the failed attempts' ids, which decode to the stored text, and the model that made them.
    for row in written:
        assert len(row[data.FAILED_ATTEMPTS]) == 1  # --keep-attempts defaults to 1
        (attempt,) = row[data.FAILED_ATTEMPTS]
        assert 1 <= len(attempt["token_ids"]) <= 4
        assert _tokenizer(tiny_model_dir).decode(attempt["token_ids"], skip_special_tokens=True) == attempt["text"]
        assert attempt["model"] == str(tiny_model_dir) and attempt["sampling"]["max_attempt_tokens"] == 4


def test_a_built_failure_set_replays_through_verls_dataset(tmp_path, tiny_model_dir, monkeypatch):
    """build-failures -> verl's RLHFDataset -> the kwargs verl's AgentLoopWorker passes ``run`` -> replay."""
    import datasets
    import numpy as np
    import torch
    from loop_helpers import standalone_kwargs
    from omegaconf import OmegaConf
    from tensordict.tensorclass import NonTensorStack
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from verl_reflect.agent_loop import ReflectRetryAgentLoop
    from verl_reflect.cpu.generation import HFBackend

    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "failures.parquet"
    argv = ["build-failures", "--limit", "2", "--k", "3", "--keep-attempts", "2", "--max-attempt-tokens", "4"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    written = data.read_rows(out)

    config = {"prompt_key": "prompt", "max_prompt_length": 4096, "return_raw_chat": True}
    config.update(filter_overlong_prompts=True, filter_overlong_prompts_workers=1, cache_dir=str(tmp_path / "verl"))
    tokenizer = _tokenizer(tiny_model_dir)
    dataset = RLHFDataset(data_files=[str(out)], tokenizer=tokenizer, config=OmegaConf.create(config))
    batch = collate_fn([dataset[i] for i in range(len(dataset))])

    # Legacy trainer: every non-tensor column reaches the worker, which passes row i's values as run's kwargs
    # (AgentLoopWorker.generate_sequences); agent_name is taken off by _run_agent_loop to pick the loop.
    legacy = [{k: v[i] for k, v in batch.items() if not isinstance(v, torch.Tensor)} for i in range(len(dataset))]
    # v1 trainer: the batch goes through a TensorDict and is unpacked per sample (AgentLoopWorkerTQ).
    batch["uid"] = np.array(["u0", "u1"], dtype=object)
    packed = tu.get_tensordict(batch)
    v1 = [
        {k: v[i].data if isinstance(v, NonTensorStack) else v.data for k, v in packed.items() if not torch.is_tensor(v)}
        for i in range(len(dataset))
    ]
    for kwargs in legacy + v1:
        assert kwargs["agent_name"] == data.FAILURES_AGENT_NAME
        assert kwargs[data.FAILED_ATTEMPTS] == written[kwargs["index"]][data.FAILED_ATTEMPTS]
        assert len(kwargs[data.FAILED_ATTEMPTS]) == 2

    backend = HFBackend(tiny_model_dir, device="cpu")
    verl_kwargs = standalone_kwargs(tokenizer, prompt_length=512, response_length=64, hf_model_type="qwen2")

    async def replay(kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k != "agent_name"}
        loop = ReflectRetryAgentLoop(
            server_manager=backend, **verl_kwargs, attempt="replay", max_attempt_tokens=4, max_reflection_tokens=8
        )
        return await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)

    for kwargs in legacy:
        out_row = asyncio.run(replay(kwargs))
        stored = kwargs[data.FAILED_ATTEMPTS][0]["token_ids"]
        assert out_row.response_ids[: len(stored)] == stored  # the first stored attempt, as generated
        assert out_row.extra_fields["replayed_attempt"] is True and out_row.extra_fields["num_reflections"] == 1
        assert sum(out_row.response_mask) > 0 and out_row.response_mask[: len(stored)] == [0] * len(stored)
