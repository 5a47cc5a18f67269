"""reflect_grpo vs verl's own grpo estimators on the same batch: wall-time ratio (target: at most 1.5).

The estimators run interleaved (one of each per round, order rotating) and the ratio is the median of the
per-round ratios, with its spread (``interleave.py``): drift in the machine's load cancels within a round.

python benchmarks/bench_advantage.py [--batch 4096] [--length 2048] [--group-size 8] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from interleave import describe, interleaved, ratios
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_grpo_vectorized_outcome_advantage

from verl_reflect.advantage import compute_reflect_grpo_advantage


def make_batch(batch: int, length: int, group_size: int, seed: int = 0):
    """Outcome rewards on the last token; half the rows reflect, on a random span of 64..511 tokens."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.zeros(batch, length)
    rewards[:, -1] = torch.randint(0, 2, (batch,), generator=gen).float()
    start = torch.randint(0, length // 2, (batch,), generator=gen)
    span = torch.randint(64, 512, (batch,), generator=gen)
    positions = torch.arange(length)
    reflection_mask = ((positions >= start[:, None]) & (positions < (start + span)[:, None])).long()
    reflection_mask[torch.rand(batch, generator=gen) < 0.5] = 0
    full_mask = torch.ones(batch, length, dtype=torch.long)
    index = np.array([f"uid-{i // group_size}" for i in range(batch)], dtype=object)
    return rewards, reflection_mask, full_mask, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rewards, reflection_mask, full_mask, index = make_batch(args.batch, args.length, args.group_size)

    times = interleaved(
        {
            "verl grpo": lambda: compute_grpo_outcome_advantage(rewards, full_mask, index),
            "verl grpo_vectorized": lambda: compute_grpo_vectorized_outcome_advantage(rewards, full_mask, index),
            "reflect_grpo": lambda: compute_reflect_grpo_advantage(rewards, reflection_mask, index),
        },
        args.rounds,
    )
    print(f"advantage estimators on {args.batch} x {args.length} (groups of {args.group_size}), interleaved")
    for name, seconds in times.items():
        print(f"{name:<22} ms: {describe([1e3 * s for s in seconds], '{:.1f}')}")
    for baseline in ("verl grpo", "verl grpo_vectorized"):
        print(f"reflect_grpo / {baseline:<20} {describe(ratios(times, 'reflect_grpo', baseline))}")
    ratio = statistics.median(ratios(times, "reflect_grpo", "verl grpo"))
    print(f"reflect_grpo / grpo = {ratio:.2f} (median; target <= 1.5): {'OK' if ratio <= 1.5 else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
