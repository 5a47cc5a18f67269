"""Evaluate reflect-retry: the paper's table of first-try accuracy vs accuracy after one reflection.

    verl-reflect eval [--recipe NAME [KEY=VALUE ...]] [--model DIR [--compare-model DIR]] [--data test.parquet]
        [--out-dir eval_out]
    python -m verl_reflect.commands.evaluate ...

Every row runs through the loop verl trains with (attempt; on failure reflect, then retry), built from the
recipe exactly as verl's AgentLoopWorker builds it (``verl_reflect.commands.recipe``): the recipe's ``reflect_retry``
entry, its prompt/response lengths and its validation sampling (``rollout.val_kwargs``); flags override them.
On a GPU machine generation runs on the recipe's own rollout servers (vLLM), started standalone; on a CPU, on
the transformers backend the CPU trainer's ``hf`` rollout serves with, in this process (``--backend``).
Each finished trajectory is appended to ``<out-dir>/trajectories.jsonl`` at once, keyed by model
label and ``index`` (the row's position in the data), so a re-run (or a run after Ctrl-C) skips the
rows already there; the table and ``<out-dir>/accuracy.png`` are computed from the whole file.
``--model`` picks the model directory; without it the recipe's ``actor_rollout_ref.model.path`` runs. The
default recipe, ``countdown_tiny_cpu``, names the embedded random tiny model (a smoke test: its accuracy is ~0)
and its small turn caps. With no ``--data``, a small Countdown test split is generated in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from verl_reflect.commands import recipe
from verl_reflect.commands.backends import make_backend
from verl_reflect.commands.errors import ArgumentParser, UserError, run_command
from verl_reflect.commands.report import PNG_NAME, report
from verl_reflect.commands.runner import (
    Runner,
    add_run_args,
    as_completed_limited,
    load_rows,
    quiet_transformers,
    resolve_models,
)
from verl_reflect.commands.trajectories import JSONL_NAME, open_for_append, prompt_key, read_jsonl


def evaluate(
    runner: Runner,
    rows: list[dict],
    jsonl: Path,
    *,
    sampling: dict[str, Any],
    concurrency: int,
) -> int:
    """Run every row of ``rows`` not yet in ``jsonl`` for this model, appending each record as it finishes.

    Returns how many rows were run now.
    """
    label = runner.spec.label
    done = {r["index"]: r for r in read_jsonl(jsonl) if r.get("model") == label}
    for index, row in enumerate(rows):
        if index in done and done[index].get("prompt_key") != prompt_key(row):
            raise UserError(f"{jsonl} holds {label} results for other data (row {index} differs): use a new --out-dir")
    todo = [(index, row) for index, row in enumerate(rows) if index not in done]
    if done:
        print(f"{label}: {len(rows) - len(todo)} of {len(rows)} rows already in {jsonl}, running {len(todo)}")
    if not todo:
        return 0

    async def one(index: int, row: dict) -> dict:
        record = await runner.trajectory(row, sampling)
        key = {"model": label, "index": index, "data_source": row["data_source"], "prompt_key": prompt_key(row)}
        return {**key, **record}

    async def run_all() -> None:
        with open_for_append(jsonl) as f:
            jobs = [lambda i=i, r=r: one(i, r) for i, r in todo]
            async for record in as_completed_limited(jobs, concurrency=concurrency, desc=label):
                # One write per record, flushed: Ctrl-C or a crash loses only unfinished rows.
                f.write((json.dumps(record) + "\n").encode())
                f.flush()

    asyncio.run(run_all())
    return len(todo)


def run_eval(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The whole command, given parsed arguments (``demo`` calls it too)."""
    rows = load_rows(args.data, limit=args.limit, seed=args.seed)
    loop_recipe = recipe.load_recipe(args, recipe.validation_sampling)
    specs = resolve_models([args.model] + ([args.compare_model] if args.compare_model else []), loop_recipe)
    jsonl = args.out_dir / JSONL_NAME
    for spec in specs:
        generation = make_backend(spec.path, args.backend, config=loop_recipe.config, max_batch_size=args.concurrency)
        runner = Runner(spec, generation, loop_recipe)
        try:
            evaluate(runner, rows, jsonl, sampling=loop_recipe.sampling, concurrency=args.concurrency)
        finally:
            runner.close()
            del runner  # free this model before the next one loads
    return report([spec.label for spec in specs], jsonl, args.out_dir)


def build_parser(prog: str = "verl-reflect eval") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_run_args(parser)
    parser.add_argument("--compare-model", help="a second model (e.g. the trained checkpoint): one column each")
    parser.add_argument("--out-dir", type=Path, default=Path("eval_out"), help=f"{JSONL_NAME} and {PNG_NAME} go here")
    parser.add_argument("--max-reflections", type=int, help="reflect-retry rounds after a failed attempt")
    parser.add_argument("--reflection-prompt", help="override the recipe's reflection request")
    parser.add_argument("--retry-prompt", help="override the recipe's retry request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_transformers()
    run_eval(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
