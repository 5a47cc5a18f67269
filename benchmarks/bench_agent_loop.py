"""Agent-loop CPU overhead per trajectory with an instant fake server: reflect_retry vs verl's single_turn_agent.

The server returns pre-built 1k-token turns at once, so what is measured is the loop itself:
chat-template rendering of the inserted user turns, token merging, decoding and verifying.
Target: under 5 ms of CPU for a failed attempt + reflection + retry on 1k-token turns.
The two loops run interleaved (a batch of each per round, order rotating); the ratio is the median of the
per-round ratios, with its spread (``interleave.py``).

    python benchmarks/bench_agent_loop.py [--trajectories 100] [--turn-tokens 1024] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from interleave import describe, interleaved, ratios
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.workers.rollout.replica import TokenOutput

from verl_reflect.agent_loop import ReflectRetryAgentLoop
from verl_reflect.cpu.tiny import build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loop_helpers import standalone_kwargs  # noqa: E402  (the kwargs verl's AgentLoopWorker passes a loop)

ROW = {
    "raw_prompt": [{"role": "user", "content": "Using the numbers [1, 2, 3], create an equation that equals 9."}],
    "data_source": "countdown",
    "reward_model": {"style": "rule", "ground_truth": json.dumps({"target": 9, "numbers": [1, 2, 3]})},
    "extra_info": {"index": 0},
}


class InstantServer:
    """Returns a fixed turn of ``turn_tokens`` tokens ending in a wrong <answer>, with logprobs, instantly."""

    def __init__(self, tokenizer, turn_tokens: int):
        answer = tokenizer.encode(" <answer> 1 + 2 + 3 </answer>", add_special_tokens=False)
        filler = tokenizer.encode(" I check each step and compute the value.", add_special_tokens=False)
        body = (filler * (turn_tokens // len(filler) + 1))[: turn_tokens - len(answer) - 1]
        self.token_ids = body + answer + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.log_probs = [-0.1] * len(self.token_ids)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        return TokenOutput(token_ids=self.token_ids, log_probs=self.log_probs, stop_reason="completed")


def batch_of_trajectories(loop_cls, tokenizer, server, trajectories: int, response_length: int, **kwargs):
    """A function that runs ``trajectories`` trajectories of ``loop_cls`` one after another."""
    verl_kwargs = standalone_kwargs(
        tokenizer, prompt_length=512, response_length=response_length, hf_model_type="qwen2"
    )

    async def run_all():
        for _ in range(trajectories):
            loop = loop_cls(server_manager=server, **verl_kwargs, **kwargs)
            await loop.run({"temperature": 1.0, "logprobs": True}, **ROW)

    return lambda: asyncio.run(run_all())


def cpu_ms_per_trajectory(
    loop_cls, tokenizer, server, trajectories: int, response_length: int, repeats: int = 5, **kwargs
) -> float:
    """CPU milliseconds one trajectory of ``loop_cls`` costs: the best of ``repeats`` batches after a warm-up (other
    load on the machine only ever adds). ``bench_trainer_step.py`` prices the plugin's share of a step with it."""
    run = batch_of_trajectories(loop_cls, tokenizer, server, trajectories, response_length, **kwargs)
    seconds = interleaved({"loop": run}, repeats, clock=time.process_time)["loop"]
    return 1e3 * min(seconds) / trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=100)
    parser.add_argument("--turn-tokens", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    tokenizer = build_tokenizer()
    server = InstantServer(tokenizer, args.turn_tokens)
    response_length = 4 * args.turn_tokens

    sides = {
        name: batch_of_trajectories(loop_cls, tokenizer, server, args.trajectories, response_length)
        for name, loop_cls in (("single_turn_agent", SingleTurnAgentLoop), ("reflect_retry", ReflectRetryAgentLoop))
    }
    # CPU time of every thread (the executor's included): other load on the machine inflates it less than wall time.
    times = interleaved(sides, args.rounds, clock=time.process_time)
    ms = {name: [1e3 * s / args.trajectories for s in seconds] for name, seconds in times.items()}
    print(
        f"agent-loop CPU per trajectory ({args.rounds} interleaved rounds x {args.trajectories}, instant server, "
        f"{args.turn_tokens}-token turns)"
    )
    print(f"single_turn_agent (1 turn)                       ms: {describe(ms['single_turn_agent'])}")
    print(f"reflect_retry (attempt, reflection, retry)       ms: {describe(ms['reflect_retry'])}")
    print(f"reflect_retry / single_turn_agent: {describe(ratios(times, 'reflect_retry', 'single_turn_agent'))}")
    reflect = statistics.median(ms["reflect_retry"])
    print(
        f"reflect_retry: {reflect:.2f} ms CPU per trajectory (median; target < 5 ms): "
        f"{'OK' if reflect < 5 else 'OVER TARGET'}"
    )


if __name__ == "__main__":
    main()
