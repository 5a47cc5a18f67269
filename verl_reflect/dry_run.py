"""``verl-reflect dry-run``: check a recipe on a laptop CPU before GPU time is spent.

    verl-reflect dry-run --config-name <recipe> [hydra overrides] [--data their.parquet] [--rows N]

The recipe is composed exactly as ``python -m verl.trainer.main_ppo`` composes it (same search path, same
overrides), then checked in two parts:

- static: verl's own config validation and dataclass conversion, batch arithmetic for the declared GPU count,
  the response budget against the agent loop's turn caps, the agent-loop config, the estimator, the reward
  function and a verifier for every ``data_source``, the parquet's columns and types, and prompt lengths under
  the recipe's tokenizer where it is available locally (never downloaded);
- dynamic: one real step of ``main_ppo`` on CPU with the recipe unchanged except what must change to run there
  (the embedded tiny model, the ``hf`` rollout, one process, a few rows of the data).

One line per check, then what the real run would do on its GPUs. Exit 0 only if every check passed.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from omegaconf import DictConfig, OmegaConf

from verl_reflect import tiny
from verl_reflect.cli_support import ArgumentParser, UserError, positive_int

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# The CPU recipe is the one place the values a 2-core CPU needs live; the dry run takes these keys from it.
CPU_RECIPE = RECIPES / "countdown_tiny_cpu.yaml"
CPU_KEYS = (
    "actor_rollout_ref.model.path",
    "actor_rollout_ref.model.use_remove_padding",
    "actor_rollout_ref.model.enable_gradient_checkpointing",
    "actor_rollout_ref.model.override_config.attn_implementation",
    "actor_rollout_ref.actor.strategy",
    "actor_rollout_ref.actor.use_torch_compile",
    "actor_rollout_ref.ref.use_torch_compile",
    "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "actor_rollout_ref.rollout.max_num_seqs",
    "actor_rollout_ref.rollout.agent.num_workers",
    "data.dataloader_num_workers",
    "trainer.device",
    "trainer.n_gpus_per_node",
    "trainer.resume_mode",
    "ray_kwargs.ray_init.num_cpus",
    "ray_kwargs.ray_init.num_gpus",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units",
)
MAX_STEP_GROUP = 4  # rollout.n on CPU: enough for a GRPO group with spread, small enough for 2 cores
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


# -----------------------------------------------------------------------------
# Composing the recipe, as main_ppo does.


def compose_recipe(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's compose of ``config_name`` from ``config_dir`` with ``overrides``: main_ppo's config, unresolved."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import verl_reflect.register  # noqa: F401  (the ${verl_reflect.tiny_model:} resolver, estimator, loops)

    if not (config_dir / f"{config_name}.yaml").is_file():
        names = sorted(p.stem for p in config_dir.glob("*.yaml") if not p.name.startswith("_"))
        raise UserError(f"no recipe {config_name!r} in {config_dir} (recipes there: {', '.join(names) or 'none'})")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"cannot compose {config_name}: {one_line(err)}") from None


def agent_loop_config_path(cfg: DictConfig) -> Path:
    """The agent-loop YAML, relative paths taken from the launch directory like verl does."""
    return Path(str(OmegaConf.select(cfg, "actor_rollout_ref.rollout.agent.agent_loop_config_path"))).absolute()


def task_of(recipe: Recipe) -> str | None:
    """The task the recipe trains, from its agent-loop file name (countdown*.yaml, function_calling*.yaml)."""
    name = agent_loop_config_path(recipe.cfg).name
    for task in ("countdown", "function_calling"):
        if name.startswith(task):
            return task
    return None


def generated_rows(task: str | None, count: int) -> list[dict]:
    """A few rows of the recipe's task, for a dry run without ``--data`` (plain rows: reflect_retry)."""
    from verl_reflect import data

    if task == "countdown":
        return data.countdown_rows(count, seed=0, split="train")
    if task == "function_calling":
        return data.function_calling_rows(data.load_xlam(data.SAMPLE_XLAM), split="train")[:count]
    raise UserError("cannot tell the recipe's task from its agent-loop file name: pass --data <train.parquet>")


# -----------------------------------------------------------------------------
# Static checks, one function each. Every one returns a Check and never raises.


def check_verl_validation(recipe: Recipe) -> Check:
    """main_ppo's own ``validate_config``, and the dataclasses verl builds from the recipe's sections at start."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    name = "verl config validation"
    cfg = recipe.cfg
    try:
        with _quiet():  # it prints a success line of its own
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
    path = agent_loop_config_path(recipe.cfg)
    setting = "actor_rollout_ref.rollout.agent.agent_loop_config_path"
    if not path.is_file():
        shipped = sorted(str(p.relative_to(RECIPES.parent)) for p in (RECIPES / "agent_loops").glob("*.yaml"))
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
            f"{agent_loop_config_path(recipe.cfg).name}",
        )
    return passed(name, f"attempt, reflection and retry need {longest} of {budget} {counted}")


def check_reward_function(recipe: Recipe) -> Check:
    from verl.trainer.ppo.reward import get_custom_reward_fn

    name = "reward function"
    section = recipe.cfg.reward.custom_reward_function
    try:
        with _quiet():
            fn = get_custom_reward_fn(recipe.cfg)  # verl's own loader: pkg://module, file paths
    except Exception as err:
        return failed(name, f"{section.path}:{section.name} does not load ({one_line(err)})", _reward_fix())
    if fn is None:
        return passed(name, "verl's default reward manager (no custom_reward_function.path)")
    return passed(name, f"{section.path}:{section.name} loads")


def _reward_fix() -> str:
    return "reward.custom_reward_function.path=pkg://reward_fns reward.custom_reward_function.name=compute_score"


@contextlib.contextmanager
def _quiet():
    """Silence prints of verl's loaders (they announce every function they load)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def check_data_columns(recipe: Recipe) -> Check:
    """The columns and arrow types verl's RLHFDataset and the agent loop read."""
    name = "data columns"
    if recipe.data_path is None:
        return passed(name, f"no --data: {len(recipe.rows)} generated {task_of(recipe)} rows (pass --data for yours)")
    try:
        schema = pq.read_schema(recipe.data_path)
    except (pa.ArrowException, OSError) as err:
        return failed(name, f"{recipe.data_path}: not a readable parquet file ({one_line(err)})", "--data <a parquet>")
    problems = column_problems(schema)
    if problems:
        column, problem, fix = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return failed(name, f"{recipe.data_path.name}: {column} {problem}{more}", fix)
    return passed(name, f"{recipe.data_path.name}: {len(recipe.rows)} rows, columns and types as verl reads them")


def column_problems(schema: pa.Schema) -> list[tuple[str, str, str]]:
    """(column, problem, fix) for every column verl needs that is missing or of the wrong type."""
    write = "write it with `verl-reflect data` / `build-failures`, or as verl_reflect.data._row does"
    problems = []
    for column in ("prompt", "data_source", "reward_model", "extra_info"):
        if column not in schema.names:
            problems.append((column, "is missing", f"add a {column!r} column ({write})"))
    types = {f.name: f.type for f in schema}
    prompt = types.get("prompt")
    if prompt is not None and not (
        pa.types.is_list(prompt)
        and pa.types.is_struct(prompt.value_type)
        and {"role", "content"} <= {f.name for f in prompt.value_type}
    ):
        problems.append(("prompt", f"is {prompt}, not a list of {{role, content}} messages", "chat messages"))
    for column in ("data_source", "agent_name"):
        if column in types and not pa.types.is_string(types[column]) and not pa.types.is_large_string(types[column]):
            problems.append((column, f"is {types[column]}, not a string", f"write {column} as strings"))
    reward_model = types.get("reward_model")
    if reward_model is not None and not (
        pa.types.is_struct(reward_model) and "ground_truth" in {f.name for f in reward_model}
    ):
        problems.append(("reward_model", f"is {reward_model}, not a struct with ground_truth", "{style, ground_truth}"))
    extra_info = types.get("extra_info")
    if extra_info is not None and not pa.types.is_struct(extra_info):
        problems.append(("extra_info", f"is {extra_info}, not a struct", "write extra_info as {index, ...}"))
    return problems


def check_verifiers(recipe: Recipe) -> Check:
    """Every data_source in the data has a verifier under the recipe's reward dispatch (reward_fns)."""
    name = "verifiers"
    sources = sorted({str(row.get("data_source")) for row in recipe.rows})
    if not sources:
        return skipped(name, "skipped (no data_source column to check)")
    if str(recipe.cfg.reward.custom_reward_function.path) != "pkg://reward_fns":
        return skipped(name, "skipped (the recipe's reward function is not verl-reflect's data_source dispatch)")
    import reward_fns

    for source in sources:
        try:
            reward_fns.get_compute_score(source)
        except ValueError as err:
            message = one_line(err)
            detail, _, fix = message.partition(": add ")
            return failed(name, detail, f"add {fix}" if fix else "add a reward module for it")
    return passed(name, f"{', '.join(sources)}: each has a compute_score")


def check_agent_names(recipe: Recipe) -> Check:
    """Every row's agent_name is an entry of the agent-loop config (verl looks rows up by it)."""
    name = "agent names"
    used = sorted({str(row["agent_name"]) for row in recipe.rows if row.get("agent_name")})
    if not recipe.agent_loops:
        return skipped(name, "skipped (no agent-loop config)")
    known = {str(e["name"]) for e in recipe.agent_loops}
    missing = [n for n in used if n not in known]
    if missing:
        return failed(
            name,
            f"rows name agent loop(s) {', '.join(missing)} that {agent_loop_config_path(recipe.cfg).name} lacks",
            f"add an entry named {missing[0]!r} to the agent-loop YAML",
        )
    default = recipe.cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    return passed(name, f"{', '.join(used) or f'none set: every row runs {default}'}")


def load_tokenizer(recipe: Recipe) -> str:
    """The recipe's tokenizer if it is on this machine (never downloaded); returns why not when it is not."""
    from transformers import AutoTokenizer

    path = str(recipe.cfg.actor_rollout_ref.model.path)
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        recipe.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return ""
    except Exception:
        return f"tokenizer {path} not available offline"
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def check_prompt_lengths(recipe: Recipe, why_no_tokenizer: str) -> Check:
    """Each prompt, rendered by the chat template as verl renders it, against data.max_prompt_length."""
    name = "prompt lengths"
    if recipe.tokenizer is None:
        return skipped(name, f"skipped ({why_no_tokenizer})")
    limit = int(recipe.cfg.data.max_prompt_length)
    kwargs = recipe.cfg.data.get("apply_chat_template_kwargs") or {}
    kwargs = OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else dict(kwargs)
    tokenizer = recipe.tokenizer
    lengths = [
        len(
            tokenizer.encode(
                tokenizer.apply_chat_template(
                    list(row["prompt"]), add_generation_prompt=True, tokenize=False, **kwargs
                ),
                add_special_tokens=False,
            )
        )
        for row in recipe.rows
    ]
    longest = max(lengths)
    over = sum(length > limit for length in lengths)
    if over:
        consequence = "dropped silently" if recipe.cfg.data.filter_overlong_prompts else "an error at start"
        return failed(
            name,
            f"{over} of {len(lengths)} prompts exceed data.max_prompt_length {limit} (longest {longest}): "
            f"{consequence}",
            f"data.max_prompt_length={longest} or shorter prompts",
        )
    return passed(name, f"longest of {len(lengths)} prompts is {longest} tokens <= {limit}")


# -----------------------------------------------------------------------------
# The dynamic check: one real trainer step on CPU.


def cpu_overrides() -> list[str]:
    """The CPU recipe's values of the keys a CPU needs, as ``++key=value`` overrides (add or replace)."""
    values = yaml.safe_load(CPU_RECIPE.read_text())
    overrides = []
    for key in CPU_KEYS:
        node = values
        for part in key.split("."):
            node = node[part]
        overrides.append(f"++{key}={json.dumps(node) if isinstance(node, bool) else node}")
    return overrides


def step_overrides(recipe: Recipe, train: Path, out_dir: Path, rows: int) -> list[str]:
    """What a one-step CPU run changes: the CPU keys, a batch of ``rows`` prompts, one step, no save/validation."""
    cfg = recipe.cfg
    group = step_group(cfg)
    trajectories = rows * group

    def micro(key: str) -> str:  # the recipe's micro-batch if it splits the step's rows, else one micro-batch
        value = OmegaConf.select(cfg, key)
        return f"{key}={value if value and trajectories % int(value) == 0 else trajectories}"

    return [
        *cpu_overrides(),
        "trainer.nnodes=1",
        f"data.train_files={train}",
        f"data.val_files={train}",
        f"data.train_batch_size={rows}",
        f"actor_rollout_ref.rollout.n={group}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={rows}",
        micro("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"),
        micro("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
        micro("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_config_path(cfg)}",
        "trainer.total_training_steps=1",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={out_dir / 'checkpoints'}",
        "trainer.logger=[console,file]",
    ]


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def step_rows(recipe: Recipe, rows: int) -> list[dict]:
    """The first ``rows`` rows, as plain rows: a failure set's stored attempts are in the recipe model's tokens,
    which the tiny model cannot replay, so on CPU every row generates its own first attempt."""
    from verl_reflect import data

    plain = []
    for row in recipe.rows[:rows]:
        row = {k: v for k, v in row.items() if k != data.FAILED_ATTEMPTS}
        if row.get("agent_name") == data.FAILURES_AGENT_NAME:
            row["agent_name"] = data.AGENT_NAME
        plain.append(row)
    return plain


def check_trainer_step(recipe: Recipe, rows: int, timeout: int) -> Check:
    """``python -m verl.trainer.main_ppo`` for one step on CPU; its metrics come back through verl's file logger."""
    from verl_reflect import data

    name = "trainer step"
    if len(recipe.rows) < rows:
        return failed(
            name, f"the data has {len(recipe.rows)} rows, the step needs {rows}", f"--rows {len(recipe.rows)}"
        )
    out_dir = Path(tempfile.mkdtemp(prefix="verl-reflect-dry-run-"))
    train = out_dir / "train.parquet"
    data.write_parquet(step_rows(recipe, rows), train)
    ours = step_overrides(recipe, train, out_dir, rows)
    replaced = {override_key(o) for o in ours}
    command = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(recipe.config_dir),
        "--config-name",
        recipe.config_name,
        *[o for o in recipe.overrides if override_key(o) not in replaced],
        *ours,
    ]
    metrics_path, log_path = out_dir / "metrics.jsonl", out_dir / "main_ppo.log"
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return failed(name, f"no step within {timeout} s; log: {log_path}", "--step-timeout or a less busy machine")
    seconds = time.monotonic() - start
    steps = (
        [json.loads(line)["data"] for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    )
    if proc.returncode != 0 or not steps:
        return failed(name, f"main_ppo exited with code {proc.returncode}: {last_error(log_path)}", f"see {log_path}")
    metrics = steps[0]
    reflect = {k: v for k, v in metrics.items() if k.startswith("reflect/")}
    not_finite = [k for k, v in reflect.items() if not math.isfinite(v)]
    if not reflect or not_finite:
        what = ", ".join(not_finite) if not_finite else "no reflect/* metric"
        return failed(name, f"step 1 logged {what}; log: {log_path}", "check the trainer (trainer.v1.trainer_mode)")
    shutil.rmtree(out_dir, ignore_errors=True)
    # The random tiny model rarely solves a retry, so a step often has no advantage to train on: say so, since
    # then the actor update did not run (reflect_sync skips it).
    update = "actor updated" if not reflect.get("reflect/skipped_update") else "actor update skipped (no gradient)"
    return passed(
        name,
        f"1 step of main_ppo on CPU in {seconds:.0f} s ({rows} prompts x n={step_group(recipe.cfg)}, "
        f"tiny model): reflected {reflect.get('reflect/reflected', float('nan')):.2f}, "
        f"rows with gradient {reflect.get('reflect/rows_with_gradient', float('nan')):.2f}, {update}",
    )


def step_group(cfg: DictConfig) -> int:
    """rollout.n on CPU: the recipe's, capped."""
    return min(int(cfg.actor_rollout_ref.rollout.n), MAX_STEP_GROUP)


def last_error(log_path: Path) -> str:
    """The last line of the log that names an error (Ray prints the worker's exception last), else its last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


# -----------------------------------------------------------------------------
# The report.


def gpu_summary(cfg: DictConfig) -> str:
    """What the real run does per step on its GPUs."""
    try:
        plan = batch_plan(cfg)
        prompt, response = int(cfg.data.max_prompt_length), int(cfg.data.max_response_length)
    except Exception:
        return "on GPUs: cannot tell (batch settings missing)"
    micro = plan.mini_rows_per_gpu / plan.micro_per_gpu if plan.micro_per_gpu else float("nan")
    return (
        f"on GPUs: world size {plan.world_size}; {plan.rows} rows per step ({plan.prompts} prompts x {plan.group}); "
        f"at most {plan.rows * (prompt + response):,} tokens per step ({plan.rows} x ({prompt} + {response})); "
        f"{micro:g} micro-batch(es) of {plan.micro_per_gpu} per GPU per mini-batch"
    )


def read_data(recipe: Recipe, rows: int) -> None:
    """The user's parquet (all rows: every data_source and prompt is checked), or generated rows of the task."""
    if recipe.data_path is None:
        recipe.rows = generated_rows(task_of(recipe), rows)
        return
    if not recipe.data_path.is_file():
        raise UserError(f"{recipe.data_path}: no such file (the training data: --data or data.train_files)")
    try:
        recipe.rows = pq.read_table(recipe.data_path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{recipe.data_path}: not a readable parquet file ({one_line(err)})") from None


def guarded(check, *args) -> Check:
    """Run one check; a crash inside it is a failed line naming the check, never a traceback."""
    try:
        return check(*args)
    except Exception as err:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return failed(name, f"the check itself failed: {type(err).__name__}: {one_line(err)}", "report this to us")


def static_checks(recipe: Recipe) -> list[Check]:
    why_no_tokenizer = load_tokenizer(recipe)
    checks = [
        guarded(check, recipe)
        for check in (
            check_verl_validation,
            check_batch_arithmetic,
            check_estimator,
            check_agent_loop_config,  # before the budget and agent-name checks: it reads the turn caps they use
            check_response_budget,
            check_reward_function,
            check_data_columns,
        )
    ]
    if checks[-1].mark == FAIL:  # the row checks below read the columns this one found missing or mistyped
        return checks
    return [
        *checks,
        guarded(check_verifiers, recipe),
        guarded(check_agent_names, recipe),
        guarded(check_prompt_lengths, recipe, why_no_tokenizer),
    ]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="verl-reflect dry-run",
        description=__doc__.split("\n\n")[0],
        epilog="Anything else is a hydra override, as main_ppo takes it (key=value, +key=value).",
    )
    parser.add_argument("--config-name", required=True, help="the recipe, as main_ppo's --config-name")
    parser.add_argument("--config-path", type=Path, default=RECIPES, help="its folder (default: this repo's recipes/)")
    parser.add_argument("--data", type=Path, help="a training parquet to check and step on (default: generated rows)")
    parser.add_argument("--rows", type=positive_int, default=2, help="prompts in the CPU step (default 2)")
    parser.add_argument("--static-only", action="store_true", help="skip the CPU trainer step")
    parser.add_argument("--step-timeout", type=positive_int, default=1200, help="seconds for the CPU step")
    return parser


def main(argv: list[str] | None = None) -> int:
    # The report is the output: verl's import-time notices (no accelerator, optional engines missing, critic
    # disabled) say nothing about the recipe.
    logging.getLogger("verl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        raise UserError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    config_dir = args.config_path.resolve()
    if args.data is not None:  # the data the run will train on: verl must see it too
        args.data = args.data.resolve()
        overrides = [o for o in overrides if override_key(o) != "data.train_files"] + [f"data.train_files={args.data}"]
    cfg = compose_recipe(config_dir, args.config_name, overrides)
    given = [o.split("=", 1)[1] for o in overrides if override_key(o) == "data.train_files"]
    if args.data is None and given:  # data.train_files on the command line instead of --data: check that file
        args.data = Path(given[-1]).absolute()
    for key in ("data.train_files", "data.val_files"):  # a recipe that leaves them to the command still validates
        if OmegaConf.is_missing(cfg, key) or tiny.is_required(cfg, key):
            OmegaConf.update(cfg, key, str(args.data or "dry-run-generated.parquet"))
    recipe = Recipe(config_dir, args.config_name, overrides, cfg, data_path=args.data)
    try:
        OmegaConf.resolve(recipe.cfg)
    except Exception as err:
        raise UserError(f"cannot resolve {args.config_name}: {one_line(err)}") from None
    read_data(recipe, args.rows)

    print(f"dry run of {args.config_name} ({config_dir})")
    start = time.monotonic()
    checks = static_checks(recipe)
    for check in checks:
        print(check.line(), flush=True)
    if args.static_only:
        step = skipped("trainer step", "skipped (--static-only)")
    elif any(check.mark == FAIL for check in checks):
        step = skipped("trainer step", "skipped (fix the failures above first)")
    else:
        print("  (one main_ppo step on CPU: about 2 minutes on 2 cores)", flush=True)
        step = guarded(check_trainer_step, recipe, args.rows, args.step_timeout)
    checks.append(step)
    print(step.line())
    print(gpu_summary(recipe.cfg))
    failures = sum(check.mark == FAIL for check in checks)
    verdict = "passed" if not failures else f"{failures} check(s) failed"
    print(f"{verdict} in {time.monotonic() - start:.0f} s")
    return 1 if failures else 0
