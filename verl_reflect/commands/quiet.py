"""Keep verl's import-time noise out of ``verl-reflect``'s output unless the user asks for it.

Importing verl on a machine without an accelerator logs that it falls back to the ``nvidia`` platform (the plugin's
``cpu`` platform is chosen later, by ``VERL_PLATFORM=cpu``), and warns once per optional training engine it cannot
import (torchtitan, veomni, automodel, mindspeed, megatron). None of it concerns a ``verl-reflect`` command, so the
commands silence exactly those messages; ``--verbose`` or ``VERL_REFLECT_VERBOSE=1`` keeps them. The trainer's own
output (``main_ppo``) goes to its log file untouched.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "VERL_REFLECT_VERBOSE"
# "No supported accelerator detected ... Falling back to 'nvidia'". verl sets this logger's level when it imports it,
# so a level set beforehand would not hold; a filter on the logger does.
PLATFORM_LOGGER = "verl.plugin.platform.platform_manager"
ENGINE_WARNING = r".* engine is not available"  # verl/workers/engine/__init__.py, one per missing engine


def verbose_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(verbose?, ``argv`` without ``--verbose``): the flag works anywhere on the command line.

    >>> verbose_requested(["demo", "--verbose", "--steps", "2"])[1]
    ['demo', '--steps', '2']
    """
    flag = "--verbose" in argv
    return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0"), [a for a in argv if a != "--verbose"]


def quiet_verl() -> None:
    """Silence verl's import-time platform fallback and missing-engine warnings in this process."""
    logger = logging.getLogger(PLATFORM_LOGGER)
    if _below_error not in logger.filters:
        logger.addFilter(_below_error)
    warnings.filterwarnings("ignore", message=ENGINE_WARNING, category=UserWarning)


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR
