"""A recipe, read as ``main_ppo`` reads it: found by name, composed with Hydra, overrides parsed as Hydra parses them,
and its agent-loop YAML found as verl's AgentLoopWorker finds it.

``compose`` reads a recipe as ``python -m verl.trainer.main_ppo --config-path recipes --config-name <recipe>``
does (Hydra's compose API, the user's overrides after it, then resolved as main_ppo resolves it);
``compose_unresolved``, the Hydra call itself, is shared with ``dry-run``, which keeps the user's data files.
``loop.py`` builds the loop of a composed recipe.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from verl_reflect import data, resolvers
from verl_reflect.commands.errors import UserError, one_line
from verl_reflect.recipes import RECIPES_DIR

# The embedded tiny model and its small CPU budget: what runs when no --recipe and no --model are given.
DEFAULT_RECIPE = "countdown_tiny_cpu"
EVAL_AGENT_LOOP = data.AGENT_NAME  # eval and build-failures generate first attempts: the plain rows' loop


def recipe_file(recipe: str) -> Path:
    """A shipped recipe's name (``countdown_qwen2.5-1.5b``; ``verl-reflect recipes`` lists them), or a path to a recipe
    YAML."""
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise UserError(f"no recipe {recipe!r} ({path} does not exist); recipes here: {', '.join(recipe_names())}")
    return path.resolve()


def recipe_names(folder: Path = RECIPES_DIR) -> list[str]:
    """The recipes in ``folder``, by name; ``_``-files are the sections recipes share, not recipes."""
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def compose_unresolved(
    config_dir: Path, config_name: str, overrides: list[str], return_hydra_config: bool = False
) -> DictConfig:
    """Hydra's compose of ``config_name`` from ``config_dir`` with ``overrides``, as main_ppo composes it
    (``--config-path``, ``--config-name``, then the overrides); unresolved, with Hydra's own node (``hydra.runtime
    .choices``: the config group options chosen) if ``return_hydra_config``. Raises Hydra's and OmegaConf's errors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    # What main_ppo's launcher exports for ${verl_reflect.recipe_file:...} (hydra.job.env_set, which compose skips);
    # a command's verl servers and main_ppo runs inherit it like verl's workers.
    os.environ[resolvers.RECIPE_DIR_ENV] = str(Path(config_dir).resolve())
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return hydra_compose(
            config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def compose(recipe: str = DEFAULT_RECIPE, overrides: list[str] = ()) -> DictConfig:
    """The recipe's whole trainer config with ``overrides`` (Hydra syntax), resolved as main_ppo resolves it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Only the resolvers the CPU recipes name: importing verl_reflect.register (the trainer's plugins) costs seconds.
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


def parse_override(override: str):
    """A command-line override as Hydra parses it (``key_or_group``, ``value()``); a UserError if it is not one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_override(override)
    except OverrideParseException as err:
        raise UserError(f"not a Hydra override: {override!r} ({one_line(err)})") from None


def override_key(override: str) -> str:
    """The key a Hydra override sets: ``data.train_files`` of ``++data.train_files=x.parquet``."""
    return parse_override(override).key_or_group


AGENT_LOOP_KEY = "actor_rollout_ref.rollout.agent.agent_loop_config_path"


def agent_loop_file(cfg: DictConfig) -> Path:
    """The recipe's agent-loop YAML, found exactly as verl's AgentLoopWorker finds it (``resolve_config_path``: an
    absolute path, else the launch directory, else verl's project root), so a command fails where main_ppo would."""
    from verl.utils.import_utils import resolve_config_path

    name = OmegaConf.select(cfg, AGENT_LOOP_KEY)
    if not name:
        raise UserError(f"the recipe sets no {AGENT_LOOP_KEY}")
    try:
        path = Path(resolve_config_path(str(name)))
    except FileNotFoundError:
        path = Path(str(name)).absolute()
    if not path.is_file():
        raise UserError(
            f"{AGENT_LOOP_KEY}: {path} does not exist (verl takes a relative path from the launch directory, "
            f"{os.getcwd()}: launch from the repository root, or give an absolute path)"
        )
    return path


def agent_loop_entries(cfg: DictConfig) -> tuple[Path, list[DictConfig]]:
    """The agent-loop YAML and its entries, each a ``{name, _target_, ...}`` mapping (else a UserError)."""
    path = agent_loop_file(cfg)
    try:
        entries = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any YAML error is the user's file, not our bug
        raise UserError(f"{path}: not valid YAML ({one_line(err)})") from None
    if not isinstance(entries, ListConfig) or not all(isinstance(e, DictConfig) and "name" in e for e in entries):
        raise UserError(f"{path}: not a list of {{name, _target_, ...}} entries (see recipes/agent_loops/)")
    return path, list(entries)


def agent_loop_entry(cfg: DictConfig, name: str = EVAL_AGENT_LOOP) -> DictConfig:
    """The ``name`` entry of the recipe's agent-loop YAML, as verl's registry keeps it (the last of that name)."""
    path, entries = agent_loop_entries(cfg)
    matches = [e for e in entries if e.name == name]
    if not matches:
        raise UserError(f"{path}: no agent loop named {name}")
    return matches[-1]
