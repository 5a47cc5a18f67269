"""Recipes found from anywhere: ``${verl_reflect.recipe_file:...}`` reads the agent-loop YAML beside the launched
recipe, ``verl-reflect recipes`` shows where the shipped ones are, ``recipes copy`` makes a folder that runs as is;
and progress written to a file is lines, not frames."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from verl_reflect import resolvers
from verl_reflect.commands import cli, recipes
from verl_reflect.commands.progress import progress_bar
from verl_reflect.commands.recipe import AGENT_LOOP_KEY, RECIPES_DIR, compose, compose_unresolved

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_recipes_are_the_repositorys_recipes_folder():
    # An editable install maps the package data verl_reflect.recipes onto recipes/ (pyproject.toml); a wheel ships it.
    assert RECIPES_DIR == REPO / "recipes"


def test_a_copied_recipe_reads_its_own_agent_loop_from_any_launch_folder(tmp_path, monkeypatch, tiny_default):
    lab = tmp_path / "lab"
    written = recipes.copy("countdown_tiny_cpu", lab)
    assert written == [lab / "countdown_tiny_cpu.yaml", lab / "agent_loops" / "countdown_tiny.yaml"]
    monkeypatch.chdir(tmp_path)  # neither the recipe's folder nor the repository
    cfg = compose(str(lab / "countdown_tiny_cpu.yaml"))
    assert OmegaConf.select(cfg, AGENT_LOOP_KEY) == str(lab / "agent_loops" / "countdown_tiny.yaml")
    # Its defaults (_reflect_grpo, platform: cpu) come from the installed recipes, on its search path.
    assert cfg.algorithm.adv_estimator == "reflect_grpo" and cfg.trainer.device == "cpu"
    # A shipped recipe reads the shipped YAML, launched from anywhere.
    assert OmegaConf.select(compose("countdown_tiny_cpu"), AGENT_LOOP_KEY) == str(
        RECIPES_DIR / "agent_loops" / "countdown_tiny.yaml"
    )


def test_the_agent_loop_falls_back_to_the_shipped_one_and_a_missing_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(resolvers.RECIPE_DIR_ENV, str(tmp_path))  # as verl's TaskRunner sees an exported folder
    resolvers.register_resolvers()
    cfg = OmegaConf.create(
        {
            "a": "${verl_reflect.recipe_file:agent_loops/countdown.yaml}",
            "b": "${verl_reflect.recipe_file:agent_loops/nope.yaml}",
        }
    )
    assert cfg.a == str(RECIPES_DIR / "agent_loops" / "countdown.yaml")
    (tmp_path / "agent_loops").mkdir()
    (tmp_path / "agent_loops" / "countdown.yaml").write_text("[]")
    assert cfg.a == str(tmp_path / "agent_loops" / "countdown.yaml")
    with pytest.raises(InterpolationResolutionError, match="agent_loops/nope.yaml is in none of"):
        _ = cfg.b


def test_main_ppos_launcher_exports_the_recipes_folder_to_its_workers():
    # hydra.job.env_set: Hydra sets it in the launcher before main_ppo starts Ray, whose workers inherit it.
    cfg = compose_unresolved(RECIPES_DIR, "countdown_qwen2.5-1.5b", [], return_hydra_config=True)
    assert OmegaConf.to_container(cfg.hydra.job.env_set)[resolvers.RECIPE_DIR_ENV] == "${verl_reflect.recipe_dir:}"


def test_recipes_lists_the_folder_and_every_recipe(capsys):
    assert cli.main(["recipes", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(RECIPES_DIR)
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in (
        "countdown_qwen2.5-1.5b",
        "countdown_tiny_cpu",
        "hidden_word_tiny_cpu",
        "function_calling_phi3.5-mini",
    ):  # noqa: E501
        assert f"  {name} " in out
    assert "_reflect_grpo" not in out


def test_a_copy_never_overwrites_and_an_unknown_recipe_is_one_line(tmp_path, capsys):
    assert cli.main(["recipes", "copy", "countdown_qwen2.5-7b", str(tmp_path)]) == 0
    mine = tmp_path / "agent_loops" / "countdown.yaml"
    mine.write_text("# edited\n")
    assert cli.main(["recipes", "copy", "countdown_qwen2.5-7b", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert mine.read_text() == "# edited\n"
    assert cli.main(["recipes", "copy", "countdown_qwen9-1t", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no recipe 'countdown_qwen9-1t'" in err
    assert not (tmp_path / "x").exists()


def test_progress_to_a_file_is_whole_lines(monkeypatch):
    log = io.StringIO()  # not a terminal, like a CI log or `> log`
    monkeypatch.setattr("sys.stderr", log)
    with progress_bar(total=3, desc="rows", mininterval=0, delay=0) as bar:
        for _ in range(3):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("rows:   0%") and lines[-1].startswith("rows: 100%") and len(lines) >= 4
    log.truncate(0)
    with progress_bar(total=3, desc="quick") as bar:  # done within LOG_INTERVAL_S: no line at all
        bar.update(3)
    assert log.getvalue() == ""
