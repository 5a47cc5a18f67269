"""A CPU training step of verl's real trainer, by phase, and the plugin's own share of it.

Runs ``python -m verl.trainer.main_ppo`` with ``recipes/countdown_tiny_cpu.yaml`` (tiny model, ``hf`` rollout,
4 prompts x 4 rollouts a step) on a toy task the random model solves about half the time, so reflections
happen and get advantages. Phases are verl's own ``timing_s/*`` per step (median over the steps after the
first, which warms up). The plugin's share is what verl-reflect adds to a step: the reflect-retry loop's CPU
per trajectory (measured in-process on the recipe's turn sizes, instant server) times the step's
trajectories, plus ``reflect_grpo`` on the step's batch shape.

With ``--replay``, it compares ``attempt: generate`` against ``attempt: replay`` on one failure set (built by
``build-failures`` with the tiny model on the toy task): generated tokens, rows with a non-zero advantage and
time per step, each mode through the real trainer.

With ``--skip``, steps in which no row carries gradient (``toy_tasks.reverse``, which the tiny model never solves:
every retry fails, every advantage is zero), by phase, with the trainer's no-gradient skip and without it
(``verl_reflect.skip_no_gradient_steps=false``).

With ``--filter-groups``, verl's DAPO group filter (``algorithm.filter_groups``, metric ``reward``) off and on, on a
failure set where most groups carry no gradient (replayed ``toy_tasks.reverse`` failures beside replayed
``toy_tasks.parity`` ones): step time, generation time, rows trained, groups evicted (refilled by generating more).

``--model`` runs any of these on another model (e.g. ``'${verl_reflect.smollm2:}'``, the real one); the recipe's
turn sizes stay.

    python benchmarks/bench_trainer_step.py [--steps 4] [--replay | --skip | --filter-groups] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_agent_loop import InstantServer, cpu_ms_per_trajectory

from verl_reflect import data
from verl_reflect.advantage import compute_reflect_grpo_advantage
from verl_reflect.agent_loop import ReflectRetryAgentLoop
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.commands.recipe import DEFAULT_RECIPE
from verl_reflect.cpu.tiny import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
PHASES = ["gen", "old_log_prob", "ref", "adv", "update_actor", "update_weights"]
ROWS_PER_STEP, RESPONSE_LENGTH, TURN_TOKENS = 16, 256, 32  # the CPU recipe: 4 x n=4, 256 tokens, 32-token turns


FIXTURES = REPO / "tests" / "fixtures"
AGENT_LOOPS = REPO / "recipes" / "agent_loops" / "countdown_tiny.yaml"
TOY_TASKS = "reward.custom_reward_function.reward_kwargs.task_packages=[toy_tasks]"  # the toy task's package
TOY_LOOP = FIXTURES / "agent_loops" / "toy_tasks.yaml"  # the toy tasks' prompts and 12/10-token turn caps
MODEL_OVERRIDES: list[str] = []  # --model's override, added to every run
REVERSE_WORDS = ("planet", "orange", "silver", "garden", "bridge", "window", "yellow", "purple", "castle", "market")


def write_toy_data(workdir: Path, train_rows: int) -> None:
    for split, size in (("train", train_rows), ("test", 4)):
        rows = [{**row, "data_source": "toy_tasks.parity"} for row in data.countdown_rows(size, seed=1, split=split)]
        data.write_parquet(rows, workdir / f"{split}.parquet")


def reverse_rows(size: int, split: str = "train") -> list[dict]:
    """``toy_tasks.reverse`` rows (write a word backwards): the tiny model never solves them."""
    words = [REVERSE_WORDS[i % len(REVERSE_WORDS)] + "s" * (i // len(REVERSE_WORDS)) for i in range(size)]
    return [
        data.make_row(
            "toy_tasks.reverse", "You reverse words.",
            f"Write the word {word} backwards inside <answer> </answer> tags.", json.dumps({"word": word}),
            index=i, split=split,
        )
        for i, word in enumerate(words)
    ]  # fmt: skip


def run_trainer(steps: int, workdir: Path, train: Path, *overrides: str) -> list[dict]:
    run = run_main_ppo(
        DEFAULT_RECIPE,
        [
            f"data.train_files={train}", f"data.val_files={workdir / 'test.parquet'}",
            f"trainer.total_training_steps={steps}", "trainer.test_freq=-1", "trainer.save_freq=-1", TOY_TASKS,
            *MODEL_OVERRIDES, *overrides,
        ],
        out_dir=workdir / "main_ppo",
        cwd=REPO,
        env={"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    if run.returncode != 0:
        sys.exit(f"main_ppo failed: {run.last_error()} (log: {run.log_path})")
    print(f"main_ppo: {steps} steps in {run.seconds:.0f} s wall (Ray and worker start-up included)")
    return run.steps


def reflect_grpo_ms(repeats: int = 50) -> float:
    rewards = torch.zeros(ROWS_PER_STEP, RESPONSE_LENGTH)
    rewards[::2, -1] = 1.0
    mask = torch.zeros(ROWS_PER_STEP, RESPONSE_LENGTH)
    mask[:, 100:124] = 1.0
    index = np.repeat(np.arange(ROWS_PER_STEP // 4), 4)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        compute_reflect_grpo_advantage(rewards, mask, index)
        samples.append((time.perf_counter() - start) * 1e3)
    return min(samples)


def replay_vs_generate(steps: int) -> None:
    """Both attempt modes through the trainer, on one failure set."""
    from omegaconf import OmegaConf

    from verl_reflect.commands import build_failures

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_toy_data(workdir, 16 * steps)
        sys.path.insert(0, str(FIXTURES))  # build-failures scores toy_tasks in this process
        failure_set = workdir / "failures.parquet"
        build_failures.main(
            ["--data", str(workdir / "train.parquet"), "--out", str(failure_set), "--k", "1",
             "--recipe", DEFAULT_RECIPE, TOY_TASKS]
        )  # fmt: skip
        generate_loops = OmegaConf.load(AGENT_LOOPS)
        for entry in generate_loops:
            entry.pop("attempt", None)  # the loop's default: generate
        OmegaConf.save(generate_loops, workdir / "generate.yaml")
        results = {}
        for mode, loops in (("generate", workdir / "generate.yaml"), ("replay", AGENT_LOOPS)):
            override = f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}"
            results[mode] = run_trainer(steps, workdir, failure_set, override)[1:]
    keys = {
        "generated tokens": "reflect/generated_tokens",
        "rows that reflect": "reflect/reflected",
        "rows with non-zero advantage": "reflect/rows_with_gradient",
        "generation phase (s)": "timing_s/gen",
        "step (s)": "timing_s/step",
    }
    print(f"\nattempt: generate vs replay, one failure set, median of steps 2..{steps} (16 trajectories a step)")
    print(f"{'per step':<32}{'generate':>10}{'replay':>10}")
    for title, key in keys.items():
        generate, replay = (statistics.median(step[key] for step in results[mode]) for mode in ("generate", "replay"))
        print(f"{title:<32}{generate:>10.2f}{replay:>10.2f}")


def phase_medians(steps: list[dict]) -> dict[str, float]:
    """Median ms per phase over ``steps`` (a skipped phase is 0), and the whole step."""
    phases = PHASES + ["step"]
    return {phase: statistics.median(step.get(f"timing_s/{phase}", 0.0) for step in steps) * 1e3 for phase in phases}


def skip_vs_update(steps: int) -> None:
    """Steps whose advantages are all zero, with the no-gradient skip and without it, by phase."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_toy_data(workdir, 4)  # the validation file; training reads the reverse rows
        data.write_parquet(reverse_rows(4 * steps), workdir / "reverse.parquet")
        loops = f"actor_rollout_ref.rollout.agent.agent_loop_config_path={TOY_LOOP}"
        results = {
            name: run_trainer(steps, workdir, workdir / "reverse.parquet", loops, *switch)[1:]
            for name, switch in (("skip", []), ("no skip", ["verl_reflect.skip_no_gradient_steps=false"]))
        }
    for name, rows in results.items():  # the comparison means nothing unless every step had no gradient
        assert all(step["reflect/rows_with_gradient"] == 0 for step in rows), f"{name}: a step had gradient"
        skipped = [step["reflect/skipped_no_gradient"] for step in rows]
        assert skipped == [float(name == "skip")] * len(rows), f"{name}: skipped {skipped}"
    medians = {name: phase_medians(rows) for name, rows in results.items()}
    print(f"\nno-gradient steps (every advantage zero), median ms of steps 2..{steps}, 16 trajectories a step")
    print(f"{'phase':<20}{'skip':>10}{'no skip':>10}{'saved':>10}")
    for phase in PHASES + ["step"]:
        skip, update = medians["skip"][phase], medians["no skip"][phase]
        print(f"{phase:<20}{skip:>10.1f}{update:>10.1f}{update - skip:>10.1f}")


def filter_groups_off_vs_on(steps: int) -> None:
    """verl's DAPO group filter off and on, on one failure set where most groups have no gradient."""
    from verl_reflect.commands import build_failures

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_toy_data(workdir, 4)
        parity = [{**row, "data_source": "toy_tasks.parity"} for row in data.countdown_rows(32, seed=1, split="train")]
        data.write_parquet(parity + reverse_rows(32), workdir / "tasks.parquet")
        sys.path.insert(0, str(FIXTURES))  # build-failures scores toy_tasks in this process
        failure_set = workdir / "failures.parquet"
        loops = f"actor_rollout_ref.rollout.agent.agent_loop_config_path={TOY_LOOP}"
        build_failures.main(
            ["--data", str(workdir / "tasks.parquet"), "--out", str(failure_set), "--k", "1",
             "--recipe", DEFAULT_RECIPE, *MODEL_OVERRIDES, TOY_TASKS, loops]
        )  # fmt: skip
        sources = [row["data_source"] for row in data.read_rows(failure_set)]
        print(f"failure set: {sources.count('toy_tasks.parity')} parity + {sources.count('toy_tasks.reverse')} reverse")
        results = {
            name: run_trainer(steps, workdir, failure_set, loops, *switch)[1:]
            for name, switch in (
                ("filter off", []),
                ("filter on", ["algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=reward"]),
            )
        }

    def evicted(step: dict) -> float:  # groups the filter evicted (and refilled) while sampling the step
        return sum(value for key, value in step.items() if key.endswith("filter_groups/evicted_samples"))

    rows_per_step = ROWS_PER_STEP
    per_step = {
        "step (s)": lambda step: step["timing_s/step"],
        "generation phase (s)": lambda step: step["timing_s/gen"],
        "update_actor (s)": lambda step: step.get("timing_s/update_actor", 0.0),
        "rows trained (of 16)": lambda step: step["reflect/rows_with_gradient"] * rows_per_step,
        "groups evicted + refilled": evicted,
        "updates skipped (no gradient)": lambda step: step["reflect/skipped_no_gradient"],
    }
    print(f"\nDAPO group filter, failure replay, steps 2..{steps} (4 groups x 4 trajectories a step): mean [min, max]")
    print(f"{'per step':<32}{'filter off':>22}{'filter on':>22}")
    for title, value in per_step.items():
        cells = []
        for name in ("filter off", "filter on"):
            values = [value(step) for step in results[name]]
            cells.append(f"{statistics.mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]")
        print(f"{title:<32}{cells[0]:>22}{cells[1]:>22}")
    for name in results:
        trained = sum(step["reflect/rows_with_gradient"] * rows_per_step for step in results[name])
        seconds = sum(step["timing_s/step"] for step in results[name])
        print(f"{name}: {trained:.0f} rows with gradient trained in {seconds:.1f} s ({trained / seconds:.2f} rows/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--replay", action="store_true", help="compare attempt: generate and replay instead")
    modes.add_argument("--skip", action="store_true", help="no-gradient steps with the update skip and without")
    modes.add_argument("--filter-groups", action="store_true", help="verl's DAPO group filter off vs on")
    parser.add_argument("--model", help="actor_rollout_ref.model.path (default: the recipe's tiny model)")
    args = parser.parse_args()
    if args.model:
        MODEL_OVERRIDES.append(f"actor_rollout_ref.model.path={args.model}")
    if args.replay:
        return replay_vs_generate(args.steps)
    if args.skip:
        return skip_vs_update(args.steps)
    if args.filter_groups:
        return filter_groups_off_vs_on(args.steps)
    with tempfile.TemporaryDirectory() as workdir:
        write_toy_data(Path(workdir), 8 * args.steps)
        steps = run_trainer(args.steps, Path(workdir), Path(workdir) / "train.parquet")[1:]
    median = phase_medians(steps)

    tokenizer = build_tokenizer()
    loop_ms = cpu_ms_per_trajectory(
        ReflectRetryAgentLoop, tokenizer, InstantServer(tokenizer, TURN_TOKENS), 100, RESPONSE_LENGTH,
        max_attempt_tokens=TURN_TOKENS, max_reflection_tokens=TURN_TOKENS,
    )  # fmt: skip
    grpo_ms = reflect_grpo_ms()
    plugin_ms = ROWS_PER_STEP * loop_ms + grpo_ms

    print(f"\nCPU training step, median of steps 2..{args.steps} ({ROWS_PER_STEP} trajectories a step)")
    print(f"{'phase':<34}{'ms':>10}{'share':>9}")
    for phase in PHASES:
        print(f"{phase:<34}{median[phase]:>10.1f}{median[phase] / median['step']:>9.1%}")
    other = median["step"] - sum(median[phase] for phase in PHASES)
    print(f"{'other (metrics, transfer queue)':<34}{other:>10.1f}{other / median['step']:>9.1%}")
    print(f"{'step':<34}{median['step']:>10.1f}{1:>9.1%}")
    print("\nverl-reflect's own work in that step")
    print(f"{'reflect_retry loop CPU':<34}{ROWS_PER_STEP * loop_ms:>10.1f}   ({loop_ms:.2f} ms x {ROWS_PER_STEP})")
    print(f"{'reflect_grpo':<34}{grpo_ms:>10.2f}")
    print(f"{'plugin total':<34}{plugin_ms:>10.1f}{plugin_ms / median['step']:>9.1%}")


if __name__ == "__main__":
    main()
