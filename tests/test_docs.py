"""README.md and docs/ say only what is there: every link and repository path exists, and every command block reads only
what an earlier block writes (on its page, or in the README, which a reader runs first), what the project ships, or
what the reader brings (``/models/...``).

The blocks that run cheaply run in ``tests/test_wheel.py``, from an installed wheel in a folder of their own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200

LINK = re.compile(r"\]\(([^)\s]+)\)")
# A repository path in backticks or a block: starts at one of the project's top-level folders.
TOP_FOLDERS = r"(?:verl_reflect|reward_fns|recipes|tests|benchmarks|docs|packaging|\.ci)"
REPO_PATH = re.compile(rf"(?<![\w./$-])({TOP_FOLDERS}/[\w./-]*\w)")
BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.M | re.S)
# What a block writes: --out-dir D, --out F, `verl-reflect recipes copy NAME D`, main_ppo's checkpoints.
WRITES = re.compile(r"--out-dir[ =](\S+)|--out[ =](\S+)|recipes copy \S+ (\S+)")
# What a block reads from the launch folder: data files, a copied recipe folder, a checkpoint.
READS = re.compile(r"(?<![\w/.-])(?:\$PWD/)?((?:data|my_recipes|checkpoints)/[\w./<>-]*)")


def page_ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s", "-", text)


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= README_MAX_LINES


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_relative_link_and_anchor_exists(page: Path):
    text = page.read_text()
    for target in LINK.findall(text):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: link to {target}: {path} does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{page.name}: no heading #{anchor} in {path.name}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_repository_path_named_exists(page: Path):
    text = page.read_text()
    missing = sorted(
        {
            path
            for path in REPO_PATH.findall(text)
            if "<" not in path and not (REPO / path).exists() and not (REPO / path.rstrip(".")).exists()
        }
    )
    assert not missing, f"{page.name} names paths that are not in the repository: {missing}"


def reads_before_writes(text: str, written: list[str] | None = None) -> list[str]:
    """Launch-folder paths a page's blocks read before any earlier block (or earlier line) writes them; ``written``:
    what was written before the page, and what its blocks write (filled in)."""
    written = [] if written is None else written
    unmet = []
    for block in BLOCK.findall(text):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            command = line.split("#", 1)[0]
            outs = [next(g for g in groups if g) for groups in WRITES.findall(command)]
            if "verl.trainer.main_ppo" in command:
                outs.append("checkpoints")  # trainer.default_local_dir, under the launch folder
            for path in READS.findall(command):
                path = path.rstrip("/\"'")
                if path in outs or any(path == w or path.startswith(w.rstrip("/") + "/") for w in written):
                    continue
                unmet.append(path)
            written += [o.strip("\"'").removeprefix("$PWD/") for o in outs]
    return unmet


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_block_reads_only_what_an_earlier_block_writes(page: Path):
    by_readme: list[str] = []
    assert reads_before_writes((REPO / "README.md").read_text(), by_readme) == []
    assert reads_before_writes(page.read_text(), list(by_readme)) == []


def test_the_block_check_catches_a_file_no_block_makes():
    page = "```bash\npython -m verl.trainer.main_ppo data.train_files=$PWD/data/countdown_tiny/train.parquet\n```\n"
    assert reads_before_writes(page) == ["data/countdown_tiny/train.parquet"]
    made = "```bash\npython -m verl_reflect.data countdown --out-dir data/countdown_tiny\n```\n" + page
    assert reads_before_writes(made) == []
