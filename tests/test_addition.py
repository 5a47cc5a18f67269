"""The addition task (the real-model tier's): its verifier (``reward_fns/addition.py``), its rows
(``verl_reflect/data/addition.py``) and its registration, the README's "Adding a task" way."""

from __future__ import annotations

import doctest
import json

import pytest

import reward_fns
from reward_fns import addition as verifier
from verl_reflect import data
from verl_reflect.data import cli as data_cli


def test_the_verifiers_examples_hold():
    result = doctest.testmod(verifier, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 7 and result.failed == 0


TRUTH = json.dumps({"numbers": [47, 38], "answer": 85})


@pytest.mark.parametrize(
    "completion, score",
    [
        ("47 + 38 = 85", 1.0),
        ("The answer is 85. I hope this helps!", 1.0),
        ("**85**", 1.0),
        ("85\n\nExplanation: 7 + 8 = 15", 0.0),  # the last number is the answer: 15
        ("٨٥", 0.0),  # not ASCII digits
        ("85.5", 0.0),
        ("1" * 5000 + " 85", 1.0),  # a run past int()'s digit limit does not raise
        ("<answer>" * 10**5, 0.0),
        ("", 0.0),
    ],
)
def test_any_model_output_scores_without_raising(completion, score):
    assert reward_fns.compute_score("addition", completion, TRUTH) == score  # dispatched by data_source


def test_rows_are_seeded_distinct_two_digit_sums_held_out_from_train(tmp_path):
    train, test = data.addition_splits(300, 100, seed=4)
    assert (train, test) == data.addition_splits(300, 100, seed=4)
    pairs = [tuple(json.loads(row["reward_model"]["ground_truth"])["numbers"]) for row in train + test]
    assert len(set(pairs)) == 400 and all(10 <= n <= 99 for pair in pairs for n in pair)
    for row in train + test:
        truth = json.loads(row["reward_model"]["ground_truth"])
        a, b = truth["numbers"]
        assert truth["answer"] == a + b and row["prompt"][-1]["content"] == f"What is {a} + {b}?"
        assert reward_fns.compute_score(row["data_source"], f"{a} + {b} = {a + b}", row["reward_model"]["ground_truth"])
    assert [row["extra_info"]["index"] for row in test] == list(range(100))
    with pytest.raises(ValueError):
        data.addition_splits(8000, 101)  # more than the 8,100 pairs

    assert data_cli.main(["addition", "--out-dir", str(tmp_path), "--train-size", "5", "--test-size", "3"]) == 0
    assert len(data.read_rows(tmp_path / "train.parquet")) == 5 and len(data.read_rows(tmp_path / "test.parquet")) == 3


def test_a_recipe_naming_the_task_generates_its_rows():
    rows = data.task_rows("addition", 6, seed=2)
    assert len(rows) == 6 and {row["data_source"] for row in rows} == {"addition"}
    assert {row["extra_info"]["split"] for row in rows} == {"test"}
