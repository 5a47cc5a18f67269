"""A recipe's loop, built as verl's trainer builds it: the one source of ``eval``'s and ``build-failures``' settings.

``compose`` reads a recipe as ``python -m verl.trainer.main_ppo --config-path recipes --config-name <recipe>``
does (Hydra's compose API, the user's overrides after it, then resolved as main_ppo resolves it);
``compose_unresolved``, the Hydra call itself, is shared with ``dry-run``, which keeps the user's data files.
``build_loop`` instantiates the recipe's ``reflect_retry`` agent-loop entry with the very call verl's
``AgentLoopWorker._run_agent_loop`` makes. ``reflect_retry``, never ``reflect_retry_failures``: eval and
build-failures measure first tries, so they generate them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from verl_reflect import resolvers
from verl_reflect.commands.backends import check_model_dir
from verl_reflect.commands.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
# The embedded tiny model and its small CPU budget: what runs when no --recipe and no --model are given.
DEFAULT_RECIPE = "countdown_tiny_cpu"
EVAL_AGENT_LOOP = "reflect_retry"


def recipe_file(recipe: str) -> Path:
    """A recipe name in this repository's ``recipes/`` (``countdown_qwen2.5-1.5b``), or a path to a recipe YAML."""
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise UserError(f"no recipe {recipe!r} ({path} does not exist); recipes here: {', '.join(recipe_names())}")
    return path.resolve()


def recipe_names(folder: Path = RECIPES_DIR) -> list[str]:
    """The recipes in ``folder``, by name; ``_``-files are the sections recipes share, not recipes."""
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def compose_unresolved(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's compose of ``config_name`` from ``config_dir`` with ``overrides``, as main_ppo composes it
    (``--config-path``, ``--config-name``, then the overrides); unresolved. Raises Hydra's and OmegaConf's errors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose(recipe: str = DEFAULT_RECIPE, overrides: list[str] = ()) -> DictConfig:
    """The recipe's whole trainer config with ``overrides`` (Hydra syntax), resolved as main_ppo resolves it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Only the resolver the tiny recipe names: importing verl_reflect.register (the trainer's plugins) costs seconds.
    resolvers.register_resolvers()
    path = recipe_file(recipe)
    try:
        # eval and build-failures read their rows from --data, never the recipe's training files.
        unused_data = ["data.train_files=null", "data.val_files=null"]
        cfg = compose_unresolved(path.parent, path.stem, unused_data + list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"recipe {recipe}: {first_line}") from None
    return cfg


def hydra_quote(value: str) -> str:
    """``value`` as a quoted Hydra override value: paths may hold characters Hydra's grammar reserves."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_key(override: str) -> str:
    """The key a Hydra override sets: ``data.train_files`` of ``++data.train_files=x.parquet``."""
    return override.lstrip("+~").split("=", 1)[0]


def agent_loop_config_path(cfg: DictConfig, recipe: str) -> Path:
    """The recipe's agent-loop YAML. Relative paths resolve as verl resolves them (the launch directory), then
    against the folder above the recipes (the recipes name them ``recipes/agent_loops/<task>.yaml``), so the
    commands work from any directory."""
    name = cfg.actor_rollout_ref.rollout.agent.get("agent_loop_config_path")
    if not name:
        raise UserError(f"recipe {recipe}: no actor_rollout_ref.rollout.agent.agent_loop_config_path")
    for path in (Path(name), Path(os.getcwd()) / name, recipe_file(recipe).parents[1] / name):
        if path.is_file():
            return path.resolve()
    raise UserError(f"recipe {recipe}: agent-loop config {name} not found (from {os.getcwd()} or the repository)")


def agent_loop_entry(cfg: DictConfig, recipe: str, name: str = EVAL_AGENT_LOOP) -> DictConfig:
    """The ``name`` entry of the recipe's agent-loop YAML, as verl's registry keeps it (the last of that name)."""
    path = agent_loop_config_path(cfg, recipe)
    try:
        entries = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any YAML error is the user's file, not our bug
        raise UserError(f"{path}: not valid YAML ({type(err).__name__})") from None
    matches = [e for e in entries if isinstance(e, DictConfig) and e.get("name") == name] if entries else []
    if not matches:
        raise UserError(f"{path}: no agent loop named {name} (a YAML list of {{name, _target_, ...}})")
    return matches[-1]


def validation_sampling(cfg: DictConfig) -> dict[str, Any]:
    """The sampling params verl's AgentLoopWorker sends in validation: ``rollout.val_kwargs``."""
    rollout = cfg.actor_rollout_ref.rollout
    val = rollout.val_kwargs
    sampling = {"temperature": val.temperature, "top_p": val.top_p, "top_k": val.top_k}
    if not val.get("do_sample", True):  # greedy, with verl's own greedy settings (apply_greedy_sampling_params)
        sampling = {"temperature": 0, "top_p": 1.0, "top_k": -1}
    return {**sampling, "repetition_penalty": 1.0, "logprobs": bool(rollout.calculate_log_probs)}


def training_sampling(cfg: DictConfig) -> dict[str, Any]:
    """The sampling params verl's AgentLoopWorker sends in a training step: what ``build-failures`` samples with."""
    rollout = cfg.actor_rollout_ref.rollout
    return {
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        "top_k": rollout.top_k,
        "repetition_penalty": 1.0,
        "logprobs": bool(rollout.calculate_log_probs),
    }


def dataset_class(cfg: DictConfig) -> type:
    """verl's dataset class for the recipe's data (``data.custom_cls`` or RLHFDataset), as the AgentLoopWorker
    picks it once at start; verl announces its pick with a print, kept off our table's stdout."""
    from verl.utils.dataset.rl_dataset import get_dataset_class

    with contextlib.redirect_stdout(io.StringIO()):
        return get_dataset_class(cfg.data)


def build_loop(cfg: DictConfig, entry: DictConfig, *, server_manager: Any, tokenizer: Any, hf_model_type, **kwargs):
    """The agent loop, instantiated with the call ``AgentLoopWorker._run_agent_loop`` makes (``kwargs`` override
    the entry's settings; ``dataset_cls`` defaults to ``dataset_class(cfg)``). Call it inside the running event
    loop: ``AgentLoopBase`` captures it."""
    import hydra
    from hydra.errors import InstantiationException
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap

    dataset_cls = kwargs.pop("dataset_cls", None) or dataset_class(cfg)
    try:
        return hydra.utils.instantiate(
            config=entry,
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=server_manager,
            tokenizer=tokenizer,
            processor=None,  # text-only tasks: verl's HFModelConfig has no processor for them either
            hf_model_type=hf_model_type,
            dataset_cls=dataset_cls,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([]),  # the recipes configure no tools
            **kwargs,
        )
    except InstantiationException as err:  # a bad entry in the agent-loop YAML: the user's file, one line
        raise UserError(f"agent loop {entry.get('name')!r}: {err.__cause__ or err}") from None


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
    sampling section (``validation_sampling`` or ``training_sampling``)."""
    name = args.recipe or DEFAULT_RECIPE
    if args.model is not None:
        check_model_dir(args.model)  # before composing: a wrong path is the likelier mistake, and this one is fast
    if args.recipe is None and args.model is not None:
        print(f"note: no --recipe: {args.model} runs with {name}'s loop settings (short turns)", file=sys.stderr)
    overrides = list(args.overrides)
    if args.model is not None:  # as main_ppo's actor_rollout_ref.model.path=<dir>, after the user's overrides
        overrides.append(f"actor_rollout_ref.model.path={hydra_quote(args.model)}")
    cfg = compose(name, overrides)
    entry = agent_loop_entry(cfg, name)
    for flag in ENTRY_FLAGS:
        if getattr(args, flag, None) is not None:
            entry[flag] = getattr(args, flag)
    for flag in ROLLOUT_FLAGS:
        if getattr(args, flag, None) is not None:
            cfg.actor_rollout_ref.rollout[flag] = getattr(args, flag)
    params = sampling(cfg)
    params.update({flag: getattr(args, flag) for flag in SAMPLING_FLAGS if getattr(args, flag, None) is not None})
    if entry.get("max_reflections", 0) < 0:
        raise UserError(f"max_reflections must be >= 0, got {entry.max_reflections}")
    return LoopRecipe(name, cfg, entry, params)
