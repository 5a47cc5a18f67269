"""reflect_grpo vs verl's own grpo estimators on the same batch: wall-time ratio (target: at most 1.5).

python benchmarks/bench_advantage.py [--batch 4096] [--length 2048] [--group-size 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
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


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rewards, reflection_mask, full_mask, index = make_batch(args.batch, args.length, args.group_size)

    rows = [
        ("verl grpo", median_seconds(lambda: compute_grpo_outcome_advantage(rewards, full_mask, index), args.repeats)),
        (
            "verl grpo_vectorized",
            median_seconds(lambda: compute_grpo_vectorized_outcome_advantage(rewards, full_mask, index), args.repeats),
        ),
        (
            "reflect_grpo",
            median_seconds(lambda: compute_reflect_grpo_advantage(rewards, reflection_mask, index), args.repeats),
        ),
    ]
    baseline = rows[0][1]
    print(
        f"advantage estimators on {args.batch} x {args.length} (groups of {args.group_size}), median of {args.repeats}"
    )
    print(f"{'estimator':<22}{'ms':>10}{'ratio vs grpo':>16}")
    for name, seconds in rows:
        print(f"{name:<22}{seconds * 1e3:>10.1f}{seconds / baseline:>16.2f}")
    ratio = rows[-1][1] / baseline
    print(f"reflect_grpo / grpo = {ratio:.2f} (target <= 1.5): {'OK' if ratio <= 1.5 else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
