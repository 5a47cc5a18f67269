"""Tests for reward_fns: dispatch by data_source, the shared answer extraction, and docstring examples."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import reward_fns
from reward_fns import compute_score, countdown, extract_answer, function_calling, get_compute_score

COUNTDOWN_GT = json.dumps({"target": 24, "numbers": [4, 6, 1]})
CALLS_GT = json.dumps([{"name": "lookup", "arguments": {"id": 7}}])


def test_dispatches_to_countdown():
    assert compute_score("countdown", "<answer>4 * 6 * 1</answer>", COUNTDOWN_GT) == 1.0
    assert compute_score("countdown", "<answer>4 * 6 + 1</answer>", COUNTDOWN_GT) == 0.0


def test_dispatches_to_function_calling():
    good = '<tool_call>{"name": "lookup", "arguments": {"id": 7}}</tool_call>'
    assert compute_score("function_calling", good, CALLS_GT) == 1.0
    assert compute_score("function_calling", good.replace("7", "8"), CALLS_GT) == 0.0


def test_same_ground_truth_column_for_mixed_tasks():
    # Both tasks take their ground truth as a JSON string, so they can share a parquet column.
    rows = [
        ("countdown", "<answer>(6 - 4 + 1) * 8</answer>", json.dumps({"target": 24, "numbers": [6, 4, 1, 8]})),
        ("function_calling", '[{"name": "lookup", "arguments": {"id": 7.0}}]', CALLS_GT),
    ]
    assert [compute_score(*row) for row in rows] == [1.0, 1.0]


def test_verl_call_shape_with_extra_info_and_kwargs():
    # verl's reward managers call with keywords and may add reward-router kwargs.
    result = compute_score(
        data_source="countdown",
        solution_str="<answer>4 * 6 * 1</answer>",
        ground_truth=COUNTDOWN_GT,
        extra_info={"index": 3, "num_turns": 2},
        reward_router_address=None,
    )
    assert result == 1.0 and type(result) is float


def test_get_compute_score_returns_the_task_function_and_caches():
    assert get_compute_score("countdown") is countdown.compute_score
    assert get_compute_score("function_calling") is function_calling.compute_score
    before = reward_fns._load.cache_info().hits
    get_compute_score("countdown")
    assert reward_fns._load.cache_info().hits == before + 1


def test_available_data_sources_lists_task_modules_only():
    assert {"countdown", "function_calling"} <= set(reward_fns.available_data_sources())
    assert not any(name.startswith("_") for name in reward_fns.available_data_sources())


@pytest.mark.parametrize(
    "data_source",
    [
        "gsm8k",
        "openai/gsm8k",
        "../countdown",
        "",
        "class",
        "_private",
        "__init__",  # would import this package again and recurse
        "count down",
        "x\ny",
    ],
)
def test_unknown_data_source_raises_one_clear_line(data_source):
    with pytest.raises(ValueError) as info:
        compute_score(data_source, "<answer>1</answer>", "{}")
    message = str(info.value)
    assert message.startswith(f"no reward function for data_source {data_source!r}: add reward_fns/")
    assert "with compute_score(...)" in message
    assert "countdown" in message and "function_calling" in message  # lists what is available
    assert "\n" not in message


def test_dotted_data_source_is_a_task_module_outside_the_package(monkeypatch, tmp_path):
    (tmp_path / "lab_tasks").mkdir()
    (tmp_path / "lab_tasks" / "echo.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    return float(solution_str == ground_truth)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    allowed = ["lab_tasks"]  # the recipe's reward.custom_reward_function.reward_kwargs.task_packages
    assert compute_score("lab_tasks.echo", "hi", "hi", task_packages=allowed) == 1.0
    assert compute_score("lab_tasks.echo", "hi", "ho", task_packages=allowed) == 0.0
    # A missing one names the file to add, relative to PYTHONPATH.
    with pytest.raises(ValueError, match=r"add lab_tasks/nope\.py with compute_score"):
        get_compute_score("lab_tasks.nope", allowed)
    with pytest.raises(ValueError, match=r"add countdown/evil\.py with compute_score"):
        get_compute_score("countdown.evil", allowed)


def test_a_dataset_cannot_import_outside_the_allowed_task_packages(monkeypatch, tmp_path):
    """A shared dataset is untrusted input: its data_source must not pick what code runs."""
    (tmp_path / "lab_allowed").mkdir()
    (tmp_path / "lab_allowed" / "echo.py").write_text("def compute_score(*args, **kwargs):\n    return 1.0\n")
    (tmp_path / "side_effect.py").write_text("import pathlib\npathlib.Path(__file__).with_name('ran').touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for data_source, allowed in [
        ("lab_allowed.echo", []),  # a real task, but the recipe does not allow its package
        ("side_effect.anything", ["lab_allowed"]),
        ("idlelib.idle", ["lab_allowed"]),  # starts Python's IDLE GUI when imported
        ("lab_allowedx.echo", ["lab_allowed"]),  # a prefix is not the package
    ]:
        with pytest.raises(ValueError, match=r"^no reward function for data_source .* under an allowed package"):
            compute_score(data_source, "x", "y", task_packages=allowed)
    assert not (tmp_path / "ran").exists()
    assert "idlelib.idle" not in sys.modules and "side_effect" not in sys.modules and "lab_allowed" not in sys.modules


def test_a_package_registered_through_the_entry_point_group_is_allowed(monkeypatch, tmp_path):
    (tmp_path / "lab_registered").mkdir()
    (tmp_path / "lab_registered" / "echo.py").write_text("def compute_score(*args, **kwargs):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reward_fns, "_registered_task_packages", lambda: frozenset({"lab_registered"}))
    assert compute_score("lab_registered.echo", "x", "y") == 1.0


def test_unknown_data_source_names_the_file_to_add():
    with pytest.raises(ValueError, match=r"add reward_fns/gsm8k\.py with compute_score\(\.\.\.\)"):
        get_compute_score("gsm8k")


@pytest.mark.parametrize("data_source", [None, 3, b"countdown"])
def test_non_str_data_source_raises(data_source):
    with pytest.raises(ValueError, match="no reward function for data_source"):
        get_compute_score(data_source)


def test_numpy_str_data_source_dispatches():
    assert get_compute_score(np.str_("countdown")) is countdown.compute_score


def test_a_new_task_module_is_found_without_a_registry(tmp_path, monkeypatch):
    (tmp_path / "always_right.py").write_text("def compute_score(*args, **kwargs):\n    return 1.0\n")
    monkeypatch.setattr(reward_fns, "__path__", [*reward_fns.__path__, str(tmp_path)])
    try:
        assert compute_score("always_right", "anything", "{}") == 1.0
        assert "always_right" in reward_fns.available_data_sources()
    finally:
        reward_fns._load.cache_clear()
        sys.modules.pop("reward_fns.always_right", None)


def test_a_task_module_with_a_broken_import_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "broken_task.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.setattr(reward_fns, "__path__", [*reward_fns.__path__, str(tmp_path)])
    try:
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
            get_compute_score("broken_task")
    finally:
        reward_fns._load.cache_clear()
        sys.modules.pop("reward_fns.broken_task", None)


# --- extract_answer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>a</answer>", "a"),
        ("<answer>a</answer><answer>b</answer>", "b"),
        ("<answer>a</answer> <answer>b", "a"),
        ("<answer><answer>a</answer>", "a"),
        ("<answer>a</answer></answer>", "a</answer>"),
        ("</answer><answer>", None),
        ("<answer>", None),
        ("", None),
        ("<answer></answer>", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_is_two_linear_scans_on_hostile_input():
    # Linear by construction, not by a stopwatch: two str.rfind passes (C, linear) over the text, nothing that can
    # backtrack (a regex over megabytes of nested tags would not call rfind at all).
    scans = []

    class Text(str):
        def rfind(self, *args):
            scans.append(args[1:])
            return str.rfind(self, *args)

    text = Text("<answer>" * 1_000_000 + "</answer>" + "</answer" * 1_000_000)
    assert extract_answer(text) == ""
    assert scans == [(), (0, 8_000_000)]  # the last </answer>, then the nearest <answer> before it


# --- preview (error messages about ground truths) --------------------------------------------------


class _BadRepr:
    def __repr__(self):
        raise RuntimeError("broken __repr__")


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value, expected",
    [
        (_deep(100_000), "[[[[[...]]]]]"),
        ({"a": _deep(100_000)}, "{'a': [[[[...]]]]}"),
        (10**5000, "<16610-bit int>"),
        ([1, 10**5000], "[1, <16610-bit int>]"),
        ("x" * 10_000, "'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx'"),
    ],
    ids=["deep list", "deep dict", "huge int", "huge int in a list", "long str"],
)
def test_preview_is_short_and_never_raises(value, expected):
    assert reward_fns.preview(value) == expected


def test_preview_survives_a_broken_repr():
    assert reward_fns.preview(_BadRepr()).startswith("<_BadRepr")
    assert reward_fns.preview([_BadRepr()]).startswith("[<_BadRepr")


def test_preview_caps_the_length():
    assert len(reward_fns.preview([list(range(100))] * 100, limit=50)) == 50


# --- packaging --------------------------------------------------------------------------------------


def test_importable_without_torch_verl_or_numpy():
    code = textwrap.dedent(
        """
        import sys, reward_fns, reward_fns.countdown, reward_fns.function_calling
        heavy = {"torch", "verl", "numpy", "ray", "transformers"} & set(sys.modules)
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", [reward_fns, countdown, function_calling], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
