"""Checks that need a Python process of their own: what ``import verl`` loads, what an environment variable
switches on at import, what verl prints once per process."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, with ``env`` (default: this process's), output captured.

    The code is followed by ``gc.freeze()``: its checks are done by then, and the collector's walk over verl's
    objects at exit is 1.9-2.3 s of the 8-10 s such a process takes on 2 cores (0.3 s frozen).
    """
    argv = [sys.executable, "-c", code + "\nimport gc\ngc.freeze()\n"]
    return subprocess.run(argv, env=os.environ if env is None else env, capture_output=True, text=True, timeout=300)
