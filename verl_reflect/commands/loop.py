"""The recipe's loop outside the trainer, built as verl's trainer builds it: the one source of ``eval``'s and
``build-failures``' settings.

``build_loop`` instantiates the recipe's ``reflect_retry`` agent-loop entry with the very call verl's
``AgentLoopWorker._run_agent_loop`` makes (``reflect_retry``, never ``reflect_retry_failures``: eval and
build-failures measure first tries, so they generate them); ``validation_sampling`` and ``training_sampling`` are
the sampling params verl sends; ``load_recipe`` applies the commands' flags over the recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from verl_reflect import resolvers
from verl_reflect.commands.backends import check_model_dir
from verl_reflect.commands.errors import UserError
from verl_reflect.commands.recipe import DEFAULT_RECIPE, agent_loop_entry, compose, hydra_quote


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


def named_model(path: str | None) -> str | None:
    """``--model``'s value as a directory: an embedded model's name (``smollm2``) is that model, built on first use and
    cached exactly as its recipe resolver builds it (``${verl_reflect.smollm2:}``); a directory of that name here wins.
    """
    if path in resolvers.MODELS and not Path(path).exists():
        return resolvers.MODELS[path]()
    return path


def load_recipe(args: argparse.Namespace, sampling: Callable[[Any], dict[str, Any]]) -> LoopRecipe:
    """Compose ``args.recipe`` with its overrides and apply the flags given; ``sampling`` picks the recipe's
    sampling section (``validation_sampling`` or ``training_sampling``)."""
    name = args.recipe or DEFAULT_RECIPE
    args.model = named_model(args.model)
    if args.model is not None:
        check_model_dir(args.model)  # before composing: a wrong path is the likelier mistake, and this one is fast
    overrides = list(args.overrides)
    if args.model is not None:  # as main_ppo's actor_rollout_ref.model.path=<dir>, after the user's overrides
        overrides.append(f"actor_rollout_ref.model.path={hydra_quote(args.model)}")
    cfg = compose(name, overrides)
    entry = agent_loop_entry(cfg)
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
