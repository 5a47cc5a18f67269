"""Function calling: xlam-function-calling-60k records -> Qwen-style <tool_call> prompts."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from verl_reflect.commands.errors import UserError
from verl_reflect.data.rows import make_row

SAMPLE_XLAM = Path(__file__).resolve().parents[1] / "samples" / "xlam_sample.json"

FUNCTION_CALLING_SYSTEM = """You are a helpful assistant with access to the functions below.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

Answer the user's query by calling the functions it needs. For each function call, write one JSON object \
with the function name and its arguments within <tool_call></tool_call> XML tags:
<tool_call>{{"name": <function-name>, "arguments": <args-json-object>}}</tool_call>
Write one <tool_call> block per call."""


def _json_list(value: object, field: str, index: int) -> list:
    """``value`` as a list: a JSON string of a list (the xlam format), or a list already parsed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UserError(f"record {index}: {field!r} is not valid JSON ({err.msg})") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise UserError(f"record {index}: {field!r} must be a JSON list of objects")
    return value


def _parse_record(record: object, index: int) -> tuple[str, list[dict], list[dict]]:
    """(query, tools, answers) of one xlam record, or a UserError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise UserError(f"record {index} is not a JSON object")
    for field in ("query", "tools", "answers"):
        if field not in record:
            raise UserError(f"record {index} has no {field!r} field")
    if not isinstance(record["query"], str):
        raise UserError(f"record {index}: 'query' must be a string")
    tools = _json_list(record["tools"], "tools", index)
    answers = _json_list(record["answers"], "answers", index)
    for call in answers:  # the verifier compares names and arguments, so both must be there
        if not isinstance(call.get("name"), str) or not isinstance(call.get("arguments", {}), dict):
            raise UserError(f"record {index}: each answer needs a 'name' string and an 'arguments' object")
    return record["query"], tools, answers


def function_calling_rows(records: list[dict], *, split: str) -> list[dict]:
    """One row per xlam record: the tools in the system message, the query as the user message."""
    rows = []
    for index, record in enumerate(tqdm(records, desc=f"function calling {split}", unit="record", disable=None)):
        query, tools, answers = _parse_record(record, index)
        tool_lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        system = FUNCTION_CALLING_SYSTEM.format(tools=tool_lines)
        ground_truth = json.dumps(answers, ensure_ascii=False)
        rows.append(make_row("function_calling", system, query, ground_truth, index=index, split=split))
    return rows


def load_xlam(path: str | Path) -> list[dict]:
    """Records of a local xlam-function-calling-60k copy: a JSON list of records, or JSON Lines.

    Every record is checked here, so a bad file fails with its name before anything is written.
    Hand-written rather than ``datasets``' JSON loader: tried on a truncated JSON file and a JSON Lines file with
    a bad line, that one raised ``DatasetGenerationError: An error occurred while generating the dataset`` for
    both, naming neither the file nor the line.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("["):  # meant as one JSON document: report that error
            raise UserError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as line_err:
                    raise UserError(f"{path}: not valid JSON or JSON Lines (line {lineno}: {line_err.msg})") from None
    if isinstance(data, dict):  # JSON Lines with a single record
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    if not data:
        raise UserError(f"{path}: no records")
    try:
        for index, record in enumerate(data):
            _parse_record(record, index)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return data


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
