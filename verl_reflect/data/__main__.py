"""``python -m verl_reflect.data``."""

import sys

from verl_reflect.commands.errors import run_command
from verl_reflect.data.cli import main

sys.exit(run_command(main))
