"""What a slow verifier adds to a batch of concurrent trajectories: 0.2 s verdicts against instant ones.

32 trajectories run at once through the real ``ReflectRetryAgentLoop``, in one event loop as verl's AgentLoopWorker
runs them, on an instant fake server whose answers are always wrong: each trajectory is attempt, reflection, retry,
so two verdicts, one after the other. With verdicts running side by side (``verl_reflect/verdict.py``: a thread
pool of ``verdict_threads``, off the event loop) the batch can finish no sooner than two verdicts' latency after
the instant-verifier batch: that floor is 2 x 0.2 s = 0.4 s. Reported: the added time over the floor, per round.
Target: <= 1.2x. A third side runs the same batch with ``verdict_threads`` at the size of the event loop's default
executor here (min(32, cpus + 4)), which a verdict sent to ``run_in_executor(None, ...)`` would queue on.
The sides run interleaved (a batch of each per round, order rotating: ``interleave.py``).

    python benchmarks/bench_slow_verifier.py [--trajectories 32] [--seconds 0.2] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from bench_agent_loop import ROW, InstantServer
from interleave import describe, interleaved

from verl_reflect import agent_loop
from verl_reflect.agent_loop import ReflectRetryAgentLoop
from verl_reflect.cpu.tiny import build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loop_helpers import standalone_kwargs  # noqa: E402  (the kwargs verl's AgentLoopWorker passes a loop)

VERDICTS_PER_TRAJECTORY = 2  # the attempt's and the retry's: InstantServer's answers are always wrong
TARGET = 1.2


class SleepingVerifier:
    """A plain ``compute_score`` that takes ``seconds`` (a sandbox or a judge's latency, no CPU) and says wrong;
    counts its calls."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
        with self._lock:
            self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)
        return 0.0


@contextlib.contextmanager
def verifier_for_every_row(verifier):
    """The loop looks a row's verifier up by ``data_source``; for the benchmark every row gets ``verifier``."""
    get_compute_score = agent_loop.get_compute_score
    agent_loop.get_compute_score = lambda data_source, task_packages=(): verifier
    try:
        yield
    finally:
        agent_loop.get_compute_score = get_compute_score


def concurrent_batch(tokenizer, server, verifier, trajectories: int, turn_tokens: int, **loop_kwargs):
    """A function that runs ``trajectories`` trajectories at once (``asyncio.gather``), each verdict by ``verifier``."""
    # Three turns and the two user turns between them fit: every trajectory gets to its retry's verdict.
    verl_kwargs = standalone_kwargs(
        tokenizer, prompt_length=512, response_length=3 * turn_tokens + 256, hf_model_type="qwen2"
    )

    async def run_all():
        loops = [
            ReflectRetryAgentLoop(server_manager=server, **verl_kwargs, **loop_kwargs) for _ in range(trajectories)
        ]
        await asyncio.gather(*(loop.run({"temperature": 1.0, "logprobs": True}, **ROW) for loop in loops))

    def run():
        with verifier_for_every_row(verifier):
            asyncio.run(run_all())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=0.2, help="the slow verifier's latency")
    parser.add_argument("--turn-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    tokenizer = build_tokenizer()
    server = InstantServer(tokenizer, args.turn_tokens)
    default_executor_threads = min(32, (os.cpu_count() or 1) + 4)

    def side(seconds: float, **loop_kwargs):
        return concurrent_batch(
            tokenizer, server, SleepingVerifier(seconds), args.trajectories, args.turn_tokens, **loop_kwargs
        )

    times = interleaved(
        {
            "instant": side(0.0),
            "slow": side(args.seconds),  # the loops' default verdict_threads
            "slow_default_executor_size": side(args.seconds, verdict_threads=default_executor_threads),
        },
        args.rounds,
    )
    floor = VERDICTS_PER_TRAJECTORY * args.seconds

    def added_over_floor(name: str) -> list[float]:
        return [(slow - instant) / floor for slow, instant in zip(times[name], times["instant"], strict=True)]

    print(
        f"{args.trajectories} concurrent trajectories (attempt, reflection, retry: {VERDICTS_PER_TRAJECTORY} verdicts "
        f"each), instant server, {args.turn_tokens}-token turns, {args.rounds} interleaved rounds, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"instant verifier                        batch s: {describe(times['instant'])}")
    print(f"{args.seconds:g} s verifier                          batch s: {describe(times['slow'])}")
    print(
        f"{args.seconds:g} s verifier, {default_executor_threads} threads (default executor) batch s: "
        f"{describe(times['slow_default_executor_size'])}"
    )
    print(f"floor (two verdicts' latency): {floor:.2f} s")
    ratio = added_over_floor("slow")
    print(f"added verdict time / floor: {describe(ratio)}")
    print(f"  with {default_executor_threads} threads: {describe(added_over_floor('slow_default_executor_size'))}")
    median = statistics.median(ratio)
    print(f"added / floor: {median:.2f}x (median; target <= {TARGET}x): {'OK' if median <= TARGET else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
