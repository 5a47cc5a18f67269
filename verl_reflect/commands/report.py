"""The paper's numbers from the trajectories file: the table, the bar chart, and a trajectory's token layout."""

from __future__ import annotations

from pathlib import Path

from verl_reflect.commands.files import atomic_path
from verl_reflect.commands.trajectories import read_jsonl

PNG_NAME = "accuracy.png"


def summarize(records: list[dict]) -> dict[str, float]:
    """The paper's numbers for one model: N, accuracies (fractions), gain, mean reflection length."""
    n = len(records)
    first = sum(r["first_try_correct"] for r in records) / n if n else 0.0
    final = sum(r["final_correct"] for r in records) / n if n else 0.0
    reflected = [r["reflection_tokens"] for r in records if r["num_reflections"] > 0]
    return {
        "n": n,
        "first_try": first,
        "after_reflection": final,
        "gain_points": 100 * (final - first),
        "mean_reflection_tokens": sum(reflected) / len(reflected) if reflected else float("nan"),
        "reflected": len(reflected),
    }


def format_table(summaries: dict[str, dict[str, float]]) -> str:
    """One column per model."""
    rows = [
        ("N", lambda s: f"{s['n']}"),
        ("first-try accuracy", lambda s: f"{100 * s['first_try']:.1f}%"),
        ("accuracy after reflection", lambda s: f"{100 * s['after_reflection']:.1f}%"),
        ("gain (points)", lambda s: f"{s['gain_points']:+.1f}"),
        ("mean reflection length (tokens)", lambda s: f"{s['mean_reflection_tokens']:.1f}" if s["reflected"] else "-"),
    ]
    import pandas as pd

    table = pd.DataFrame(
        {label: [fmt(summary) for _, fmt in rows] for label, summary in summaries.items()},
        index=[name for name, _ in rows],
    )
    # Columns at least 12 wide, two spaces apart: the look the paper-style table has always had.
    width = max(12, *(len(label) for label in summaries))
    return table.to_string(justify="right", col_space=width + 1)


def plot(summaries: dict[str, dict[str, float]], path: Path) -> None:
    """Bar chart: first-try vs after-reflection accuracy, per model; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summaries)
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(labels), 3.5))
    first = [100 * summaries[label]["first_try"] for label in labels]
    after = [100 * summaries[label]["after_reflection"] for label in labels]
    for offset, values, name in ((-0.2, first, "first try"), (0.2, after, "after reflection")):
        bars = ax.bar([x + offset for x in xs], values, width=0.4, label=name)
        ax.bar_label(bars, fmt="%.1f%%")  # a 0% bar is otherwise invisible
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("reflect, retry: accuracy")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def layout_line(layout: list[list]) -> str:
    """``attempt 32 | user 41 | REFLECTION 24 (mask=1) | ...``: which response spans the loss trains on."""
    parts = []
    for kind, n, masked in layout:
        name = "user turn" if kind == "user" else kind
        parts.append(f"{name.upper() if masked else name} {n}" + (f" (mask=1 on {masked})" if masked else ""))
    return " | ".join(parts)


def mask_bar(layout: list[list], width: int = 80) -> str:
    """The response drawn ``width`` characters wide: a=attempt, u=user turn, R=reflection (trained), r=retry."""
    total = max(1, sum(n for _, n, _ in layout))
    chars = {"attempt": "a", "user": "u", "reflection": "R", "retry": "r"}
    bar, covered = "", 0
    for kind, n, _ in layout:
        covered += n
        bar += chars.get(kind, "?") * max(1, round(width * covered / total) - len(bar))  # every span stays visible
    return bar


def report(labels: list[str], jsonl: Path, out_dir: Path) -> dict[str, dict[str, float]]:
    """Print the table for ``labels`` from the whole JSONL and draw the PNG; returns the summaries."""
    records = read_jsonl(jsonl)
    summaries = {label: summarize([r for r in records if r.get("model") == label]) for label in labels}
    print(format_table(summaries))
    plot(summaries, out_dir / PNG_NAME)
    print(f"trajectories: {jsonl}\nchart: {out_dir / PNG_NAME}")
    return summaries
