"""The one way this project starts verl's real trainer on a CPU: ``python -m verl.trainer.main_ppo`` as a subprocess.

``run_main_ppo`` launches a recipe with the plugin's ``cpu`` platform (``VERL_PLATFORM=cpu``), logs everything the
trainer prints to ``<out_dir>/main_ppo.log``, reads the per-step metrics back through verl's file logger
(``VERL_FILE_LOGGER_PATH``), and shows a progress bar that says what the run waits for (Ray and the workers start
for about a minute before step 1). The demo, the dry run's trainer step, the tests and the trainer benchmark all
start ``main_ppo`` here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from verl_reflect.commands import vllm_residue
from verl_reflect.commands.progress import progress_bar
from verl_reflect.commands.recipe import RECIPES_DIR, hydra_quote, override_key
from verl_reflect.resolvers import RECIPE_DIR_ENV

_HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
# A traceback's last line (``hydra.errors.ConfigCompositionException: ...``), also as Ray re-raises it
# (``ray.exceptions.RayTaskError(ValueError): ...``).
_EXCEPTION_LINE = re.compile(r"^(\S*\.)?[A-Z]\w*(Error|Exception|Exit)\b(\([\w.]+\))?:")

# What main_ppo prints as it starts, in order, and what the run waits for after each (the last match wins).
_PHASES = (
    (None, "starting Ray"),
    (re.compile(r"Started a local Ray instance|Connecting to existing Ray cluster"), "starting trainer workers"),
    (re.compile(r"AgentLoopWorker|agent loop workers|rollout server", re.I), "starting rollout servers"),
    (re.compile(r"Training Progress|training/global_step|step:\d"), "training"),
)


def main_ppo_command(config_name: str, overrides: Iterable[str] = (), config_dir: Path = RECIPES_DIR) -> list[str]:
    """``python -m verl.trainer.main_ppo`` on a recipe, as the README launches it (an absolute ``--config-path``:
    Hydra resolves a relative one against verl's package), as an argv for ``subprocess``."""
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(Path(config_dir).resolve()),
        "--config-name",
        config_name,
        *overrides,
    ]


@dataclass
class MainPPORun:
    """A finished ``main_ppo`` run: its exit code, per-step metrics (verl's file logger, one dict per step) and
    output folder (``checkpoints/``, ``main_ppo.log``)."""

    returncode: int
    steps: list[dict]
    out_dir: Path
    seconds: float
    timed_out: bool = False

    @property
    def log_path(self) -> Path:
        return self.out_dir / "main_ppo.log"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def checkpoint(self, step: int | None = None) -> Path:
        """The HF weights saved at ``step`` (default: the last step run): ``.../global_step_N/actor/huggingface``."""
        step = step if step is not None else self.steps[-1]["training/global_step"]
        return self.out_dir / "checkpoints" / f"global_step_{step}" / "actor" / "huggingface"

    def last_error(self) -> str:
        """The error that stopped the run: Hydra's message (the line before its HYDRA_FULL_ERROR hint), else the last
        exception line (``SomeError: ...``; Ray prints the worker's exception last), else the last line. Warnings, which
        verl prints on import, are never it."""
        lines = [line.strip() for line in self.log.splitlines() if line.strip()]
        for i, line in enumerate(lines):
            if line.startswith(_HYDRA_HINT) and i > 0:
                return lines[i - 1][:300]
        errors = [line for line in lines if _EXCEPTION_LINE.match(line) and "Warning" not in line.split(":", 1)[0]]
        return (errors or lines or ["no output"])[-1][:300]


def read_steps(metrics_path: Path) -> list[dict]:
    """verl's file logger: one JSON line per step, ``{"step": N, "data": {metric: value}}``."""
    if not metrics_path.exists():
        return []
    return [json.loads(line)["data"] for line in metrics_path.read_text().splitlines() if line.strip()]


def _phase(log_text: str) -> str:
    phase = _PHASES[0][1]
    for pattern, name in _PHASES[1:]:
        if pattern.search(log_text):
            phase = name
    return phase


def run_main_ppo(
    config_name: str,
    overrides: Iterable[str] = (),
    *,
    out_dir: Path,
    config_dir: Path = RECIPES_DIR,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    total_steps: int | None = None,
    progress: bool = True,
) -> MainPPORun:
    """Run ``main_ppo`` on ``config_name`` with ``overrides`` until it exits, or until ``timeout`` seconds pass (then it
    is stopped with its whole process group, and ``timed_out`` is set); checkpoints go to ``out_dir/checkpoints``.

    ``env`` is added to this process's environment; with ``RAY_ADDRESS`` in it (or in ours), the run attaches to
    that Ray cluster and ``env`` reaches the workers as the job's runtime env. ``total_steps`` sizes the progress
    bar (the recipe's ``trainer.total_training_steps`` if an override sets it).
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, log_path = out_dir / "metrics.jsonl", out_dir / "main_ppo.log"
    metrics_path.unlink(missing_ok=True)
    overrides = list(overrides)
    given = {override_key(o) for o in overrides}
    defaults = {
        "trainer.default_local_dir": out_dir / "checkpoints",
        "trainer.logger": "[console,file]",
        "hydra.run.dir": out_dir / "hydra",  # Hydra's own outputs/<date>/<time> would land in the working directory
    }
    overrides = [f"{key}={value}" for key, value in defaults.items() if key not in given] + overrides
    for override in overrides:
        if override.startswith("trainer.total_training_steps="):
            total_steps = int(override.split("=", 1)[1])
    # TQDM_DISABLE: the trainer's bars would be '\r' frames in its log file; its per-step metrics lines say the same.
    ours = {"VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(metrics_path), "TQDM_DISABLE": "1", **(env or {})}
    full_env = {**os.environ, **ours}
    if full_env.get("RAY_ADDRESS", "local") != "local":
        # Attached to a running cluster, the workers inherit its environment, not ours: what this run sets goes to
        # them as the job's runtime env (verl merges ray_init.runtime_env into its own).
        # The recipe's folder too, which main_ppo's launcher exports only to a Ray of its own (resolvers.py).
        overrides += [
            f"++ray_kwargs.ray_init.runtime_env.env_vars.{key}={hydra_quote(value)}"
            for key, value in {**ours, RECIPE_DIR_ENV: str(Path(config_dir).resolve())}.items()
            if key != "RAY_ADDRESS"
        ]
    else:
        # A Ray of its own unless one is named: without an address, ray.init() joins the cluster that any `ray start`
        # on this machine last recorded (/tmp/ray/ray_current_cluster), and main_ppo's num_cpus/num_gpus then fail.
        full_env["RAY_ADDRESS"] = "local"
    command = main_ppo_command(config_name, overrides, config_dir)
    start = time.monotonic()
    bar = progress_bar(total=total_steps, desc="main_ppo: starting Ray", unit="step", disable=not progress)
    # vLLM's servers leave their shared memory in /dev/shm when the run's Ray ends them: removed after the run.
    with open(log_path, "w") as log, bar, vllm_residue.removing_vllm_shm():
        # A session of its own: on a timeout or Ctrl-C the trainer goes down with the Ray processes it started.
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
        )
        timed_out = False
        try:
            while proc.poll() is None:
                if timeout is not None and time.monotonic() - start > timeout:
                    timed_out = True
                    _stop(proc)
                    break
                time.sleep(0.5)
                if progress:
                    done = len(read_steps(metrics_path))
                    phase = "training" if done else _phase(log_path.read_text(errors="replace"))
                    bar.set_description(f"main_ppo: {phase}", refresh=False)
                    bar.update(done - bar.n)
        except BaseException:
            _stop(proc)
            raise
        steps = read_steps(metrics_path)
        bar.set_description("main_ppo: done" if proc.returncode == 0 else f"main_ppo: exit {proc.returncode}")
        bar.update(len(steps) - bar.n)
    return MainPPORun(proc.returncode, steps, out_dir, time.monotonic() - start, timed_out)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the run's process group (Ray shuts down in its atexit), SIGKILL if it is still there after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
