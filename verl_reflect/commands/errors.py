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


def check_positive(name: str, value: object) -> None:
    """Sizes and counts: a positive ``int`` (not a bool), else a UserError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def positive_int(text: str) -> int:
    """argparse ``type=`` for sizes and counts (``check_positive`` on the parsed text)."""
    try:
        value = int(text) if text.strip().isdigit() else text
        check_positive("value", value)
    except UserError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
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


def one_line(err: BaseException) -> str:
    """An exception as one line: its first non-empty line, else the exception's class name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
