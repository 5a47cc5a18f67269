"""The dry run's dynamic check: one real ``main_ppo`` step on CPU with the recipe unchanged except what a CPU needs.

What a CPU needs (the embedded tiny model, the ``hf`` rollout, one process) is ``recipes/platform/cpu.yaml``, added
as ``+platform=cpu``; the step runs a few rows of the data with ``rollout.n`` capped, and its metrics come back through
verl's file logger. Wherever vLLM's CPU build is installed, a vLLM recipe keeps its own rollout, with only the CPU
changes of ``recipes/cpu/vllm.yaml`` (``+cpu=vllm``), so a shared recipe's rollout section runs before GPU time.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from verl_reflect.commands.config_checks import Check, DryRun, failed, passed
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.commands.recipe import RECIPES_DIR, compose_unresolved, override_key
from verl_reflect.cpu import vllm_sync

# What a CPU needs, as a Hydra config group option any recipe takes (``+platform=cpu``): its one source.
PLATFORM_DIR = RECIPES_DIR / "platform"
SHIPPED_SEARCHPATH = "pkg://verl_reflect.recipes"  # the installed recipes, where the platform and cpu groups are
CPU_PLATFORM = "cpu"


# The CPU changes a recipe's vLLM rollout needs, as a Hydra config group on top of the platform (their one place).
VLLM_ON_CPU = "+cpu=vllm"
ROLLOUTS = ("recipe", "hf")  # --step-rollout: the recipe's own (vLLM), or the CPU platform's hf


def step_rollout(cfg: DictConfig, requested: str | None) -> tuple[str, str]:
    """The rollout the step runs (``vllm`` or ``hf``) and why: the recipe's vLLM rollout unless ``requested`` is
    ``hf``, the recipe's rollout is not vLLM, or vLLM's CPU build is not installed here."""
    name = cfg.actor_rollout_ref.rollout.name
    if requested == "hf":
        return "hf", "--step-rollout hf"
    if name != "vllm":
        return "hf", f"the recipe's rollout is {name}"
    if not vllm_sync.cpu_build_installed():
        return "hf", "vLLM's CPU build is not installed here: packaging/install-cpu-test-deps.sh"
    return "vllm", "the recipe's, with recipes/cpu/vllm.yaml"


def platform_overrides(recipe: DryRun, rollout: str = "hf", platform: str = CPU_PLATFORM) -> list[str]:
    """``+platform=<platform>`` (``platform=<platform>`` where the recipe's defaults already choose one, as the CPU
    recipes' do: Hydra refuses a group twice) and ``+cpu=vllm`` to keep the recipe's vLLM rollout, with the shipped
    recipes on Hydra's search path when the recipe lives elsewhere (a recipe shared from another lab): the groups are
    looked up there."""
    own = OmegaConf.load(recipe.config_dir / f"{recipe.config_name}.yaml")  # composing drops the hydra node
    searchpath = list(OmegaConf.select(own, "hydra.searchpath") or [])
    if recipe.config_dir.resolve() != RECIPES_DIR.resolve() and SHIPPED_SEARCHPATH not in searchpath:
        searchpath_override = [f"hydra.searchpath=[{','.join([*searchpath, SHIPPED_SEARCHPATH])}]"]
    else:
        searchpath_override = []
    hydra = compose_unresolved(recipe.config_dir, recipe.config_name, searchpath_override, return_hydra_config=True)
    add = "" if hydra.hydra.runtime.choices.get("platform") is not None else "+"
    return [f"{add}platform={platform}", *([VLLM_ON_CPU] if rollout == "vllm" else []), *searchpath_override]


def step_group(cfg: DictConfig, platform: str = CPU_PLATFORM) -> int:
    """rollout.n on CPU: the recipe's, at most the platform's."""
    cap = OmegaConf.load(PLATFORM_DIR / f"{platform}.yaml").actor_rollout_ref.rollout.n
    return min(int(cfg.actor_rollout_ref.rollout.n), int(cap))


def step_overrides(recipe: DryRun, train: Path, rows: int, rollout: str = "hf") -> list[str]:
    """What a one-step CPU run changes: the CPU platform (``rollout``: ``step_rollout``'s), a batch of ``rows``
    prompts, one step, no save/validation."""
    cfg = recipe.cfg
    group = step_group(cfg)
    trajectories = rows * group

    def micro(key: str) -> str:  # the recipe's micro-batch if it splits the step's rows, else one micro-batch
        value = OmegaConf.select(cfg, key)
        return f"{key}={value if value and trajectories % int(value) == 0 else trajectories}"

    return [
        *platform_overrides(recipe, rollout),
        f"data.train_files={train}",
        f"data.val_files={train}",
        f"data.train_batch_size={rows}",
        f"actor_rollout_ref.rollout.n={group}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={rows}",
        micro("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"),
        micro("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
        micro("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
        "trainer.total_training_steps=1",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
    ]


def step_rows(recipe: DryRun, rows: int) -> list[dict]:
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


def check_trainer_step(recipe: DryRun, rows: int, timeout: int, rollout: str | None = None) -> Check:
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
