"""The resumable trajectories file of ``eval``: one JSON record per line, appended as each row finishes.

Records are keyed by model label and ``index`` (the row's position in the data) plus ``prompt_key``, so a re-run
skips the rows already there and refuses a file written for other data. A run killed mid-write leaves at most a
torn last line, which reading skips and appending cuts off.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

JSONL_NAME = "trajectories.jsonl"


def prompt_key(row: dict) -> str:
    """Short hash of a row's prompt: tells a resumed run whether ``index`` still means the same problem."""
    return hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:12]


def read_jsonl(path: Path) -> list[dict]:
    """Complete records of a trajectories file; a torn last line (a killed run) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def open_for_append(path: Path):
    """Open ``path`` for appending records, first cutting off a torn last line so the next record starts clean."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    f.seek(0)
    content = f.read()
    if content and not content.endswith(b"\n"):
        f.truncate(content.rfind(b"\n") + 1)
    return f
