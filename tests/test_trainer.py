"""verl's real trainer: ``python -m verl.trainer.main_ppo`` with ``recipes/countdown_tiny_cpu.yaml``, as a subprocess.

Two runs (about a minute and a half apiece on 2 cores), on test-only tasks (``tests/fixtures/toy_tasks``):

- ``toy_tasks.parity``, 3 steps: about half the answers are right. ``verl-reflect build-failures`` keeps the prompts
  the tiny model failed, with their failed attempts, and the trainer replays them (``attempt: replay``) from step 2:
  every row reflects on its group's stored failure, retries are right about half the time, reflections get
  advantages, and the weights move. Step 1's batch is ``toy_tasks.gated`` rows that are always solved first try, so
  it holds no reflection token: verl's own ``sync`` trainer crashes there (``rollout_corr_helper.py``),
  ``reflect_sync`` skips the update. Checks what the trainer trained on (its own dump), the weight sync, per-step
  and validation metrics, and that the saved checkpoint loads in ``verl-reflect eval``.
- ``toy_tasks.reverse``, 2 steps: a task added as the README's "Adding a task" says, in the tests only, from its
  failure set through training and validation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from verl_reflect import data
from verl_reflect.commands import build_failures
from verl_reflect.commands.main_ppo import MainPPORun, run_main_ppo

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[1]
STEPS = 2


FIXTURES = REPO / "tests" / "fixtures"
# The recipe allows the test-only task package; a dataset alone cannot make reward_fns import it.
TOY_TASKS = "reward.custom_reward_function.reward_kwargs.task_packages=[toy_tasks]"


def write_task_data(directory: Path, data_source: str) -> tuple[Path, Path]:
    """Countdown prompts scored by a toy task (``data_source``), as train/test parquet."""
    paths = []
    for split, size in (("train", 32), ("test", 8)):
        rows = [{**row, "data_source": data_source} for row in data.countdown_rows(size, seed=1, split=split)]
        data.write_parquet(rows, directory / f"{split}.parquet")
        paths.append(directory / f"{split}.parquet")
    return paths[0], paths[1]


def build_failure_set(train: Path, out: Path, cache_dir: Path, *overrides: str) -> Path:
    """``verl-reflect build-failures`` with the tiny model, one attempt per prompt, in this process (``overrides``:
    the recipe's, as the trainer gets them)."""
    sys.path.insert(0, str(FIXTURES))  # it scores toy_tasks here
    old_cache = os.environ.get("VERL_REFLECT_CACHE")
    os.environ["VERL_REFLECT_CACHE"] = str(cache_dir)
    try:
        argv = ["--data", str(train), "--out", str(out), "--k", "1", "--recipe", "countdown_tiny_cpu", *overrides]
        build_failures.main(argv)
    finally:
        sys.path.remove(str(FIXTURES))
        if old_cache is None:
            os.environ.pop("VERL_REFLECT_CACHE")
        else:
            os.environ["VERL_REFLECT_CACHE"] = old_cache
    return out


# A run that starts its own local Ray (the default), as a user's launch does.
OWN_RAY: tuple[dict, list] = ({}, [])


def train(
    tmp_path: Path,
    cache_dir: Path,
    ray: tuple[dict, list],
    data_source: str,
    *overrides: str,
    failure_set=False,
    splits=None,
    steps=STEPS,
) -> MainPPORun:
    """Train ``steps`` steps through the harness every command uses (``ray``: ``OWN_RAY``, or the ``(env, overrides)``
    that attach it to a running Ray cluster).

    ``failure_set``: train on what ``verl-reflect build-failures`` keeps of the train split (replayed attempts).
    ``splits``: the train and test parquet (default: Countdown prompts scored by ``data_source``).
    """
    train_file, test = splits or write_task_data(tmp_path, data_source)
    overrides = (TOY_TASKS, *overrides)
    if failure_set:
        train_file = build_failure_set(train_file, tmp_path / "failures.parquet", cache_dir, *overrides)
    ray_env, ray_overrides = ray
    return run_main_ppo(
        "countdown_tiny_cpu",
        [
            *ray_overrides,
            f"data.train_files={train_file}",
            f"data.val_files={test}",
            f"trainer.total_training_steps={steps}",
            f"trainer.rollout_data_dir={tmp_path / 'rollouts'}",
            *overrides,
        ],
        out_dir=tmp_path,
        cwd=REPO,
        timeout=900,
        progress=False,
        env={
            **ray_env,
            "VERL_REFLECT_CACHE": str(cache_dir),  # the tiny model this test session already built
            "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
        },
    )


def check_ran(run: MainPPORun, steps: int = STEPS) -> None:
    assert run.returncode == 0, run.log[-4000:]
    assert [step["training/global_step"] for step in run.steps] == list(range(1, steps + 1))
    for step in run.steps:  # verl's file logger writes NaN as null
        nan = [key for key, value in step.items() if value is None or (isinstance(value, float) and math.isnan(value))]
        assert not nan, f"NaN logged at step {step['training/global_step']}: {nan}"


def trained_rows(run: dict, step: int) -> list[dict]:
    path = run.out_dir / "rollouts" / f"trained_{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# The parity run: step 1 trains nothing (its batch is solved first try), steps 2-3 replay stored failures.
PARITY_STEPS = 3
SOLVED_STEP, REPLAY_STEPS = 1, range(2, PARITY_STEPS + 1)


def behind_a_solved_batch(failure_set: Path, out: Path) -> Path:
    """``failure_set`` behind one batch (``train_batch_size``) of ``toy_tasks.gated`` rows that are always solved on
    the first try: with ``data.shuffle=false`` the first step has no reflection token."""
    solved = [
        {
            **row,
            "data_source": "toy_tasks.gated",
            "reward_model": {"style": "rule", "ground_truth": json.dumps({"first_try": True})},
            data.FAILED_ATTEMPTS: [],
        }
        for row in data.countdown_rows(4, seed=2, split="train")
    ]
    data.write_parquet(solved + data.read_rows(failure_set), out)
    return out


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("parity")
    train_file, test = write_task_data(tmp_path, "toy_tasks.parity")
    failure_set = build_failure_set(train_file, tmp_path / "failures.parquet", tiny_model_dir.parent, TOY_TASKS)
    return train(
        tmp_path,
        tiny_model_dir.parent,
        OWN_RAY,
        "toy_tasks.parity",
        # A large learning rate moves the policy far in one step, so a rollout server left on stale weights shows.
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "data.shuffle=false",
        splits=(behind_a_solved_batch(failure_set, tmp_path / "solved_then_failures.parquet"), test),
        steps=PARITY_STEPS,
    )


def replay_steps(run: MainPPORun) -> list[dict]:
    check_ran(run, PARITY_STEPS)
    return [step for step in run.steps if step["training/global_step"] in REPLAY_STEPS]


def test_main_ppo_trains_every_replay_step_and_logs_reflect_metrics(parity_run):
    for step in replay_steps(parity_run):
        for key in ("reflect/first_try_correct", "reflect/final_correct", "reflect/reflected", "actor/pg_loss"):
            assert math.isfinite(step[key]), key
        assert step["reflect/skipped_update"] == 0.0
        # Failure replay: every row starts from its stored failed attempt and reflects.
        assert step["reflect/replayed_attempt"] == step["reflect/reflected"] == 1.0
        assert step["reflect/first_try_correct"] == 0.0
        assert 0 < step["reflect/rows_with_gradient"] and 0 < step["reflect/final_correct"] < 1


def test_advantage_is_non_zero_only_on_reflection_tokens(parity_run):
    check_ran(parity_run, PARITY_STEPS)
    for step in REPLAY_STEPS:
        rows = trained_rows(parity_run, step)
        assert len(rows) == 4 * 4  # train_batch_size x n
        for row in rows:
            reflection_positions = {
                position
                for turn in row["turns"]
                if turn["kind"] == "reflection"
                for position in range(turn["start"], turn["start"] + turn["num_tokens"])
            }
            trained = {i for i, advantage in enumerate(row["advantages"]) if advantage != 0}
            masked = {i for i, bit in enumerate(row["response_mask"]) if bit}
            assert masked == reflection_positions  # the loop's mask is exactly its reflection turns
            assert trained <= masked
            if trained:  # an advantage covers the whole reflection, with one value
                assert trained == masked and len({row["advantages"][i] for i in trained}) == 1
        assert any(any(row["advantages"]) for row in rows)


def test_every_row_of_a_group_replays_the_groups_stored_failure(parity_run):
    check_ran(parity_run, PARITY_STEPS)
    stored = {
        row["extra_info"]["index"]: row["failed_attempts"][0]["token_ids"]
        for row in data.read_rows(parity_run.out_dir / "failures.parquet")
    }
    for step in REPLAY_STEPS:
        attempts_by_group: dict[str, set] = {}
        for row in trained_rows(parity_run, step):
            (attempt,) = [turn for turn in row["turns"] if turn["kind"] == "attempt"]
            ids = tuple(row["response_ids"][attempt["start"] : attempt["start"] + attempt["num_tokens"]])
            attempts_by_group.setdefault(row["key"].split("_")[0], set()).add(ids)
        assert all(len(attempts) == 1 for attempts in attempts_by_group.values())  # one failure per group
        # ... and it is a failed attempt build-failures stored, token for token.
        assert {ids for attempts in attempts_by_group.values() for ids in attempts} <= {
            tuple(ids) for ids in stored.values()
        }


def test_weights_change_and_the_rollout_server_samples_from_them(parity_run, tiny_model_dir):
    check_ran(parity_run, PARITY_STEPS)
    trained = load_file(parity_run.checkpoint(PARITY_STEPS) / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert max((trained[name] - initial[name]).abs().max().item() for name in initial) > 1e-3
    # Rollout log-probs against the actor's own: without a weight sync after the first update this is ~7e-4 here.
    for step in replay_steps(parity_run):
        assert step["training/rollout_probs_diff_max"] < 2e-4
    # Every trajectory of step 3 was generated on the weights synced after step 2, the first update.
    assert {row["weights_version"] for row in trained_rows(parity_run, 3)} == {2}


def test_validation_reports_reflect_stats_per_data_source(parity_run):
    check_ran(parity_run, PARITY_STEPS)
    last = parity_run.steps[-1]
    for stat in ("first_try_correct", "final_correct", "reflection_tokens"):
        assert f"val-aux/toy_tasks.parity/{stat}/mean@1" in last


def test_saved_checkpoint_loads_in_eval_compare_model(parity_run, tiny_model_dir, tmp_path):
    check_ran(parity_run, PARITY_STEPS)
    checkpoint = parity_run.checkpoint(PARITY_STEPS)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "verl_reflect.commands.cli",
            "eval",
            "--compare-model",
            str(checkpoint),
            "--limit",
            "2",
            "--out-dir",
            str(tmp_path / "eval"),
        ],
        cwd=REPO,
        env={**os.environ, "VERL_REFLECT_CACHE": str(tiny_model_dir.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].split() == ["tiny-random", f"global_step_{PARITY_STEPS}"]  # one column per model
    records = [json.loads(line) for line in (tmp_path / "eval" / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) == 4  # 2 rows x 2 models


def test_a_step_with_no_reflection_token_skips_the_update_without_crashing(parity_run):
    check_ran(parity_run, PARITY_STEPS)  # exit 0, no NaN logged
    step = parity_run.steps[SOLVED_STEP - 1]
    assert step["reflect/reflected"] == 0.0 and step["reflect/first_try_correct"] == 1.0
    assert step["reflect/skipped_update"] == 1.0
    assert "actor/pg_loss" not in step  # no forward/backward pass was spent
    for row in trained_rows(parity_run, SOLVED_STEP):
        assert not any(row["response_mask"]) and not any(row["advantages"])


# ----------------------------------------------------------------------------- adding a task
# The README's "Adding a task", done in the tests only: a verifier module (tests/fixtures/toy_tasks/reverse.py), an
# agent-loop YAML with the task's prompts and caps (tests/fixtures/agent_loops/reverse.yaml), and rows of its own.
# Nothing in verl_reflect/, reward_fns/ or recipes/ knows the task.

REVERSE_LOOP = FIXTURES / "agent_loops" / "reverse.yaml"
WORDS = ("planet", "orange", "silver", "garden", "candle", "motion", "pepper", "forest", "bridge", "window")


def write_reverse_task(directory: Path) -> tuple[Path, Path]:
    paths = []
    for split, words in (("train", WORDS[:8]), ("test", WORDS[8:])):
        rows = [
            data.make_row(
                "toy_tasks.reverse",
                "You reverse words.",
                f"Write the word {word} backwards inside <answer> </answer> tags.",
                json.dumps({"word": word}),
                index=i,
                split=split,
            )
            for i, word in enumerate(words)
        ]
        data.write_parquet(rows, directory / f"{split}.parquet")
        paths.append(directory / f"{split}.parquet")
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("reverse")
    return train(
        tmp_path,
        tiny_model_dir.parent,
        OWN_RAY,
        "toy_tasks.reverse",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={REVERSE_LOOP}",
        failure_set=True,
        splits=write_reverse_task(tmp_path),
    )


def test_a_task_added_in_the_tests_only_builds_failures_trains_and_validates(reverse_run, tiny_model_dir):
    from transformers import AutoTokenizer

    check_ran(reverse_run)
    failure_rows = data.read_rows(reverse_run.out_dir / "failures.parquet")
    assert {row["data_source"] for row in failure_rows} == {"toy_tasks.reverse"} and len(failure_rows) == 8
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for step in range(1, STEPS + 1):
        for row in trained_rows(reverse_run, step):
            turns = {turn["kind"]: turn for turn in row["turns"]}
            # The task's own caps and prompts, from its YAML.
            assert turns["attempt"]["num_tokens"] <= 12 and turns["reflection"]["num_tokens"] <= 10
            attempt_end = turns["attempt"]["start"] + turns["attempt"]["num_tokens"]
            request = tokenizer.decode(row["response_ids"][attempt_end : turns["reflection"]["start"]])
            assert "Say which letters you misplaced." in request
    last = reverse_run.steps[-1]
    assert "val-aux/toy_tasks.reverse/final_correct/mean@1" in last
