"""What the reflections say: ``verl-reflect reflections`` over ``eval``'s trajectories JSONL(s).

    verl-reflect reflections TRAJECTORIES.jsonl [MORE.jsonl ...] [--examples 5] [--top 8] [--plot reflections.png]

One column per model: ``eval --compare-model`` writes both models to one file (base vs trained); two files (each
``eval``'s ``trajectories.jsonl``, or the demo's ``after_failure.jsonl``) are read as one. A model label that
appears in two files is told apart by its file name. Per model, over every reflection of every trajectory:

- **length**: tokens (the trajectory's token ``layout``) and words (whitespace-split), mean with a 95% interval
  (normal, over reflections) and quantiles;
- **openings** (the first 3 words) and **phrases** (2- and 3-word n-grams, counted once per reflection) by share of
  reflections, words lower-cased with punctuation stripped;
- **restates the attempt**: the answer of the turn the reflection reflects on (the text inside the last
  ``<answer> </answer>`` tags, else the whole turn) occurs in the reflection as whole words, case-insensitive.
  Also the mean share of the reflection's words that occur in that turn (word copy share);
- **retry follows**: the answer of the retry after the reflection (same extraction) occurs in the reflection as whole
  words, case-insensitive: the reflection named what the retry then did (in the hidden-word task, the reflection names
  a word and the retry answers it). Counted over reflections with a retry; accuracy of the retry when it follows and
  when it does not, beside it;
- **side by side**: the first ``--examples`` rows where every model reflected, with the attempt(s) and each model's
  reflection and retry. On the demo's ``after_failure.jsonl`` every model reflects on the same stored failure.

Shares come with 95% Wilson intervals. ``--plot`` draws the token-length histograms and the shares, per model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from verl_reflect.commands.errors import ArgumentParser, UserError, positive_int, run_command
from verl_reflect.commands.files import atomic_path
from verl_reflect.commands.learning import Z95, wilson

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
WORD = re.compile(r"[\w'-]+")  # a word: letters, digits, apostrophes and hyphens; everything else separates


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``, punctuation dropped."""
    return WORD.findall(text.lower())


def answer_of(text: str) -> str:
    """The answer a turn gives: inside its last ``<answer> </answer>`` tags, else the whole turn, stripped."""
    tagged = ANSWER.findall(text)
    return (tagged[-1] if tagged else text).strip()


def contains_words(text: str, phrase: str) -> bool:
    """Whether ``phrase``'s words occur in ``text`` as a contiguous run of whole words (case and punctuation aside).
    An empty phrase occurs nowhere."""
    needle, haystack = words(phrase), words(text)
    return bool(needle) and any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def reflections(record: dict) -> list[dict]:
    """Each reflection of one trajectory: its text, token count, the turn it reflects on and the retry after it."""
    turns = record["turns"]
    reflection_tokens = [n for kind, n, _ in record.get("layout", []) if kind == "reflection"]
    found = []
    for i, turn in enumerate(turns):
        if turn["kind"] != "reflection":
            continue
        before = next((t for t in reversed(turns[:i]) if t["kind"] in ("attempt", "retry")), None)
        after = next((t for t in turns[i + 1 :] if t["kind"] == "retry"), None)
        k = len(found)
        found.append(
            {
                "index": record["index"],
                "text": turn["text"],
                "tokens": reflection_tokens[k] if k < len(reflection_tokens) else None,
                "words": len(turn["text"].split()),
                "attempt": before["text"] if before else "",
                "retry": after["text"] if after else None,
                "retry_correct": bool(after["correct"]) if after else None,
            }
        )
    return found


def load(paths: list[Path]) -> dict[str, list[dict]]:
    """Trajectory records per model label, from every file in order; a label in two files gets its file's name."""
    per_file: list[tuple[Path, dict[str, list[dict]]]] = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such file (expected the trajectories.jsonl that `verl-reflect eval` writes)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text file (expected eval's trajectories JSONL)") from None
        by_model: dict[str, list[dict]] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    continue  # a torn last line: eval was killed mid-write (trajectories.read_jsonl skips it too)
                raise UserError(f"{path}:{number}: not JSON (expected eval's trajectories JSONL)") from None
            if not (isinstance(record, dict) and {"model", "index", "turns"} <= record.keys()):
                raise UserError(f"{path}:{number}: not a trajectory record of eval (needs model, index and turns)")
            by_model.setdefault(str(record["model"]), []).append(record)
        if not by_model:
            raise UserError(f"{path}: holds no trajectories")
        per_file.append((path, by_model))
    label_count = Counter(label for _, by_model in per_file for label in by_model)
    merged: dict[str, list[dict]] = {}
    for path, by_model in per_file:
        for label, records in by_model.items():
            merged[f"{path.name}:{label}" if label_count[label] > 1 else label] = records
    return merged


def share(k: int, n: int) -> str:
    if not n:
        return "-"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] n={n}"


def mean_interval(values: pd.Series) -> str:
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.mean():.1f}"
    half = Z95 * values.sem()
    return f"{values.mean():.1f} [{values.mean() - half:.1f}, {values.mean() + half:.1f}]"


def summarize(records: list[dict]) -> dict:
    """The numbers of one model (``frame``: one row per reflection)."""
    frame = pd.DataFrame(
        [r for record in records for r in reflections(record)],
        columns=["index", "text", "tokens", "words", "attempt", "retry", "retry_correct"],
    )
    frame["restates"] = [contains_words(text, answer_of(att)) for text, att in zip(frame["text"], frame["attempt"])]
    frame["copy_share"] = [
        sum(w in set(words(att)) for w in words(text)) / len(words(text)) if words(text) else 0.0
        for text, att in zip(frame["text"], frame["attempt"])
    ]
    with_retry = frame[frame["retry"].notna()]
    follows = pd.Series(
        [contains_words(text, answer_of(retry)) for text, retry in zip(with_retry["text"], with_retry["retry"])],
        index=with_retry.index,
        dtype=bool,
    )
    return {
        "trajectories": len(records),
        "frame": frame,
        "restated": int(frame["restates"].sum()),
        "with_retry": len(with_retry),
        "followed": int(follows.sum()),
        "correct_when_followed": (int(with_retry["retry_correct"][follows].sum()), int(follows.sum())),
        "correct_when_not": (int(with_retry["retry_correct"][~follows].sum()), int((~follows).sum())),
    }


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def quantiles(values: pd.Series) -> str:
    return " ".join(f"{q:g}" for q in values.quantile(QUANTILES)) if len(values) else "-"


def numbers_table(summaries: dict[str, dict]) -> str:
    rows: dict[str, dict[str, str]] = {}
    for label, s in summaries.items():
        frame = s["frame"]
        tokens = frame["tokens"].dropna().astype(float)
        column = {
            "trajectories": str(s["trajectories"]),
            "reflections": str(len(frame)),
            "tokens: mean [95%]": mean_interval(tokens),
            "tokens: p10 p25 p50 p75 p90": quantiles(tokens),
            "words: mean [95%]": mean_interval(frame["words"].astype(float)),
            "words: p10 p25 p50 p75 p90": quantiles(frame["words"].astype(float)),
            "restates the attempt": share(s["restated"], len(frame)),
            "word copy share (mean)": f"{frame['copy_share'].mean():.2f}" if len(frame) else "-",
            "retry follows the reflection": share(s["followed"], s["with_retry"]),
            "retry correct | follows": share(*s["correct_when_followed"]),
            "retry correct | does not follow": share(*s["correct_when_not"]),
        }
        rows[label] = column
    return pd.DataFrame(rows).to_string(justify="left")


def top_table(summaries: dict[str, dict], extract, top: int) -> str:
    """The ``top`` most frequent items per model (``extract``: a reflection's text -> its items, each counted once
    per reflection), as ``share  item`` columns side by side."""
    columns = {}
    for label, s in summaries.items():
        texts = s["frame"]["text"]
        counts = Counter(item for text in texts for item in set(extract(text)))
        columns[label] = [f"{100 * n / len(texts):5.1f}%  {item}" for item, n in counts.most_common(top)]
    height = max((len(c) for c in columns.values()), default=0)
    if not height:
        return "(none: no reflection is long enough)"
    table = pd.DataFrame({k: v + [""] * (height - len(v)) for k, v in columns.items()})
    widths = {k: max([len(k), *map(len, v)]) for k, v in columns.items()}
    # left-aligned cells: pandas right-aligns strings, which scatters the phrases
    formatters = {k: f"{{:<{w + 2}}}".format for k, w in widths.items()}
    return table.to_string(index=False, justify="left", formatters=formatters)


def opening(text: str) -> list[str]:
    return [" ".join(words(text)[:3])] if words(text) else []


def ngrams(text: str, sizes: tuple[int, ...] = (2, 3)) -> list[str]:
    tokens = words(text)
    return [" ".join(tokens[i : i + n]) for n in sizes for i in range(len(tokens) - n + 1)]


def examples(summaries: dict[str, dict], limit: int) -> str:
    """The first ``limit`` rows (by index) where every model reflected: attempt, then each model's first reflection
    and retry."""
    firsts = {label: s["frame"].drop_duplicates("index").set_index("index") for label, s in summaries.items()}
    shared = sorted(set.intersection(*(set(f.index) for f in firsts.values()))) if firsts else []
    lines = []
    for index in shared[:limit]:
        lines.append(f"row {index}")
        attempts = {label: f.loc[index, "attempt"] for label, f in firsts.items()}
        if len(set(attempts.values())) == 1:
            lines.append(f"  attempt: {json.dumps(next(iter(attempts.values())))}")
        for label, f in firsts.items():
            row = f.loc[index]
            if len(set(attempts.values())) > 1:
                lines.append(f"  {label} attempt: {json.dumps(row['attempt'])}")
            verdict = "" if row["retry"] is None else (" (correct)" if row["retry_correct"] else " (wrong)")
            lines.append(f"  {label} reflection: {json.dumps(row['text'])}")
            lines.append(f"  {label} retry: {json.dumps(row['retry'])}{verdict}")
    return "\n".join(lines) if lines else "(no row where every model reflected)"


def plot(summaries: dict[str, dict], path: Path) -> None:
    """Left: histograms of reflection length in tokens, one outline per model, one bin per token count. Right: the
    shares (restates the attempt, retry follows, retry correct when it follows) per model, with 95% Wilson bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, (lengths_ax, shares_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    lengths = {label: s["frame"]["tokens"].dropna().astype(float) for label, s in summaries.items()}
    top = max([int(v.max()) for v in lengths.values() if len(v)] + [1])
    for label, values in lengths.items():
        lengths_ax.hist(values, bins=np.arange(0, top + 2) - 0.5, histtype="step", linewidth=2, label=label)
    lengths_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lengths_ax.set(xlabel="reflection length (tokens)", ylabel="reflections", title="reflection length")
    lengths_ax.legend(fontsize=8)
    shares = {
        "restates attempt": lambda s: (s["restated"], len(s["frame"])),
        "retry follows": lambda s: (s["followed"], s["with_retry"]),
        "retry correct | follows": lambda s: s["correct_when_followed"],
    }
    width = 0.8 / len(summaries)
    for m, (label, s) in enumerate(summaries.items()):
        counts = [count(s) for count in shares.values()]
        values = [100 * k / n if n else 0.0 for k, n in counts]
        bounds = [wilson(k, n) if n else (0.0, 0.0) for k, n in counts]
        # clipped at 0: at k = n the interval's upper end can round a hair below the share
        errors = [
            [max(0.0, v - 100 * lo) for v, (lo, _) in zip(values, bounds)],
            [max(0.0, 100 * hi - v) for v, (_, hi) in zip(values, bounds)],
        ]
        xs = [i + (m - (len(summaries) - 1) / 2) * width for i in range(len(shares))]
        shares_ax.bar(xs, values, width=width, yerr=errors, capsize=3, label=label)
    shares_ax.set_xticks(range(len(shares)), list(shares), fontsize=8)
    shares_ax.set(ylabel="% [95% Wilson]", ylim=(0, 105), title="what the reflection does")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="verl-reflect reflections", description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+", type=Path, help="eval's trajectories JSONL (one or two files)")
    parser.add_argument("--top", type=positive_int, default=8, help="openings and phrases shown per model")
    parser.add_argument("--examples", type=positive_int, default=5, help="side-by-side rows shown")
    parser.add_argument("--plot", type=Path, help="write reflection-length histograms here (PNG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summaries = {label: summarize(records) for label, records in load(args.jsonl).items()}
    print(numbers_table(summaries))
    print(f"\nmost frequent openings (first 3 words), share of reflections\n{top_table(summaries, opening, args.top)}")
    print(f"\nmost frequent phrases (2-3 words), share of reflections\n{top_table(summaries, ngrams, args.top)}")
    print(f"\nside by side\n{examples(summaries, args.examples)}")
    if args.plot:
        plot(summaries, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
