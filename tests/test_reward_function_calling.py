"""Tests for reward_fns.function_calling: exact multiset match of tool calls."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_fns import function_calling
from reward_fns.function_calling import compute_score

PROPERTY = settings(max_examples=200, deadline=None)

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True}}
SEARCH = {"name": "search", "arguments": {"query": "hotels", "filters": {"stars": [4, 5]}, "limit": 10.5}}
GT = [WEATHER, SEARCH]
GT_JSON = json.dumps(GT)


def tool_calls(calls) -> str:
    return "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>\n" for c in calls)


def score(solution, gt=GT_JSON) -> float:
    return compute_score("function_calling", solution, gt)


# --- answer formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solution",
    [
        tool_calls(GT),
        tool_calls(GT[::-1]),
        "I will call two tools.\n" + tool_calls(GT) + "Done.",
        json.dumps(GT),
        json.dumps(GT, indent=2),
        json.dumps(GT[::-1]),
        f"Here are the calls:\n```json\n{json.dumps(GT)}\n```\nLet me know!",
        f"<think>maybe [1, 2]?</think>\n{json.dumps(GT)}",
        f"<answer>{json.dumps(GT)}</answer>",
        f"<answer>{tool_calls(GT)}</answer>",
        f"<answer>[]</answer> on reflection: <answer>{json.dumps(GT)}</answer>",
        json.dumps([{"name": c["name"], "parameters": c["arguments"]} for c in GT]),
        json.dumps([{"name": c["name"], "arguments": json.dumps(c["arguments"])} for c in GT]),
        json.dumps([{**c, "id": i, "type": "function"} for i, c in enumerate(GT)]),  # extra keys ignored
        json.dumps([dict(reversed(list(c.items()))) for c in GT]),
    ],
)
def test_correct_formats(solution):
    assert score(solution) == 1.0


def test_single_call_object():
    gt = json.dumps([WEATHER])
    assert score(json.dumps(WEATHER), gt) == 1.0
    assert score("Calling: " + json.dumps(WEATHER), gt) == 1.0
    assert score(json.dumps([WEATHER]), gt) == 1.0
    assert score(json.dumps(WEATHER), GT_JSON) == 0.0  # one of two calls


def test_last_answer_wins():
    assert score(f"<answer>{json.dumps(GT)}</answer> wait <answer>{json.dumps([WEATHER])}</answer>") == 0.0
    assert score(f"<answer>{json.dumps(GT)}</answer> <answer>[]") == 1.0  # unclosed trailing block ignored


def test_only_the_answer_block_is_read_when_there_is_one():
    # Calls outside the last <answer> do not count, even if they are right.
    assert score(f"{tool_calls(GT)}<answer>nothing</answer>") == 0.0


def test_last_top_level_json_value_wins():
    assert score(f"{json.dumps([WEATHER])} no, better: {json.dumps(GT)}") == 1.0
    assert score(f"{json.dumps(GT)} no, better: {json.dumps([WEATHER])}") == 0.0
    # Brackets inside JSON strings do not end the value.
    gt = [{"name": "echo", "arguments": {"text": 'a ] } [ { " \\'}}]
    assert score(f"ok: {json.dumps(gt)} ", json.dumps(gt)) == 1.0


def test_tool_call_blocks_take_precedence_and_all_count():
    assert score(tool_calls([WEATHER]) + json.dumps(GT)) == 0.0
    assert score(tool_calls(GT + [WEATHER])) == 0.0


@pytest.mark.parametrize(
    "solution",
    [
        tool_calls(GT) + "<tool_call>\n{",  # unclosed block
        tool_calls(GT) + "<tool_call></tool_call>",  # empty block
        tool_calls(GT) + "<tool_call>not json</tool_call>",
        tool_calls([WEATHER]) + f"<tool_call>{json.dumps([SEARCH])}</tool_call>",  # a list, not an object
        "<tool_call>" + tool_calls(GT),  # nested opening tag
        "[" + json.dumps(GT)[1:-1],  # unterminated list
        json.dumps(GT)[:-2],
        str(GT),  # Python repr, not JSON
        json.dumps(GT).replace('"', "'"),
        "",
        "   ",
        "no calls here",
        "[]",
        "{}",
        "null",
        json.dumps([WEATHER, "search"]),
        json.dumps([WEATHER, [SEARCH]]),
        json.dumps([WEATHER, {"name": "search"}]),  # missing arguments
        json.dumps([WEATHER, {"name": None, "arguments": SEARCH["arguments"]}]),
        json.dumps([WEATHER, {"name": "search", "arguments": [SEARCH["arguments"]]}]),
        json.dumps([WEATHER, {"name": "search", "arguments": "not json"}]),
        json.dumps([WEATHER, {"name": "search", "arguments": "[1]"}]),
        json.dumps([WEATHER, {"function": SEARCH}]),
    ],
)
def test_malformed_answers_score_zero(solution):
    assert score(solution) == 0.0


# --- value comparison -------------------------------------------------------------------------


def gt_with(value):
    return json.dumps([{"name": "f", "arguments": {"x": value}}])


def answer_with(value):
    return tool_calls([{"name": "f", "arguments": {"x": value}}])


@pytest.mark.parametrize(
    "expected, given_value",
    [
        (1, 1.0),
        (1.0, 1),
        (0, -0.0),
        (-2.5, -2.5),
        (10**20, 10**20),
        (10**20, 1e20),  # 1e20 is exactly 10**20
        ([1, "a"], [1.0, "a"]),
        ({"a": {"b": 1}}, {"a": {"b": 1.0}}),
        (None, None),
        (True, True),
        ("", ""),
    ],
)
def test_equal_values(expected, given_value):
    assert score(answer_with(given_value), gt_with(expected)) == 1.0


@pytest.mark.parametrize(
    "expected, given_value",
    [
        (1, True),
        (True, 1),
        (0, False),
        (False, 0),
        (1.0, True),
        (1, "1"),
        ("Paris", "paris"),
        ("Paris", "Paris "),
        ("é", "e\u0301"),  # no Unicode normalization
        (None, ""),
        (None, 0),
        (None, False),
        ([1, 2], [2, 1]),
        ([1, 2], [1, 2, 2]),
        ([1], 1),
        ({"a": 1}, {"a": 1, "b": 2}),
        ({"a": 1}, {"A": 1}),
        ({"a": 1}, [["a", 1]]),
        (10**20 + 1, 1e20),  # compared exactly, not through float
        (0.1 + 0.2, 0.3),
    ],
)
def test_unequal_values(expected, given_value):
    assert score(answer_with(given_value), gt_with(expected)) == 0.0


def test_argument_names_must_match():
    assert score(tool_calls([{"name": "f", "arguments": {"x": 1}}]), gt_with(1)) == 1.0
    assert score(tool_calls([{"name": "f", "arguments": {"y": 1}}]), gt_with(1)) == 0.0
    assert score(tool_calls([{"name": "f", "arguments": {"x": 1, "y": 1}}]), gt_with(1)) == 0.0
    assert score(tool_calls([{"name": "f", "arguments": {}}]), gt_with(1)) == 0.0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers_score_zero(constant):
    text = '<tool_call>{"name": "f", "arguments": {"x": %s}}</tool_call>' % constant
    assert score(text, gt_with(1)) == 0.0
    assert function_calling.parse_calls(text) is None


def test_duplicate_calls_are_counted():
    gt = json.dumps([WEATHER, WEATHER])
    assert score(tool_calls([WEATHER, WEATHER]), gt) == 1.0
    assert score(tool_calls([WEATHER]), gt) == 0.0
    assert score(tool_calls([WEATHER] * 3), gt) == 0.0


def test_empty_expected_list_is_matched_by_an_empty_list():
    assert score("[]", "[]") == 1.0
    assert score("<answer>[]</answer>", "[]") == 1.0
    assert score("no calls needed", "[]") == 0.0
    assert score(tool_calls([WEATHER]), "[]") == 0.0


# --- ground truth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gt", [GT, GT_JSON, GT_JSON.encode(), tuple(GT), [{**c, "arguments": json.dumps(c["arguments"])} for c in GT]]
)
def test_ground_truth_forms(gt):
    assert score(tool_calls(GT), gt) == 1.0
    assert score(tool_calls([WEATHER]), gt) == 0.0


@pytest.mark.parametrize(
    "gt, field",
    [
        ("[{", "not valid JSON"),
        (json.dumps(WEATHER), "must be a list of calls"),
        (None, "must be a list of calls"),
        (["get_weather"], "call 0: a call must be an object"),
        ([WEATHER, {"arguments": {}}], "call 1: 'name' must be a str"),
        ([{"name": 3, "arguments": {}}], "call 0: 'name' must be a str"),
        ([{"name": "f"}], "call 0: 'arguments' is missing"),
        ([{"name": "f", "arguments": [1]}], "call 0: 'arguments' must be a dict"),
        ([{"name": "f", "arguments": "{"}], "call 0: "),
        ([{"name": "f", "arguments": {"x": float("nan")}}], "call 0: non-finite"),
        ([{"name": "f", "arguments": {"x": {1, 2}}}], "call 0: not a JSON value"),
        ([{"name": "f", "arguments": {1: "x"}}], "call 0: object keys must be strings"),
    ],
)
def test_malformed_ground_truth_raises(gt, field):
    with pytest.raises(ValueError, match="^function_calling ground_truth: ") as info:
        score(tool_calls(GT), gt)
    assert field in str(info.value)


def nested_list(depth: int, inner=1) -> list:
    value = inner
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "gt, field",
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('[{"name": "f", "arguments": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}]", "not valid JSON"),
        (nested_list(100_000), "call 0: a call must be an object"),
        ({"a": nested_list(100_000)}, "must be a list of calls"),
        ([{"name": "f", "arguments": {"x": nested_list(5_000)}}], "call 0: nested deeper than"),
        ([{"name": "f", "arguments": {"x": nested_list(100_000)}}], "call 0: nested deeper than"),
        ([{"name": "f", "arguments": '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"}], "call 0: JSON nested too"),
        ([{"name": 10**5000, "arguments": {}}], "call 0: 'name' must be a str"),
        ([{"name": "f", "arguments": {"x": float("inf"), "y": 10**5000}}], "call 0: non-finite"),
        (10**5000, "must be a list of calls"),
    ],
    ids=[
        "deep JSON",
        "deep JSON argument",
        "deep list",
        "deep dict",
        "5,000-deep argument",
        "100,000-deep argument",
        "deep JSON arguments string",
        "huge int name",
        "infinite and huge ints",
        "huge int",
    ],
)
def test_deep_or_huge_malformed_ground_truth_raises_the_documented_error(gt, field):
    # A plain repr() in the message would raise RecursionError or ValueError (int too long to print).
    with pytest.raises(ValueError, match="^function_calling ground_truth: ") as info:
        score(tool_calls(GT), gt)
    assert field in str(info.value) and len(str(info.value)) < 400


def test_huge_numbers_in_a_valid_ground_truth_are_fine():
    gt = [{"name": "f", "arguments": {"x": 10**5000}}]
    assert score(tool_calls(GT), gt) == 0.0
    assert score('[{"name": "f", "arguments": {"x": 1e308}}]', gt) == 0.0


# --- hostile output -----------------------------------------------------------------------------


@pytest.mark.parametrize("solution", [None, tool_calls(GT).encode(), 1.0, GT])
def test_non_str_solution_scores_zero(solution):
    assert score(solution) == 0.0


HOSTILE = {
    "deep list": "[" * 90_000,
    "deep closed list": "[" * 50_000 + "]" * 50_000,
    "deep object": '{"a":' * 15_000 + "1" + "}" * 15_000,
    "deep arguments": '[{"name": "f", "arguments": ' + '{"a":' * 100 + "1" + "}" * 101 + "]",
    "deep arguments string": '[{"name": "f", "arguments": "' + "[" * 5000 + "]" * 5000 + '"}]',
    "many tiny lists": "[]" * 49_000,
    "many open tool calls": "<tool_call>" * 100_000,
    "many empty tool calls": "<tool_call></tool_call>" * 4_000,
    "many open answers": "<answer>" * 500_000,
    "correct but longer than the cap": json.dumps(GT) + " " * 200_000,
    "megabytes": "x" * 5_000_000 + json.dumps(GT),
    "huge integer": '[{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}]",
    "unterminated string": '[{"name": "' + "a" * 90_000,
    "backslashes": '["' + "\\" * 90_001,
    "lone surrogates": '<tool_call>{"name": "\ud800", "arguments": {"\udcff": "\\ud800"}}</tool_call>',
    "NUL": '[{"name": "get_weather\x00", "arguments": {}}]',
}


@pytest.mark.parametrize("solution", HOSTILE.values(), ids=HOSTILE.keys())
def test_huge_garbage_and_nested_inputs_score_zero(solution):
    # How long these take is measured by benchmarks/bench_verifiers.py, not asserted here.
    assert score(solution) == 0.0


def test_size_cap():
    padded = json.dumps(GT) + " " * (function_calling.MAX_ANSWER_CHARS - len(json.dumps(GT)))
    assert score(padded) == 1.0
    assert score(padded + " ") == 0.0
    assert score(f"{'x' * 1_000_000}<answer>{json.dumps(GT)}</answer>") == 1.0  # the cap is on the read region


def test_nesting_cap():
    def nested(depth):
        value = 1
        for _ in range(depth):
            value = [value]
        return value

    ok, too_deep = nested(function_calling.MAX_DEPTH - 1), nested(function_calling.MAX_DEPTH + 1)
    assert score(answer_with(ok), gt_with(ok)) == 1.0
    assert score(answer_with(too_deep), gt_with(1)) == 0.0


# --- property tests ---------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12)
keys = st.text(min_size=1, max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
# Nesting is spelled out because st.recursive is much slower to draw.
lists = st.lists(scalars, max_size=3)
dicts = st.dictionaries(keys, scalars | lists, max_size=2)
values = scalars | lists | dicts | st.lists(lists | dicts, max_size=2)
call_objects = st.fixed_dictionaries({"name": names, "arguments": st.dictionaries(keys, values, max_size=3)})
calls = st.lists(call_objects, min_size=1, max_size=3)


def shuffled(value, rng: random.Random):
    """Same JSON value with dict keys re-inserted in a random order (lists keep their order)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def render(call_list, style: int, rng: random.Random) -> str:
    call_list = [shuffled(c, rng) for c in call_list]
    rng.shuffle(call_list)
    if style == 0:
        return tool_calls(call_list)
    if style == 1:
        return json.dumps(call_list, ensure_ascii=False)
    if style == 2:
        return f"Sure.\n```json\n{json.dumps(call_list, indent=2)}\n```"
    return f"<think>[draft]</think><answer>{json.dumps(call_list)}</answer>"


@PROPERTY
@given(calls, st.integers(0, 3), st.integers(0, 2**32))
def test_property_rendered_calls_score_one(call_list, style, seed):
    rng = random.Random(seed)
    assert score(render(call_list, style, rng), json.dumps(call_list)) == 1.0
    assert score(render(call_list, style, rng), call_list) == 1.0


@PROPERTY
@given(calls, st.integers(0, 3), st.integers(0, 2**32), st.data())
def test_property_single_changes_score_zero(call_list, style, seed, data):
    rng = random.Random(seed)
    gt = json.dumps(call_list)
    i = data.draw(st.integers(0, len(call_list) - 1), label="call")
    call = call_list[i]
    mutations = {
        "renamed": {**call, "name": call["name"] + "x"},
        "extra argument": {**call, "arguments": {**call["arguments"], "__extra_argument__": 1}},
    }
    if call["arguments"]:
        key = data.draw(st.sampled_from(sorted(call["arguments"])), label="argument")
        old = call["arguments"][key]
        new = data.draw(values.filter(lambda v: not same_json(v, old)), label="new value")
        mutations["changed value"] = {**call, "arguments": {**call["arguments"], key: new}}
        mutations["dropped argument"] = {**call, "arguments": {k: v for k, v in call["arguments"].items() if k != key}}
    for kind, mutated in mutations.items():
        wrong = call_list[:i] + [mutated] + call_list[i + 1 :]
        assert score(render(wrong, style, rng), gt) == 0.0, kind
    assert score(render(call_list[:i] + call_list[i + 1 :], style, rng), gt) == 0.0, "dropped call"
    assert score(render(call_list + [call], style, rng), gt) == 0.0, "added call"


def same_json(a, b) -> bool:
    """Reference equality, independent of the module: numbers by value, bools apart from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@PROPERTY
@given(values, values)
def test_property_value_comparison_matches_reference(a, b):
    assert score(answer_with(b), gt_with(a)) == (1.0 if same_json(a, b) else 0.0)


@PROPERTY
@given(st.binary(max_size=300))
def test_property_random_bytes_never_raise(raw):
    for text in (raw.decode("utf-8", "surrogateescape"), raw[: len(raw) // 2 * 2].decode("utf-16-le", "surrogatepass")):
        for solution in (text, f"<tool_call>{text}</tool_call>", f"[{text}]", f"<answer>{text}</answer>"):
            assert score(solution) in (0.0, 1.0)


@PROPERTY
@given(st.text(alphabet='[]{}",:\\ 0123456789.-eEtruefalsnNI<>/_tool_cal', max_size=80))
def test_property_json_like_text_never_raises(text):
    for solution in (text, f"<tool_call>{text}</tool_call>"):
        result = score(solution, "[]")
        assert result in (0.0, 1.0)
        if result == 1.0:  # only an empty list of calls matches an empty ground truth
            assert "[]" in text.replace(" ", "")


# --- property tests: any ground truth, any answer -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
huge_ints = st.integers(0, 40_000).map(lambda bits: 2**bits - 1)  # 40,000 bits: over 4,300 digits
deep = st.tuples(st.integers(0, 20_000), json_values).map(lambda d: nested_list(*d))
odd_arguments = json_values | huge_ints | deep | st.dictionaries(st.text(max_size=3), json_values | huge_ints | deep)
call_like = st.fixed_dictionaries({}, optional={"name": names | json_values, "arguments": odd_arguments})
ground_truths = (
    st.lists(call_like | json_values | deep, max_size=3)
    | json_values
    | deep
    | st.integers(0, 20_000).map(lambda n: "[" * n + "]" * n)
)
answers = st.text(alphabet='[]{}",:\\ 0123456789.-eE<>/_tool_call', max_size=60) | st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(ground_truths, st.booleans(), answers)
def test_property_any_ground_truth_raises_only_the_documented_error(gt, as_json, answer):
    if as_json:
        try:
            gt = json.dumps(gt)
        except (ValueError, RecursionError):  # huge ints and deep lists cannot be written as JSON
            pass
    try:
        expected = function_calling.parse_ground_truth(gt)
    except ValueError as e:
        assert str(e).startswith("function_calling ground_truth: ") and len(str(e)) < 400
        with pytest.raises(ValueError, match="^function_calling ground_truth: "):
            score(answer, gt)
        return
    for solution in (answer, f"<tool_call>{answer}</tool_call>", f"<answer>{answer}</answer>"):
        assert score(solution, gt) in (0.0, 1.0)
    rendered = json.dumps(list(gt)) if isinstance(gt, (list, tuple)) else None
    if rendered is not None and "<" not in rendered:  # no stray tags: the ground truth written out is right
        assert score(rendered, gt) == 1.0 and sum(expected.values()) == len(gt)
