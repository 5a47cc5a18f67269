"""Is it learning? The demo's numbers: accuracies with 95% intervals, the base-vs-trained end table, the curve.

``accuracy after a failed attempt`` is the number the demo reports for the method: on held-out prompts the base
model failed, each model reflects on the same stored failed attempt and retries; the share of right retries. It is
measured on a held-out failure set rather than on each model's own failures because reflection-only training also
lifts first tries (attempt and reflection share one behaviour): the trained model fails almost no first try, so
its own failures would be too few to measure.
"""

from __future__ import annotations

import math
from pathlib import Path

from verl_reflect.commands.files import atomic_path

Z95 = 1.959963984540054
CURVE_NAME = "learning_curve.png"
SUMMARY_NAME = "learning.json"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (``(0, 1)`` for n = 0).

    >>> [round(x, 3) for x in wilson(8, 10)]
    [0.49, 0.943]
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p2 - p1 for independent proportions (Newcombe's hybrid score method, from Wilson intervals).

    Newcombe (1998)'s example, 56/70 against 48/80:

    >>> [round(x, 4) for x in newcombe(48, 80, 56, 70)]
    [0.0524, 0.3339]
    """
    p1, p2 = k1 / n1 if n1 else 0.0, k2 / n2 if n2 else 0.0
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def counts(first_tries: list[dict], after_failure: list[dict]) -> dict[str, tuple[int, int]]:
    """(right, out of) per measure for one model: ``first_tries``, its ``eval`` records on the held-out prompts
    (generated first attempts); ``after_failure``, its records on the held-out failure set, where every model
    reflects on the same stored failed attempt (``attempt: replay``) and the retry is judged."""
    return {
        "first_try": (sum(r["first_try_correct"] for r in first_tries), len(first_tries)),
        "after_failed_attempt": (sum(r["final_correct"] for r in after_failure), len(after_failure)),
    }


MEASURES = {"first_try": "first-try accuracy", "after_failed_attempt": "accuracy after a failed attempt"}


def end_table(base: dict[str, tuple[int, int]], trained: dict[str, tuple[int, int]], labels: tuple[str, str]) -> str:
    """Base vs trained (``counts``): each measure as % [95% Wilson interval] n=prompts, and the gain in points with
    its 95% Newcombe interval."""

    def cell(k: int, n: int) -> str:
        lo, hi = wilson(k, n)
        return f"{100 * k / max(n, 1):5.1f}% [{100 * lo:3.0f},{100 * hi:4.0f}] n={n:<3}"

    lines = [f"{'':34}{labels[0]:>26}  {labels[1]:>30}{'gain (points)':>22}"]
    for key, title in MEASURES.items():
        (k1, n1), (k2, n2) = base[key], trained[key]
        lo, hi = newcombe(k1, n1, k2, n2)
        interval = f"{100 * (k2 / max(n2, 1) - k1 / max(n1, 1)):+.1f} [{100 * lo:+.0f},{100 * hi:+.0f}]"
        lines.append(f"{title:34}{cell(k1, n1):>26}  {cell(k2, n2):>30}{interval:>22}")
    return "\n".join(lines)


def gain(base: dict[str, tuple[int, int]], trained: dict[str, tuple[int, int]], key: str = "after_failed_attempt"):
    """Trained minus base on ``key``: (gain, 95% low, 95% high), as fractions."""
    (k1, n1), (k2, n2) = base[key], trained[key]
    return (k2 / max(n2, 1) - k1 / max(n1, 1), *newcombe(k1, n1, k2, n2))


def block_means(steps: list[dict], key: str, block: int) -> list[float]:
    """``key``'s mean over consecutive blocks of ``block`` steps (one step's 32 rows vary by about +-8 points)."""
    values = [step[key] for step in steps]
    return [sum(values[i : i + block]) / len(values[i : i + block]) for i in range(0, len(values), block)]


def plot_curve(runs: dict[str, list[dict]], path: Path, data_source: str = "hidden_word") -> None:
    """Per-step accuracy of each run's training rows (after a failed attempt: the rows replay a stored failure), and
    verl's validation first-try and after-reflection accuracy where it ran; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 3.4), dpi=90)
    for (label, steps), color in zip(runs.items(), ("tab:blue", "tab:gray", "tab:orange", "tab:green")):
        xs = [step["training/global_step"] for step in steps]
        ax.plot(
            xs,
            [100 * step["reflect/final_correct"] for step in steps],
            color=color,
            label=f"{label}: training rows, after a failed attempt",
        )
        for stat, marker in (("final_correct", "o"), ("first_try_correct", "^")):
            key = f"val-aux/{data_source}/{stat}/mean@1"
            val = [(0 if "val_before_train" in s else s["training/global_step"], s[key]) for s in steps if key in s]
            if val:
                name = "after reflection (all prompts)" if stat == "final_correct" else "first try"
                ax.plot(
                    *zip(*[(x, 100 * y) for x, y in val]), marker, color=color, ls=":", label=f"{label}: val {name}"
                )
    ax.set_xlabel("trainer step")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, off the lines
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
