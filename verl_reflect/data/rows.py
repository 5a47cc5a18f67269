"""The row schema every task shares, and verl RL parquet files: writing them atomically, reading them checked."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from verl_reflect.commands.errors import UserError
from verl_reflect.commands.files import atomic_path

AGENT_NAME = "reflect_retry"
# The agent-loop entry failure-set rows run under: the recipes' YAML sets it to replay the stored attempt,
# while the validation and test rows (AGENT_NAME) keep generating theirs.
FAILURES_AGENT_NAME = "reflect_retry_failures"
REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")
FAILED_ATTEMPTS = "failed_attempts"
# Spelled out, not inferred: a file whose lists are all empty keeps its type, and every failure set has one schema.
FAILED_ATTEMPTS_TYPE = pa.list_(
    pa.struct(
        [
            ("token_ids", pa.list_(pa.int64())),
            ("text", pa.string()),
            ("model", pa.string()),
            (
                "sampling",
                pa.struct(
                    [
                        ("temperature", pa.float64()),
                        ("top_p", pa.float64()),
                        ("top_k", pa.int64()),
                        ("repetition_penalty", pa.float64()),
                        ("max_attempt_tokens", pa.int64()),
                    ]
                ),
            ),
        ]
    )
)


def make_row(data_source: str, system: str, user: str, ground_truth: str, *, index: int, split: str) -> dict:
    """One row of verl's RL parquet for any task: a system and a user message, scored by ``data_source``'s
    verifier against ``ground_truth`` (a JSON string); write a list of them with ``write_parquet``."""
    # Same keys in the same order for every task, so the inferred parquet schemas are identical.
    return {
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "data_source": data_source,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"index": index, "split": split},
        "agent_name": AGENT_NAME,
    }


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def write_parquet(rows: list[dict], path: str | Path) -> None:
    """Write ``rows`` to ``path`` (parent folders created); the file appears only once it is complete."""
    if not rows:
        raise UserError(f"no rows to write to {path}")
    table = pa.Table.from_pylist(rows)
    if FAILED_ATTEMPTS in table.column_names:
        column = pa.array([row[FAILED_ATTEMPTS] for row in rows], type=FAILED_ATTEMPTS_TYPE)
        table = table.set_column(table.column_names.index(FAILED_ATTEMPTS), FAILED_ATTEMPTS, column)
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a verl RL parquet file; a UserError if it is missing, not parquet, or lacks a column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'is a directory, not a parquet file' if path.is_dir() else 'no such file'}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable parquet file ({reason})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)} (a verl RL parquet needs {', '.join(REQUIRED_COLUMNS)})"
        )
    return table.to_pylist()
