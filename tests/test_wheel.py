"""The package as another lab installs it: a wheel built from this tree, installed into a fresh folder outside the
clone, and every command run from a temporary folder of its own, as a user would.

- the wheel carries the recipes, their agent-loop YAMLs and the platform/cpu groups (package data
  ``verl_reflect.recipes``), and ``verl-reflect recipes --path`` points into the install, not the clone;
- every shipped recipe passes the dry run's static checks from there, and ``countdown_tiny_cpu``, copied into a folder
  of its own, its trainer step;
- the README's "Sharing a recipe" block runs as written;
- the dry run's trainer step (``python -m verl.trainer.main_ppo``, one step) on a recipe copied out of the wheel
  (``recipes copy``) into a folder of its own, launched from another one, runs with the copy's own agent-loop YAML.

One wheel build and install for the file; the trainer launches are about 2 minutes each on 2 cores.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[1]
BUILD_LEFTOVERS = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
RUN_OUTPUTS = {"data", "demo_out", "eval_out", "checkpoints", "outputs"}  # what the README's commands write at the root


def not_source(folder: str, names: list[str]) -> set[str]:
    return BUILD_LEFTOVERS(folder, names) | (RUN_OUTPUTS & set(names) if Path(folder) == REPO else set())


class Installed:
    """The wheel installed into ``target``; commands run in ``work`` with the install first on the path."""

    def __init__(self, root: Path):
        src, dist = root / "src", root / "dist"
        # A copy of the tree: an in-tree build leaves build/ behind, whose stale files a later build would ship.
        shutil.copytree(REPO, src, ignore=not_source)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(dist)], check=True)
        (self.wheel,) = dist.glob("verl_reflect-*.whl")
        self.target = root / "site"
        subprocess.run([*pip, "install", "--no-deps", "--target", str(self.target), str(self.wheel)], check=True)
        self.work = root / "work"
        self.work.mkdir()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.target),  # before site-packages, where the clone's editable install is
            "PATH": f"{self.target / 'bin'}{os.pathsep}{os.environ['PATH']}",
        }

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory, tiny_model_dir) -> Installed:
    installed = Installed(tmp_path_factory.mktemp("wheel"))
    installed.env["VERL_REFLECT_CACHE"] = str(tiny_model_dir.parent)  # the session's tiny model, not ~/.cache
    return installed


def test_the_wheel_carries_the_recipes_and_the_commands_find_them_there(installed):
    shipped = sorted(str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").rglob("*.yaml"))
    in_wheel = installed.target / "verl_reflect" / "recipes"
    assert sorted(str(p.relative_to(in_wheel)) for p in in_wheel.rglob("*.yaml")) == shipped
    for name in shipped:  # the same files, byte for byte
        assert (in_wheel / name).read_bytes() == (REPO / "recipes" / name).read_bytes()
    listing = installed.run("verl-reflect recipes --path")
    assert listing.returncode == 0, listing.stderr
    assert Path(listing.stdout.strip()) == in_wheel


def test_every_shipped_recipe_passes_the_static_dry_run_from_the_wheel(installed):
    script = (
        "import sys, verl_reflect\n"
        "from verl_reflect.commands import cli, recipe\n"
        f"assert verl_reflect.__file__.startswith({str(installed.target)!r}), verl_reflect.__file__\n"
        "failed = [n for n in recipe.recipe_names() if cli.main(['dry-run', '--static-only', '--config-name', n])]\n"
        "print('recipes:', len(recipe.recipe_names()), 'failed:', failed)\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = installed.run(f"python -c {shlex.quote(script)}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shipped = [p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("_")]
    assert f"recipes: {len(shipped)} failed: []" in result.stdout


def test_the_readme_sharing_block_runs_as_written(installed):
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Sharing a recipe\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```bash\n(.*?)^```", section, flags=re.M | re.S)
    result = installed.run("set -euo pipefail\n" + block)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    copied = installed.work / "my_recipes"
    assert (copied / "countdown_qwen2.5-7b.yaml").is_file()
    assert (copied / "agent_loops" / "countdown.yaml").is_file()
    assert "passed" in result.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def lab(installed) -> Path:
    """``countdown_tiny_cpu`` as a lab receives and edits it: ``recipes copy`` into a folder of its own, and its
    agent loop told never to reflect (the shipped one reflects once), so a run shows which YAML it read."""
    copied = installed.run("verl-reflect recipes copy countdown_tiny_cpu lab")
    assert copied.returncode == 0, copied.stderr
    loop_yaml = installed.work / "lab" / "agent_loops" / "countdown_tiny.yaml"
    assert "max_reflections: 1" in loop_yaml.read_text()
    loop_yaml.write_text(loop_yaml.read_text().replace("max_reflections: 1", "max_reflections: 0"))
    return installed.work / "lab"


def test_a_shared_cpu_recipe_passes_the_dry_runs_trainer_step_with_its_own_agent_loop(installed, lab):
    """The dry run's real step, ``python -m verl.trainer.main_ppo`` for one step, on the copy, from another folder.
    Its defaults list ``platform: cpu`` already: the step must not add it twice (Hydra stopped there before). It
    reflected on no row: the path verl's TaskRunner resolved (``${verl_reflect.recipe_file:...}``) is the copy's, so
    the launched recipe's folder reached it (``hydra.job.env_set``). One step for every recipe: the step swaps in the
    tiny model, so the shipped recipes differ there only in batch sizes and their task's agent-loop YAML, which
    ``tests/test_recipes.py`` builds for each task as verl's AgentLoopWorker does; the vLLM step is composed in
    ``tests/test_dry_run.py``, and vLLM runs main_ppo in ``tests/test_vllm_cpu.py``."""
    elsewhere = installed.work / "elsewhere"
    elsewhere.mkdir()
    result = installed.run(
        f"cd {elsewhere} && verl-reflect dry-run --config-path {lab} --config-name countdown_tiny_cpu"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (step,) = [line for line in result.stdout.splitlines() if line.startswith("✓ trainer step: ")]
    assert step.startswith("✓ trainer step: 1 step of main_ppo on CPU"), step
    assert "reflected 0.00" in step and "actor update skipped" in step, step
    assert "Traceback" not in result.stdout + result.stderr
