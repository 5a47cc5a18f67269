"""Rows of a recipe's task, made offline: what ``eval``, ``build-failures`` and ``dry-run`` run without ``--data``.

A recipe names its task in ``verl_reflect.task``; the name picks one of ``TASKS`` and nothing else (a recipe is
trusted, but a typo should be one clear line).
"""

from __future__ import annotations

from collections.abc import Callable

from verl_reflect.commands.errors import UserError
from verl_reflect.data.addition import addition_splits
from verl_reflect.data.countdown import countdown_rows
from verl_reflect.data.function_calling import SAMPLE_XLAM, function_calling_rows, load_xlam
from verl_reflect.data.hidden_word import hidden_word_splits


def _function_calling(count: int, seed: int, split: str) -> list[dict]:
    return function_calling_rows(load_xlam(SAMPLE_XLAM), split=split)[:count]  # the shipped xlam sample


def _hidden_word(count: int, seed: int, split: str) -> list[dict]:
    train, test = hidden_word_splits(count if split == "train" else 1, count if split != "train" else 1, seed=seed)
    return train if split == "train" else test


def _addition(count: int, seed: int, split: str) -> list[dict]:
    train, test = addition_splits(count if split == "train" else 1, count if split != "train" else 1, seed=seed)
    return train if split == "train" else test


TASKS: dict[str, Callable[[int, int, str], list[dict]]] = {
    "addition": _addition,
    "countdown": lambda count, seed, split: countdown_rows(count, seed=seed, split=split),
    "function_calling": _function_calling,
    "hidden_word": lambda count, seed, split: _hidden_word(count, seed, split),
}


def task_rows(task: object, count: int, *, seed: int = 0, split: str = "test") -> list[dict]:
    """``count`` rows of ``task`` (a recipe's ``verl_reflect.task``); a UserError for a task with no generator."""
    if task not in TASKS:
        raise UserError(
            f"the recipe's verl_reflect.task is {task!r}, not one of {', '.join(TASKS)}: set it, or pass --data"
        )
    return TASKS[task](count, seed, split)
