"""The shipped recipes, installed as the package data ``verl_reflect.recipes`` (pyproject.toml maps this folder there),
so that a clone and a wheel read the same files. Hydra reads the YAML; ``verl-reflect recipes --path`` prints
``RECIPES_DIR`` for ``main_ppo --config-path``."""

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
