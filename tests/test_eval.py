"""``verl-reflect eval`` / ``demo`` end to end on the tiny model, resuming, the comparison table, CLI errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_reflect import data
from verl_reflect.commands import cli, evaluate, loop, recipe, report, run_args, runner, trajectories
from verl_reflect.commands.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Short turns so a real-model budget (the path taken with --model) stays fast on the tiny model.
SMALL = ["--max-attempt-tokens", "8", "--max-reflection-tokens", "6", "--response-length", "160"]


@pytest.fixture
def count_trajectories(monkeypatch):
    """Count the trajectories really generated (not skipped by resuming)."""
    calls = []
    original = runner.Runner.trajectory

    async def counted(self, row, sampling, **loop_kwargs):
        calls.append(row["prompt"][-1]["content"])
        return await original(self, row, sampling, **loop_kwargs)

    monkeypatch.setattr(runner.Runner, "trajectory", counted)
    return calls


def _records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / trajectories.JSONL_NAME).read_text().splitlines()]


def _table_value(stdout: str, row_name: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith(row_name))
    return line[len(row_name) :].split()


# ----------------------------------------------------------------------------- end to end


def test_eval_end_to_end_on_the_tiny_model(tmp_path, tiny_default, capsys):
    assert cli.main(["eval", "--limit", "3", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert _table_value(out, "N") == ["3"]
    assert _table_value(out, "first-try accuracy") and _table_value(out, "gain (points)")
    records = _records(tmp_path)
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    for r in records:
        assert r["model"] == run_args.TINY_LABEL and r["data_source"] == "countdown"
        assert r["turns"][0]["kind"] == "attempt" and isinstance(r["turns"][0]["text"], str)
        if r["first_try_correct"]:
            continue
        # Random weights fail; every failure reflects once (within the budget) and retries.
        assert [t["kind"] for t in r["turns"]] == ["attempt", "reflection", "retry"]
        assert r["turns"][1]["correct"] is None
        # The tiny default caps turns at 32 / 24 tokens.
        attempt, reflection, retry = [n for kind, n, _ in r["layout"] if kind != "user"]
        assert 0 < attempt <= 32 and 0 < retry <= 32 and 0 < reflection == r["reflection_tokens"] <= 24
        # Exactly the reflection carries mask=1.
        assert [(kind, masked == n) for kind, n, masked in r["layout"] if masked] == [("reflection", True)]
        assert sum(n for _, n, _ in r["layout"]) == r["response_tokens"]
    assert (tmp_path / report.PNG_NAME).read_bytes()[:8] == PNG_MAGIC


def test_resume_runs_only_new_rows_and_survives_a_torn_line(tmp_path, tiny_default, count_trajectories, capsys):
    args = ["eval", "--out-dir", str(tmp_path), "--max-attempt-tokens", "4", "--max-reflection-tokens", "4"]
    assert cli.main(args + ["--limit", "4"]) == 0
    assert len(count_trajectories) == 4
    assert _table_value(capsys.readouterr().out, "N") == ["4"]
    first = (tmp_path / trajectories.JSONL_NAME).read_text().splitlines()

    assert cli.main(args + ["--limit", "8"]) == 0
    assert len(count_trajectories) == 8  # 4 new, the first 4 skipped
    out = capsys.readouterr().out
    assert "4 of 8 rows already in" in out and _table_value(out, "N") == ["8"]
    lines = (tmp_path / trajectories.JSONL_NAME).read_text().splitlines()
    assert lines[:4] == first and len(lines) == 8

    # A run killed mid-write leaves half a line: that row is redone and the file is clean again.
    torn = "\n".join(lines[:7]) + "\n" + lines[7][: len(lines[7]) // 2]
    (tmp_path / trajectories.JSONL_NAME).write_text(torn)
    assert len(trajectories.read_jsonl(tmp_path / trajectories.JSONL_NAME)) == 7
    capsys.readouterr()
    assert cli.main(args + ["--limit", "8"]) == 0
    assert len(count_trajectories) == 9
    records = _records(tmp_path)  # every line parses
    assert sorted(r["index"] for r in records) == list(range(8))
    assert _table_value(capsys.readouterr().out, "N") == ["8"]


def test_resume_refuses_results_for_other_data(tmp_path, tiny_default, capsys):
    args = ["eval", "--out-dir", str(tmp_path), "--limit", "1", "--max-attempt-tokens", "2"]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args + ["--seed", "1"]) == 2  # another generated split: row 0 is another problem
    err = capsys.readouterr().err.strip()
    assert "other data" in err and len(err.splitlines()) == 1


def test_two_models_side_by_side(tmp_path, tiny_model_dir, capsys):
    trained = tmp_path / "checkpoint-7"
    shutil.copytree(tiny_model_dir, trained)
    out_dir = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--compare-model", str(trained), "--limit", "2", *SMALL]
    assert cli.main(argv + ["--out-dir", str(out_dir)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == [tiny_model_dir.name, "checkpoint-7"]
    assert _table_value(out, "N") == ["2", "2"]
    records = _records(out_dir)
    assert {(r["model"], r["index"]) for r in records} == {
        (tiny_model_dir.name, 0),
        (tiny_model_dir.name, 1),
        ("checkpoint-7", 0),
        ("checkpoint-7", 1),
    }
    assert len(records) == 4
    # Same weights, greedy decoding: identical trajectories under both labels.
    by_model = {m: [r["turns"] for r in sorted(records, key=lambda r: r["index"]) if r["model"] == m] for m in header}
    assert by_model[header[0]] == by_model[header[1]]
    assert (out_dir / report.PNG_NAME).read_bytes()[:8] == PNG_MAGIC


# The demo runs in tests/test_learning.py (it trains for real, against its control).


# ----------------------------------------------------------------------------- the numbers


def test_summarize_and_table():
    def rec(first, final, reflections, tokens):
        return {
            "first_try_correct": first,
            "final_correct": final,
            "num_reflections": reflections,
            "reflection_tokens": tokens,
        }

    records = [rec(True, True, 0, 0), rec(False, True, 1, 10), rec(False, True, 1, 20), rec(False, False, 1, 30)]
    s = report.summarize(records)
    assert (s["n"], s["first_try"], s["after_reflection"]) == (4, 0.25, 0.75)
    assert s["gain_points"] == pytest.approx(50.0) and s["mean_reflection_tokens"] == 20.0
    table = report.format_table({"base": s, "trained": report.summarize(records[:1])})
    assert _table_value(table, "accuracy after reflection") == ["75.0%", "100.0%"]
    assert _table_value(table, "gain (points)") == ["+50.0", "+0.0"]
    assert _table_value(table, "mean reflection length (tokens)") == ["20.0", "-"]
    assert math.isnan(report.summarize([])["mean_reflection_tokens"])


def test_token_layout_tiles_the_response():
    mask = [0] * 3 + [0] * 4 + [1] * 3 + [0] * 3 + [0] * 5
    turns = [
        {"kind": "attempt", "start": 0, "num_tokens": 3},
        {"kind": "reflection", "start": 7, "num_tokens": 3},
        {"kind": "retry", "start": 13, "num_tokens": 5},
    ]
    layout = runner.token_layout(turns, mask)
    assert layout == [["attempt", 3, 0], ["user", 4, 0], ["reflection", 3, 3], ["user", 3, 0], ["retry", 5, 0]]
    assert report.mask_bar(layout, width=18) == "aaauuuuRRRuuurrrrr"


def test_as_completed_limited_caps_concurrency_and_cancels_the_rest():
    in_flight, peak, cancelled, release = 0, 0, [], {}

    async def job(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await release[i].wait()
            return i
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        finally:
            in_flight -= 1

    async def main() -> list[int]:
        release.update({i: asyncio.Event() for i in range(10)})
        for i in (4, 1, 2):  # 4 is not among the first three started, so it cannot finish yet
            release[i].set()
        got = []
        jobs = [lambda i=i: job(i) for i in range(10)]
        async with contextlib.aclosing(runner.as_completed_limited(jobs, concurrency=3, desc="t")) as results:
            async for i in results:
                got.append(i)
                if len(got) == 2:
                    break
        await asyncio.sleep(0)  # let the cancellations land
        return got

    assert sorted(asyncio.run(main())) == [1, 2]
    assert peak == 3  # never more than the cap in flight
    assert 0 in cancelled and in_flight == 0  # the consumer stopped: the jobs still running were cancelled


# ----------------------------------------------------------------------------- errors: one line, exit 2


def _write_rows(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _assert_one_line_error(capsys, rc: int, *needles: str) -> None:
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("verl-reflect: error:")
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("command", ["eval", "build-failures"])
def test_missing_model_path(tmp_path, capsys, command):
    out = ["--out", str(tmp_path / "f.parquet")] if command == "build-failures" else ["--out-dir", str(tmp_path / "o")]
    rc = cli.main([command, "--model", str(tmp_path / "no-such-model"), *out])
    _assert_one_line_error(capsys, rc, "no-such-model", "does not exist")
    assert not (tmp_path / "o").exists() and not (tmp_path / "f.parquet").exists()


@pytest.mark.parametrize("command", ["eval", "build-failures"])
def test_parquet_missing_columns(tmp_path, tiny_model_dir, capsys, command):
    row = {"prompt": [{"role": "user", "content": "x"}], "data_source": "countdown"}
    bad = _write_rows(tmp_path / "bad.parquet", [row])
    out = ["--out", str(tmp_path / "f.parquet")] if command == "build-failures" else ["--out-dir", str(tmp_path / "o")]
    rc = cli.main([command, "--model", str(tiny_model_dir), "--data", str(bad), *out])
    _assert_one_line_error(capsys, rc, "missing column", "reward_model")
    assert not (tmp_path / "o").exists() and not (tmp_path / "f.parquet").exists()


@pytest.mark.parametrize("command", ["eval", "build-failures"])
def test_unknown_data_source(tmp_path, tiny_model_dir, capsys, command):
    rows = data.countdown_rows(2, seed=0, split="test")
    rows[1]["data_source"] = "sudoku"
    path = _write_rows(tmp_path / "rows.parquet", rows)
    out = ["--out", str(tmp_path / "f.parquet")] if command == "build-failures" else ["--out-dir", str(tmp_path / "o")]
    rc = cli.main([command, "--model", str(tiny_model_dir), "--data", str(path), *out])
    _assert_one_line_error(capsys, rc, "sudoku")
    assert not (tmp_path / "o").exists() and not (tmp_path / "f.parquet").exists()


def test_unknown_command(capsys):
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_console_script_error_is_one_line(tmp_path):
    """The installed ``verl-reflect`` script, as a user runs it: no traceback, exit code 2."""
    script = Path(sys.executable).with_name("verl-reflect")
    script = script if script.exists() else Path(shutil.which("verl-reflect") or "verl-reflect not installed")
    assert script.exists(), "pip install -e . installs the console script"
    result = subprocess.run(
        [str(script), "eval", "--model", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- training's loop settings


def test_the_recipe_gives_eval_its_loop_settings_and_flags_override(tmp_path, tiny_default, capsys):
    config = tmp_path / "loop.yaml"
    config.write_text(
        "- name: reflect_retry\n"
        "  _target_: verl_reflect.agent_loop.ReflectRetryAgentLoop\n"
        "  reflection_prompt: Why was it wrong?\n"
        "  retry_prompt: Try again.\n"
        "  max_reflections: 2\n"
        "  max_attempt_tokens: 5\n"
        "  max_reflection_tokens: 3\n"
    )
    out_dir = tmp_path / "out"
    override = f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config}"
    args = ["eval", "--recipe", "countdown_tiny_cpu", override, "--limit", "2", "--out-dir", str(out_dir)]
    assert cli.main(args + ["--max-attempt-tokens", "4"]) == 0
    for r in _records(out_dir):
        # Random weights fail every time: two rounds from the YAML, turn caps from the YAML and the flag.
        assert [t["kind"] for t in r["turns"]] == ["attempt", "reflection", "retry", "reflection", "retry"]
        assert r["num_reflections"] == 2
        generated = [(kind, n) for kind, n, _ in r["layout"] if kind != "user"]
        assert all(0 < n <= (3 if kind == "reflection" else 4) for kind, n in generated)
        assert max(n for kind, n in generated if kind != "reflection") == 4


def test_an_agent_loop_entry_without_its_prompts_is_one_line(tmp_path, tiny_default, capsys):
    config = tmp_path / "loop.yaml"
    config.write_text("- name: reflect_retry\n  _target_: verl_reflect.agent_loop.ReflectRetryAgentLoop\n")
    override = f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config}"
    assert cli.main(["eval", override, "--limit", "1", "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reflection_prompt" in err and "retry_prompt" in err


def test_flags_override_the_recipes_lengths_and_sampling(tiny_default):
    argv = ["--recipe", "countdown_qwen2.5-1.5b", "actor_rollout_ref.rollout.val_kwargs.top_p=0.5"]
    loop_recipe = loop.load_recipe(evaluate.build_parser().parse_args(argv), loop.validation_sampling)
    rollout = loop_recipe.config.actor_rollout_ref.rollout
    assert (rollout.prompt_length, rollout.response_length) == (1024, 2048)
    assert loop_recipe.entry.max_attempt_tokens == 640  # recipes/agent_loops/countdown.yaml
    assert loop_recipe.sampling == {
        "temperature": 0,  # the GPU recipes validate greedily (val_kwargs.do_sample: false)
        "top_p": 1.0,
        "top_k": -1,
        "repetition_penalty": 1.0,
        "logprobs": True,  # rollout.calculate_log_probs: the trainer asks for them
    }
    argv += ["--response-length", "300", "--temperature", "0.7", "--top-k", "5", "--max-reflection-tokens", "9"]
    loop_recipe = loop.load_recipe(evaluate.build_parser().parse_args(argv), loop.validation_sampling)
    assert loop_recipe.name == "countdown_qwen2.5-1.5b"
    assert loop_recipe.config.actor_rollout_ref.rollout.response_length == 300
    assert loop_recipe.entry.max_reflection_tokens == 9
    assert (loop_recipe.sampling["temperature"], loop_recipe.sampling["top_k"]) == (0.7, 5)
    # build-failures samples as a training step does.
    training = loop.load_recipe(evaluate.build_parser().parse_args(argv[:2]), loop.training_sampling)
    assert training.sampling["temperature"] == 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "no_such_recipe"], "no recipe 'no_such_recipe'"),
        (["--recipe", "countdown_tiny_cpu", "actor_rollout_ref.no_such_key=1"], "recipe countdown_tiny_cpu:"),
        (["actor_rollout_ref.rollout.agent.agent_loop_config_path=/no/such.yaml"], "/no/such.yaml does not exist"),
        (["actor_rollout_ref.rollout.agent.agent_loop_config_path={bad}"], "no agent loop named reflect_retry"),
        (["--backend", "vllm"], "invalid choice: 'vllm'"),
    ],
)
def test_recipe_errors_are_one_line(tmp_path, tiny_default, capsys, argv, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: tool_agent\n")
    argv = [arg.format(bad=bad) for arg in argv]
    rc = cli.main(["eval", *argv, "--out-dir", str(tmp_path / "o")])
    _assert_one_line_error(capsys, rc, message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("recipe_name", "data_source"),
    [("countdown_qwen2.5-1.5b", "countdown"), ("function_calling_phi3.5-mini", "function_calling")],
)
def test_without_data_the_rows_are_the_recipes_task(recipe_name, data_source):
    """eval and build-failures without --data run rows of the task the recipe trains (its verl_reflect.task)."""
    rows = run_args.load_rows(None, recipe.compose(recipe_name), limit=3, seed=0)
    assert len(rows) == 3 and {row["data_source"] for row in rows} == {data_source}


def test_a_recipe_without_a_known_task_asks_for_data():
    cfg = recipe.compose("countdown_qwen2.5-1.5b", ["verl_reflect.task=sudoku"])
    known = "addition, countdown, function_calling, hidden_word"
    with pytest.raises(UserError, match=rf"verl_reflect.task is 'sudoku', not one of {known}"):
        run_args.load_rows(None, cfg, limit=3, seed=0)
