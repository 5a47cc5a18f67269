"""verl's import-time noise stays out of ``verl-reflect``'s output unless asked for (``commands/quiet.py``).

A fresh interpreter per case: verl logs the platform fallback and warns about missing engines once per process.
"""

from __future__ import annotations

import doctest
import os

import pytest
from fresh_python import run_python

from verl_reflect.commands import quiet

# What eval and build-failures trigger on a CPU machine: verl's engines imported, the platform detected.
TRIGGER = (
    "import verl.workers.engine; from verl.plugin.platform.platform_manager import _detect_platform_name; "
    "_detect_platform_name()"
)
NOISE = ("No supported accelerator detected", "engine is not available")


def stderr_of(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", quiet.VERBOSE_ENV)}
    proc = run_python(code, {**full_env, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_docstring_examples():
    result = doctest.testmod(quiet)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("argv", "env", "quiet_expected"),
    [(["demo"], {}, True), (["demo"], {quiet.VERBOSE_ENV: "1"}, False)],  # --verbose: the doctest above
)
def test_verl_noise_is_silenced_unless_verbose_is_asked_for(argv, env, quiet_expected):
    code = (
        "from verl_reflect.commands import quiet\n"
        f"verbose, _ = quiet.verbose_requested({argv!r})\n"
        "if not verbose:\n    quiet.quiet_verl()\n" + TRIGGER
    )
    output = stderr_of(code, **env)
    for noise in NOISE:
        assert (noise not in output) == quiet_expected, (noise, output[-1500:])
