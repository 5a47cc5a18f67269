"""Timing two or more sides on a noisy machine: run them interleaved, compare within each round.

Load from other jobs comes and goes over seconds; timing side A for a minute and then side B for a minute puts
that drift into the ratio. Here every round runs each side once, back to back (the order rotates each round so
neither side always goes first), and the ratio is taken within the round. The median of those per-round ratios,
with their spread, is what the benchmarks report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    sides: dict[str, Callable[[], object]], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds (by ``clock``) of each side in each of ``rounds`` rounds; one warm-up call per side first."""
    for run in sides.values():
        run()
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            sides[name]()
            times[name].append(clock() - start)
    return times


def ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """Per-round ratios ``numerator / denominator``."""
    return [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]


def describe(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (quartiles q1-q3, range min-max, n rounds)``."""
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    parts = (fmt.format(statistics.median(values)), fmt.format(q1), fmt.format(q3))
    return (
        f"{parts[0]} (quartiles {parts[1]}-{parts[2]}, range {fmt.format(min(values))}-{fmt.format(max(values))}, "
        f"{len(values)} rounds)"
    )
