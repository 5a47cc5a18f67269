"""Training data for verl-reflect: verl RL parquet files for Countdown and function calling.

    python -m verl_reflect.data countdown --out-dir data/countdown [--train-size 2000] [--test-size 200] [--seed 0]
    python -m verl_reflect.data function-calling --input xlam.json --out data/fc/train.parquet [--split train]

Every row has the columns verl's ``RLHFDataset`` reads (see ``verl/utils/dataset/rl_dataset.py``):

    prompt        list of chat messages {"role", "content"}
    data_source   "countdown" or "function_calling" (picks the verifier)
    reward_model  {"style": "rule", "ground_truth": <JSON string>}
    extra_info    {"index": 0..n-1, "split": "train" | "test" | ...}
    agent_name    "reflect_retry" (verl runs this agent loop for the row)

The ground truth is always a JSON string, whatever the task, so files of different tasks share one
parquet schema and can be mixed in one training run.

A failure set written by ``verl-reflect build-failures`` (``verl_reflect/failures.py``) has the same
columns, ``agent_name`` set to ``reflect_retry_failures``, ``extra_info.source_index`` (the row's index in
the input) and one more column, the failed first attempts the loop can replay (``attempt: replay``):

    failed_attempts  list of {
        token_ids  list<int64>: the attempt's ids exactly as generated (with the end-of-turn token it stopped on)
        text       the same ids decoded (special tokens skipped), for people to read
        model      the model directory that generated it
        sampling   {temperature, top_p, top_k, repetition_penalty, max_attempt_tokens}
    }   in sampling order; the loop replays the first
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from verl_reflect.cli_support import ArgumentParser, UserError, atomic_path, positive_int, run_command

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
SAMPLE_XLAM = Path(__file__).parent / "samples" / "xlam_sample.json"

# -----------------------------------------------------------------------------
# Countdown: given 3-4 numbers and a target, write an equation that uses each number once.

# The TinyZero Countdown prompt (Pan et al., 2025), which the paper's Countdown runs follow,
# as a system + user chat instead of a raw completion prefix.
COUNTDOWN_SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process in your mind "
    "and then provide the user with the answer."
)
COUNTDOWN_USER = (
    "Using the numbers {numbers}, create an equation that equals {target}. "
    "You can use basic arithmetic operations (+, -, *, / and unary minus) and parentheses, "
    "and each number must be used exactly once. "
    "Show your work in <think> </think> tags. "
    "And return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
COUNTDOWN_MAX_TARGET = 1000
# Give up once this many draws in a row produced nothing new: the request asks for more distinct
# problems than the settings allow (or than are left after excluding the test set).
COUNTDOWN_MAX_STALL = 20_000


def _countdown_attempt(
    rng: random.Random, count: int, *, max_value: int, max_target: int
) -> tuple[list[int], int, str] | None:
    """One random try at a problem: (numbers, target, solution expression), or None if it broke a rule."""
    numbers = [rng.randint(1, max_value) for _ in range(count)]
    # Combine two random pool entries at a time: this reaches every expression tree shape,
    # including (a op b) op (c op d), and uses every number exactly once.
    pool = [(n, str(n)) for n in numbers]
    while len(pool) > 1:
        i, j = sorted(rng.sample(range(len(pool)), 2))
        (a, ea), (b, eb) = pool.pop(j), pool.pop(i)
        op = rng.choice("+-*/")
        if op in "-/" and a < b:  # larger operand first, so - and / can stay positive
            (a, ea), (b, eb) = (b, eb), (a, ea)
        if op == "+":
            value = a + b
        elif op == "*":
            value = a * b
        elif op == "-":
            value = a - b
        else:
            value = a // b if a % b == 0 else 0
        if value <= 0:  # Countdown convention: every intermediate result is a positive integer
            return None
        pool.append((value, f"({ea} {op} {eb})"))
    target, expression = pool[0]
    if target > max_target:
        return None
    return numbers, target, expression[1:-1]


def _problem_key(numbers: list[int], target: int) -> tuple[tuple[int, ...], int]:
    """Two problems are the same if they have the same numbers (in any order) and target."""
    return tuple(sorted(numbers)), target


def countdown_problems(
    rng: random.Random,
    n: int,
    *,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_value: int = 100,
    max_target: int = COUNTDOWN_MAX_TARGET,
    exclude: set | None = None,
    desc: str = "countdown",
) -> list[tuple[list[int], int, str]]:
    """``n`` distinct solvable problems as (numbers, target, expression); the expression is one solution.

    Solvable by construction: the target is the value of a random expression over all the numbers.
    Problems whose key (see ``_problem_key``) is in ``exclude`` are skipped; new keys are added to it.
    """
    _check_positive("size", n)
    if not 2 <= min_numbers <= max_numbers or max_value < 1 or max_target < 1:
        raise UserError(
            f"bad countdown settings: need 2 <= min_numbers <= max_numbers, max_value >= 1, max_target >= 1 "
            f"(got {min_numbers}, {max_numbers}, {max_value}, {max_target})"
        )
    exclude = set() if exclude is None else exclude
    problems, stall, count = [], 0, None
    with tqdm(total=n, desc=desc, unit="problem", disable=None) as bar:
        while len(problems) < n:
            # Pick how many numbers first and retry with that count: 4-number tries fail the target
            # range more often, and redrawing the count would make them rarer than 3-number ones.
            count = count or rng.randint(min_numbers, max_numbers)
            problem = _countdown_attempt(rng, count, max_value=max_value, max_target=max_target)
            key = None if problem is None else _problem_key(problem[0], problem[1])
            if key is None or key in exclude:
                if key is not None:  # a duplicate: redraw the count too, in case that size is used up
                    count = None
                stall += 1
                if stall >= COUNTDOWN_MAX_STALL:
                    raise UserError(
                        f"could only make {len(problems)} of {n} distinct countdown problems "
                        f"with these settings; ask for fewer"
                    )
                continue
            stall, count = 0, None
            exclude.add(key)
            problems.append(problem)
            bar.update(1)
    return problems


def _countdown_row(numbers: list[int], target: int, *, index: int, split: str) -> dict:
    user = COUNTDOWN_USER.format(numbers=numbers, target=target)
    ground_truth = json.dumps({"target": target, "numbers": numbers})
    return _row("countdown", COUNTDOWN_SYSTEM, user, ground_truth, index=index, split=split)


def countdown_rows(
    n: int,
    *,
    seed: int,
    split: str,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_value: int = 100,
    max_target: int = COUNTDOWN_MAX_TARGET,
) -> list[dict]:
    """``n`` distinct Countdown rows (3-4 numbers in 1..100, like Countdown-Tasks-3to4), seeded."""
    problems = countdown_problems(
        random.Random(seed),
        n,
        min_numbers=min_numbers,
        max_numbers=max_numbers,
        max_value=max_value,
        max_target=max_target,
        desc=f"countdown {split}",
    )
    return [_countdown_row(nums, target, index=i, split=split) for i, (nums, target, _) in enumerate(problems)]


def countdown_splits(train_size: int, test_size: int, *, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, test) rows: no problem (numbers as a multiset, target) is in both.

    The test set is drawn first, so it equals ``countdown_rows(test_size, seed=seed, split="test")``
    and does not change with ``train_size``: evaluations stay comparable across training runs.
    """
    _check_positive("train size", train_size)
    _check_positive("test size", test_size)
    rng, seen = random.Random(seed), set()
    test = countdown_problems(rng, test_size, exclude=seen, desc="countdown test")
    train = countdown_problems(rng, train_size, exclude=seen, desc="countdown train")
    return (
        [_countdown_row(nums, target, index=i, split="train") for i, (nums, target, _) in enumerate(train)],
        [_countdown_row(nums, target, index=i, split="test") for i, (nums, target, _) in enumerate(test)],
    )


# -----------------------------------------------------------------------------
# Function calling: xlam-function-calling-60k records -> Qwen-style <tool_call> prompts.

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
        rows.append(_row("function_calling", system, query, ground_truth, index=index, split=split))
    return rows


def load_xlam(path: str | Path) -> list[dict]:
    """Records of a local xlam-function-calling-60k copy: a JSON list of records, or JSON Lines.

    Every record is checked here, so a bad file fails with its name before anything is written.
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


# -----------------------------------------------------------------------------
# Rows and parquet files.


def _row(data_source: str, system: str, user: str, ground_truth: str, *, index: int, split: str) -> dict:
    # Same keys in the same order for every task, so the inferred parquet schemas are identical.
    return {
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "data_source": data_source,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"index": index, "split": split},
        "agent_name": AGENT_NAME,
    }


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


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


# -----------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m verl_reflect.data", description="Write verl RL parquet files.")
    commands = parser.add_subparsers(dest="command", required=True)

    countdown = commands.add_parser("countdown", help="generate seeded, solvable Countdown problems")
    countdown.add_argument("--out-dir", required=True, type=Path, help="writes train.parquet and test.parquet here")
    countdown.add_argument("--train-size", type=positive_int, default=2000)
    countdown.add_argument("--test-size", type=positive_int, default=200)
    countdown.add_argument("--seed", type=int, default=0)

    fc = commands.add_parser("function-calling", help="convert an xlam-function-calling-60k JSON/JSONL file")
    fc.add_argument("--input", required=True, type=Path, help=f"e.g. {SAMPLE_XLAM}")
    fc.add_argument("--out", required=True, type=Path, help="the .parquet file to write")
    fc.add_argument("--split", default="train", help="stored in extra_info.split")

    args = parser.parse_args(argv)
    if args.command == "countdown":
        train, test = countdown_splits(args.train_size, args.test_size, seed=args.seed)
        outputs = {args.out_dir / "train.parquet": train, args.out_dir / "test.parquet": test}
    else:
        if args.out.suffix != ".parquet":  # verl's RLHFDataset picks the reader by file extension
            raise UserError(f"--out must end in .parquet, got {args.out}")
        outputs = {args.out: function_calling_rows(load_xlam(args.input), split=args.split)}
    for path, rows in outputs.items():  # written only after every input was checked
        write_parquet(rows, path)
        print(f"wrote {path} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
