"""Running the recipe's loop outside the trainer: what ``eval`` and ``build-failures`` share.

The command-line arguments for the recipe, model, data, sampling and budget; the models to run and their table
labels; the rows (a parquet, or a generated Countdown split); ``Runner``, which builds the recipe's loop for one
model and runs a row through it into a JSON-ready record; and ``as_completed_limited``, which runs many of them
concurrently behind a progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.asyncio import tqdm as tqdm_asyncio

from reward_fns import get_compute_score
from verl_reflect import data
from verl_reflect.commands import recipe
from verl_reflect.commands.backends import BACKENDS, check_model_dir, default_backend
from verl_reflect.commands.errors import UserError, positive_int
from verl_reflect.commands.recipe import LoopRecipe
from verl_reflect.cpu import tiny

TINY_LABEL = "tiny-random"
DEFAULT_TEST_ROWS = 16  # size of the in-memory Countdown split used when --data is not given


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
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default_backend(),
        help="verl: the recipe's rollout servers (vLLM), started standalone; hf: transformers in this process"
        " (default: verl on a GPU machine, else hf)",
    )
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
        bar = tqdm_asyncio.as_completed(tasks, total=len(tasks), desc=desc, unit="row", dynamic_ncols=True)
        for next_done in bar:
            yield await next_done
    finally:
        for task in tasks:  # a consumer that stops early (an error, Ctrl-C) leaves nothing running
            task.cancel()
