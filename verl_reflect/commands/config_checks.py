"""The dry run's static checks of a recipe's config, and the records every check shares.

``Recipe`` is the composed recipe with what the checks read (its data rows, tokenizer, agent-loop entries); each
check takes it and returns a ``Check``, one report line, and never raises. The checks here read the config
alone: verl's own validation, batch arithmetic, the estimator, the agent-loop file, the response budget and the
reward function. The checks of the data are in ``data_checks``, the CPU trainer step in ``cpu_step``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from verl_reflect.commands.recipe import RECIPES_DIR

USER_TURN_OVERHEAD = 16  # chat-template tokens around an appended user turn and the next assistant header
PASS, FAIL, SKIP = "✓", "✗", "-"


@dataclass
class Check:
    """One report line: a mark, the check's name, what was found, and for a failure how to fix it."""

    name: str
    mark: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.mark} {self.name}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


@dataclass
class Recipe:
    """The composed recipe and everything the checks share."""

    config_dir: Path
    config_name: str
    overrides: list[str]
    cfg: DictConfig
    data_path: Path | None = None  # the user's parquet (None: rows generated for the recipe's task)
    rows: list[dict] = field(default_factory=list)
    tokenizer: object = None
    agent_loops: list[dict] = field(default_factory=list)


def passed(name: str, detail: str) -> Check:
    return Check(name, PASS, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


def skipped(name: str, detail: str) -> Check:
    return Check(name, SKIP, detail)


def one_line(err: BaseException) -> str:
    """An exception as one line: its first non-empty line, without the exception class for known messages."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def quiet():
    """Silence prints of verl's loaders (they announce every function they load)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def verl_agent_loop_path(cfg: DictConfig) -> Path:
    """The agent-loop YAML, relative paths taken from the launch directory like verl does. Not
    ``recipe.agent_loop_config_path``, which also looks in the repository: the dry run fails where main_ppo would."""
    return Path(str(OmegaConf.select(cfg, "actor_rollout_ref.rollout.agent.agent_loop_config_path"))).absolute()


# -----------------------------------------------------------------------------
# The checks, one function each.


def check_verl_validation(recipe: Recipe) -> Check:
    """main_ppo's own ``validate_config``, and the dataclasses verl builds from the recipe's sections at start."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    name = "verl config validation"
    cfg = recipe.cfg
    try:
        with quiet():  # it prints a success line of its own
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except Exception as err:  # verl raises AssertionError, ValueError, KeyError...: each is one line here
        return failed(name, one_line(err), "change the setting named in the message")
    for section in ("algorithm", "actor_rollout_ref.actor", "actor_rollout_ref.rollout"):
        try:
            omega_conf_to_dataclass(OmegaConf.select(cfg, section))
        except Exception as err:
            return failed(name, f"{section}: {one_line(err)}", f"remove or rename the unknown key under {section}")
    return passed(name, "validate_config and the algorithm/actor/rollout dataclasses accept it")


@dataclass
class BatchPlan:
    """What one training step is on the recipe's GPUs."""

    world_size: int
    prompts: int
    group: int
    mini_batch: int
    micro_per_gpu: int

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    @property
    def mini_rows_per_gpu(self) -> float:
        return self.mini_batch * self.group / self.world_size


def batch_plan(cfg: DictConfig) -> BatchPlan:
    return BatchPlan(
        world_size=int(cfg.trainer.n_gpus_per_node) * int(cfg.trainer.nnodes),
        prompts=int(cfg.data.train_batch_size),
        group=int(cfg.actor_rollout_ref.rollout.n),
        mini_batch=int(cfg.actor_rollout_ref.actor.ppo_mini_batch_size),
        micro_per_gpu=int(cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu or 0),
    )


def check_batch_arithmetic(recipe: Recipe) -> Check:
    """Rows per step over the world size, mini-batches over the step, micro-batches over a GPU's mini-batch."""
    name = "batch arithmetic"
    try:
        plan = batch_plan(recipe.cfg)
    except Exception as err:
        return failed(name, one_line(err), "set data.train_batch_size, rollout.n and the actor's batch sizes")
    where = f"{plan.prompts} prompts x {plan.group} = {plan.rows} rows over {plan.world_size} GPUs"
    if plan.rows % plan.world_size:
        multiple = plan.world_size // math.gcd(plan.world_size, plan.group)  # prompts x n must split over the GPUs
        return failed(
            name,
            f"{where}: not divisible",
            f"data.train_batch_size a multiple of {multiple} (e.g. {multiple * math.ceil(plan.prompts / multiple)}),"
            f" or a GPU count dividing {plan.rows}",
        )
    if plan.mini_batch > plan.prompts or plan.prompts % plan.mini_batch:
        return failed(
            name,
            f"{where}; actor.ppo_mini_batch_size {plan.mini_batch} does not divide train_batch_size {plan.prompts}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size a divisor of {plan.prompts}",
        )
    if (plan.mini_batch * plan.group) % plan.world_size:
        return failed(
            name,
            f"{where}; a mini-batch of {plan.mini_batch} x {plan.group} rows does not split over "
            f"{plan.world_size} GPUs",
            f"actor_rollout_ref.actor.ppo_mini_batch_size such that it x {plan.group} is a multiple of "
            f"{plan.world_size}",
        )
    per_gpu = int(plan.mini_rows_per_gpu)
    if plan.micro_per_gpu < 1 or per_gpu % plan.micro_per_gpu:
        divisors = [d for d in range(1, per_gpu + 1) if per_gpu % d == 0]
        return failed(
            name,
            f"{where}; a GPU's mini-batch of {per_gpu} rows does not split into micro-batches of {plan.micro_per_gpu}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu one of {divisors}",
        )
    return passed(
        name,
        f"{where}; {plan.prompts // plan.mini_batch} mini-batch(es) per step, "
        f"{per_gpu // plan.micro_per_gpu} micro-batch(es) of {plan.micro_per_gpu} per GPU each",
    )


def check_estimator(recipe: Recipe) -> Check:
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, get_adv_estimator_fn

    name = "estimator"
    estimator = str(recipe.cfg.algorithm.adv_estimator)
    try:
        get_adv_estimator_fn(estimator)
    except Exception:
        known = sorted(ADV_ESTIMATOR_REGISTRY)
        close = difflib.get_close_matches(estimator, known, n=1)
        fix = f"algorithm.adv_estimator={close[0]}" if close else f"algorithm.adv_estimator=one of {', '.join(known)}"
        return failed(name, f"{estimator!r} is not registered", fix)
    return passed(name, f"{estimator} is registered")


def check_agent_loop_config(recipe: Recipe) -> Check:
    """The agent-loop YAML exists, lists {name, _target_} entries whose classes import, and holds the default loop."""
    name = "agent-loop config"
    path = verl_agent_loop_path(recipe.cfg)
    setting = "actor_rollout_ref.rollout.agent.agent_loop_config_path"
    if not path.is_file():
        shipped = sorted(str(p.relative_to(RECIPES_DIR.parent)) for p in (RECIPES_DIR / "agent_loops").glob("*.yaml"))
        return failed(
            name,
            f"{path} does not exist (relative paths are taken from the launch directory, {Path.cwd()})",
            f"{setting}=<an existing file>, e.g. one of {', '.join(shipped)}",
        )
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return failed(name, f"{path} is not valid YAML ({one_line(err)})", "fix the YAML syntax")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
        return failed(name, f"{path} is not a list of {{name, _target_, ...}} entries", "see recipes/agent_loops/")
    for entry in entries:
        target = str(entry.get("_target_", ""))
        module, _, cls = target.rpartition(".")
        try:
            getattr(importlib.import_module(module), cls)
        except Exception:
            return failed(
                name, f"entry {entry['name']!r}: _target_ {target!r} does not import", "a module.Class on PYTHONPATH"
            )
    recipe.agent_loops = entries
    names = [str(e["name"]) for e in entries]
    default = str(recipe.cfg.actor_rollout_ref.rollout.agent.default_agent_loop)
    if default not in names:
        return failed(
            name,
            f"default_agent_loop {default!r} is not in {path.name} ({', '.join(names)})",
            f"actor_rollout_ref.rollout.agent.default_agent_loop=one of {', '.join(names)}",
        )
    return passed(name, f"{path.name}: {', '.join(names)}")


def user_turn_tokens(text: str, tokenizer) -> int:
    """Tokens an appended user turn costs: exact under the tokenizer, else its UTF-8 bytes (an upper bound)."""
    count = len(tokenizer.encode(text, add_special_tokens=False)) if tokenizer is not None else len(text.encode())
    return count + USER_TURN_OVERHEAD


def check_response_budget(recipe: Recipe) -> Check:
    """A full attempt, each reflection round's user turns, reflection and retry must fit max_response_length."""
    name = "response budget"
    if not recipe.agent_loops:
        return skipped(name, "skipped (no agent-loop config to read the turn caps from)")
    budget = int(recipe.cfg.data.max_response_length)
    fixes, longest = [], 0
    for entry in recipe.agent_loops:
        attempt, reflection = entry.get("max_attempt_tokens"), entry.get("max_reflection_tokens")
        rounds = int(entry.get("max_reflections", 1))
        if attempt is None or reflection is None:
            continue  # uncapped turns take what is left: nothing to add up
        user_turns = user_turn_tokens(str(entry.get("reflection_prompt", "")), recipe.tokenizer) + user_turn_tokens(
            str(entry.get("retry_prompt", "")), recipe.tokenizer
        )
        needed = int(attempt) + rounds * (int(reflection) + int(attempt) + user_turns)
        longest = max(longest, needed)
        if needed > budget:
            fixes.append((entry["name"], attempt, reflection, rounds, user_turns, needed))
    counted = "tokens" if recipe.tokenizer is not None else "tokens at most (UTF-8 bytes: tokenizer not available)"
    if fixes:
        entry_name, attempt, reflection, rounds, user_turns, needed = fixes[0]
        return failed(
            name,
            f"{entry_name}: attempt {attempt} + {rounds} x (user turns {user_turns} + reflection {reflection} + retry "
            f"{attempt}) = {needed} {counted} > data.max_response_length {budget}",
            f"data.max_response_length={needed} or lower max_attempt_tokens/max_reflection_tokens in "
            f"{verl_agent_loop_path(recipe.cfg).name}",
        )
    return passed(name, f"attempt, reflection and retry need {longest} of {budget} {counted}")


def check_reward_function(recipe: Recipe) -> Check:
    from verl.trainer.ppo.reward import get_custom_reward_fn

    name = "reward function"
    section = recipe.cfg.reward.custom_reward_function
    try:
        with quiet():
            fn = get_custom_reward_fn(recipe.cfg)  # verl's own loader: pkg://module, file paths
    except Exception as err:
        fix = "reward.custom_reward_function.path=pkg://reward_fns reward.custom_reward_function.name=compute_score"
        return failed(name, f"{section.path}:{section.name} does not load ({one_line(err)})", fix)
    if fn is None:
        return passed(name, "verl's default reward manager (no custom_reward_function.path)")
    return passed(name, f"{section.path}:{section.name} loads")
