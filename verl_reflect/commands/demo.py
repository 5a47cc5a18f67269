"""``verl-reflect demo``: the method, seen learning on a CPU, through verl's real trainer, in a few minutes.

    1. data       hidden-word prompts (``reward_fns/hidden_word.py``): four one-token words, one from a hidden set
    2. warm-up    the embedded tiny model, taught in a supervised pass that its retry does what its reflection says
                  (``verl_reflect/cpu/warmup.py``; built once, cached): nothing tells it which word is right
    3. failures   the training prompts the warmed model fails, with their failed attempts (``build-failures``)
    4. train      real steps of verl's trainer: ``python -m verl.trainer.main_ppo`` with
                  ``recipes/hidden_word_tiny_cpu.yaml`` on the failure set: reflection-only reward (``reflect_grpo``)
    5. evaluate   the warmed base model and the trained checkpoint on held-out prompts (``eval --compare-model``):
                  first-try accuracy and accuracy after a failed attempt with 95% intervals, the gain, the
                  learning curve, and one trajectory's token layout with its trained span

``--estimator reflect_grpo_control`` runs the same with rewards shuffled across the batch (the control), and
``--estimator grpo`` runs verl's plain GRPO (same mask) for comparison.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from verl_reflect import data
from verl_reflect.commands import build_failures, evaluate, learning, loop, report, run_args, runner, trajectories
from verl_reflect.commands.backends import make_backend
from verl_reflect.commands.errors import ArgumentParser, UserError
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.cpu import warmup

RECIPE = "hidden_word_tiny_cpu"
STEP_COLUMNS = {  # per-step metric -> column title
    "reflect/first_try_correct": "first try",
    "reflect/final_correct": "after reflection",
    "reflect/reflected": "reflected",
    "reflect/replayed_attempt": "replayed",
    "reflect/reflection_tokens": "reflection tokens",
    "reflect/rows_with_gradient": "rows with gradient",
    "timing_s/step": "step (s)",
}


def train(train: Path, test: Path, out_dir: Path, steps: int, *overrides: str) -> tuple[Path, list[dict]]:
    """The README's CPU training command on the demo's data (``overrides``: Hydra's, last); returns the HF checkpoint
    and the step metrics."""
    run = run_main_ppo(
        RECIPE,
        [
            f"data.train_files={train}",
            f"data.val_files={test}",
            f"trainer.total_training_steps={steps}",
            f"trainer.save_freq={steps}",
            f"trainer.test_freq={steps}",
            *overrides,
        ],
        out_dir=out_dir,  # its own Ray unless the user names a cluster (run_main_ppo)
    )
    if run.returncode != 0:
        raise UserError(f"main_ppo exited with code {run.returncode} ({run.last_error()}); its log: {run.log_path}")
    return run.checkpoint(steps), [step for step in run.steps if "training/global_step" in step]


def format_steps(steps: list[dict]) -> str:
    """One row per training step: the reflect metrics verl-reflect's trainer logs."""
    import pandas as pd

    table = pd.DataFrame(
        [{title: step.get(key, float("nan")) for key, title in STEP_COLUMNS.items()} for step in steps],
        index=pd.Index([step["training/global_step"] for step in steps], name="step"),
    )
    return table.to_string(float_format="{:.2f}".format)


ESTIMATORS = ("reflect_grpo", "reflect_grpo_control", "grpo")
AFTER_FAILURE_JSONL = "after_failure.jsonl"


def grpo_loop_config(out_dir: Path) -> Path:
    """The task's agent-loop YAML with ``trained_turns: [reflection, retry]`` (for ``--estimator grpo``)."""
    import yaml

    shipped = yaml.safe_load(warmup.AGENT_LOOP_YAML.read_text())
    entries = [{**entry, "trained_turns": ["reflection", "retry"]} for entry in shipped]
    path = out_dir / "agent_loop_grpo.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def replay_eval(models: list[Path], failure_set: Path, jsonl: Path) -> list[list[dict]]:
    """Each model's records on ``failure_set`` with the stored failed attempts replayed (``attempt: replay``): the
    same failures for every model, so their retries compare; greedy, as ``eval`` samples (the recipe's val_kwargs)."""
    args = evaluate.build_parser().parse_args(["--recipe", RECIPE, "--model", str(models[0])])
    loop_recipe = loop.load_recipe(args, loop.validation_sampling)
    rows = run_args.load_rows(failure_set, loop_recipe.config, limit=None, seed=0)
    jsonl.unlink(missing_ok=True)
    results = []
    for spec in run_args.resolve_models([str(model) for model in models], loop_recipe):
        generation = make_backend(spec.path, args.backend, config=loop_recipe.config, max_batch_size=args.concurrency)
        model_runner = runner.Runner(spec, generation, loop_recipe, attempt="replay")
        try:
            evaluate.evaluate(model_runner, rows, jsonl, sampling=loop_recipe.sampling, concurrency=args.concurrency)
        finally:
            model_runner.close()
        results.append([r for r in trajectories.read_jsonl(jsonl) if r["model"] == spec.label])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="verl-reflect demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("demo_out"), help="data, checkpoints, logs, charts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts, the failure set and the trainer")
    parser.add_argument("--steps", type=int, default=12, help="trainer steps (8 prompts x 4 samples each)")
    parser.add_argument("--test-size", type=int, default=128, help="held-out prompts for the end table")
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="reflect_grpo",
        help="reflect_grpo: the method; reflect_grpo_control: rewards shuffled across the batch; grpo: verl's",
    )
    args = parser.parse_args(argv)
    out_dir = args.out_dir.resolve()
    run_args.quiet_transformers()

    print("verl-reflect demo: reflection-only RL on a tiny model, through verl's real trainer, on a CPU.\n")
    # Replay makes every training row reflect: the failure set must hold a batch of prompts for every step.
    train_size = 16 * args.steps
    print(f"1. data: {train_size} train + {args.test_size} held-out hidden-word prompts in {out_dir / 'data'}")
    train_rows, test_rows = data.hidden_word_splits(train_size, args.test_size, seed=args.seed)
    data.write_parquet(train_rows, out_dir / "data" / "train.parquet")
    data.write_parquet(test_rows, out_dir / "data" / "test.parquet")

    print("\n2. warm-up: the tiny model learns that its retry names the word its reflection named (not which is right)")
    started, cached = time.monotonic(), (warmup.cached_model_path() / "config.json").exists()
    base = warmup.default_model_dir()
    print(f"{base} ({'cached' if cached else f'built in {time.monotonic() - started:.0f} s'})")

    print("\n3. failure set: the training prompts the warmed model fails (1 first attempt each)")
    failure_set = out_dir / "data" / "failures.parquet"
    build_failures.main(
        [
            "--data",
            str(out_dir / "data" / "train.parquet"),
            "--out",
            str(failure_set),
            "--k",
            "1",
            "--recipe",
            RECIPE,
            "--seed",
            str(args.seed),
        ]
    )

    print(f"\n4. training: {args.steps} steps of verl's main_ppo on CPU ({RECIPE}, {args.estimator})")
    print(f"log: {out_dir / 'main_ppo.log'}")
    # rollouts/trained_<step>.jsonl: per row, the response, its mask and the advantages the update used.
    overrides = [f"algorithm.adv_estimator={args.estimator}", f"data.seed={args.seed}"]
    overrides.append(f"trainer.rollout_data_dir={out_dir / 'rollouts'}")
    if args.estimator == "grpo":  # verl's plain GRPO on every generated token: the retry is trained too
        overrides.append(f"actor_rollout_ref.rollout.agent.agent_loop_config_path={grpo_loop_config(out_dir)}")
    checkpoint, steps = train(failure_set, out_dir / "data" / "test.parquet", out_dir, args.steps, *overrides)
    print(format_steps(steps))
    curve = out_dir / learning.CURVE_NAME
    learning.plot_curve({args.estimator: steps}, curve)
    print(f"checkpoint: {checkpoint}\nlearning curve: {curve}")

    print("\n5. evaluation on held-out prompts: warmed base vs trained, first try vs after one reflection")
    (out_dir / trajectories.JSONL_NAME).unlink(missing_ok=True)  # a fresh run: the demo is about watching it happen
    eval_args = evaluate.build_parser().parse_args(
        [
            "--model",
            str(base),
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
    first_tries = [[r for r in records if r["model"] == label] for label in dict.fromkeys(r["model"] for r in records)]

    print(
        "\n   accuracy after a failed attempt: the held-out prompts the base model fails, each model reflecting on the"
    )
    print("   same stored failed attempt (a held-out failure set, replayed)")
    held_out_failures = out_dir / "data" / "test_failures.parquet"
    build_failures.main(
        ["--data", str(out_dir / "data" / "test.parquet"), "--out", str(held_out_failures), "--k", "1"]
        + ["--recipe", RECIPE, "--model", str(base), "--seed", str(args.seed)]
    )
    after_failure = replay_eval([base, checkpoint], held_out_failures, out_dir / AFTER_FAILURE_JSONL)
    base_counts, trained_counts = (learning.counts(f, a) for f, a in zip(first_tries, after_failure))
    print("\nheld-out prompts, % [95% Wilson interval] n=prompts; gain [95% Newcombe interval]:")
    print(learning.end_table(base_counts, trained_counts, ("base (warm-up)", f"trained ({args.estimator})")))
    (out_dir / learning.SUMMARY_NAME).write_text(
        json.dumps(
            {
                "estimator": args.estimator,
                "seed": args.seed,
                "steps": steps,
                "base": base_counts,
                "trained": trained_counts,
            }
        )
    )
    trained_records = after_failure[1]

    reflected = sorted((r for r in trained_records if r["num_reflections"] > 0), key=lambda r: r["index"])
    if reflected:
        r = reflected[0]
        print(f"\ntoken layout of {r['model']} row {r['index']}'s response ({r['response_tokens']} tokens):")
        print("  " + report.layout_line(r["layout"]))
        print("  " + report.mask_bar(r["layout"]) + "   (a attempt, u user turn, R reflection, r retry)")
        for turn in r["turns"]:
            print(f"  {turn['kind']:>10}: {json.dumps(turn['text'][:70])}{'...' if len(turn['text']) > 70 else ''}")
    print("\nA tiny model on a toy task: the mechanism, not the paper's gains (README, 'The method, seen learning').")
    return 0
