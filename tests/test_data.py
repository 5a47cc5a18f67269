"""verl_reflect.data: seeded Countdown generator, xlam conversion, parquet schema, and verl's RLHFDataset reading it."""

from __future__ import annotations

import ast
import json
import operator
import random
from fractions import Fraction
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from verl_reflect import data
from verl_reflect.commands.errors import UserError, run_command

# -----------------------------------------------------------------------------
# helpers


def _solvable(numbers: list[int], target: int) -> bool:
    """Brute force over every expression tree of the numbers, each used once, with exact Fractions."""

    def search(pool: list[Fraction]) -> bool:
        if len(pool) == 1:
            return pool[0] == target
        for i in range(len(pool)):
            for j in range(i + 1, len(pool)):
                a, b = pool[i], pool[j]
                rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
                results = {a + b, a - b, b - a, a * b}
                if b:
                    results.add(a / b)
                if a:
                    results.add(b / a)
                if any(search(rest + [r]) for r in results):
                    return True
        return False

    return search([Fraction(n) for n in numbers])


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expression: str) -> tuple[Fraction, list[int], list[Fraction]]:
    """(value, numbers used, every intermediate result) of an arithmetic expression, exactly."""
    used, steps = [], []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return Fraction(node.value)
        assert isinstance(node, ast.BinOp) and type(node.op) in _OPS, ast.dump(node)
        value = _OPS[type(node.op)](walk(node.left), walk(node.right))
        steps.append(value)
        return value

    return walk(ast.parse(expression, mode="eval").body), used, steps


def _gt(row: dict) -> dict | list:
    return json.loads(row["reward_model"]["ground_truth"])


def _key(row: dict) -> tuple:
    gt = _gt(row)
    return tuple(sorted(gt["numbers"])), gt["target"]


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = run_command(data.main, argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def splits():
    return data.countdown_splits(300, 60, seed=3)


@pytest.fixture(scope="module")
def sample_records():
    return json.loads(data.SAMPLE_XLAM.read_text())


# -----------------------------------------------------------------------------
# Countdown


def test_countdown_is_deterministic_per_seed():
    first = data.countdown_rows(50, seed=0, split="train")
    assert first == data.countdown_rows(50, seed=0, split="train")
    assert [_key(r) for r in first] != [_key(r) for r in data.countdown_rows(50, seed=1, split="train")]
    # Pinned: random.Random(seed) only, so every machine makes these same problems; a change to the
    # generator changes everyone's data and should be deliberate.
    assert [r["reward_model"]["ground_truth"] for r in first[:3]] == [
        '{"target": 75, "numbers": [91, 86, 81, 1]}',
        '{"target": 874, "numbers": [12, 77, 50]}',
        '{"target": 198, "numbers": [79, 85, 34]}',
    ]
    assert data.countdown_splits(5, 5, seed=7) == data.countdown_splits(5, 5, seed=7)


def test_countdown_sizes_indices_and_disjoint_splits(splits):
    train, test = splits
    assert (len(train), len(test)) == (300, 60)
    for rows, split in ((train, "train"), (test, "test")):
        assert [r["extra_info"] for r in rows] == [{"index": i, "split": split} for i in range(len(rows))]
        assert len({_key(r) for r in rows}) == len(rows), "duplicate problem within a split"
    assert not {_key(r) for r in train} & {_key(r) for r in test}
    # The test set is drawn first, so it does not depend on the train size.
    assert test == data.countdown_rows(60, seed=3, split="test")
    assert data.countdown_splits(10, 60, seed=3)[1] == test


def test_countdown_problems_are_valid_and_solvable(splits):
    rows = splits[0] + splits[1]
    counts = set()
    for row in rows:
        gt = _gt(row)
        numbers, target = gt["numbers"], gt["target"]
        assert set(gt) == {"target", "numbers"} and isinstance(target, int)
        assert 3 <= len(numbers) <= 4 and all(isinstance(n, int) and 1 <= n <= 100 for n in numbers)
        assert 1 <= target <= data.COUNTDOWN_MAX_TARGET
        assert _solvable(numbers, target), gt
        counts.add(len(numbers))
        user = row["prompt"][-1]["content"]
        assert str(numbers) in user and f"equals {target}" in user and "<answer>" in user and "</answer>" in user
    assert counts == {3, 4}


def test_countdown_construction_expression_is_a_solution():
    problems = data.countdown_problems(random.Random(11), 100)
    rows = data.countdown_rows(100, seed=11, split="train")
    for (numbers, target, expression), row in zip(problems, rows, strict=True):
        assert _gt(row) == {"target": target, "numbers": numbers}
        value, used, steps = _evaluate(expression)
        assert value == target
        assert sorted(used) == sorted(numbers)
        assert all(s.denominator == 1 and s > 0 for s in steps), expression  # positive integers throughout
        assert expression not in json.dumps(row["prompt"])  # the solution is not leaked


def test_countdown_solutions_score_with_the_verifier():
    from reward_fns.countdown import compute_score

    problems = data.countdown_problems(random.Random(5), 30)
    rows = data.countdown_rows(30, seed=5, split="test")
    for (_, _, expression), row in zip(problems, rows, strict=True):
        gt = row["reward_model"]["ground_truth"]
        assert compute_score("countdown", f"<answer> {expression} </answer>", gt) == 1.0
        assert compute_score("countdown", "<answer> 1 + 1 </answer>", gt) == 0.0


def test_countdown_rejects_bad_sizes_and_impossible_requests():
    with pytest.raises(UserError, match="positive integer"):
        data.countdown_rows(0, seed=0, split="train")
    with pytest.raises(UserError, match="positive integer"):
        data.countdown_splits(10, -1, seed=0)
    # Two numbers in 1..2 make only 7 distinct problems: an error, not an endless loop.
    with pytest.raises(UserError, match="could only make 7 of 50"):
        data.countdown_rows(50, seed=0, split="train", min_numbers=2, max_numbers=2, max_value=2)


# -----------------------------------------------------------------------------
# Function calling


def test_sample_has_the_xlam_format(sample_records):
    assert 10 <= len(sample_records) <= 20
    for record in sample_records:
        assert isinstance(record["query"], str)
        tools, answers = json.loads(record["tools"]), json.loads(record["answers"])
        assert all(set(t) == {"name", "description", "parameters"} for t in tools)
        assert all(set(a) == {"name", "arguments"} for a in answers)
        assert {a["name"] for a in answers} <= {t["name"] for t in tools}
    all_answers = [json.loads(r["answers"]) for r in sample_records]
    assert any(len(a) > 1 for a in all_answers)  # several calls in one answer
    args = [v for a in all_answers for call in a for v in call["arguments"].values()]
    assert any(isinstance(v, float) for v in args)
    assert any(isinstance(v, list) for v in args) and any(isinstance(v, dict) for v in args)


def test_function_calling_rows_from_sample(sample_records):
    rows = data.function_calling_rows(sample_records, split="train")
    assert len(rows) == len(sample_records)
    for i, (row, record) in enumerate(zip(rows, sample_records, strict=True)):
        assert row["data_source"] == "function_calling"
        assert row["extra_info"] == {"index": i, "split": "train"}
        assert _gt(row) == json.loads(record["answers"])  # round-trips, exact types (floats stay floats)
        system, user = row["prompt"]
        assert (system["role"], user["role"]) == ("system", "user")
        assert user["content"] == record["query"]
        assert "<tool_call>" in system["content"] and "</tool_call>" in system["content"]
        for tool in json.loads(record["tools"]):
            assert json.dumps(tool, ensure_ascii=False) in system["content"]
    assert data.load_xlam(data.SAMPLE_XLAM) == sample_records


def test_load_xlam_accepts_json_lines(tmp_path, sample_records):
    path = tmp_path / "xlam.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in sample_records) + "\n")
    assert data.load_xlam(path) == sample_records


def test_function_calling_ground_truth_scores_with_the_verifier(sample_records):
    from reward_fns.function_calling import compute_score

    for row in data.function_calling_rows(sample_records, split="test"):
        gt = row["reward_model"]["ground_truth"]
        answer = "".join(f"<tool_call>{json.dumps(call)}</tool_call>\n" for call in json.loads(gt))
        assert compute_score("function_calling", answer, gt) == 1.0
        assert compute_score("function_calling", "no calls", gt) == 0.0


def _bad_inputs(tmp_path: Path, sample_records: list[dict]) -> dict[str, tuple[Path, str]]:
    """name -> (input file, text the one-line error must contain)."""
    cases = {"missing file": (tmp_path / "nope.json", "no such file")}
    broken = tmp_path / "broken.json"
    broken.write_text('[{"query": "hi",')
    cases["invalid JSON"] = (broken, "not valid JSON")
    for name, record, expect in [
        ("missing field", {k: v for k, v in sample_records[1].items() if k != "answers"}, "record 2 has no 'answers'"),
        ("tools not JSON", {**sample_records[1], "tools": "[{oops"}, "record 2: 'tools' is not valid JSON"),
        ("answers not a list", {**sample_records[1], "answers": '{"name": "f"}'}, "record 2: 'answers' must be"),
    ]:
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(sample_records[:2] + [record]))
        cases[name] = (path, expect)
    return cases


@pytest.mark.parametrize(
    "case", ["missing file", "invalid JSON", "missing field", "tools not JSON", "answers not a list"]
)
def test_function_calling_errors_are_one_line_and_write_nothing(tmp_path, capsys, sample_records, case):
    path, expect = _bad_inputs(tmp_path, sample_records)[case]
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, ["function-calling", "--input", str(path), "--out", str(out_dir / "fc.parquet")])
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert str(path) in err and expect in err, err
    assert out == ""
    assert not out_dir.exists() or not list(out_dir.iterdir())


# -----------------------------------------------------------------------------
# Schema, parquet files, verl's dataset


def _check_schema(row: dict, data_source: str) -> None:
    assert set(row) == {"prompt", "data_source", "reward_model", "extra_info", "agent_name"}
    assert isinstance(row["prompt"], list) and row["prompt"]
    assert all(set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values()) for m in row["prompt"])
    assert row["prompt"][-1]["role"] == "user"
    assert row["data_source"] == data_source
    assert row["reward_model"]["style"] == "rule" and set(row["reward_model"]) == {"style", "ground_truth"}
    assert isinstance(row["reward_model"]["ground_truth"], str)
    json.loads(row["reward_model"]["ground_truth"])
    assert set(row["extra_info"]) == {"index", "split"} and isinstance(row["extra_info"]["index"], int)
    assert row["agent_name"] == "reflect_retry"


@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory, sample_records):
    root = tmp_path_factory.mktemp("parquet")
    countdown, fc = root / "cd" / "train.parquet", root / "deep" / "er" / "fc.parquet"
    data.write_parquet(data.countdown_rows(20, seed=0, split="train"), countdown)
    data.write_parquet(data.function_calling_rows(sample_records, split="train"), fc)
    return countdown, fc


def test_parquet_schema_is_shared_across_tasks(parquet_files):
    countdown, fc = parquet_files
    assert pq.read_schema(countdown) == pq.read_schema(fc)  # so both can go into one training run
    for path, source in ((countdown, "countdown"), (fc, "function_calling")):
        rows = data.read_rows(path)
        for row in rows:
            _check_schema(row, source)
        assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
    assert not [p for p in fc.parent.iterdir() if p.name != "fc.parquet"]  # no temporary files left


def test_verl_rlhf_dataset_reads_both_files(parquet_files, tiny_tokenizer, tmp_path, monkeypatch):
    import datasets
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # keep ~/.cache clean
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 4096,
            "return_raw_chat": True,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "verl"),
        }
    )
    dataset = RLHFDataset(data_files=[str(p) for p in parquet_files], tokenizer=tiny_tokenizer, config=config)
    expected = data.read_rows(parquet_files[0]) + data.read_rows(parquet_files[1])
    assert len(dataset) == len(expected)  # nothing filtered out, both tasks concatenated
    for position in (0, 19, 20, len(expected) - 1):
        item, row = dataset[position], expected[position]
        assert item["raw_prompt"] == row["prompt"]
        assert item["data_source"] == row["data_source"]
        assert item["reward_model"] == row["reward_model"]
        assert item["extra_info"] == row["extra_info"]
        assert item["index"] == row["extra_info"]["index"]
        assert item["agent_name"] == "reflect_retry"
        assert tiny_tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)


def test_read_rows_errors_name_the_file(tmp_path, parquet_files):
    import pyarrow as pa

    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    partial = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"prompt": ["hi"], "data_source": ["countdown"]}), partial)
    for path, expect in [
        (tmp_path / "missing.parquet", "no such file"),
        (tmp_path, "is a directory"),
        (not_parquet, "not a readable parquet file"),
        (partial, "missing column(s) reward_model, extra_info"),
    ]:
        with pytest.raises(UserError) as info:
            data.read_rows(path)
        message = str(info.value)
        assert str(path) in message and expect in message and "\n" not in message, message
    with pytest.raises(UserError, match="no rows"):
        data.write_parquet([], tmp_path / "empty.parquet")


# -----------------------------------------------------------------------------
# Command line


def test_cli_countdown_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "data" / "countdown"
    argv = ["countdown", "--out-dir", str(out_dir), "--train-size", "40", "--test-size", "10", "--seed", "5"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    assert out.splitlines() == [
        f"wrote {out_dir / 'train.parquet'} (40 rows)",
        f"wrote {out_dir / 'test.parquet'} (10 rows)",
    ]
    train, test = data.countdown_splits(40, 10, seed=5)
    assert data.read_rows(out_dir / "train.parquet") == train
    assert data.read_rows(out_dir / "test.parquet") == test
    assert sorted(p.name for p in out_dir.iterdir()) == ["test.parquet", "train.parquet"]


def test_cli_function_calling_end_to_end(tmp_path, capsys, sample_records):
    out = tmp_path / "fc" / "test.parquet"
    argv = ["function-calling", "--input", str(data.SAMPLE_XLAM), "--out", str(out), "--split", "test"]
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    assert stdout.strip() == f"wrote {out} ({len(sample_records)} rows)"
    assert data.read_rows(out) == data.function_calling_rows(sample_records, split="test")


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["countdown", "--out-dir", "d", "--train-size", "0"], "--train-size: must be a positive integer"),
        (["countdown", "--out-dir", "d", "--test-size", "many"], "--test-size: must be a positive integer"),
        (["countdown"], "--out-dir"),
        ([], "required"),
        (["function-calling", "--input", str(data.SAMPLE_XLAM), "--out", "fc.json"], "must end in .parquet"),
    ],
)
def test_cli_usage_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, expect):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, argv)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expect in err, err
    assert not list(tmp_path.iterdir())


def test_failure_sets_share_one_schema_even_with_no_stored_attempt(tmp_path):
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "max_attempt_tokens": 8}
    attempt = {"token_ids": [5, 6], "text": "x", "model": "m", "sampling": sampling}
    rows = data.countdown_rows(2, seed=0, split="train")
    with_attempts = [{**r, "agent_name": data.FAILURES_AGENT_NAME, data.FAILED_ATTEMPTS: [attempt]} for r in rows]
    without = [{**r, data.FAILED_ATTEMPTS: []} for r in with_attempts]
    data.write_parquet(with_attempts, tmp_path / "a.parquet")
    data.write_parquet(without, tmp_path / "b.parquet")
    schema = pq.read_schema(tmp_path / "a.parquet")
    assert schema == pq.read_schema(tmp_path / "b.parquet")
    assert schema.field(data.FAILED_ATTEMPTS).type == data.FAILED_ATTEMPTS_TYPE
    assert data.read_rows(tmp_path / "a.parquet") == with_attempts
