"""verl's real trainer: ``python -m verl.trainer.main_ppo`` with ``recipes/countdown_tiny_cpu.yaml``, as a subprocess.

One run of 4 steps (about a minute and a half on 2 cores), on tasks added in the tests only, the README's "Adding a
task" way: verifiers in a package the recipe allows (``tests/fixtures/toy_tasks``), an agent-loop YAML with their
own prompts and turn caps (``tests/fixtures/agent_loops/toy_tasks.yaml``) and rows the test writes. Nothing in
``verl_reflect/``, ``reward_fns/`` or ``recipes/`` knows them.

- Step 1's batch is ``toy_tasks.gated`` rows that are always solved first try, so it holds no reflection token:
  verl's own ``sync`` trainer crashes there (``rollout_corr_helper.py``), ``reflect_sync`` skips the update.
- Steps 2-3 replay ``toy_tasks.parity`` failures (``attempt: replay``): ``verl-reflect build-failures`` keeps the
  prompts the tiny model failed, with their failed attempts; every row reflects on its group's stored failure,
  retries are right about half the time (a coin), reflections get advantages, and the weights move.
- Step 4 replays ``toy_tasks.reverse`` failures (write a word backwards), which the tiny model never solves. One of
  its prompts has a broken ground truth: its verifier raises on every verdict, which costs those verdicts only.
- The verifiers are written as verl users write them: ``parity`` returns verl's dict form (``score`` and
  ``answer_chars``), ``reverse`` is ``async def``.

Checks what the trainer trained on (its own dump), the weight sync, per-step and per-task validation metrics, and
that the saved checkpoint loads in ``verl-reflect eval``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from verl_reflect import data
from verl_reflect.commands import build_failures
from verl_reflect.commands.main_ppo import MainPPORun, run_main_ppo

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# The recipe allows the test-only task package; a dataset alone cannot make reward_fns import it.
TOY_TASKS = "reward.custom_reward_function.reward_kwargs.task_packages=[toy_tasks]"
TOY_LOOP = FIXTURES / "agent_loops" / "toy_tasks.yaml"
AGENT_LOOP = "actor_rollout_ref.rollout.agent.agent_loop_config_path"


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
    tmp_path: Path, cache_dir: Path, ray: tuple[dict, list], *overrides: str, splits: tuple[Path, Path], steps: int
) -> MainPPORun:
    """Train ``steps`` steps on ``splits`` (train and test parquet) through the harness every command uses (``ray``:
    ``OWN_RAY``, or the ``(env, overrides)`` that attach it to a running Ray cluster)."""
    train_file, test = splits
    ray_env, ray_overrides = ray
    return run_main_ppo(
        "countdown_tiny_cpu",
        [
            *ray_overrides,
            TOY_TASKS,
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


def check_ran(run: MainPPORun, steps: int, first: int = 1) -> None:
    """The run exited 0 and logged steps ``first`` to ``steps`` (a resumed run starts after its checkpoint), no NaN."""
    assert run.returncode == 0, run.log[-4000:]
    assert [step["training/global_step"] for step in run.steps] == list(range(first, steps + 1))
    for step in run.steps:  # verl's file logger writes NaN as null
        nan = [key for key, value in step.items() if value is None or (isinstance(value, float) and math.isnan(value))]
        assert not nan, f"NaN logged at step {step['training/global_step']}: {nan}"


def trained_rows(run: MainPPORun, step: int) -> list[dict]:
    path = run.out_dir / "rollouts" / f"trained_{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# train_batch_size prompts a step, data.shuffle=false: the train file's rows in order.
BATCH = 4
SOLVED_STEP, PARITY_REPLAY_STEPS, REVERSE_STEP = 1, (2, 3), 4
REPLAY_STEPS = (*PARITY_REPLAY_STEPS, REVERSE_STEP)
STEPS = REVERSE_STEP
TRAIN_WORDS, TEST_WORDS = ("planet", "orange", "silver", "garden"), ("bridge", "window")  # one batch; validation
BROKEN_ROW = 3  # the reverse row whose ground truth has no word
ROLLOUTS = 4  # actor_rollout_ref.rollout.n


def reverse_rows(words: tuple[str, ...], split: str) -> list[dict]:
    return [
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


def write_toy_tasks(directory: Path, cache_dir: Path) -> tuple[Path, Path]:
    """The run's train file, one batch a step: gated rows solved first try, then parity failures, then reverse
    failures (both from ``build-failures``, kept in ``directory/failures.parquet``); the test file: both tasks."""
    parity = [{**row, "data_source": "toy_tasks.parity"} for row in data.countdown_rows(32, seed=1, split="train")]
    reverse = reverse_rows(TRAIN_WORDS, "train")
    # A broken ground truth (no word): the async verifier raises on each of its verdicts, in build-failures and in
    # the run; each counts as not solved and in verifier_errors, and the step goes on.
    reverse[BROKEN_ROW]["reward_model"] = {"style": "rule", "ground_truth": json.dumps({"letters": "garden"})}
    data.write_parquet(parity + reverse, directory / "tasks.parquet")
    failure_set = build_failure_set(
        directory / "tasks.parquet", directory / "failures.parquet", cache_dir, TOY_TASKS, f"{AGENT_LOOP}={TOY_LOOP}"
    )
    failures = data.read_rows(failure_set)
    parity_failures = [row for row in failures if row["data_source"] == "toy_tasks.parity"]
    reverse_failures = [row for row in failures if row["data_source"] == "toy_tasks.reverse"]
    # Greedy first attempts fail about half the parity prompts (a coin), and every reverse prompt.
    assert len(parity_failures) >= 2 * BATCH and len(reverse_failures) == BATCH
    solved = [
        {
            **row,
            "data_source": "toy_tasks.gated",
            "reward_model": {"style": "rule", "ground_truth": json.dumps({"first_try": True})},
            data.FAILED_ATTEMPTS: [],
        }
        for row in data.countdown_rows(BATCH, seed=2, split="train")
    ]
    data.write_parquet(solved + parity_failures[: 2 * BATCH] + reverse_failures, directory / "train.parquet")
    test = [{**row, "data_source": "toy_tasks.parity"} for row in data.countdown_rows(8, seed=1, split="test")]
    data.write_parquet(test + reverse_rows(TEST_WORDS, "test"), directory / "test.parquet")
    return directory / "train.parquet", directory / "test.parquet"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("toy_tasks")
    return train(
        tmp_path,
        tiny_model_dir.parent,
        OWN_RAY,
        f"{AGENT_LOOP}={TOY_LOOP}",
        # A large learning rate moves the policy far in one step, so a rollout server left on stale weights shows.
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "data.shuffle=false",
        f"trainer.test_freq={STEPS}",
        splits=write_toy_tasks(tmp_path, tiny_model_dir.parent),
        steps=STEPS,
    )


def step_metrics(run: MainPPORun, step: int) -> dict:
    check_ran(run, STEPS)
    return run.steps[step - 1]


def test_main_ppo_trains_every_parity_step_and_logs_reflect_metrics(toy_run):
    for step in PARITY_REPLAY_STEPS:
        metrics = step_metrics(toy_run, step)
        for key in ("reflect/first_try_correct", "reflect/final_correct", "reflect/reflected", "actor/pg_loss"):
            assert math.isfinite(metrics[key]), key
        assert metrics["reflect/skipped_update"] == 0.0
        # Failure replay: every row starts from its stored failed attempt and reflects.
        assert metrics["reflect/replayed_attempt"] == metrics["reflect/reflected"] == 1.0
        assert metrics["reflect/first_try_correct"] == 0.0
        assert 0 < metrics["reflect/rows_with_gradient"] and 0 < metrics["reflect/final_correct"] < 1


def test_advantage_is_non_zero_only_on_reflection_tokens(toy_run):
    check_ran(toy_run, STEPS)
    for step in REPLAY_STEPS:
        rows = trained_rows(toy_run, step)
        assert len(rows) == BATCH * 4  # train_batch_size x n
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
        assert any(any(row["advantages"]) for row in rows) == (step in PARITY_REPLAY_STEPS)


def test_every_row_of_a_group_replays_the_groups_stored_failure(toy_run):
    check_ran(toy_run, STEPS)
    stored = {
        (row["data_source"], row["extra_info"]["index"]): row["failed_attempts"][0]["token_ids"]
        for row in data.read_rows(toy_run.out_dir / "failures.parquet")
    }
    for step in REPLAY_STEPS:
        data_source = "toy_tasks.reverse" if step == REVERSE_STEP else "toy_tasks.parity"
        attempts_by_group: dict[str, set] = {}
        for row in trained_rows(toy_run, step):
            (attempt,) = [turn for turn in row["turns"] if turn["kind"] == "attempt"]
            ids = tuple(row["response_ids"][attempt["start"] : attempt["start"] + attempt["num_tokens"]])
            attempts_by_group.setdefault(row["key"].split("_")[0], set()).add(ids)
        assert all(len(attempts) == 1 for attempts in attempts_by_group.values())  # one failure per group
        # ... and it is a failed attempt build-failures stored for this step's task, token for token.
        assert {ids for attempts in attempts_by_group.values() for ids in attempts} <= {
            tuple(ids) for (source, _), ids in stored.items() if source == data_source
        }


def test_the_tasks_own_agent_loop_yaml_sets_their_prompts_and_caps(toy_run, tiny_model_dir):
    from transformers import AutoTokenizer

    check_ran(toy_run, STEPS)
    (loop, _) = yaml.safe_load(TOY_LOOP.read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for step in REPLAY_STEPS:
        for row in trained_rows(toy_run, step):
            turns = {turn["kind"]: turn for turn in row["turns"]}
            assert turns["attempt"]["num_tokens"] <= loop["max_attempt_tokens"] == 12
            assert turns["reflection"]["num_tokens"] <= loop["max_reflection_tokens"] == 10
            attempt_end = turns["attempt"]["start"] + turns["attempt"]["num_tokens"]
            request = tokenizer.decode(row["response_ids"][attempt_end : turns["reflection"]["start"]])
            assert loop["reflection_prompt"] in request


def test_a_task_the_model_never_solves_reflects_on_its_stored_failures_without_advantage(toy_run):
    metrics = step_metrics(toy_run, REVERSE_STEP)
    assert metrics["reflect/replayed_attempt"] == metrics["reflect/reflected"] == 1.0
    assert metrics["reflect/final_correct"] == 0.0 and metrics["reflect/rows_with_gradient"] == 0.0


def test_a_step_without_advantage_updates_only_for_its_kl_term_once_the_actor_has_moved(toy_run):
    # Step 4 has no advantage anywhere, but the recipe's KL loss and steps 2-3's updates (the actor is no longer the
    # reference) give it a gradient: the pull towards the reference. Skipping would not be exact, so it runs, counted.
    metrics = step_metrics(toy_run, REVERSE_STEP)
    assert metrics["reflect/skipped_update"] == metrics["reflect/skipped_no_gradient"] == 0.0
    assert metrics["reflect/update_without_advantage"] == 1.0
    assert metrics["actor/pg_loss"] == 0.0 and metrics["actor/kl_loss"] > 0 and metrics["actor/grad_norm"] > 0
    for step in PARITY_REPLAY_STEPS:  # steps with gradient update as before, and are not counted as either
        parity = step_metrics(toy_run, step)
        assert parity["reflect/skipped_no_gradient"] == parity["reflect/update_without_advantage"] == 0.0
        assert parity["actor/grad_norm"] > 0
    # The step with no reflection token at all is skipped for that reason, not as a no-gradient step.
    assert step_metrics(toy_run, SOLVED_STEP)["reflect/skipped_no_gradient"] == 0.0


def test_weights_change_and_the_rollout_server_samples_from_them(toy_run, tiny_model_dir):
    trained = load_file(toy_run.checkpoint(STEPS) / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert max((trained[name] - initial[name]).abs().max().item() for name in initial) > 1e-3
    # Rollout log-probs against the actor's own: without a weight sync after the first update this is ~7e-4 here.
    for step in REPLAY_STEPS:
        assert step_metrics(toy_run, step)["training/rollout_probs_diff_max"] < 2e-4
    # Every trajectory of step 3 was generated on the weights synced after step 2, the first update.
    assert {row["weights_version"] for row in trained_rows(toy_run, 3)} == {2}


def test_validation_reports_reflect_stats_per_data_source(toy_run):
    last = step_metrics(toy_run, STEPS)
    for data_source in ("toy_tasks.parity", "toy_tasks.reverse"):
        for stat in ("first_try_correct", "final_correct", "reflection_tokens", "verifier_errors"):
            assert f"val-aux/{data_source}/{stat}/mean@1" in last
    # parity's dict result: its key beside "score" is reported per data source, as verl reports reward_extra_info.
    assert last["val-aux/toy_tasks.parity/answer_chars/mean@1"] > 0
    assert "val-aux/toy_tasks.reverse/answer_chars/mean@1" not in last


def test_rewards_are_the_verdicts_of_dict_and_async_verifiers(toy_run):
    check_ran(toy_run, STEPS)
    for step in range(1, STEPS + 1):
        rows = trained_rows(toy_run, step)
        for row in rows:
            last_verdict = [turn for turn in row["turns"] if turn["kind"] != "reflection"][-1]["correct"]
            assert row["reward"] == float(last_verdict)
        solved = sum(row["reward"] == 1.0 for row in rows)
        # parity (dict results) solves some retries; reverse (async) none; step 1's gated rows all, first try.
        assert (solved > 0) == (step != REVERSE_STEP)


def test_a_raising_verifier_costs_its_verdicts_not_the_step(toy_run):
    check_ran(toy_run, STEPS)  # every step ran, the one with the raising verifier included
    for step in range(1, STEPS + 1):
        metrics = step_metrics(toy_run, step)
        assert metrics["reflect/verifier_timeouts"] == 0
        # Step 4: the broken row's rollouts, two verdicts each (the replayed attempt's and the retry's).
        assert metrics["reflect/verifier_errors"] == (2 * ROLLOUTS if step == REVERSE_STEP else 0)
    rows = trained_rows(toy_run, REVERSE_STEP)
    assert sorted(row["verifier_errors"] for row in rows) == [0] * (len(rows) - ROLLOUTS) + [2] * ROLLOUTS


def test_saved_checkpoint_loads_in_eval_compare_model(toy_run, tiny_model_dir, tmp_path):
    check_ran(toy_run, STEPS)
    checkpoint = toy_run.checkpoint(STEPS)
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
    assert proc.stdout.splitlines()[0].split() == ["tiny-random", f"global_step_{STEPS}"]  # one column per model
    records = [json.loads(line) for line in (tmp_path / "eval" / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) == 4  # 2 rows x 2 models


def test_a_step_with_no_reflection_token_skips_the_update_without_crashing(toy_run):
    metrics = step_metrics(toy_run, SOLVED_STEP)  # the run exited 0, no NaN logged
    assert metrics["reflect/reflected"] == 0.0 and metrics["reflect/first_try_correct"] == 1.0
    assert metrics["reflect/skipped_update"] == 1.0
    assert "actor/pg_loss" not in metrics  # no forward/backward pass was spent
    for row in trained_rows(toy_run, SOLVED_STEP):
        assert not any(row["response_mask"]) and not any(row["advantages"])
