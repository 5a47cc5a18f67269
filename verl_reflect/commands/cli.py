"""The ``verl-reflect`` command.

    verl-reflect demo             the whole pipeline on a CPU in a few minutes (random tiny model)
    verl-reflect eval             first-try vs after-reflection accuracy, optionally two models side by side
    verl-reflect build-failures   keep the prompts a model fails (the paper's training set)
    verl-reflect data             write Countdown / function-calling parquet files
    verl-reflect dry-run          check a recipe on a CPU before GPU time is spent
    verl-reflect recipes          where the shipped recipes are; copy one to edit and share

Bad input (a missing model or file, a parquet without the needed columns, a task with no reward
function) is one line on stderr and exit code 2. verl's import-time warnings stay out of the output unless
``--verbose`` (anywhere on the line) or ``VERL_REFLECT_VERBOSE=1`` asks for them.
"""

from __future__ import annotations

import os
import sys

# verl imports vLLM wherever it is installed, and vLLM logs to stdout: a command's stdout is its table.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

from verl_reflect import data  # noqa: E402
from verl_reflect.commands import build_failures, demo, dry_run, evaluate, quiet, recipes, reflections  # noqa: E402
from verl_reflect.commands.errors import run_command  # noqa: E402

COMMANDS = {
    "demo": (demo.main, "the whole pipeline on a CPU with the embedded tiny model: failures, training, eval"),
    "eval": (evaluate.main, "first-try vs after-reflection accuracy (optionally --compare-model)"),
    "build-failures": (build_failures.main, "keep the prompts a model fails, as a training parquet"),
    "data": (data.main, "write Countdown / function-calling parquet files"),
    "reflections": (reflections.main, "what eval's reflections say: lengths, openings, restating, retries that follow"),
    "dry-run": (dry_run.main, "check a recipe on this CPU before GPU time is spent: static checks, one trainer step"),
    "recipes": (recipes.main, "where the shipped recipes are (main_ppo --config-path); copy one to edit and share"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``verl-reflect`` console script: ``verl-reflect <command> [args]``."""
    verbose, argv = quiet.verbose_requested(sys.argv[1:] if argv is None else list(argv))
    if not verbose:
        quiet.quiet_verl()
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
