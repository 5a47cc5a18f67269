"""Progress bars that read well wherever they go.

On a terminal, tqdm's bar. Anywhere else (a CI log, ``nohup``, ``verl-reflect demo > log``) tqdm would still write
carriage-return frames, hundreds of them on a few lines; there each refresh is a line of its own, at most one every
``LOG_INTERVAL_S`` seconds, and one at the end, for work that takes longer than that. The commands' bars come from
``progress_bar`` (or ``bar_kwargs`` for tqdm's other front ends). The trainer that ``main_ppo`` runs in a subprocess
writes to a log file, so its own bars are off there (``TQDM_DISABLE``; its per-step metrics lines stay). The data
generators and the warm-up, which have no command of their own, show tqdm's bar on a terminal only (``disable=None``).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


class _Lines:
    """A file for tqdm that turns each ``\\r`` frame into a line (trailing padding dropped)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def bar_kwargs(stream: TextIO | None = None) -> dict[str, Any]:
    """tqdm keyword arguments for ``stream`` (default: stderr, read when called): a bar on a terminal, else lines."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return {"file": stream, "dynamic_ncols": True}
    # delay: work done sooner (or stopped by bad input) leaves no line, as an error must be one line.
    return {"file": _Lines(stream), "mininterval": LOG_INTERVAL_S, "delay": LOG_INTERVAL_S, "ncols": 100}


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)`` that writes lines, not frames, where stderr is not a terminal."""
    return tqdm(*args, **{**bar_kwargs(), **kwargs})
