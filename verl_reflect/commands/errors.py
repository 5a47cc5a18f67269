"""Bad user input, as every verl-reflect command reports it: one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad user input (missing file, wrong column, unknown task). Shown as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a one-line UserError (exit code 2) like every other bad input."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def positive_int(text: str) -> int:
    """argparse ``type=`` for sizes and counts."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def run_command(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a ``UserError`` becomes one line on stderr and exit code 2, never a traceback."""
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"verl-reflect: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verl-reflect: interrupted", file=sys.stderr)
        return 130
