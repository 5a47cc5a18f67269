"""Killed mid-run and run again, nothing is lost and nothing is done twice: verl's trainer with ``reflect_sync``
(``trainer.resume_mode=auto``), ``verl-reflect eval`` and ``verl-reflect build-failures``.

How a run is killed in the middle of its work, not between two pieces of it: the rows' task is
``toy_tasks.paused`` (``tests/fixtures/toy_tasks/paused.py``: ``parity``'s coin), whose verifier, once a file the
test names exists, blocks the agent loop's process with a trajectory begun and writes a marker; the test waits for
the marker and SIGKILLs the whole process tree, as a preemption would. The marker makes it pause once, so the
re-run is the same command in the same environment.

- The trainer: 4 steps of failure replay (every row replays its stored failed attempt), a checkpoint every 2 steps,
  killed during step 3's rollout, relaunched with ``trainer.resume_mode=auto``. Compared with an uninterrupted run
  of the same seed (the dataloader shuffles): the same prompts at every step, every prompt of the epoch trained
  exactly once; replay and the reflect metrics go on after the resume; the rollout samples from the resumed weights.
- ``reflect_colocate_async`` was run the same way once (the next batch generates while a step trains, so a checkpoint
  holds prompts fetched and not yet trained; verl restored 2 in-flight groups, every prompt trained at most once) and
  is not in the suite: its two launches cost 265 s of it.
- ``eval`` and ``build-failures``, greedy, killed after some rows, re-run: every row exactly once, and the same
  output as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from test_trainer import build_failure_set, check_ran, trained_rows

from verl_reflect import data
from verl_reflect.commands import build_failures, cli, trajectories
from verl_reflect.commands.main_ppo import MainPPORun, run_main_ppo

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TOY_TASKS = "reward.custom_reward_function.reward_kwargs.task_packages=[toy_tasks]"
TOY_LOOP = FIXTURES / "agent_loops" / "toy_tasks.yaml"
AGENT_LOOP = f"actor_rollout_ref.rollout.agent.agent_loop_config_path={TOY_LOOP}"
PAUSED = "toy_tasks.paused"


def paused_rows(n: int, *, seed: int, split: str) -> list[dict]:
    return [{**row, "data_source": PAUSED} for row in data.countdown_rows(n, seed=seed, split=split)]


def pause_env(after: Path, marker: Path, min_lines: int = 0) -> dict[str, str]:
    """The environment that makes ``toy_tasks.paused`` pause once ``after`` exists with ``min_lines`` lines."""
    return {
        "TOY_TASKS_PAUSE_AFTER": str(after),
        "TOY_TASKS_PAUSE_MARKER": str(marker),
        "TOY_TASKS_PAUSE_MIN_LINES": str(min_lines),
    }


def wait_for(condition, *, timeout: float, what: str, alive=lambda: True, log: Path | None = None) -> None:
    """Poll ``condition`` (a file appearing, a file growing) until it holds; fail after ``timeout`` seconds or as
    soon as the process it waits on (``alive``) is gone, with ``log``'s tail."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not alive():
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"the run ended before {what}\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.2)


def kill_tree(leader: int) -> None:
    """SIGKILL the process group ``leader`` leads and every process under it (Ray's raylet, GCS and workers), as a
    preemption does, and wait until they are gone. Only this run's processes: never ``ray stop``, which would take
    every Ray cluster on the machine with it."""
    try:
        procs = [psutil.Process(leader)]
    except psutil.NoSuchProcess:
        return
    procs += procs[0].children(recursive=True)
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == leader and proc not in procs:
                procs.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for proc in procs:  # a process that left the group (its own session) is still this run's
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    # Not the leader: its Popen reaps it and reads its exit status (reaped here, Popen would report 0).
    _, alive = psutil.wait_procs([proc for proc in procs if proc.pid != leader], timeout=60)
    assert not alive, f"still running after SIGKILL: {alive}"


# ----------------------------------------------------------------------------- the trainer

BATCH, STEPS, SAVE_FREQ, KILLED_IN = 4, 4, 2, 3  # train_batch_size prompts a step; checkpoints at 2 and 4
N = 4  # rollout.n: rows a prompt (recipes/platform/cpu.yaml)
REFLECT_KEYS = ("reflect/first_try_correct", "reflect/final_correct", "reflect/reflected", "reflect/replayed_attempt")


def write_failure_set(directory: Path, cache_dir: Path) -> tuple[Path, Path]:
    """One epoch of 4 steps: ``BATCH * STEPS`` prompts the tiny model failed (``build-failures``), so every row of
    every step replays its stored failed attempt and reflects on it."""
    data.write_parquet(paused_rows(64, seed=1, split="train"), directory / "tasks.parquet")
    build_failure_set(directory / "tasks.parquet", directory / "failures.parquet", cache_dir, TOY_TASKS, AGENT_LOOP)
    failures = data.read_rows(directory / "failures.parquet")
    # Sampled first attempts fail about half of the parity prompts: 32 of 64 expected, 16 needed.
    assert len(failures) >= BATCH * STEPS, f"only {len(failures)} failures of 64"
    data.write_parquet(failures[: BATCH * STEPS], directory / "train.parquet")
    data.write_parquet(paused_rows(2, seed=1, split="test"), directory / "test.parquet")  # never validated
    return directory / "train.parquet", directory / "test.parquet"


def trainer_overrides(train: Path, test: Path, out_dir: Path) -> list[str]:
    return [
        TOY_TASKS,
        AGENT_LOOP,
        f"data.train_files={train}",
        f"data.val_files={test}",
        "data.shuffle=true",  # verl's default: the order is the sampler's, whose state the checkpoint must keep
        "data.seed=7",
        # A large learning rate moves the policy far in one step, so a rollout left on other weights shows.
        "actor_rollout_ref.actor.optim.lr=1e-2",
        f"trainer.total_training_steps={STEPS}",
        f"trainer.save_freq={SAVE_FREQ}",
        "trainer.test_freq=-1",  # no validation: nothing but training steps call the verifier
        f"trainer.rollout_data_dir={out_dir / 'rollouts'}",
    ]


def launch(out_dir: Path, overrides: list[str], cache_dir: Path, extra_env: dict[str, str]) -> MainPPORun:
    return run_main_ppo(
        "countdown_tiny_cpu",
        overrides,
        out_dir=out_dir,
        cwd=REPO,
        timeout=900,
        progress=False,
        env={
            "VERL_REFLECT_CACHE": str(cache_dir),
            "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
            **extra_env,
        },
    )


def main_ppo_pid(out_dir: Path) -> int | None:
    """The ``main_ppo`` process ``run_main_ppo`` started for ``out_dir`` (a child of this process, leading its own
    process group), or None."""
    for child in psutil.Process().children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "verl.trainer.main_ppo" in cmdline and f"hydra.run.dir={out_dir / 'hydra'}" in cmdline:
            return child.pid
    return None


def run_killed_mid_step(out_dir: Path, overrides: list[str], cache_dir: Path, env: dict[str, str], marker: Path):
    """``launch`` in a thread; once the run pauses (the marker), SIGKILL its whole process tree. Returns the run."""
    result: dict[str, MainPPORun] = {}
    thread = threading.Thread(target=lambda: result.update(run=launch(out_dir, overrides, cache_dir, env)))
    thread.start()
    try:
        wait_for(
            marker.exists,
            timeout=900,
            what=f"pause in step {KILLED_IN}",
            alive=thread.is_alive,
            log=out_dir / "main_ppo.log",
        )
        pid = main_ppo_pid(out_dir)
        assert pid is not None, "main_ppo is not a child of this process"
        kill_tree(pid)
    finally:
        thread.join(timeout=120)
        if thread.is_alive():  # the kill failed: do not leave the run behind
            pid = main_ppo_pid(out_dir)
            if pid is not None:
                kill_tree(pid)
            thread.join(timeout=60)
    return result["run"]


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, tiny_model_dir):
    """The uninterrupted reference, the run killed in step 3 and its resumed relaunch (same output folder)."""
    tmp = tmp_path_factory.mktemp("resume")
    cache_dir = tiny_model_dir.parent
    train, test = write_failure_set(tmp, cache_dir)

    reference = launch(tmp / "reference", trainer_overrides(train, test, tmp / "reference"), cache_dir, {})

    out_dir, marker = tmp / "run", tmp / "paused"
    overrides = trainer_overrides(train, test, out_dir)
    # The file verl writes last when it saves step 2 (trainer_base.py _save_checkpoint): any verdict asked for after
    # it is step 3's rollout, since there is no validation.
    env = pause_env(out_dir / "checkpoints" / "latest_checkpointed_iteration.txt", marker)
    killed = run_killed_mid_step(out_dir, overrides, cache_dir, env, marker)
    shutil.copy(out_dir / "main_ppo.log", out_dir / "main_ppo.killed.log")  # the relaunch writes main_ppo.log anew
    killed_state = {
        "latest": (out_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip(),
        "dumped": sorted(path.name for path in (out_dir / "rollouts").glob("trained_*.jsonl")),
    }
    # The same command, told to resume.
    resumed = launch(out_dir, [*overrides, "trainer.resume_mode=auto"], cache_dir, env)
    return {"reference": reference, "killed": killed, "killed_state": killed_state, "resumed": resumed, "tmp": tmp}


def prompts(rows: list[dict]) -> Counter:
    """The step's prompts, each as many times as it was trained on (``rollout.n``)."""
    return Counter((row["data_source"], row["index"]) for row in rows)


@pytest.mark.trainer
def test_the_run_was_killed_in_the_middle_of_step_3(resume_runs):
    killed, state = resume_runs["killed"], resume_runs["killed_state"]
    assert killed.returncode == -signal.SIGKILL, killed.log[-3000:]
    # Steps 1 and 2 finished and step 2 was checkpointed; step 3 started (its rollout paused) and never ended.
    assert [step["training/global_step"] for step in killed.steps] == [1, 2]
    assert state["latest"] == "2"
    assert state["dumped"] == ["trained_1.jsonl", "trained_2.jsonl"]


@pytest.mark.trainer
def test_the_relaunch_resumes_from_the_checkpoint_and_finishes(resume_runs):
    check_ran(resume_runs["reference"], STEPS)
    resumed = resume_runs["resumed"]
    check_ran(resumed, STEPS, first=SAVE_FREQ + 1)  # steps 1-2 are not run again
    assert "global_step_2" in next(line for line in resumed.log.splitlines() if "Resuming from" in line)
    assert (resumed.out_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)


@pytest.mark.trainer
def test_every_step_trains_the_prompts_of_the_uninterrupted_run(resume_runs):
    reference, resumed = resume_runs["reference"], resume_runs["resumed"]
    check_ran(resumed, STEPS, first=SAVE_FREQ + 1)
    # Steps 1-2 are the killed run's dumps (the resumed run starts at 3 and writes only 3-4), in the same folder.
    interrupted = {step: prompts(trained_rows(resumed, step)) for step in range(1, STEPS + 1)}
    for step in range(1, STEPS + 1):
        assert interrupted[step] == prompts(trained_rows(reference, step)), f"step {step}"
        assert len(interrupted[step]) == BATCH and set(interrupted[step].values()) == {N}
    # One epoch, each prompt of the training file exactly once: none skipped, none trained twice across the kill.
    train = data.read_rows(resume_runs["tmp"] / "train.parquet")
    every_step = [prompt for step in interrupted.values() for prompt in step]
    assert sorted(every_step) == sorted((row["data_source"], row["extra_info"]["index"]) for row in train)
    # The order is shuffled: a sequential read (or a restart from the epoch's start) would not match it.
    assert [sorted(interrupted[step]) for step in range(1, STEPS + 1)] != [
        sorted((PAUSED, i) for i in range(s * BATCH, (s + 1) * BATCH)) for s in range(STEPS)
    ]


@pytest.mark.trainer
def test_failure_replay_goes_on_after_the_resume_on_the_resumed_weights(resume_runs):
    resumed = resume_runs["resumed"]
    check_ran(resumed, STEPS, first=SAVE_FREQ + 1)
    stored = {
        (row["data_source"], row["extra_info"]["index"]): row[data.FAILED_ATTEMPTS][0]["token_ids"]
        for row in data.read_rows(resume_runs["tmp"] / "train.parquet")
    }
    for step in range(SAVE_FREQ + 1, STEPS + 1):
        rows = trained_rows(resumed, step)
        assert len(rows) == BATCH * N
        for row in rows:
            # Each row starts from its prompt's stored failure, token for token, and reflects on it.
            assert row["replayed_attempt"] and row["num_reflections"] == 1 and not row["first_try_correct"]
            (attempt,) = [turn for turn in row["turns"] if turn["kind"] == "attempt"]
            ids = row["response_ids"][attempt["start"] : attempt["start"] + attempt["num_tokens"]]
            assert ids == stored[(row["data_source"], row["index"])]
        # Sampled from the weights synced at start-up (the checkpoint's, version 2), then after each update.
        assert {row["weights_version"] for row in rows} == {step - 1}
        # ... which are the actor's: with lr 1e-2 a rollout on other weights reads ~1e-2 here.
        assert resumed.steps[step - SAVE_FREQ - 1]["training/rollout_probs_diff_max"] < 2e-4


@pytest.mark.trainer
def test_the_reflect_metrics_go_on_after_the_resume(resume_runs):
    killed, resumed = resume_runs["killed"], resume_runs["resumed"]
    check_ran(resumed, STEPS, first=SAVE_FREQ + 1)
    before = {key for step in killed.steps for key in step if key.startswith("reflect/")}
    for step in resumed.steps:
        assert {key for key in step if key.startswith("reflect/")} >= before >= set(REFLECT_KEYS)
        assert step["reflect/replayed_attempt"] == step["reflect/reflected"] == 1.0
        assert step["reflect/first_try_correct"] == 0.0 and 0 <= step["reflect/final_correct"] <= 1
        assert step["reflect/generated_tokens"] > 0


# ----------------------------------------------------------------------------- eval and build-failures

COMMAND_ROWS = 8
# Greedy (so an uninterrupted run is the reference), one trajectory at a time (so the kill lands after exactly the
# rows the pause names, and batch composition cannot change a greedy token), the toy tasks' short turns.
COMMAND_FLAGS = ["--recipe", "countdown_tiny_cpu", TOY_TASKS, AGENT_LOOP, "--temperature", "0", "--concurrency", "1"]


def command_env(cache_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "VERL_REFLECT_CACHE": str(cache_dir),
        "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
        **(extra or {}),
    }


def run_command(argv: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "verl_reflect.commands.cli", *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 0, log.read_text()[-3000:]
    return proc


def run_command_killed(argv: list[str], env: dict[str, str], marker: Path, log: Path) -> None:
    """Start the command in a process group of its own; once it pauses (the marker), SIGKILL the group."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "verl_reflect.commands.cli", *argv],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(marker.exists, timeout=600, what="pause", alive=lambda: proc.poll() is None, log=log)
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def command_rows(tmp_path) -> Path:
    path = tmp_path / "rows.parquet"
    data.write_parquet(paused_rows(COMMAND_ROWS, seed=3, split="test"), path)
    return path


@pytest.mark.trainer  # the slow tier: three runs of the command, a process each (about 40 s)
def test_eval_killed_mid_run_resumes_with_every_row_once(tmp_path, tiny_model_dir, command_rows):
    cache_dir = tiny_model_dir.parent
    argv = ["eval", "--data", str(command_rows), *COMMAND_FLAGS]
    run_command([*argv, "--out-dir", str(tmp_path / "reference")], command_env(cache_dir), tmp_path / "ref.log")
    reference = trajectories.read_jsonl(tmp_path / "reference" / trajectories.JSONL_NAME)
    assert sorted(record["index"] for record in reference) == list(range(COMMAND_ROWS))

    out_dir, marker = tmp_path / "out", tmp_path / "paused"
    jsonl = out_dir / trajectories.JSONL_NAME
    env = command_env(cache_dir, pause_env(jsonl, marker, min_lines=3))
    argv += ["--out-dir", str(out_dir)]
    run_command_killed(argv, env, marker, tmp_path / "killed.log")
    before = jsonl.read_text().splitlines()
    assert len(before) == 3  # three rows written, the fourth one's attempt paused, four never started

    proc = run_command(argv, env, tmp_path / "rerun.log")
    assert f"3 of {COMMAND_ROWS} rows already in" in proc.stdout
    after = jsonl.read_text().splitlines()
    assert after[:3] == before  # kept as they were, not run again
    records = [json.loads(line) for line in after]
    assert sorted(record["index"] for record in records) == list(range(COMMAND_ROWS))  # each exactly once
    by_index = {record["index"]: record for record in reference}
    assert all(record == by_index[record["index"]] for record in records)


@pytest.mark.trainer  # the slow tier: three runs of the command, a process each (about 40 s)
def test_build_failures_killed_mid_run_resumes_with_every_attempt_once(
    tmp_path, tiny_model_dir, command_rows, monkeypatch, capsys
):
    cache_dir = tiny_model_dir.parent
    # Every prompt is kept (--max-success-rate 1), so the parquet shows every row's attempts.
    argv = ["build-failures", "--data", str(command_rows), "--k", "2", "--max-success-rate", "1", *COMMAND_FLAGS]
    reference = tmp_path / "reference.parquet"
    run_command([*argv, "--out", str(reference)], command_env(cache_dir), tmp_path / "ref.log")
    assert not build_failures.partial_path(reference).exists()  # a finished run leaves only its parquet

    out, marker = tmp_path / "out" / "failures.parquet", tmp_path / "paused"
    partial = build_failures.partial_path(out)
    env = command_env(cache_dir, pause_env(partial, marker, min_lines=5))
    argv += ["--out", str(out)]
    run_command_killed(argv, env, marker, tmp_path / "killed.log")
    assert not out.exists()  # nothing half-written: the parquet comes only at the end
    before = partial.read_text().splitlines()
    assert len(before) == 5  # of 2 x 8 attempts
    # A kill in the middle of a write leaves a torn last line: that attempt is sampled again.
    partial.write_text("\n".join(before) + "\n" + before[-1][: len(before[-1]) // 2])

    # The partial file belongs to these settings: sampled differently, the re-run refuses it and changes nothing.
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(cache_dir))
    assert cli.main([*argv, "--temperature", "1.0"]) == 2
    assert "another model or sampling settings" in capsys.readouterr().err
    assert partial.read_text().splitlines()[:5] == before and not out.exists()

    proc = run_command(argv, env, tmp_path / "rerun.log")
    assert "5 of 16 attempts already in" in proc.stdout
    assert not partial.exists()
    written = data.read_rows(out)
    assert sorted(row["extra_info"]["source_index"] for row in written) == list(range(COMMAND_ROWS))
    assert written == data.read_rows(reference)
