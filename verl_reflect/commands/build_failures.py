"""Keep only the prompts a model fails, with the attempts that failed: the paper trains reflection on those alone.

    verl-reflect build-failures --recipe NAME [KEY=VALUE ...] --model DIR --data train.parquet --out failures.parquet
        [--k 4] [--max-success-rate 0] [--keep-attempts 1]

For each prompt, ``--k`` first attempts are sampled (one turn: the recipe's ``reflect_retry`` loop with no
reflection, built as the trainer builds it, so prompts are rendered, capped and scored exactly as in training;
with the recipe's training sampling, ``rollout.temperature/top_p/top_k``) and scored by the task's verifier.
Prompts whose success rate is at most ``--max-success-rate`` are written, with the input's schema, to a parquet
ready for the recipes: ``extra_info.index`` becomes 0..n-1 and the original index is kept as
``extra_info.source_index``. Each kept row also stores up to ``--keep-attempts`` of its failed attempts (token ids
as generated, their text, the model and the sampling settings) in ``failed_attempts``, and runs under the
``reflect_retry_failures`` agent-loop entry, which the recipes set to replay the first stored attempt instead of
generating a new one (schema: ``verl_reflect/data/__init__.py``).

Killed or interrupted, a re-run of the same command loses nothing and repeats nothing: each attempt is appended to
``<out>.partial.jsonl`` as it finishes (keyed by row position, sample number and a hash of the prompt, and tagged
with the model and sampling settings), a re-run samples only the attempts missing there, and refuses a file made for
other data or settings. ``<out>`` is written whole or not at all (a temporary file, then a rename), and the partial
file is removed once the run is decided.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from verl_reflect import data
from verl_reflect.commands import loop
from verl_reflect.commands.backends import make_backend
from verl_reflect.commands.errors import ArgumentParser, UserError, check_positive, run_command
from verl_reflect.commands.run_args import (
    add_run_args,
    load_rows,
    note_default_recipe,
    quiet_transformers,
    resolve_models,
)
from verl_reflect.commands.runner import Runner, as_completed_limited
from verl_reflect.commands.trajectories import open_for_append, prompt_key, read_jsonl

PARTIAL_SUFFIX = ".partial.jsonl"


def partial_path(out: Path) -> Path:
    """The attempts of an unfinished run for ``out``: ``<out>.partial.jsonl``, beside it."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def setup_key(provenance: dict[str, Any]) -> str:
    """Short hash of the model and sampling settings: attempts stored under another key were sampled differently."""
    return hashlib.sha1(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:12]


def _stored_attempts(partial: Path, rows: list[dict], k: int, setup: str) -> dict[tuple[int, int], dict]:
    """The attempts an earlier run of this command stored in ``partial``, by (row position, sample number)."""
    keys = [prompt_key(row) for row in rows]
    stored: dict[tuple[int, int], dict] = {}
    for record in read_jsonl(partial):  # a torn last line (a killed run) is skipped: that attempt runs again
        index, sample = record.get("index"), record.get("sample")
        if not (isinstance(index, int) and isinstance(sample, int)) or index >= len(rows) or sample >= k:
            continue  # beyond this run's --limit or --k
        if record.get("prompt_key") != keys[index]:
            raise UserError(
                f"{partial} holds attempts for other data (row {index} differs): delete it, or use another --out"
            )
        if record.get("setup") != setup:
            raise UserError(
                f"{partial} holds attempts sampled with another model or sampling settings: delete it, or use "
                "another --out"
            )
        stored.setdefault((index, sample), {name: record[name] for name in ("correct", "token_ids", "text")})
    return stored


def check_filter_args(k: int, max_success_rate: float, keep_attempts: int = 1) -> None:
    check_positive("--k", k)
    if not 0.0 <= max_success_rate <= 1.0:
        raise UserError(f"--max-success-rate must be in [0, 1], got {max_success_rate}")
    check_positive("--keep-attempts", keep_attempts)


def sample_attempts(
    runner: Runner,
    rows: list[dict],
    sampling: dict[str, Any],
    *,
    k: int,
    concurrency: int,
    partial: Path | None = None,
    setup: str = "",
) -> list[list[dict]]:
    """``k`` sampled first attempts per row, in sampling order: ``{correct, token_ids, text}``.

    With ``partial``, the attempts already stored there (under the same ``setup``) are taken as they are, only the
    others are sampled, and each is appended there as it finishes.
    """
    attempts: list[list[dict | None]] = [[None] * k for _ in rows]
    stored = _stored_attempts(partial, rows, k, setup) if partial is not None else {}
    for (index, sample), attempt in stored.items():
        attempts[index][sample] = attempt
    todo = [(i, j, r) for i, r in enumerate(rows) for j in range(k) if attempts[i][j] is None]
    if stored:
        print(f"{len(stored)} of {k * len(rows)} attempts already in {partial}, sampling {len(todo)}")

    async def one(index: int, sample: int, row: dict) -> tuple[int, int, dict]:
        # One turn of the reflect-retry loop: prompt rendering and scoring exactly as in training.
        record = await runner.trajectory(row, sampling, keep_token_ids=True, max_reflections=0)
        (turn,) = record["turns"]
        return index, sample, {"correct": bool(turn["correct"]), "token_ids": turn["token_ids"], "text": turn["text"]}

    async def run_all(f) -> None:
        jobs: list[Callable[[], Awaitable[tuple[int, int, dict]]]] = [
            lambda i=i, j=j, r=r: one(i, j, r) for i, j, r in todo
        ]
        async for index, sample, attempt in as_completed_limited(
            jobs, concurrency=concurrency, desc=f"{k} attempts/prompt"
        ):
            # Stored by sample number, not finishing order: "the first stored attempt" is the first one sampled.
            attempts[index][sample] = attempt
            if f is not None:
                # One write per attempt, flushed: a kill loses only the attempts still running.
                record = {"index": index, "sample": sample, "prompt_key": prompt_key(rows[index]), "setup": setup}
                f.write((json.dumps({**record, **attempt}) + "\n").encode())
                f.flush()

    if todo:
        if partial is None:
            asyncio.run(run_all(None))
        else:
            with open_for_append(partial) as f:
                asyncio.run(run_all(f))
    return attempts


def keep_failures(
    rows: list[dict],
    attempts: list[list[dict]],
    *,
    max_success_rate: float,
    keep_attempts: int = 1,
    provenance: dict[str, Any] | None = None,
) -> list[dict]:
    """Rows solved by at most ``max_success_rate`` of their attempts, re-indexed 0..n-1 (the old index goes to
    ``source_index``), each with up to ``keep_attempts`` failed attempts (and ``provenance``) in ``failed_attempts``
    and the failure-set agent name."""
    kept = []
    for position, (row, sampled) in enumerate(zip(rows, attempts, strict=True)):
        if sum(a["correct"] for a in sampled) / len(sampled) <= max_success_rate:
            extra = dict(row.get("extra_info") or {})
            extra["source_index"] = extra.get("index", position)
            extra["index"] = len(kept)
            failed = [
                {"token_ids": a["token_ids"], "text": a["text"], **(provenance or {})}
                for a in sampled
                if not a["correct"]
            ]
            kept.append(
                {
                    **row,
                    "extra_info": extra,
                    "agent_name": data.FAILURES_AGENT_NAME,
                    data.FAILED_ATTEMPTS: failed[:keep_attempts],
                }
            )
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
    keep_attempts: int = 1,
) -> list[dict]:
    """Sample (resuming from ``out``'s partial file), filter, write ``out`` atomically, print what was kept; returns
    the kept rows."""
    check_filter_args(k, max_success_rate, keep_attempts)
    provenance = {
        "model": str(runner.spec.path),
        "sampling": {
            "temperature": float(sampling.get("temperature", 1.0)),
            "top_p": float(sampling.get("top_p", 1.0)),
            "top_k": int(sampling.get("top_k", -1)),
            "repetition_penalty": float(sampling.get("repetition_penalty", 1.0)),
            "max_attempt_tokens": runner.entry.get("max_attempt_tokens"),
        },
    }
    partial = partial_path(out)
    attempts = sample_attempts(
        runner, rows, sampling, k=k, concurrency=concurrency, partial=partial, setup=setup_key(provenance)
    )
    kept = keep_failures(
        rows, attempts, max_success_rate=max_success_rate, keep_attempts=keep_attempts, provenance=provenance
    )
    solved = sum(a["correct"] for sampled in attempts for a in sampled)
    print(f"first-try accuracy: {100 * solved / (k * len(rows)):.1f}% ({solved}/{k * len(rows)} attempts)")
    if not kept:
        partial.unlink(missing_ok=True)  # decided: a re-run samples afresh
        solved_often = f"all solved more than {max_success_rate:.0%} of the time"
        raise UserError(f"kept 0 of {len(rows)} prompts ({solved_often}); nothing written")
    data.write_parquet(kept, out)  # whole or not at all: a temporary file, then a rename
    # Only once out is complete: a kill before this line leaves every attempt for the re-run.
    partial.unlink(missing_ok=True)
    print(f"kept {len(kept)} of {len(rows)} prompts (success rate <= {max_success_rate:.0%} over k={k}); wrote {out}")
    unreplayable = sum(not row[data.FAILED_ATTEMPTS] for row in kept)
    if unreplayable:  # only possible with --max-success-rate 1
        print(f"warning: {unreplayable} kept prompts were never failed: they have no attempt to replay")
    return kept


def build_parser(prog: str = "verl-reflect build-failures") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_run_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="the .parquet file to write")
    parser.add_argument("--k", type=int, default=4, help="first attempts sampled per prompt")
    parser.add_argument("--max-success-rate", type=float, default=0.0, help="keep prompts solved at most this often")
    parser.add_argument(
        "--keep-attempts", type=int, default=1, help="failed attempts stored per prompt (replay uses the first)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix != ".parquet":  # verl's RLHFDataset picks the reader by file extension
        raise UserError(f"--out must end in .parquet, got {args.out}")
    check_filter_args(args.k, args.max_success_rate, args.keep_attempts)
    # Training's sampling, not validation's: the failure set is what the trainer's rollouts would fail.
    loop_recipe = loop.load_recipe(args, loop.training_sampling)
    rows = load_rows(args.data, loop_recipe.config, limit=args.limit, seed=args.seed)
    note_default_recipe(args)
    (spec,) = resolve_models([args.model], loop_recipe)
    quiet_transformers()
    generation = make_backend(spec.path, args.backend, config=loop_recipe.config, max_batch_size=args.concurrency)
    runner = Runner(spec, generation, loop_recipe)
    try:
        build_failures(
            runner,
            rows,
            args.out,
            loop_recipe.sampling,
            k=args.k,
            max_success_rate=args.max_success_rate,
            concurrency=args.concurrency,
            keep_attempts=args.keep_attempts,
        )
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
