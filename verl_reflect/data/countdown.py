"""Countdown: given 3-4 numbers and a target, write an equation that uses each number once."""

from __future__ import annotations

import json
import random

from tqdm import tqdm

from verl_reflect.commands.errors import UserError
from verl_reflect.data.rows import check_positive, make_row

# The TinyZero Countdown prompt (Pan et al., 2025), which the paper's Countdown runs follow,
# as a system + user chat instead of a raw completion prefix.
COUNTDOWN_SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process in your mind "
    "and then provide the user with the answer."
)
COUNTDOWN_USER = (
    "Using the numbers {numbers}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, / and unary minus) and parentheses, "
    "and each number must be used exactly once. "
    "Show your work in <think> </think> tags. "
    "And return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
COUNTDOWN_MAX_TARGET = 1000
# Give up once this many draws in a row produced nothing new: the request asks for more distinct
# problems than the settings allow (or than are left after excluding the test set).
COUNTDOWN_MAX_STALL = 20_000


def _countdown_attempt(
    rng: random.Random, count: int, *, max_value: int, max_target: int
) -> tuple[list[int], int, str] | None:
    """One random try at a problem: (numbers, target, solution expression), or None if it broke a rule."""
    numbers = [rng.randint(1, max_value) for _ in range(count)]
    # Combine two random pool entries at a time: this reaches every expression tree shape,
    # including (a op b) op (c op d), and uses every number exactly once.
    pool = [(n, str(n)) for n in numbers]
    while len(pool) > 1:
        i, j = sorted(rng.sample(range(len(pool)), 2))
        (a, ea), (b, eb) = pool.pop(j), pool.pop(i)
        op = rng.choice("+-*/")
        if op in "-/" and a < b:  # larger operand first, so - and / can stay positive
            (a, ea), (b, eb) = (b, eb), (a, ea)
        if op == "+":
            value = a + b
        elif op == "*":
            value = a * b
        elif op == "-":
            value = a - b
        else:
            value = a // b if a % b == 0 else 0
        if value <= 0:  # Countdown convention: every intermediate result is a positive integer
            return None
        pool.append((value, f"({ea} {op} {eb})"))
    target, expression = pool[0]
    if target > max_target:
        return None
    return numbers, target, expression[1:-1]


def _problem_key(numbers: list[int], target: int) -> tuple[tuple[int, ...], int]:
    """Two problems are the same if they have the same numbers (in any order) and target."""
    return tuple(sorted(numbers)), target


def countdown_problems(
    rng: random.Random,
    n: int,
    *,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_value: int = 100,
    max_target: int = COUNTDOWN_MAX_TARGET,
    exclude: set | None = None,
    desc: str = "countdown",
) -> list[tuple[list[int], int, str]]:
    """``n`` distinct solvable problems as (numbers, target, expression); the expression is one solution.

    Solvable by construction: the target is the value of a random expression over all the numbers.
    Problems whose key (see ``_problem_key``) is in ``exclude`` are skipped; new keys are added to it.
    """
    check_positive("size", n)
    if not 2 <= min_numbers <= max_numbers or max_value < 1 or max_target < 1:
        raise UserError(
            f"bad countdown settings: need 2 <= min_numbers <= max_numbers, max_value >= 1, max_target >= 1 "
            f"(got {min_numbers}, {max_numbers}, {max_value}, {max_target})"
        )
    exclude = set() if exclude is None else exclude
    problems, stall, count = [], 0, None
    with tqdm(total=n, desc=desc, unit="problem", disable=None) as bar:
        while len(problems) < n:
            # Pick how many numbers first and retry with that count: 4-number tries fail the target
            # range more often, and redrawing the count would make them rarer than 3-number ones.
            count = count or rng.randint(min_numbers, max_numbers)
            problem = _countdown_attempt(rng, count, max_value=max_value, max_target=max_target)
            key = None if problem is None else _problem_key(problem[0], problem[1])
            if key is None or key in exclude:
                if key is not None:  # a duplicate: redraw the count too, in case that size is used up
                    count = None
                stall += 1
                if stall >= COUNTDOWN_MAX_STALL:
                    raise UserError(
                        f"could only make {len(problems)} of {n} distinct countdown problems "
                        f"with these settings; ask for fewer"
                    )
                continue
            stall, count = 0, None
            exclude.add(key)
            problems.append(problem)
            bar.update(1)
    return problems


def _countdown_row(numbers: list[int], target: int, *, index: int, split: str) -> dict:
    user = COUNTDOWN_USER.format(numbers=numbers, target=target)
    ground_truth = json.dumps({"target": target, "numbers": numbers})
    return make_row("countdown", COUNTDOWN_SYSTEM, user, ground_truth, index=index, split=split)


def countdown_rows(
    n: int,
    *,
    seed: int,
    split: str,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_value: int = 100,
    max_target: int = COUNTDOWN_MAX_TARGET,
) -> list[dict]:
    """``n`` distinct Countdown rows (3-4 numbers in 1..100, like Countdown-Tasks-3to4), seeded."""
    problems = countdown_problems(
        random.Random(seed),
        n,
        min_numbers=min_numbers,
        max_numbers=max_numbers,
        max_value=max_value,
        max_target=max_target,
        desc=f"countdown {split}",
    )
    return [_countdown_row(nums, target, index=i, split=split) for i, (nums, target, _) in enumerate(problems)]


def countdown_splits(train_size: int, test_size: int, *, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, test) rows: no problem (numbers as a multiset, target) is in both.

    The test set is drawn first, so it equals ``countdown_rows(test_size, seed=seed, split="test")``
    and does not change with ``train_size``: evaluations stay comparable across training runs.
    """
    check_positive("train size", train_size)
    check_positive("test size", test_size)
    rng, seen = random.Random(seed), set()
    test = countdown_problems(rng, test_size, exclude=seen, desc="countdown test")
    train = countdown_problems(rng, train_size, exclude=seen, desc="countdown train")
    return (
        [_countdown_row(nums, target, index=i, split="train") for i, (nums, target, _) in enumerate(train)],
        [_countdown_row(nums, target, index=i, split="test") for i, (nums, target, _) in enumerate(test)],
    )
