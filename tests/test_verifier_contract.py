"""Task verifiers as verl users write them, through the reflect_retry loop (``verl_reflect/verdict.py``).

verl's reward-function contract: a plain or ``async def`` ``compute_score``, returning a number or a dict with
``"score"`` whose other keys reach ``reward_extra_info``. A verifier that raises, returns no score or runs out of
time costs that one verdict (not solved), counted per trajectory and logged once per data source; the trajectory
goes on. The verifiers are ``tests/fixtures/toy_tasks/{contract,contract_async,parity,reverse}.py``; in
``contract*`` the answer text says what the verifier does, so one trajectory can mix verdicts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from pathlib import Path

import pytest
from fresh_python import run_python
from loop_helpers import ScriptedServer, standalone_kwargs
from omegaconf import OmegaConf

import reward_fns
from reward_fns import TASK_PACKAGES_KEY
from verl_reflect import verdict as verdict_module
from verl_reflect.agent_loop import ReflectRetryAgentLoop

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFLECTION = "I got it wrong."
STATS = ("first_try_correct", "final_correct", "verifier_errors", "verifier_timeouts")


@pytest.fixture(autouse=True)
def toy_tasks(monkeypatch):
    """The test-only verifiers importable, and a fresh once-per-data-source log memory."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setattr(verdict_module, "_LOGGED", set())
    yield
    for name in [name for name in sys.modules if name.startswith("toy_tasks")]:
        del sys.modules[name]  # contract.py's recorded intervals and events start empty in the next test
    reward_fns._load.cache_clear()


def run_trajectories(tokenizer, data_source: str, scripts, ground_truth: str = "{}", **loop_kwargs):
    """One trajectory per script (the model's replies: attempt, then reflection and retry), all at once in one
    event loop, as verl's AgentLoopWorker runs a batch. Row ``i`` has index ``100 + i``."""
    verl_kwargs = standalone_kwargs(tokenizer, prompt_length=64, response_length=128, hf_model_type="qwen2")
    # The recipe allows the test-only task package, as tests/test_trainer.py's run does.
    OmegaConf.update(verl_kwargs["trainer_config"].config, TASK_PACKAGES_KEY, ["toy_tasks"], force_add=True)

    def row(i: int) -> dict:
        return {
            "raw_prompt": [{"role": "user", "content": "Answer."}],
            "data_source": data_source,
            "reward_model": {"style": "rule", "ground_truth": ground_truth},
            "extra_info": {"index": 100 + i},
        }

    async def main():
        loops = [
            ReflectRetryAgentLoop(server_manager=ScriptedServer(tokenizer, list(script)), **verl_kwargs, **loop_kwargs)
            for script in scripts
        ]
        return await asyncio.gather(
            *(loop.run({"temperature": 1.0, "logprobs": True}, **row(i)) for i, loop in enumerate(loops))
        )

    return asyncio.run(main())


def stats(out) -> dict:
    return {name: out.extra_fields[name] for name in STATS}


@pytest.fixture
def verdict_log():
    """The records of the verdict logger. It does not propagate to the root logger, caplog's (see the test below)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    verdict_module.logger.addHandler(handler)
    yield records
    verdict_module.logger.removeHandler(handler)


def warnings_about(records: list[logging.LogRecord], data_source: str) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno == logging.WARNING and repr(data_source) in r.getMessage()]


def test_a_verifier_warning_is_shown_where_the_root_logger_is_raised_to_error():
    # Importing vLLM's entrypoints (verl's vLLM replica class does) runs model_hosting_container_standards'
    # configure_root_logger: root logger and its handlers at ERROR. Until the verdict logger had a handler of its
    # own, a broken verifier's warning went nowhere in such a process (it failed this suite after the vLLM tier).
    code = (
        "import logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from verl_reflect import verdict\n"
        "logging.getLogger().setLevel(logging.ERROR)\n"
        "for handler in logging.getLogger().handlers: handler.setLevel(logging.ERROR)\n"
        "verdict._log_once('lab.task', verdict.ERROR, 'failed on row 7', None)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if "'lab.task'" in line]  # once, not twice
    assert line.startswith("WARNING:") and "failed on row 7" in line


def test_a_dict_verifiers_score_decides_and_its_other_keys_reach_reward_extra_info(tiny_tokenizer):
    # toy_tasks.parity: {"score": 1.0 iff the answer's length is even, "answer_chars": its length}.
    first_try, after_reflection = run_trajectories(
        tiny_tokenizer, "toy_tasks.parity", [["ab"], ["abc", REFLECTION, "abcd"]]
    )
    assert first_try.reward_score == 1.0 and first_try.extra_fields["first_try_correct"]
    assert first_try.extra_fields["reward_extra_info"]["answer_chars"] == 2
    assert after_reflection.reward_score == 1.0 and not after_reflection.extra_fields["first_try_correct"]
    # The keys of the verdict the reward came from: the retry's.
    assert after_reflection.extra_fields["reward_extra_info"]["answer_chars"] == 4
    assert "score" not in after_reflection.extra_fields["reward_extra_info"]  # the reward is the score's verdict
    assert [turn["correct"] for turn in after_reflection.extra_fields["turns"]] == [False, None, True]
    for out in (first_try, after_reflection):
        assert out.extra_fields["verifier_errors"] == out.extra_fields["verifier_timeouts"] == 0
        assert out.extra_fields["reward_extra_info"]["verifier_errors"] == 0.0


def test_an_async_verifier_is_awaited(tiny_tokenizer):
    (solved,) = run_trajectories(
        tiny_tokenizer, "toy_tasks.reverse", [["<answer>olleh</answer>"]], ground_truth='{"word": "hello"}'
    )
    assert solved.reward_score == 1.0 and solved.extra_fields["first_try_correct"]
    (with_keys,) = run_trajectories(tiny_tokenizer, "toy_tasks.contract_async", [["dict"]])
    assert with_keys.reward_score == 1.0 and with_keys.extra_fields["reward_extra_info"]["awaited"] == 1.0


def test_an_async_verifier_that_says_wrong_is_not_solved(tiny_tokenizer):
    (out,) = run_trajectories(
        tiny_tokenizer,
        "toy_tasks.reverse",
        [["<answer>hello</answer>", REFLECTION, "<answer>ollhe</answer>"]],
        ground_truth='{"word": "hello"}',
    )
    assert out.reward_score == 0.0
    assert stats(out) == dict(first_try_correct=False, final_correct=False, verifier_errors=0, verifier_timeouts=0)


def test_partial_credit_is_solved_iff_it_reaches_the_threshold(tiny_tokenizer):
    (strict,) = run_trajectories(tiny_tokenizer, "toy_tasks.contract", [["half", REFLECTION, "half"]])
    assert strict.reward_score == 0.0 and not strict.extra_fields["final_correct"]  # default threshold 1.0
    (lenient,) = run_trajectories(tiny_tokenizer, "toy_tasks.contract", [["half"]], solved_threshold=0.5)
    assert lenient.reward_score == 1.0 and lenient.extra_fields["first_try_correct"]


def test_slow_plain_verifiers_run_at_once_off_the_event_loop(tiny_tokenizer):
    from toy_tasks import contract

    trajectories = 8  # over the default executor's 6 threads on 2 cores: its own threads (verdict_threads: 32)
    outs = run_trajectories(tiny_tokenizer, "toy_tasks.contract", [["slow"]] * trajectories)
    assert all(out.reward_score == 1.0 for out in outs)
    assert len(contract.INTERVALS) == trajectories
    # Every verdict started before any ended: all were in flight together (one at a time, none would overlap).
    assert max(start for start, _ in contract.INTERVALS) < min(end for _, end in contract.INTERVALS)


def test_verdicts_run_at_most_verdict_threads_at_once(tiny_tokenizer):
    from toy_tasks import contract

    run_trajectories(tiny_tokenizer, "toy_tasks.contract", [["slow"]] * 4, verdict_threads=1)
    intervals = sorted(contract.INTERVALS)
    assert len(intervals) == 4
    assert all(earlier[1] <= later[0] for earlier, later in zip(intervals, intervals[1:]))  # one at a time


def test_a_hanging_plain_verifier_times_out_and_the_loop_does_not_wait_for_it(tiny_tokenizer, verdict_log):
    from toy_tasks import contract

    try:
        (hung, solved_on_retry) = run_trajectories(
            tiny_tokenizer,
            "toy_tasks.contract",
            [["hang", REFLECTION, "hang"], ["hang", REFLECTION, "right"]],
            verdict_timeout=0.5,
        )
        # The trajectories are back while their verifier threads still block: nothing waited for them.
        assert len(contract.HUNG) == 3
    finally:
        contract.RELEASE.set()
    assert hung.reward_score == 0.0
    assert stats(hung) == dict(first_try_correct=False, final_correct=False, verifier_errors=0, verifier_timeouts=2)
    assert solved_on_retry.reward_score == 1.0 and solved_on_retry.extra_fields["verifier_timeouts"] == 1
    assert solved_on_retry.extra_fields["reward_extra_info"]["verifier_timeouts"] == 1.0
    (warning,) = warnings_about(verdict_log, "toy_tasks.contract")  # three timeouts, one line
    assert re.search(r"still running after 0.5 s on row 10[01] \(toy_tasks.contract\)", warning.getMessage())
    assert "verifier_timeouts" in warning.getMessage()


def test_a_hanging_async_verifier_is_cancelled_at_its_timeout(tiny_tokenizer):
    from toy_tasks import contract_async

    (out,) = run_trajectories(
        tiny_tokenizer, "toy_tasks.contract_async", [["hang", REFLECTION, "dict"]], verdict_timeout=0.2
    )
    assert contract_async.CANCELLED == ["hang"]
    assert out.reward_score == 1.0
    assert stats(out) == dict(first_try_correct=False, final_correct=True, verifier_errors=0, verifier_timeouts=1)


def test_a_raising_verifier_costs_one_verdict_logged_once_per_data_source(tiny_tokenizer, verdict_log):
    outs = run_trajectories(
        tiny_tokenizer, "toy_tasks.contract", [["raise", REFLECTION, "raise"], ["raise", REFLECTION, "right"]] * 2
    )
    assert [out.reward_score for out in outs] == [0.0, 1.0] * 2
    assert [out.extra_fields["verifier_errors"] for out in outs] == [2, 1] * 2
    assert all(not out.extra_fields["first_try_correct"] and out.extra_fields["num_reflections"] == 1 for out in outs)
    (warning,) = warnings_about(verdict_log, "toy_tasks.contract")  # six errors, one line
    message = warning.getMessage()
    assert re.search(r"failed on row 10[0-3] \(toy_tasks.contract\): RuntimeError\('verifier bug'\)", message)
    assert warning.exc_info[0] is RuntimeError  # the traceback into the verifier is logged with it
    # Another data source's failures get their own line.
    turns = [["<answer>x</answer>", REFLECTION, "<answer>y</answer>"]]
    (broken_truth,) = run_trajectories(tiny_tokenizer, "toy_tasks.reverse", turns, ground_truth="{}")
    assert broken_truth.extra_fields["verifier_errors"] == 2
    assert len(warnings_about(verdict_log, "toy_tasks.reverse")) == 1


@pytest.mark.parametrize("junk", ["none", "str", "nan", "no_score"])
def test_a_verifier_returning_no_score_is_an_error_not_a_verdict(tiny_tokenizer, verdict_log, junk):
    # None, "1.0", NaN, {"acc": 1.0}: none of them is a score, whatever it looks like.
    (out,) = run_trajectories(tiny_tokenizer, "toy_tasks.contract", [[junk, REFLECTION, junk]])
    assert out.reward_score == 0.0
    assert stats(out) == dict(first_try_correct=False, final_correct=False, verifier_errors=2, verifier_timeouts=0)
    (warning,) = warnings_about(verdict_log, "toy_tasks.contract")
    assert "not a finite number" in warning.getMessage() or "without 'score'" in warning.getMessage()


def test_verdict_settings_are_checked(tiny_tokenizer):
    for bad in ({"verdict_timeout": 0}, {"verdict_threads": 0}, {"solved_threshold": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            run_trajectories(tiny_tokenizer, "toy_tasks.contract", [["right"]], **bad)


def test_reward_fns_compute_score_runs_an_async_task_as_verl_calls_it(monkeypatch):
    # verl's reward managers see the dispatching compute_score, a plain function, and run it in an executor
    # thread with keyword arguments; it must hand back the async task's result, not a coroutine.
    from concurrent.futures import ThreadPoolExecutor

    call = dict(
        data_source="toy_tasks.reverse",
        solution_str="<answer>olleh</answer>",
        ground_truth=json.dumps({"word": "hello"}),
        extra_info={},
        task_packages=["toy_tasks"],
    )
    with ThreadPoolExecutor(1) as executor:
        assert executor.submit(lambda: reward_fns.compute_score(**call)).result() == 1.0
        parity = {**call, "data_source": "toy_tasks.parity", "solution_str": "ab"}
        assert executor.submit(lambda: reward_fns.compute_score(**parity)).result() == {"score": 1.0, "answer_chars": 2}
