"""``verl-reflect demo``: the whole pipeline on a CPU with the embedded tiny model, in a few minutes.

    1. data       Countdown problems, generated offline
    2. failures   the training prompts the base model fails (``build-failures``)
    3. train      real steps of verl's trainer: ``python -m verl.trainer.main_ppo`` with
                  ``recipes/countdown_tiny_cpu.yaml`` on the failure set (the plugin's cpu platform and hf rollout)
    4. evaluate   the base model and the trained checkpoint side by side (``eval --compare-model``): the
                  paper's table, a bar chart, and one trajectory's token layout with its trained span

The tiny model's weights are random, so it solves ~nothing and training moves it little: the demo shows the
pipeline, the masks and the numbers, not the method's gain.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tqdm import tqdm

from verl_reflect import data, failures, recipe, report, runner, store
from verl_reflect import eval as eval_cmd
from verl_reflect.cli_support import ArgumentParser, UserError
from verl_reflect.recipe import RECIPES_DIR

RECIPE = "countdown_tiny_cpu"
AGENT_LOOP_CONFIG = RECIPES_DIR / "agent_loops" / "countdown_tiny.yaml"  # absolute: main_ppo runs from any directory
STEP_COLUMNS = {  # per-step metric -> column title
    "reflect/first_try_correct": "first try",
    "reflect/final_correct": "after reflection",
    "reflect/reflected": "reflected",
    "reflect/replayed_attempt": "replayed",
    "reflect/reflection_tokens": "reflection tokens",
    "reflect/rows_with_gradient": "rows with gradient",
    "timing_s/step": "step (s)",
}


def main_ppo_command(train: Path, test: Path, out_dir: Path, steps: int) -> list[str]:
    """The README's CPU training command, with the demo's data and output folders."""
    return recipe.main_ppo_command(
        RECIPE,
        [
            f"data.train_files={train}",
            f"data.val_files={test}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={AGENT_LOOP_CONFIG}",
            f"trainer.total_training_steps={steps}",
            f"trainer.save_freq={steps}",
            f"trainer.test_freq={steps}",
            f"trainer.default_local_dir={out_dir / 'checkpoints'}",
            "trainer.logger=[console,file]",
        ],
    )


def train(train: Path, test: Path, out_dir: Path, steps: int) -> tuple[Path, list[dict]]:
    """Run main_ppo as a subprocess (its log in ``out_dir/train.log``); returns the HF checkpoint and step metrics."""
    metrics_path, log_path = out_dir / "train_metrics.jsonl", out_dir / "train.log"
    metrics_path.unlink(missing_ok=True)
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    with open(log_path, "w") as log, tqdm(total=steps, desc="main_ppo", unit="step", dynamic_ncols=True) as bar:
        proc = subprocess.Popen(
            main_ppo_command(train, test, out_dir, steps), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        while proc.poll() is None:
            time.sleep(1)
            bar.update(len(_read_steps(metrics_path)) - bar.n)
        bar.update(len(_read_steps(metrics_path)) - bar.n)
    if proc.returncode != 0:
        raise UserError(f"main_ppo exited with code {proc.returncode}; its log: {log_path}")
    checkpoint = out_dir / "checkpoints" / f"global_step_{steps}" / "actor" / "huggingface"
    return checkpoint, _read_steps(metrics_path)


def _read_steps(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line)["data"] for line in path.read_text().splitlines() if line.strip()]


def format_steps(steps: list[dict]) -> str:
    """One row per training step: the reflect metrics verl-reflect's trainer logs."""
    titles = ["step", *STEP_COLUMNS.values()]
    lines = ["  ".join(f"{title:>{max(len(title), 6)}}" for title in titles)]
    for step in steps:
        cells = [f"{step['training/global_step']:>4}"] + [f"{step.get(key, float('nan')):.2f}" for key in STEP_COLUMNS]
        lines.append("  ".join(f"{cell:>{max(len(title), 6)}}" for cell, title in zip(cells, titles)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="verl-reflect demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("demo_out"), help="data, checkpoints, logs, chart")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Countdown problems")
    parser.add_argument("--steps", type=int, default=2, help="trainer steps")
    args = parser.parse_args(argv)
    if not RECIPES_DIR.is_dir():
        raise UserError(
            f"the demo trains with this repository's recipes ({RECIPES_DIR}): install it with pip install -e ."
        )
    out_dir = args.out_dir.resolve()
    runner.quiet_transformers()

    print("verl-reflect demo: a random tiny Qwen2 (built offline) on Countdown, through the whole pipeline.\n")
    print(f"1. data: 16 train + 16 test problems in {out_dir / 'data'}")
    train_rows, test_rows = data.countdown_splits(16, 16, seed=args.seed)
    data.write_parquet(train_rows, out_dir / "data" / "train.parquet")
    data.write_parquet(test_rows, out_dir / "data" / "test.parquet")

    print("\n2. failure set: the training prompts the base model fails (2 first attempts each)")
    failure_set = out_dir / "data" / "failures.parquet"
    failures.main(
        [
            "--data",
            str(out_dir / "data" / "train.parquet"),
            "--out",
            str(failure_set),
            "--k",
            "2",
            "--recipe",
            RECIPE,
            "--seed",
            str(args.seed),
        ]
    )

    print(f"\n3. training: {args.steps} steps of verl's main_ppo on CPU ({RECIPE}; log: {out_dir / 'train.log'})")
    checkpoint, steps = train(failure_set, out_dir / "data" / "test.parquet", out_dir, args.steps)
    print(format_steps(steps))
    print(f"checkpoint: {checkpoint}")

    print("\n4. evaluation: base vs trained, first try vs after one reflection")
    (out_dir / store.JSONL_NAME).unlink(missing_ok=True)  # a fresh run: the demo is about watching it happen
    eval_args = eval_cmd.build_parser().parse_args(
        [
            "--compare-model",
            str(checkpoint),
            "--data",
            str(out_dir / "data" / "test.parquet"),
            "--recipe",
            RECIPE,
            "--out-dir",
            str(out_dir),
        ]
    )
    eval_cmd.run_eval(eval_args)

    records = store.read_jsonl(out_dir / store.JSONL_NAME)
    reflected = sorted((r for r in records if r["num_reflections"] > 0), key=lambda r: (r["model"], r["index"]))
    if reflected:
        r = reflected[0]
        print(f"\ntoken layout of {r['model']} row {r['index']}'s response ({r['response_tokens']} tokens):")
        print("  " + report.layout_line(r["layout"]))
        print("  " + report.mask_bar(r["layout"]) + "   (a attempt, u user turn, R reflection, r retry)")
        for turn in r["turns"]:
            print(f"  {turn['kind']:>10}: {json.dumps(turn['text'][:70])}{'...' if len(turn['text']) > 70 else ''}")
    print("\nThe weights are random, so accuracy is ~0% and the text is noise: that is expected here.")
    print("Next: train a real model with a GPU recipe (README, 'The GPU path').")
    return 0
