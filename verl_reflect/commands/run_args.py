"""What ``eval`` and ``build-failures`` take: the arguments for the recipe, model, data, sampling and budget; the
models to run and their table labels; the rows (a parquet, or generated rows of the recipe's task)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from reward_fns import get_compute_score
from verl_reflect import data, resolvers
from verl_reflect.commands import loop, recipe
from verl_reflect.commands.backends import BACKENDS, check_model_dir, default_backend
from verl_reflect.commands.errors import UserError, positive_int
from verl_reflect.commands.loop import LoopRecipe
from verl_reflect.cpu import tiny

TINY_LABEL = "tiny-random"
DEFAULT_TEST_ROWS = 16  # rows of the recipe's task generated when --data is not given


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
    parser.add_argument(
        "--model",
        help="local Hugging Face model directory, or an embedded model by name: "
        f"{', '.join(resolvers.MODELS)} (default: the recipe's model path)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default_backend(),
        help="verl: the recipe's rollout servers (vLLM), started standalone; hf: transformers in this process"
        " (default: verl on a GPU machine, else hf)",
    )
    parser.add_argument(
        "--data", type=Path, help=f"verl RL parquet (default: {DEFAULT_TEST_ROWS} rows of the recipe's task)"
    )
    parser.add_argument("--limit", type=positive_int, help="use only the first N rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated rows")
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
    """Model directories (None = the recipe's ``actor_rollout_ref.model.path``, which ``--model`` overrides; a name of
    ``resolvers.MODELS``: that embedded model) with table labels; checks paths first."""
    recipe_model = loop_recipe.config.actor_rollout_ref.model.path
    paths = [loop.named_model(p) for p in paths]
    is_tiny = [p is None and Path(recipe_model) == tiny.cached_model_path() for p in paths]
    resolved = [check_model_dir(recipe_model if p is None else p) for p in paths]
    labels = [TINY_LABEL if tiny_ else checkpoint_label(p) for p, tiny_ in zip(resolved, is_tiny)]
    if len(set(labels)) < len(labels):  # e.g. two checkpoints both named "huggingface": use whole paths
        labels = [TINY_LABEL if tiny_ else str(p) for p, tiny_ in zip(resolved, is_tiny)]
    if len(set(labels)) < len(labels):
        raise UserError("--compare-model is the same model as --model")
    return [ModelSpec(path, label) for path, label in zip(resolved, labels)]


def load_rows(path: Path | None, config: Any, *, limit: int | None, seed: int) -> list[dict]:
    """Rows of ``path`` (or a generated test split of the recipe's task, ``verl_reflect.task``), the first ``limit``;
    each ``data_source`` must have a verifier under the recipe's reward dispatch."""
    from verl_reflect.agent_loop import task_packages  # imports verl: not for --help or a bad flag

    if path is None:
        rows = data.task_rows(OmegaConf.select(config, "verl_reflect.task"), DEFAULT_TEST_ROWS, seed=seed)
    else:
        rows = data.read_rows(path)
    rows = rows[:limit]
    if not rows:
        raise UserError(f"{path}: no rows")
    for source in sorted({row["data_source"] for row in rows}):
        try:
            get_compute_score(source, task_packages(config))
        except ValueError as err:
            raise UserError(f"{path or 'data'}: {err}") from None
    return rows


def note_default_recipe(args: argparse.Namespace) -> None:
    """Say so when a model runs with the default recipe's loop settings (once the inputs checked out)."""
    if args.recipe is None and args.model is not None:
        print(f"note: no --recipe: {args.model} runs with {recipe.DEFAULT_RECIPE}'s loop settings", file=sys.stderr)


def quiet_transformers() -> None:
    """Weight-loading progress bars would interleave with ours; commands turn them off."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
