"""Evaluate reflect-retry: the paper's table of first-try accuracy vs accuracy after one reflection.

    verl-reflect eval [--recipe NAME [KEY=VALUE ...]] [--model DIR [--compare-model DIR]] [--data test.parquet]
        [--out-dir eval_out]
    python -m verl_reflect.eval ...

Every row runs through the loop verl trains with (attempt; on failure reflect, then retry), built from the
recipe exactly as verl's AgentLoopWorker builds it (``verl_reflect.recipe``): the recipe's ``reflect_retry``
entry, its prompt/response lengths and its validation sampling (``rollout.val_kwargs``); flags override them.
Generation runs on a backend from ``verl_reflect.backend`` instead of verl's rollout servers.
Each finished trajectory is appended to ``<out-dir>/trajectories.jsonl`` at once, keyed by model
label and ``index`` (the row's position in the data), so a re-run (or a run after Ctrl-C) skips the
rows already there; the table and ``<out-dir>/accuracy.png`` are computed from the whole file.
``--model`` picks the model directory; without it the recipe's ``actor_rollout_ref.model.path`` runs. The
default recipe, ``countdown_tiny_cpu``, names the embedded random tiny model (a smoke test: its accuracy is ~0)
and its small turn caps. With no ``--data``, a small Countdown test split is generated in memory.

This module also holds what ``build-failures`` shares with ``eval``: the recipe, model, data and sampling
arguments, row loading and validation, and running trajectories concurrently with a progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from reward_fns import get_compute_score
from verl_reflect import data, recipe, tiny
from verl_reflect.backend import BACKENDS, check_model_dir, make_backend
from verl_reflect.cli_support import ArgumentParser, UserError, atomic_path, positive_int, run_command

TINY_LABEL = "tiny-random"
DEFAULT_TEST_ROWS = 16  # size of the in-memory Countdown split used when --data is not given
JSONL_NAME = "trajectories.jsonl"
PNG_NAME = "accuracy.png"


# -----------------------------------------------------------------------------
# Shared with build-failures: arguments, recipe, model, rows, sampling, running trajectories.


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The recipe, model, data, sampling and budget arguments of ``eval`` and ``build-failures``.

    Every loop and sampling setting comes from the recipe; a flag given overrides it (after the Hydra overrides).
    """
    parser.add_argument(
        "--recipe",
        help="a recipe in recipes/ or a recipe YAML: the loop, its prompts, caps, lengths and sampling as training"
        f" runs them (default: {recipe.DEFAULT_RECIPE}, the embedded tiny model's)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides of the recipe, as main_ppo")
    parser.add_argument("--model", help="local Hugging Face model directory (default: the recipe's model path)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: vLLM if installed, with a GPU")
    parser.add_argument("--data", type=Path, help=f"verl RL parquet (default: {DEFAULT_TEST_ROWS} Countdown problems)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated Countdown split")
    parser.add_argument("--concurrency", type=positive_int, default=16, help="trajectories in flight (HF: batch size)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the recipe's)")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int, help="-1 = off")
    parser.add_argument("--max-attempt-tokens", type=positive_int, help="cap per attempt/retry")
    parser.add_argument("--max-reflection-tokens", type=positive_int, help="cap per reflection")
    parser.add_argument("--prompt-length", type=positive_int, help="verl's rollout.prompt_length")
    parser.add_argument("--response-length", type=positive_int, help="verl's rollout.response_length")


# Flags that override the recipe's agent-loop entry (ReflectRetryAgentLoop kwargs), its rollout section, and the
# sampling params. Not ``attempt``: eval and build-failures measure first tries, so they always generate them.
ENTRY_FLAGS = ("reflection_prompt", "retry_prompt", "max_reflections", "max_attempt_tokens", "max_reflection_tokens")
ROLLOUT_FLAGS = ("prompt_length", "response_length")
SAMPLING_FLAGS = ("temperature", "top_p", "top_k")


@dataclass(frozen=True)
class LoopRecipe:
    """What a run takes from its recipe: the trainer config and the ``reflect_retry`` entry (flags applied), and
    the sampling params."""

    name: str
    config: Any  # the composed DictConfig
    entry: Any  # the agent-loop YAML entry (a DictConfig)
    sampling: dict[str, Any]


def load_recipe(args: argparse.Namespace, sampling: Callable[[Any], dict[str, Any]]) -> LoopRecipe:
    """Compose ``args.recipe`` with its overrides and apply the flags given; ``sampling`` picks the recipe's
    sampling section (``recipe.validation_sampling`` or ``recipe.training_sampling``)."""
    name = args.recipe or recipe.DEFAULT_RECIPE
    if args.model is not None:
        check_model_dir(args.model)  # before composing: a wrong path is the likelier mistake, and this one is fast
    if args.recipe is None and args.model is not None:
        print(f"note: no --recipe: {args.model} runs with {name}'s loop settings (short turns)", file=sys.stderr)
    overrides = list(args.overrides)
    if args.model is not None:  # as main_ppo's actor_rollout_ref.model.path=<dir>, after the user's overrides
        overrides.append(f"actor_rollout_ref.model.path={recipe.hydra_quote(args.model)}")
    cfg = recipe.compose(name, overrides)
    entry = recipe.agent_loop_entry(cfg, name)
    for name in ENTRY_FLAGS:
        if getattr(args, name, None) is not None:
            entry[name] = getattr(args, name)
    for name in ROLLOUT_FLAGS:
        if getattr(args, name, None) is not None:
            cfg.actor_rollout_ref.rollout[name] = getattr(args, name)
    params = sampling(cfg)
    params.update({name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name, None) is not None})
    if entry.get("max_reflections", 0) < 0:
        raise UserError(f"max_reflections must be >= 0, got {entry.max_reflections}")
    return LoopRecipe(name, cfg, entry, params)


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    label: str


def checkpoint_label(path: Path) -> str:
    """A column title: the folder name, or ``global_step_N`` for verl's ``.../global_step_N/actor/huggingface``."""
    if path.name == "huggingface" and path.parent.name == "actor":
        return path.parents[1].name
    return path.name


def resolve_models(paths: list[str | None], loop_recipe: LoopRecipe) -> list[ModelSpec]:
    """Model directories (None = the recipe's ``actor_rollout_ref.model.path``, which ``--model`` overrides) with
    table labels; checks paths first."""
    recipe_model = loop_recipe.config.actor_rollout_ref.model.path
    is_tiny = [p is None and Path(recipe_model) == tiny.cached_model_path() for p in paths]
    resolved = [check_model_dir(recipe_model if p is None else p) for p in paths]
    labels = [TINY_LABEL if tiny_ else checkpoint_label(p) for p, tiny_ in zip(resolved, is_tiny)]
    if len(set(labels)) < len(labels):  # e.g. two checkpoints both named "huggingface": use whole paths
        labels = [TINY_LABEL if tiny_ else str(p) for p, tiny_ in zip(resolved, is_tiny)]
    if len(set(labels)) < len(labels):
        raise UserError("--compare-model is the same model as --model")
    return [ModelSpec(path, label) for path, label in zip(resolved, labels)]


def load_rows(path: Path | None, *, limit: int | None, seed: int) -> list[dict]:
    """Rows of ``path`` (or a generated Countdown test split), the first ``limit``; each task must have a verifier."""
    if path is None:
        rows = data.countdown_rows(DEFAULT_TEST_ROWS, seed=seed, split="test")
    else:
        rows = data.read_rows(path)
    rows = rows[:limit]
    if not rows:
        raise UserError(f"{path}: no rows")
    for source in sorted({row["data_source"] for row in rows}):
        try:
            get_compute_score(source)
        except ValueError as err:
            raise UserError(f"{path or 'data'}: {err}") from None
    return rows


def prompt_key(row: dict) -> str:
    """Short hash of a row's prompt: tells a resumed run whether ``index`` still means the same problem."""
    return hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:12]


def quiet_transformers() -> None:
    """Weight-loading progress bars would interleave with ours; commands turn them off."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def token_layout(turns: list[dict[str, Any]], mask: list[int]) -> list[list]:
    """The response as ``[kind, tokens, masked tokens]`` spans, from the loop's turn records; the gaps
    between generated turns are ``user`` turns (with the chat template's boundary tokens)."""
    layout, pos = [], 0
    for turn in turns:
        start, end = turn["start"], turn["start"] + turn["num_tokens"]
        if start > pos:
            layout.append(["user", start - pos, sum(mask[pos:start])])
        layout.append([turn["kind"], end - start, sum(mask[start:end])])
        pos = end
    if pos < len(mask):
        layout.append(["user", len(mask) - pos, sum(mask[pos:])])
    return layout


class Runner:
    """``ReflectRetryAgentLoop`` trajectories of one model, generated by ``backend`` (``make_backend``'s, or
    any object with verl's server-manager ``generate``)."""

    def __init__(self, spec: ModelSpec, backend: Any, loop_recipe: LoopRecipe, **loop_kwargs: Any):
        # verl takes ~10 s to import: import it once a run really starts, not for --help or a bad argument.
        from omegaconf import OmegaConf
        from transformers import AutoConfig, AutoTokenizer

        self.spec = spec
        self.backend = backend
        self.tokenizer = AutoTokenizer.from_pretrained(spec.path)
        # The recipe's config with this model in it, as the trainer would run it with model.path=<spec.path>.
        self.config = loop_recipe.config.copy()
        OmegaConf.update(self.config, "actor_rollout_ref.model.path", str(spec.path))
        self.entry = loop_recipe.entry
        self.hf_model_type = AutoConfig.from_pretrained(spec.path).model_type
        self.dataset_cls = recipe.dataset_class(self.config)
        self._loop_kwargs = loop_kwargs

    def build_loop(self, server_manager: Any, **loop_kwargs: Any):
        """The recipe's loop for this model, built as verl's AgentLoopWorker builds it (inside the running loop)."""
        return recipe.build_loop(
            self.config,
            self.entry,
            server_manager=server_manager,
            tokenizer=self.tokenizer,
            hf_model_type=self.hf_model_type,
            dataset_cls=self.dataset_cls,
            **{**self._loop_kwargs, **loop_kwargs},
        )

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    async def trajectory(
        self, row: dict, sampling: dict[str, Any], *, keep_token_ids: bool = False, **loop_kwargs: Any
    ) -> dict[str, Any]:
        """Run one row (``loop_kwargs`` override the runner's); returns the JSON-ready record (verdicts,
        turns, reflection tokens, token layout). ``keep_token_ids`` adds each turn's ``token_ids``: the ids
        the backend generated, as the loop kept them (what ``build-failures`` stores for replay)."""
        server = _RecordingServer(self.backend) if keep_token_ids else self.backend
        # Built here, inside the running event loop, which AgentLoopBase captures.
        loop = self.build_loop(server, **loop_kwargs)
        out = await loop.run(
            dict(sampling),
            raw_prompt=list(row["prompt"]),
            data_source=row["data_source"],
            reward_model=row["reward_model"],
            extra_info=row["extra_info"],
        )
        fields = out.extra_fields
        turns = [{"kind": t["kind"], "text": t["text"], "correct": t["correct"]} for t in fields["turns"]]
        if keep_token_ids:
            for turn, token_ids in zip(turns, server.token_ids, strict=True):  # one generate call per turn
                turn["token_ids"] = token_ids
        return {
            "first_try_correct": bool(fields["first_try_correct"]),
            "final_correct": bool(fields["final_correct"]),
            "num_reflections": int(fields["num_reflections"]),
            "reflection_tokens": int(fields["reflection_tokens"]),
            "response_tokens": len(out.response_ids),
            "turns": turns,
            "layout": token_layout(fields["turns"], list(out.response_mask)),
        }


class _RecordingServer:
    """Passes ``generate`` calls on to ``server`` and keeps each call's token ids, cut to ``max_tokens`` exactly
    as the loop cuts them: the generated ids, before any chat-template merge touches them."""

    def __init__(self, server: Any):
        self.server = server
        self.token_ids: list[list[int]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs):
        output = await self.server.generate(
            request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kwargs
        )
        self.token_ids.append(list(output.token_ids[: sampling_params["max_tokens"]]))
        return output


async def as_completed_limited(
    jobs: Iterable[Callable[[], Awaitable[Any]]], *, concurrency: int, desc: str
) -> AsyncIterator[Any]:
    """Run ``jobs`` with at most ``concurrency`` in flight; yield results as they finish, with a progress bar."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    tasks = [asyncio.ensure_future(gated(job)) for job in jobs]
    try:
        with tqdm(total=len(tasks), desc=desc, unit="row", dynamic_ncols=True) as bar:
            for next_done in asyncio.as_completed(tasks):
                result = await next_done
                bar.update(1)
                yield result
    finally:
        for task in tasks:
            task.cancel()


# -----------------------------------------------------------------------------
# eval: run, append to the JSONL, summarise.


def read_jsonl(path: Path) -> list[dict]:
    """Complete records of a trajectories file; a torn last line (a killed run) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _open_for_append(path: Path):
    """Open ``path`` for appending records, first cutting off a torn last line so the next record starts clean."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    f.seek(0)
    content = f.read()
    if content and not content.endswith(b"\n"):
        f.truncate(content.rfind(b"\n") + 1)
    return f


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
        with _open_for_append(jsonl) as f:
            jobs = [lambda i=i, r=r: one(i, r) for i, r in todo]
            async for record in as_completed_limited(jobs, concurrency=concurrency, desc=label):
                # One write per record, flushed: Ctrl-C or a crash loses only unfinished rows.
                f.write((json.dumps(record) + "\n").encode())
                f.flush()

    asyncio.run(run_all())
    return len(todo)


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
    labels = list(summaries)
    width = max(12, *(len(label) for label in labels))
    head = max(len(name) for name, _ in rows)
    lines = [" " * head + "".join(f"  {label:>{width}}" for label in labels)]
    for name, fmt in rows:
        lines.append(f"{name:<{head}}" + "".join(f"  {fmt(summaries[label]):>{width}}" for label in labels))
    return "\n".join(lines)


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


def run_eval(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The whole command, given parsed arguments (``demo`` calls it too)."""
    rows = load_rows(args.data, limit=args.limit, seed=args.seed)
    loop_recipe = load_recipe(args, recipe.validation_sampling)
    specs = resolve_models([args.model] + ([args.compare_model] if args.compare_model else []), loop_recipe)
    jsonl = args.out_dir / JSONL_NAME
    for spec in specs:
        runner = Runner(spec, make_backend(spec.path, args.backend, max_batch_size=args.concurrency), loop_recipe)
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
