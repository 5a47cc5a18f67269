"""The dry run's static checks of a recipe's config, and the records every check shares.

``DryRun`` is the composed recipe with what the checks read (its data rows, tokenizer, agent-loop entries); each
check takes it and returns a ``Check``, one report line, and never raises. The checks here read the config
alone: verl's own validation, batch arithmetic, the estimator, the agent-loop file, the response budget and the
reward function. The checks of the data are in ``data_checks``, the CPU trainer step in ``cpu_step``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from verl_reflect.commands.errors import UserError, one_line
from verl_reflect.commands.recipe import AGENT_LOOP_KEY, RECIPES_DIR, agent_loop_entries

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
class DryRun:
    """A dry run in progress: the composed recipe and everything its checks share (data rows, tokenizer, agent-loop
    entries)."""

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


@contextlib.contextmanager
def quiet():
    """Silence prints of verl's loaders (they announce every function they load)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


# -----------------------------------------------------------------------------
# The checks, one function each.


def check_verl_validation(recipe: DryRun) -> Check:
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


def check_batch_arithmetic(recipe: DryRun) -> Check:
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


def check_estimator(recipe: DryRun) -> Check:
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


def check_agent_loop_config(recipe: DryRun) -> Check:
    """The agent-loop YAML exists, lists {name, _target_} entries whose classes import, and holds the default loop."""
    from hydra.utils import get_class

    name = "agent-loop config"
    try:
        path, entries = agent_loop_entries(recipe.cfg)
    except UserError as err:
        loops = (RECIPES_DIR / "agent_loops").glob("*.yaml")
        shipped = sorted(f"${{verl_reflect.recipe_file:{p.relative_to(RECIPES_DIR)}}}" for p in loops)
        return failed(name, str(err), f"{AGENT_LOOP_KEY}=<an existing file>, e.g. one of {', '.join(shipped)}")
    for entry in entries:
        try:
            get_class(str(entry.get("_target_")))
        except Exception:
            target = entry.get("_target_")
            detail = f"entry {entry.name!r}: _target_ {target!r} does not import"
            return failed(name, detail, "a module.Class on PYTHONPATH")
    recipe.agent_loops = [OmegaConf.to_container(entry) for entry in entries]
    names = [str(entry.name) for entry in entries]
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


def check_response_budget(recipe: DryRun) -> Check:
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
            f"the agent-loop YAML",
        )
    return passed(name, f"attempt, reflection and retry need {longest} of {budget} {counted}")


def check_reward_function(recipe: DryRun) -> Check:
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
    if str(section.path) == "pkg://reward_fns" and not _ours(sys.modules.get("reward_fns")):
        # reward_fns is a top-level name; a distribution installed over ours could ship one too.
        where = getattr(sys.modules.get("reward_fns"), "__file__", "?")
        fix = "pip install --force-reinstall verl-reflect"
        return failed(name, f"reward_fns is imported from {where}, not verl-reflect's", fix)
    return passed(name, f"{section.path}:{section.name} loads")


def _ours(module) -> bool:
    """``module`` (``reward_fns``) was installed with this ``verl_reflect``: it sits beside it and has its dispatch."""
    import verl_reflect

    beside = module is not None and Path(module.__file__).parent.parent == Path(verl_reflect.__file__).parent.parent
    return beside and callable(getattr(module, "get_compute_score", None))


def check_weight_sync_bucket(recipe: DryRun) -> Check:
    """The model's largest parameter tensor, read from its safetensors headers or config (never the weights), fits
    the vLLM weight-sync bucket wherever verl syncs through shared memory (a CPU: ``trainer.device=cpu``)."""
    from verl_reflect.cpu import weight_bucket

    name = "weight-sync bucket"
    cfg = recipe.cfg
    rollout = str(cfg.actor_rollout_ref.rollout.name)
    if rollout != "vllm":
        return skipped(name, f"skipped (the {rollout} rollout takes weights without vLLM's buckets)")
    model = str(cfg.actor_rollout_ref.model.path)
    tensor = weight_bucket.largest_tensor(model)
    if tensor is None:
        return skipped(name, f"skipped (model {model} is not on this machine to read its tensor shapes)")
    bucket_mb = int(OmegaConf.select(cfg, weight_bucket.BUCKET_KEY))
    where = f"largest tensor {tensor.describe()}, bucket {bucket_mb} MiB"
    if tensor.sync_bytes <= bucket_mb * weight_bucket.MIB:
        return passed(name, f"{where}: fits")
    if str(cfg.trainer.device) != "cpu":
        # Over CUDA IPC verl sends a tensor larger than the bucket on its own.
        return passed(name, f"{where}: sent on its own over CUDA IPC (a CPU run needs the bucket to hold it)")
    return failed(
        name,
        f"{where}: does not fit, and through shared memory (no CUDA IPC) the first weight sync fails",
        f"{weight_bucket.BUCKET_KEY}={weight_bucket.needed_megabytes(tensor)} (or drop the override: +cpu=vllm "
        "sizes it from the model)",
    )
