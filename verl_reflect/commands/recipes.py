"""``verl-reflect recipes``: where the shipped recipes are, and a copy of one to edit and share.

    verl-reflect recipes                  the folder (for main_ppo's --config-path) and each recipe's header line
    verl-reflect recipes --path           the folder alone: --config-path "$(verl-reflect recipes --path)"
    verl-reflect recipes copy NAME DIR    NAME's YAML and the files it names beside it (its agent-loop YAML) into DIR

A copy runs as it is from DIR or anywhere else (``--config-path DIR``): the files it names with
``${verl_reflect.recipe_file:...}`` are read from DIR first, and what it lists in its defaults (``_reflect_grpo``,
``platform: cpu``) from the installed package (``pkg://verl_reflect.recipes`` on its search path) unless DIR has
its own.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from verl_reflect.commands.errors import ArgumentParser, UserError
from verl_reflect.commands.recipe import RECIPES_DIR, recipe_names

# ${verl_reflect.recipe_file:agent_loops/countdown.yaml}: a file the recipe reads from its own folder.
RECIPE_FILE = re.compile(r"\$\{verl_reflect\.recipe_file:([^}]+)\}")


def header(name: str) -> str:
    """The recipe's first comment line: what it trains, with what."""
    for line in (RECIPES_DIR / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def files_of(name: str) -> list[Path]:
    """The recipe's YAML and every file it names with ``${verl_reflect.recipe_file:...}``, relative to RECIPES_DIR."""
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    return [Path(f"{name}.yaml"), *sorted({Path(m) for m in RECIPE_FILE.findall(text)})]


def copy(name: str, target: Path) -> list[Path]:
    """Copy ``name``'s files into ``target`` (made if missing); nothing is overwritten and nothing is half-written."""
    if name not in recipe_names():
        raise UserError(f"no recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    files = files_of(name)
    taken = [str(target / f) for f in files if (target / f).exists()]
    if taken:
        raise UserError(f"{', '.join(taken)} already exist(s): copy into another folder, or remove them first")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".recipe-copy-", dir=target))
    try:
        for f in files:
            (staging / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(RECIPES_DIR / f, staging / f)
        for f in files:  # every file is complete before any appears in target
            (target / f).parent.mkdir(parents=True, exist_ok=True)
            (staging / f).replace(target / f)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target / f for f in files]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="verl-reflect recipes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", action="store_true", help="print the recipes' folder only")
    sub = parser.add_subparsers(dest="action")
    copy_parser = sub.add_parser("copy", help="copy a recipe and its agent-loop YAML into a folder")
    copy_parser.add_argument("name", help="a shipped recipe (verl-reflect recipes lists them)")
    copy_parser.add_argument("dir", type=Path, help="the folder to copy into (made if missing)")
    args = parser.parse_args(argv)
    if args.action == "copy":
        target = args.dir.resolve()
        for path in copy(args.name, target):
            print(path)
        print(
            f"\nlaunch it from any folder:\n  python -m verl.trainer.main_ppo --config-path {target} "
            f"--config-name {args.name} data.train_files=... data.val_files=..."
        )
        return 0
    if args.path:
        print(RECIPES_DIR)
        return 0
    print(RECIPES_DIR)
    names = recipe_names()
    width = max(map(len, names))
    for name in names:
        print(f"  {name:<{width}}  {header(name)}")
    print(
        '\npython -m verl.trainer.main_ppo --config-path "$(verl-reflect recipes --path)" --config-name <recipe> ...'
        "\nverl-reflect recipes copy <recipe> <dir>     a copy to edit and share"
    )
    return 0
