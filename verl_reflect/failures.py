"""Keep only the prompts a model fails: the paper trains reflection on those alone.

    verl-reflect build-failures --model DIR --data train.parquet --out failures.parquet [--k 4] [--max-success-rate 0]

For each prompt, ``--k`` first attempts are sampled (one turn: the reflect-retry loop with no
reflection, so prompts are rendered and answers scored exactly as in training) and scored by the
task's verifier. Prompts whose success rate is at most ``--max-success-rate`` are written, with the
input's schema, to a parquet ready for the recipes: ``extra_info.index`` becomes 0..n-1 and the
original index is kept as ``extra_info.source_index``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from verl_reflect import data
from verl_reflect.backend import make_backend
from verl_reflect.cli_support import ArgumentParser, UserError, run_command
from verl_reflect.eval import (
    Runner,
    add_run_args,
    apply_agent_loop_config,
    as_completed_limited,
    load_rows,
    quiet_transformers,
    resolve_models,
    sampling_params,
)


def check_filter_args(k: int, max_success_rate: float) -> None:
    if k < 1:
        raise UserError(f"--k must be a positive integer, got {k}")
    if not 0.0 <= max_success_rate <= 1.0:
        raise UserError(f"--max-success-rate must be in [0, 1], got {max_success_rate}")


def success_counts(
    runner: Runner, rows: list[dict], sampling: dict[str, Any], *, k: int, concurrency: int
) -> list[int]:
    """How many of ``k`` sampled first attempts were correct, per row."""
    counts = [0] * len(rows)

    async def one(index: int, row: dict) -> tuple[int, bool]:
        # One turn of the reflect-retry loop: prompt rendering and scoring exactly as in training.
        record = await runner.trajectory(row, sampling, max_reflections=0)
        return index, record["first_try_correct"]

    async def run_all() -> None:
        jobs: list[Callable[[], Awaitable[tuple[int, bool]]]] = [
            lambda i=i, r=r: one(i, r) for i, r in enumerate(rows) for _ in range(k)
        ]
        async for index, correct in as_completed_limited(jobs, concurrency=concurrency, desc=f"{k} attempts/prompt"):
            counts[index] += int(correct)

    asyncio.run(run_all())
    return counts


def keep_failures(rows: list[dict], counts: list[int], *, k: int, max_success_rate: float) -> list[dict]:
    """Rows with ``count / k <= max_success_rate``, re-indexed 0..n-1; the old index goes to ``source_index``."""
    kept = []
    for position, (row, count) in enumerate(zip(rows, counts)):
        if count / k <= max_success_rate:
            extra = dict(row.get("extra_info") or {})
            extra["source_index"] = extra.get("index", position)
            extra["index"] = len(kept)
            kept.append({**row, "extra_info": extra})
    return kept


def build_failures(
    runner: Runner,
    rows: list[dict],
    out: Path,
    sampling: dict[str, Any],
    *,
    k: int,
    max_success_rate: float,
    concurrency: int,
) -> list[dict]:
    """Sample, filter, write ``out`` atomically, print what was kept; returns the kept rows."""
    check_filter_args(k, max_success_rate)
    counts = success_counts(runner, rows, sampling, k=k, concurrency=concurrency)
    kept = keep_failures(rows, counts, k=k, max_success_rate=max_success_rate)
    accuracy = sum(counts) / (k * len(rows))
    print(f"first-try accuracy: {100 * accuracy:.1f}% ({sum(counts)}/{k * len(rows)} attempts)")
    if not kept:
        solved = f"all solved more than {max_success_rate:.0%} of the time"
        raise UserError(f"kept 0 of {len(rows)} prompts ({solved}); nothing written")
    data.write_parquet(kept, out)
    print(f"kept {len(kept)} of {len(rows)} prompts (success rate <= {max_success_rate:.0%} over k={k}); wrote {out}")
    return kept


def build_parser(prog: str = "verl-reflect build-failures") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_run_args(parser, temperature=1.0)
    parser.add_argument("--out", type=Path, required=True, help="the .parquet file to write")
    parser.add_argument("--k", type=int, default=4, help="first attempts sampled per prompt")
    parser.add_argument("--max-success-rate", type=float, default=0.0, help="keep prompts solved at most this often")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix != ".parquet":  # verl's RLHFDataset picks the reader by file extension
        raise UserError(f"--out must end in .parquet, got {args.out}")
    check_filter_args(args.k, args.max_success_rate)
    apply_agent_loop_config(args)
    rows = load_rows(args.data, limit=args.limit, seed=args.seed)
    (spec,) = resolve_models([args.model], args)
    quiet_transformers()
    runner = Runner(spec, make_backend(spec.path, args.backend, max_batch_size=args.concurrency))
    try:
        build_failures(
            runner,
            rows,
            args.out,
            sampling_params(args),
            k=args.k,
            max_success_rate=args.max_success_rate,
            concurrency=args.concurrency,
        )
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
