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
from pathlib import Path

from verl_reflect import data
from verl_reflect.commands import build_failures, evaluate, report, runner, trajectories
from verl_reflect.commands.errors import ArgumentParser, UserError
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.commands.recipe import RECIPES_DIR

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


def train(train: Path, test: Path, out_dir: Path, steps: int) -> tuple[Path, list[dict]]:
    """The README's CPU training command on the demo's data; returns the HF checkpoint and the step metrics."""
    run = run_main_ppo(
        RECIPE,
        [
            f"data.train_files={train}",
            f"data.val_files={test}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={AGENT_LOOP_CONFIG}",
            f"trainer.total_training_steps={steps}",
            f"trainer.save_freq={steps}",
            f"trainer.test_freq={steps}",
        ],
        out_dir=out_dir,
    )
    if run.returncode != 0:
        raise UserError(f"main_ppo exited with code {run.returncode} ({run.last_error()}); its log: {run.log_path}")
    return run.checkpoint(steps), run.steps


def format_steps(steps: list[dict]) -> str:
    """One row per training step: the reflect metrics verl-reflect's trainer logs."""
    import pandas as pd

    table = pd.DataFrame(
        [{title: step.get(key, float("nan")) for key, title in STEP_COLUMNS.items()} for step in steps],
        index=pd.Index([step["training/global_step"] for step in steps], name="step"),
    )
    return table.to_string(float_format="{:.2f}".format)


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
    build_failures.main(
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

    print(f"\n3. training: {args.steps} steps of verl's main_ppo on CPU ({RECIPE}; log: {out_dir / 'main_ppo.log'})")
    checkpoint, steps = train(failure_set, out_dir / "data" / "test.parquet", out_dir, args.steps)
    print(format_steps(steps))
    print(f"checkpoint: {checkpoint}")

    print("\n4. evaluation: base vs trained, first try vs after one reflection")
    (out_dir / trajectories.JSONL_NAME).unlink(missing_ok=True)  # a fresh run: the demo is about watching it happen
    eval_args = evaluate.build_parser().parse_args(
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
    evaluate.run_eval(eval_args)

    records = trajectories.read_jsonl(out_dir / trajectories.JSONL_NAME)
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
