"""The ``verl-reflect`` command.

    verl-reflect demo             the whole idea on a CPU in under a minute (random tiny model)
    verl-reflect eval             first-try vs after-reflection accuracy, optionally two models side by side
    verl-reflect build-failures   keep the prompts a model fails (the paper's training set)
    verl-reflect data             write Countdown / function-calling parquet files

Bad input (a missing model or file, a parquet without the needed columns, a task with no reward
function) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from verl_reflect import data, failures
from verl_reflect import eval as eval_cmd  # not `eval`: that would shadow the builtin
from verl_reflect.cli_support import ArgumentParser, run_command


def demo(argv: list[str] | None = None) -> int:
    """Build (or reuse) the tiny model, evaluate it on 16 Countdown problems, show one trajectory's mask."""
    parser = ArgumentParser(prog="verl-reflect demo", description=demo.__doc__)
    parser.add_argument("--out-dir", type=Path, default=Path("demo_out"), help="trajectories.jsonl and accuracy.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Countdown problems")
    args = parser.parse_args(argv)

    print("verl-reflect demo: a random tiny Qwen2 (built offline) tries 16 Countdown problems;")
    print("on a wrong answer it reflects, then retries. Only reflection tokens are trained (mask=1).\n")
    # A fresh run every time: the demo is about watching it happen, not resuming.
    (args.out_dir / eval_cmd.JSONL_NAME).unlink(missing_ok=True)
    eval_args = eval_cmd.build_parser().parse_args(["--out-dir", str(args.out_dir), "--seed", str(args.seed)])
    eval_cmd.quiet_transformers()
    eval_cmd.run_eval(eval_args)

    records = eval_cmd.read_jsonl(args.out_dir / eval_cmd.JSONL_NAME)
    reflected = sorted((r for r in records if r["num_reflections"] > 0), key=lambda r: r["index"])
    if reflected:
        r = reflected[0]
        print(f"\ntoken layout of row {r['index']}'s response ({r['response_tokens']} tokens):")
        print("  " + eval_cmd.layout_line(r["layout"]))
        print("  " + eval_cmd.mask_bar(r["layout"]) + "   (a attempt, u user turn, R reflection, r retry)")
        for turn in r["turns"]:
            print(f"  {turn['kind']:>10}: {json.dumps(turn['text'][:70])}{'...' if len(turn['text']) > 70 else ''}")
    print("\nThe weights are random, so accuracy is ~0% and the text is noise: that is expected here.")
    print("Next: `verl-reflect eval --model <your model> --data test.parquet`, then train with a recipe.")
    return 0


COMMANDS = {
    "demo": (demo, "run the whole idea on a CPU with the embedded tiny model"),
    "eval": (eval_cmd.main, "first-try vs after-reflection accuracy (optionally --compare-model)"),
    "build-failures": (failures.main, "keep the prompts a model fails, as a training parquet"),
    "data": (data.main, "write Countdown / function-calling parquet files"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``verl-reflect`` console script: ``verl-reflect <command> [args]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        usage = (
            "usage: verl-reflect {"
            + ",".join(COMMANDS)
            + "} ...\n\n"
            + "\n".join(f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items())
        )
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return 0
        print(usage, file=sys.stderr)
        problem = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"verl-reflect: error: {problem}", file=sys.stderr)
        return 2
    command, _ = COMMANDS[argv[0]]
    return run_command(command, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
