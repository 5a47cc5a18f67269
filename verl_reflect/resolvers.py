"""The OmegaConf resolvers the recipes name, registered by ``verl_reflect.register`` (so in the trainer) and before a
command composes a recipe.

- ``${verl_reflect.tiny_model:}``: the embedded tiny model's directory (``verl_reflect/cpu/tiny.py``), built on first
  use, so the CPU recipes name it without a path to fill in;
- ``${verl_reflect.required:data.train_files}``: a value the launch command must set. Recipes cannot use ``???`` for
  keys verl's own config already sets: OmegaConf keeps the earlier value (verl's GSM8K paths) when it merges a
  missing one over it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

REQUIRED = "verl_reflect.required"


def _tiny_model() -> str:
    from verl_reflect.cpu.tiny import default_model_dir  # transformers and tokenizers: only when a recipe asks

    return str(default_model_dir())


def _required(key: str):
    raise ValueError(f"{key} is not set: add {key}=<path> to the command (see the recipe's header)")


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("verl_reflect.tiny_model", _tiny_model, replace=True)
    OmegaConf.register_new_resolver(REQUIRED, _required, replace=True)


def is_required(cfg: DictConfig, key: str) -> bool:
    """``key`` (``data.train_files``) still holds the recipe's ``${verl_reflect.required:...}``: nobody set it."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node is not None and f"${{{REQUIRED}:" in str(OmegaConf.to_container(node)[leaf])
