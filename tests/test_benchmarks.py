"""The benchmarks still run: each imports (they import each other), and the helper ``bench_trainer_step.py`` takes
from ``bench_agent_loop.py`` measures something. Timings themselves are the benchmarks' job, not the tests'."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_imports(name):
    importlib.import_module(name)


def test_the_loop_cost_helper_runs_the_loop(tiny_tokenizer):
    bench_agent_loop = importlib.import_module("bench_agent_loop")
    from verl_reflect.agent_loop import ReflectRetryAgentLoop

    server = bench_agent_loop.InstantServer(tiny_tokenizer, 16)
    ms = bench_agent_loop.cpu_ms_per_trajectory(ReflectRetryAgentLoop, tiny_tokenizer, server, 2, 64, repeats=1)
    assert ms > 0


def test_the_slow_verifier_benchmark_judges_two_verdicts_per_trajectory(tiny_tokenizer):
    # Its floor (two verdicts' latency) assumes every trajectory is attempt, reflection, retry.
    bench = importlib.import_module("bench_slow_verifier")

    verifier = bench.SleepingVerifier(0.0)
    server = importlib.import_module("bench_agent_loop").InstantServer(tiny_tokenizer, 16)
    bench.concurrent_batch(tiny_tokenizer, server, verifier, trajectories=3, turn_tokens=16)()
    assert verifier.calls == 3 * bench.VERDICTS_PER_TRAJECTORY
