"""Binary reward functions, one module per task, dispatched by ``data_source``.

verl recipes point here::

    reward.custom_reward_function.path: pkg://reward_fns
    reward.custom_reward_function.name: compute_score

``compute_score`` imports ``reward_fns.<data_source>`` and calls its ``compute_score``,
so adding a task means adding one module; there is no registry to edit. Module names
starting with ``_`` are helpers, never tasks.

A dotted ``data_source`` (``my_lab.tasks.sudoku``) names a task module outside this package, but only
under a package the recipe allows (``reward.custom_reward_function.reward_kwargs.task_packages``, which
verl passes here as ``task_packages``) or one that registers through the ``verl_reflect.tasks`` entry-point
group. A dataset is untrusted input: no ``data_source`` string decides what gets imported, and any other
name is the "no reward function" error, raised before any import.

Every task scores 1.0 (correct) or 0.0 (anything else). Ground truths are trusted data:
a malformed one raises ``ValueError``. Model output is not trusted: any string scores
without raising.

This package is pure standard library, so reward workers never import torch or verl.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import inspect
import keyword
import pkgutil
import reprlib
from collections.abc import Iterable
from typing import Any, Callable

__all__ = [
    "TASK_PACKAGES_KEY",
    "available_data_sources",
    "compute_score",
    "extract_answer",
    "get_compute_score",
    "preview",
]

_OPEN, _CLOSE = "<answer>", "</answer>"


def extract_answer(text: str) -> str | None:
    """Return the content of the last complete ``<answer>...</answer>`` block, or None.

    The last closing tag wins, paired with the nearest opening tag before it, so an
    answer revised after reflection replaces the earlier one and an unclosed
    (truncated) trailing block is ignored. ``str.rfind`` keeps this linear on hostile
    input such as megabytes of ``<answer><answer>...``.

    >>> extract_answer("<answer>1 + 2</answer> wait, <answer> 2 + 1 </answer>")
    ' 2 + 1 '
    >>> extract_answer("<answer>7</answer> <answer>8") # the trailing block is unclosed
    '7'
    >>> extract_answer("no tags") is None
    True
    """
    end = text.rfind(_CLOSE)
    if end < 0:
        return None
    start = text.rfind(_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(_OPEN) : end]


class _Preview(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than sys.get_int_max_str_digits() allows
            return f"<{x.bit_length()}-bit int>"


_PREVIEW = _Preview()
_PREVIEW.maxlevel, _PREVIEW.maxlist, _PREVIEW.maxdict, _PREVIEW.maxstring, _PREVIEW.maxother = 4, 8, 8, 60, 60


def preview(value: object, limit: int = 200) -> str:
    """A short repr of ``value`` for an error message about a malformed ground truth.

    Bounded in depth, length and time, and never raises: a plain ``repr`` recurses without
    limit on deep nesting and raises on huge ints, so the error about a bad ground truth
    would itself fail.

    >>> preview([[[[[[1]]]]]])
    '[[[[[...]]]]]'
    >>> preview(10**5000)
    '<16610-bit int>'
    """
    try:
        text = _PREVIEW.repr(value)
    except Exception:  # an object's own __repr__ may do anything; the message must still be built
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def available_data_sources() -> list[str]:
    """Names of the task modules in this package.

    >>> {"countdown", "function_calling"} <= set(available_data_sources())
    True
    """
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if _is_task_name(m.name))


def _is_task_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def _no_reward_fn(data_source: object) -> ValueError:
    is_name = isinstance(data_source, str) and all(_is_task_name(part) for part in data_source.split("."))
    where, allow = "reward_fns/<module name>.py", ""
    if is_name and "." in data_source:
        where = f"{data_source.replace('.', '/')}.py"
        allow = f" under an allowed package ({TASK_PACKAGES_KEY}=[{data_source.split('.')[0]}])"
    elif is_name:
        where = f"reward_fns/{data_source}.py"
    return ValueError(
        f"no reward function for data_source {data_source!r}: add {where} with compute_score(...){allow}"
        f" (available: {', '.join(available_data_sources()) or 'none'})"
    )


TASK_PACKAGES_KEY = "reward.custom_reward_function.reward_kwargs.task_packages"
ENTRY_POINT_GROUP = "verl_reflect.tasks"


@functools.lru_cache(maxsize=1)
def _registered_task_packages() -> frozenset[str]:
    """Packages installed with a ``verl_reflect.tasks`` entry point (``name = "package"``)."""
    return frozenset(ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _is_allowed(data_source: str, task_packages: Iterable[str]) -> bool:
    """A dotted name lies under an allowed package: ``lab.tasks.x`` under ``lab`` or ``lab.tasks``."""
    allowed = {*task_packages, *_registered_task_packages()}
    return any(data_source.startswith(f"{package}.") for package in allowed)


def get_compute_score(data_source: str, task_packages: Iterable[str] = ()) -> Callable[..., float]:
    """Return ``reward_fns.<data_source>.compute_score``; raise ValueError if there is none.

    A dotted ``data_source`` names a task module outside this package (a lab's private task, a test
    fixture): ``my_tasks.sudoku`` is ``my_tasks/sudoku.py``'s ``compute_score``, importable on ``PYTHONPATH``,
    if ``my_tasks`` is one of ``task_packages`` (or registered as a ``verl_reflect.tasks`` entry point).
    Nothing is imported for a name outside them.

    >>> get_compute_score("countdown").__module__
    'reward_fns.countdown'
    >>> get_compute_score("idlelib.idle")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: no reward function for data_source 'idlelib.idle': add idlelib/idle.py with compute_score(...) under ...
    """
    if not isinstance(data_source, str) or not all(_is_task_name(part) for part in data_source.split(".")):
        raise _no_reward_fn(data_source)
    if "." in data_source and not _is_allowed(data_source, task_packages):
        raise _no_reward_fn(data_source)
    return _load(str(data_source))


@functools.lru_cache(maxsize=None)
def _load(data_source: str) -> Callable[..., float]:
    module_name = data_source if "." in data_source else f"{__name__}.{data_source}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only a missing task module means "no reward function"; a task module whose own
        # import fails is a bug that must surface as itself.
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise
        raise _no_reward_fn(data_source) from None
    fn = getattr(module, "compute_score", None)
    if not callable(fn):
        raise _no_reward_fn(data_source)
    return fn


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    task_packages: Iterable[str] = (),
    **kwargs: Any,
) -> float | dict[str, Any]:
    """Score ``solution_str`` with the task module named by ``data_source`` (``task_packages``: see
    ``get_compute_score``; verl passes the recipe's ``reward_kwargs`` here). The task's result is returned as is:
    a number, or a dict with ``"score"`` whose other keys verl reports as ``reward_extra_info``.

    This function is plain, so verl's reward managers run it in an executor thread; a task whose ``compute_score``
    is ``async def`` is run to completion there, in an event loop of that thread's own.

    >>> compute_score("countdown", "<answer>(1 + 2) * 3</answer>", '{"target": 9, "numbers": [1, 2, 3]}')
    1.0
    """
    result = get_compute_score(data_source, task_packages)(
        data_source=data_source, solution_str=solution_str, ground_truth=ground_truth, extra_info=extra_info, **kwargs
    )
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable):
    return await awaitable  # asyncio.run takes a coroutine; an async task may return any awaitable
