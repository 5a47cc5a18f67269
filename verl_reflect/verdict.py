"""One verdict: a task verifier's judgement of one attempt, under verl's reward-function contract.

A verifier is written as verl's reward managers (``experimental/reward_loop/reward_manager/naive.py``,
``limited.py``) call it: ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``, a plain or an
``async def`` function, returning a number (float, int, bool) or a dict with ``"score"``, whose other keys are
reported as ``reward_extra_info`` (per data source in verl's validation metrics). Model output is hostile, and so
may a user's verifier be: whatever it does costs at most one verdict, never the trajectory or the step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import math
import numbers
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))
# A handler of its own, as verl's configure_verl_logging gives the "verl" logger: a process that loads verl's vLLM
# replica class imports vLLM's entrypoints, whose model_hosting_container_standards raises the root logger and its
# handlers to ERROR, and a broken verifier's warning would vanish there.
_handler = logging.StreamHandler(stream=sys.stderr)
_handler.setFormatter(logging.Formatter("%(levelname)s:%(asctime)s:%(name)s: %(message)s"))
logger.handlers = [_handler]
logger.propagate = False

ERROR, TIMEOUT = "error", "timeout"

# (data_source, failure) pairs already logged in this process: a broken verifier fails on every row, and one line
# with its exception says what the per-step counters cannot.
_LOGGED: set[tuple[str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``solved``: the attempt counts as correct. ``score``: the verifier's score (0.0 when it failed).
    ``extra_info``: the other keys of a dict result ({} otherwise). ``failure``: None, ``"error"`` or ``"timeout"``."""

    solved: bool
    score: float
    extra_info: dict[str, Any]
    failure: Optional[str] = None


@functools.lru_cache(maxsize=None)
def verdict_executor(threads: int) -> ThreadPoolExecutor:
    """The threads plain verifiers run in, one pool per size per process, shared by every trajectory.

    Not the event loop's default executor: that one has min(32, cpus + 4) threads (6 on 2 cores), which 32
    trajectories' verdicts of 0.2 s would queue on, and which verl's token merging and decoding use too.
    """
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verdict")


def _score_of(result: Any) -> tuple[float, dict[str, Any]]:
    """``(score, other keys)`` of a verifier's result; ValueError on anything that is not a finite score."""
    extra_info: dict[str, Any] = {}
    score = result
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"returned a dict without 'score' (keys: {sorted(map(str, result))[:8]})")
        score = result["score"]
        extra_info = {key: value for key, value in result.items() if key != "score"}
    # numbers.Real covers bool, int, float and numpy's numbers; numpy's bool is registered with no ABC.
    if not isinstance(score, (numbers.Real, np.bool_)) or not math.isfinite(float(score)):
        raise ValueError(f"returned {type(score).__name__} {score!r:.60}, not a finite number")
    return float(score), extra_info


async def verdict(
    compute_score: Callable[..., Any],
    *,
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Optional[dict],
    solved_threshold: float,
    timeout: float,
    threads: int,
    where: str = "a row",
) -> Verdict:
    """Judge ``solution_str`` with ``compute_score``, off the event loop and within ``timeout`` seconds.

        result = await compute_score(...)                 if it is an ``async def``
                 compute_score(...) in a verdict thread   otherwise (``verdict_executor(threads)``)
        score  = result["score"] if result is a dict else result
        solved = score >= solved_threshold

    A plain function that hands back an awaitable (a wrapper of an async verifier) has it awaited, within the same
    budget. With ``solved_threshold`` 1.0 (the loops' default) a binary verifier is solved iff it says 1.0, and a
    partial-credit one iff it gives full credit.

    A verifier that raises or returns no score (None, a string, NaN or inf, a dict without ``"score"``) gives
    ``failure="error"``; one still running after ``timeout`` seconds, counted from the call and so including any
    wait for a free thread, gives ``failure="timeout"``. Either way the verdict is score 0.0, not solved, and the
    first failure of each kind per data source in this process is logged with its exception and ``where`` (the
    row). The timeout cannot stop a plain function: it keeps running in its thread, holding it, until it returns
    (as in verl's ``limited`` reward manager); nothing waits for it. A hung thread also holds the process at exit,
    as any executor thread does; Ray ends its workers regardless. An ``async def`` verifier is cancelled, but one
    that blocks the event loop (``time.sleep`` inside ``async def``) blocks it for every trajectory: that is a bug
    in the verifier no timeout can catch.
    """
    loop = asyncio.get_running_loop()
    kwargs = dict(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth, extra_info=extra_info)

    async def call() -> Any:
        if inspect.iscoroutinefunction(compute_score):
            result = await compute_score(**kwargs)
        else:
            result = await loop.run_in_executor(verdict_executor(threads), functools.partial(compute_score, **kwargs))
        if inspect.isawaitable(result):
            result = await result
        return _score_of(result)

    task = asyncio.ensure_future(call())
    # Read the outcome of a task left behind at a timeout, so that asyncio does not report it as never retrieved.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        # asyncio.wait, not wait_for: on timeout it returns at once, where wait_for would wait for the cancelled
        # call to finish, which an async verifier that ignores cancellation never does.
        finished, _ = await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            task.cancel()  # a queued plain call never starts; a running one is left to its thread
    if not finished:
        _log_once(data_source, TIMEOUT, f"still running after {timeout:g} s on {where}", None)
        return Verdict(solved=False, score=0.0, extra_info={}, failure=TIMEOUT)
    try:
        score, result_extra_info = task.result()
    except Exception as error:
        _log_once(data_source, ERROR, f"failed on {where}: {error!r}", error)
        return Verdict(solved=False, score=0.0, extra_info={}, failure=ERROR)
    return Verdict(solved=score >= solved_threshold, score=score, extra_info=result_extra_info)


def _log_once(data_source: str, failure: str, what: str, error: Optional[BaseException]) -> None:
    if (data_source, failure) in _LOGGED:
        return
    _LOGGED.add((data_source, failure))
    logger.warning(
        "verifier for data_source %r %s; that verdict counts as not solved (counted in verifier_%ss; further %ss "
        "of this data source are counted, not logged)",
        data_source,
        what,
        failure,
        failure,
        exc_info=error,
    )
