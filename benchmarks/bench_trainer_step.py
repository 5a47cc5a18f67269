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

    python benchmarks/bench_trainer_step.py [--steps 4] [--replay]
"""

from __future__ import annotations

import argparse
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
from verl_reflect.cpu.tiny import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
PHASES = ["gen", "old_log_prob", "ref", "adv", "update_actor", "update_weights"]
ROWS_PER_STEP, RESPONSE_LENGTH, TURN_TOKENS = 16, 256, 32  # the CPU recipe: 4 x n=4, 256 tokens, 32-token turns


FIXTURES = REPO / "tests" / "fixtures"
AGENT_LOOPS = REPO / "recipes" / "agent_loops" / "countdown_tiny.yaml"


def write_toy_data(workdir: Path, train_rows: int) -> None:
    for split, size in (("train", train_rows), ("test", 4)):
        rows = [{**row, "data_source": "toy_tasks.parity"} for row in data.countdown_rows(size, seed=1, split=split)]
        data.write_parquet(rows, workdir / f"{split}.parquet")


def run_trainer(steps: int, workdir: Path, train: Path, *overrides: str) -> list[dict]:
    run = run_main_ppo(
        "countdown_tiny_cpu",
        [
            f"data.train_files={train}", f"data.val_files={workdir / 'test.parquet'}",
            f"trainer.total_training_steps={steps}", "trainer.test_freq=-1", "trainer.save_freq=-1", *overrides,
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
             "--recipe", "countdown_tiny_cpu"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--replay", action="store_true", help="compare attempt: generate and replay instead")
    args = parser.parse_args()
    if args.replay:
        return replay_vs_generate(args.steps)
    with tempfile.TemporaryDirectory() as workdir:
        write_toy_data(Path(workdir), 8 * args.steps)
        steps = run_trainer(args.steps, Path(workdir), Path(workdir) / "train.parquet")[1:]
    median = {phase: statistics.median(s[f"timing_s/{phase}"] for s in steps) * 1e3 for phase in PHASES + ["step"]}

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
