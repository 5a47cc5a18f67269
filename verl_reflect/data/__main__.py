"""``python -m verl_reflect.data``."""

import sys

from verl_reflect.cli_support import run_command
from verl_reflect.data.cli import main

sys.exit(run_command(main))
