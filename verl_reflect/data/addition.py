"""Addition rows (``reward_fns/addition.py``): two-digit sums, the real-model task (SmolLM2-135M-Instruct gets some
right on the first try, most not).

There are 90 x 90 = 8,100 ordered pairs of two-digit numbers; no test pair occurs in train (held-out prompts).
"""

from __future__ import annotations

import json
import random

from verl_reflect.data.rows import make_row

ADDITION_SOURCE = "addition"
ADDITION_SYSTEM = "You are a helpful assistant."
ADDITION_USER = "What is {a} + {b}?"
LOW, HIGH = 10, 99  # two-digit operands


def addition_splits(train_size: int, test_size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded train and test rows of distinct operand pairs."""
    if min(train_size, test_size) < 1:  # the command line checks sizes first; this guards library callers
        raise ValueError(f"train_size and test_size must be positive, got {train_size} and {test_size}")
    pairs = (HIGH - LOW + 1) ** 2
    if train_size + test_size > pairs:
        raise ValueError(f"at most {pairs} distinct pairs, asked for {train_size + test_size}")
    rng = random.Random(seed)
    chosen = rng.sample(range(pairs), train_size + test_size)  # distinct pairs, by their index in the grid
    splits = []
    for split, indices in (("train", chosen[:train_size]), ("test", chosen[train_size:])):
        rows = []
        for index, pair in enumerate(indices):
            a, b = LOW + pair // (HIGH - LOW + 1), LOW + pair % (HIGH - LOW + 1)
            rows.append(
                make_row(
                    ADDITION_SOURCE,
                    ADDITION_SYSTEM,
                    ADDITION_USER.format(a=a, b=b),
                    json.dumps({"numbers": [a, b], "answer": a + b}),
                    index=index,
                    split=split,
                )
            )
        splits.append(rows)
    return splits[0], splits[1]
