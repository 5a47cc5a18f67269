"""``verl-reflect reflections``: its numbers on small hand-written trajectory files, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verl_reflect.commands import reflections
from verl_reflect.commands.errors import run_command


def record(model: str, index: int, attempt: str, reflection: str | None, retry: str | None, *, tokens: int = 2):
    """One eval record in the layout ``eval`` writes: attempt, then (on failure) reflection and retry."""
    turns = [{"kind": "attempt", "text": attempt, "correct": reflection is None}]
    layout = [["attempt", 2, 0]]
    if reflection is not None:
        turns.append({"kind": "reflection", "text": reflection, "correct": None})
        layout += [["user", 9, 0], ["reflection", tokens, tokens]]
    if retry is not None:
        turns.append({"kind": "retry", "text": retry, "correct": retry == "city"})
        layout += [["user", 5, 0], ["retry", 2, 0]]
    return {
        "model": model,
        "index": index,
        "data_source": "hidden_word",
        "prompt_key": "k",
        "first_try_correct": reflection is None,
        "final_correct": reflection is None or retry == "city",
        "num_reflections": int(reflection is not None),
        "reflection_tokens": tokens if reflection is not None else 0,
        "response_tokens": sum(n for _, n, _ in layout),
        "turns": turns,
        "layout": layout,
    }


# Hidden-word trajectories (the right word is "city"). base: restates its attempt, the retry ignores it;
# trained: names a new word, which the retry answers.
BASE = [
    record("base", 0, "date", "date was wrong", "name", tokens=3),
    record("base", 1, "unit", "Unit, unit.", "city", tokens=2),
    record("base", 2, "city", None, None),  # solved first try: no reflection
]
TRAINED = [
    record("trained", 0, "date", "try city", "city", tokens=2),
    record("trained", 1, "unit", "try city", "city", tokens=2),
    record("trained", 2, "city", None, None),
]


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_answer_and_whole_word_matching():
    assert reflections.answer_of("I think <answer>1+2</answer> or <answer> 3 </answer>") == "3"
    assert reflections.answer_of("  city\n") == "city"
    assert reflections.contains_words("Try CITY next.", "city")
    assert not reflections.contains_words("ethnicity", "city")  # whole words only
    assert not reflections.contains_words("anything", "")


def test_numbers_per_model(tmp_path):
    loaded = reflections.load([write(tmp_path / "t.jsonl", BASE + TRAINED)])
    base, trained = (reflections.summarize(loaded[label]) for label in ("base", "trained"))
    assert list(loaded) == ["base", "trained"]
    assert len(base["frame"]) == len(trained["frame"]) == 2  # the first-try solve has no reflection
    assert base["frame"]["tokens"].tolist() == [3, 2] and base["frame"]["words"].tolist() == [3, 2]
    # base restates both attempts ("date", "unit"); trained restates neither
    assert (base["restated"], trained["restated"]) == (2, 0)
    assert base["frame"]["copy_share"].tolist() == pytest.approx([1 / 3, 1.0])
    # trained's retries answer the word its reflection named; base's never do
    assert (base["followed"], base["with_retry"]) == (0, 2) and (trained["followed"], trained["with_retry"]) == (2, 2)
    assert trained["correct_when_followed"] == (2, 2) and base["correct_when_not"] == (1, 2)


def test_command_output_tables_examples_and_plot(tmp_path, capsys):
    base, trained = write(tmp_path / "base.jsonl", BASE), write(tmp_path / "trained.jsonl", TRAINED)
    plot = tmp_path / "lengths.png"
    assert reflections.main([str(base), str(trained), "--plot", str(plot), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "restates the attempt" in out and "100.0% [" in out  # trained's retries all follow, with an interval
    assert "100.0%  try city" in out  # trained's opening, in every reflection
    assert "50.0%  date was wrong" in out  # base's openings: one of two each
    # one side-by-side row: the shared attempt once, then each model's reflection and retry
    assert 'row 0\n  attempt: "date"\n  base reflection: "date was wrong"\n  base retry: "name" (wrong)' in out
    assert 'trained reflection: "try city"\n  trained retry: "city" (correct)' in out and "row 1" not in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_word_reflections_have_openings_but_no_phrases(tmp_path, capsys):
    one_word = [record("m", 0, "date", "city", "city"), record("m", 1, "unit", "query", "query")]
    assert reflections.main([str(write(tmp_path / "t.jsonl", one_word))]) == 0
    out = capsys.readouterr().out
    assert " 50.0%  city" in out and " 50.0%  query" in out
    assert "phrases (2-3 words), share of reflections\n(none: no reflection is long enough)" in out


def test_the_same_label_in_two_files_is_told_apart_by_file(tmp_path):
    first, second = write(tmp_path / "a.jsonl", BASE), write(tmp_path / "b.jsonl", BASE)
    assert list(reflections.load([first, second])) == ["a.jsonl:base", "b.jsonl:base"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ('{"model": "m", "index": 0}\n', "not a trajectory record of eval"),
        ("not json\n" + json.dumps(BASE[0]) + "\n", "t.jsonl:1: not JSON"),
        ("", "holds no trajectories"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "t.jsonl"
    if content is not None:
        path.write_text(content)
    assert run_command(reflections.main, [str(path)]) == 2  # what the verl-reflect command returns
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_registered_as_a_verl_reflect_command():
    from verl_reflect.commands import cli

    assert cli.COMMANDS["reflections"][0] is reflections.main
