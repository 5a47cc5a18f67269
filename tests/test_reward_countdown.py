"""Tests for reward_fns.countdown: the exact-arithmetic Countdown verifier."""

from __future__ import annotations

import json
import operator
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_fns import countdown
from reward_fns.countdown import compute_score

GT = {"target": 9, "numbers": [1, 2, 3]}
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


def score(answer: str, gt=GT) -> float:
    return compute_score("countdown", f"<think>reasoning</think>\n<answer>{answer}</answer>", gt)


# --- correct answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "(1 + 2) * 3",
        "(1+2)*3",
        "3 * (2 + 1)",
        "((1 + 2)) * (3)",
        "  (1 + 2) * 3  ",
        "\n(1 + 2)\n* 3\n",  # whitespace, newlines included, is ignored
        "(1 + 2) * 3 = 9",
        "(1 + 2) * 3=9",
    ],
)
def test_correct(answer):
    assert score(answer) == 1.0


def test_returns_exact_floats():
    assert type(score("(1 + 2) * 3")) is float and type(score("1 + 2 + 3")) is float


def test_fractional_and_negative_intermediates():
    assert score("(1 - 7) / 2 + 6", {"target": 3, "numbers": [1, 7, 2, 6]}) == 1.0
    assert score("8 / (3 - 8 / 3)", {"target": 24, "numbers": [8, 3, 8, 3]}) == 1.0  # exact: 8 / (1/3)
    assert score("1 - 2 - 3", {"target": -4, "numbers": [1, 2, 3]}) == 1.0
    assert score("1 - 2 - 3 = -4", {"target": -4, "numbers": [1, 2, 3]}) == 1.0


# --- unary minus ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, target, numbers",
    [
        ("-1 + 64 * 7", 447, [1, 64, 7]),  # as TinyZero's and reasoning-gym's scorers accept
        ("- 1 + 64 * 7", 447, [1, 64, 7]),
        ("-(1 - 7) / 2 + 6", 9, [1, 7, 2, 6]),
        ("64 * -7 + 1", -447, [64, 7, 1]),
        ("1 - -2", 3, [1, 2]),
        ("1--2", 3, [1, 2]),
        ("-(-3) * 3", 9, [3, 3]),
        ("(-3) * (-3)", 9, [3, 3]),
        ("-3 * -3 = 9", 9, [3, 3]),
        ("-1 - 2 = -3", -3, [1, 2]),
        ("-0 + 9", 9, [0, 9]),
    ],
)
def test_unary_minus_on_a_number_or_a_group(answer, target, numbers):
    assert score(answer, {"target": target, "numbers": numbers}) == 1.0


def test_unary_minus_binds_like_arithmetic():
    # -2 * 3 and -(2 * 3) agree, but -(2 - 3) and -2 - 3 do not.
    assert score("-(2 - 3) * 4", {"target": 4, "numbers": [2, 3, 4]}) == 1.0
    assert score("-2 - 3 * 4", {"target": 4, "numbers": [2, 3, 4]}) == 0.0
    assert score("-2 - 3 * 4", {"target": -14, "numbers": [2, 3, 4]}) == 1.0
    assert score("2 - -3 - 4", {"target": 1, "numbers": [2, 3, 4]}) == 1.0


def test_unary_minus_does_not_change_the_numbers_used():
    # The numbers are non-negative; "-1" uses the number 1, once.
    assert score("-1 + 2 * 3 + 4", {"target": 9, "numbers": [1, 2, 3, 4]}) == 1.0
    assert score("-1 + 2 * 3 + 4", {"target": 9, "numbers": [1, 2, 3]}) == 0.0
    assert score("-1 + 1 + 9", {"target": 9, "numbers": [1, 9]}) == 0.0


def test_near_misses_the_reference_scorers_accept_are_rejected():
    # Float scorers accept values within a tolerance and literals such as 8.4 built from 8 and 4.
    assert score("8.4 * 5", {"target": 42, "numbers": [8, 4, 5]}) == 0.0
    assert score("1 / 3 * 3 + 1 / 100000000000000", {"target": 1, "numbers": [1, 3, 3, 1, 100000000000000]}) == 0.0
    assert score("2 ** 3 + 1", {"target": 9, "numbers": [2, 3, 1]}) == 0.0
    assert score("19 // 2", {"target": 9, "numbers": [19, 2]}) == 0.0


# --- parenthesis depth ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 200, 201, 400, 495, 496, 499, 500])
def test_nesting_is_limited_only_by_the_answer_length(depth):
    # CPython's parser stops at 200 levels; this parser only at MAX_ANSWER_CHARS.
    for answer, gt in [
        ("(" * depth + "9" + ")" * depth, {"target": 9, "numbers": [9]}),
        ("-" + "(" * depth + "9" + ")" * depth, {"target": -9, "numbers": [9]}),
        ("(" * depth + "1 + 2" + ")" * depth + " * 3", GT),
    ]:
        assert score(answer, gt) == (1.0 if len(answer) <= countdown.MAX_ANSWER_CHARS else 0.0), len(answer)


def test_unbalanced_parentheses_are_rejected_at_any_depth():
    for depth in (1, 250):
        assert countdown.parse_expression("(" * depth + "9" + ")" * (depth - 1)) is None
        assert countdown.parse_expression("(" * (depth - 1) + "9" + ")" * depth) is None
        assert countdown.parse_expression(")" * depth + "9" + "(" * depth) is None


def test_precedence_and_associativity_follow_arithmetic():
    assert score("1 + 2 * 3") == 0.0  # 7, not 9
    assert score("8 - 4 - 2", {"target": 2, "numbers": [8, 4, 2]}) == 1.0
    assert score("8 - (4 - 2)", {"target": 2, "numbers": [8, 4, 2]}) == 0.0
    assert score("8 / 4 / 2", {"target": 1, "numbers": [8, 4, 2]}) == 1.0


def test_exact_arithmetic_not_floats():
    # In floats 0.1 + 0.2 - 0.3 is 5.55e-17, not 0.
    assert score("1 / 10 + 2 / 10 - 3 / 10", {"target": 0, "numbers": [1, 10, 2, 10, 3, 10]}) == 1.0
    # In floats 1 + 1e-17 is exactly 1.0, so a float check would accept this.
    assert score("1 + 1 / 100000000000000000", {"target": 1, "numbers": [1, 1, 10**17]}) == 0.0


# --- the "= target" suffix -------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "(1 + 2) * 3 = 10",
        "(1 + 2) * 3 = 09",
        "(1 + 2) * 3 = 9.0",
        "(1 + 2) * 3 =",
        "(1 + 2) * 3 == 9",
        "(1 + 2) * 3 = 9 = 9",
        "9 = (1 + 2) * 3",
        "(1 + 2) * 3 = 3 * 3",
    ],
)
def test_equals_suffix_must_state_the_target(answer):
    assert score(answer) == 0.0


def test_equals_suffix_does_not_rescue_a_wrong_expression():
    assert score("1 + 2 + 3 = 9") == 0.0


@pytest.mark.parametrize(
    "suffix", ["", " = 3", " = " + "9" * 990, " = -" + "1" * 990], ids=["none", "3", "long", "-long"]
)
def test_a_target_too_long_for_str_never_makes_the_answer_raise(suffix):
    # str() of an int over 4,300 digits raises ValueError; the stated target is compared as an int.
    gt = {"target": 10**5000, "numbers": [1, 2]}
    assert score("1 + 2" + suffix, gt) == 0.0


def test_equals_suffix_is_compared_as_an_integer():
    assert score("(1 + 2) * 3 =\n9\n") == 1.0
    assert score("0 * 9 = 0", {"target": 0, "numbers": [0, 9]}) == 1.0
    assert score("0 * 9 = -0", {"target": 0, "numbers": [0, 9]}) == 0.0
    assert score("0 * 9 = +0", {"target": 0, "numbers": [0, 9]}) == 0.0


# --- which answer counts -----------------------------------------------------------------


def test_last_answer_wins():
    assert compute_score("countdown", "<answer>1 + 2 + 3</answer> hmm <answer>(1 + 2) * 3</answer>", GT) == 1.0
    assert compute_score("countdown", "<answer>(1 + 2) * 3</answer> hmm <answer>1 + 2 + 3</answer>", GT) == 0.0


def test_unclosed_trailing_answer_is_ignored():
    assert compute_score("countdown", "<answer>(1 + 2) * 3</answer> <answer>1 + 2", GT) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "(1 + 2) * 3",  # no tags
        "<answer>(1 + 2) * 3",
        "(1 + 2) * 3</answer>",
        "<Answer>(1 + 2) * 3</Answer>",
        "<answer></answer>",
        "<answer>   </answer>",
    ],
)
def test_missing_answer(text):
    assert compute_score("countdown", text, GT) == 0.0


# --- rejected constructs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, numbers",
    [
        ("+1 + 2 * 3 + 4 - 2", [1, 2, 3, 4, 2]),
        ("--9", [9]),
        ("- -9", [9]),
        ("-(-(--9))", [9]),
        ("-+9", [9]),
        ("+-9 * -1", [9, 1]),
        ("-1 * -9 -", [1, 9]),
        ("9 -", [9]),
        ("(1 + 2) ** 2", [1, 2, 2]),
        ("3 // 1 * 3", [3, 1, 3]),
        ("(1 + 2) * 3 % 10", [1, 2, 3, 10]),
        ("3 * 3.0", [3, 3]),
        ("3 * 3.", [3, 3]),
        ("0x9", [9]),
        ("9e0", [9]),
        ("1_0 - 1", [10, 1]),
        ("00 + 9", [0, 9]),
        ("True * 9", [1, 9]),
        ("9 if 1 else 0", [9, 1, 0]),
        ("int(9)", [9]),
        ("(9,)[0]", [9, 0]),
    ],
)
def test_constructs_python_would_evaluate_to_the_target_are_rejected(answer, numbers):
    assert score(answer, {"target": 9, "numbers": numbers}) == 0.0
    assert countdown.parse_expression(answer) is None


@pytest.mark.parametrize(
    "answer",
    [
        "(1 + 2) * 3j",
        "(1 + 2) * x",
        "(1 + 2) * [3][0]",
        "(1 + 2) * 3 < 10",
        "(1 + 2) * 3; 9",
        "(1 + 2) * (lambda: 3)()",
        "(1 + 2) * (3)(1)",  # a call
        "(1 + 2) * ()",
        "__import__('os').system('true')",
        "(1 + 2) × 3",
        "(1 + 2) ⋅ 3",
        "(１ + ２) * ３",  # fullwidth digits
        "(1 + 2) * ٣",  # Arabic-Indic digit
        "[1 + 2] * 3",
        "{1 + 2} * 3",
        "(1 + 2) * 3 # comment",
        "(1 + 2) * '3'",
        "(1 + 2) * 3\x00",
    ],
)
def test_other_constructs_are_rejected(answer):
    assert score(answer) == 0.0
    assert countdown.parse_expression(answer) is None


@pytest.mark.parametrize("literal", ["0x10", "1_000", "1e3", "1.0", "True", "'1'", "00", "007", "0_0", "1_0"])
def test_literal_spellings_are_rejected_by_the_parser(literal):
    assert countdown.parse_expression(f"{literal} + 1") is None


def test_leading_zero_literal_is_rejected_even_though_python_accepts_it():
    assert score("(00 + 1) * 9", {"target": 9, "numbers": [0, 1, 9]}) == 0.0
    assert score("(0 + 1) * 9", {"target": 9, "numbers": [0, 1, 9]}) == 1.0


def test_numbers_must_be_used_exactly_once_as_a_multiset():
    assert score("(1 + 2) * 3 + 0") == 0.0  # extra number
    assert score("3 * 3") == 0.0  # missing and duplicated numbers
    assert score("(1 + 2) * 3 * 1") == 0.0  # 1 used twice
    assert score("12 - 3", {"target": 9, "numbers": [1, 2, 3]}) == 0.0  # concatenated digits
    assert score("3 * 3", {"target": 9, "numbers": [3, 3]}) == 1.0  # repeated numbers are fine


def test_division_by_zero_scores_zero():
    gt = {"target": 0, "numbers": [1, 2, 2]}
    assert score("1 / (2 - 2)", gt) == 0.0
    assert score("(2 - 2) / 1", gt) == 1.0
    assert countdown.evaluate(countdown.parse_expression("1 / (2 - 2)")) is None


def test_intermediate_values_are_capped():
    big = 2**600
    gt = {"target": 1, "numbers": [big, big, big, big]}
    # big * big has 1201 bits, over MAX_BITS, even though the final value would be 1.
    assert score(f"({big} * {big}) / ({big} * {big})", gt) == 0.0
    assert score(f"({big} / {big}) * ({big} / {big})", gt) == 1.0


# --- ground truth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gt",
    [
        GT,
        json.dumps(GT),
        json.dumps(GT).encode(),
        {"target": 9, "numbers": (3, 2, 1)},
        {"target": np.int64(9), "numbers": np.array([1, 2, 3])},
        {"target": 9, "numbers": [1, 2, 3], "extra": "ignored"},
    ],
)
def test_ground_truth_forms(gt):
    assert score("(1 + 2) * 3", gt) == 1.0
    assert score("1 + 2 + 3", gt) == 0.0


@pytest.mark.parametrize(
    "gt, field",
    [
        ('{"target": 9, "numbers": [1, 2', "not valid JSON"),
        ("[1, 2, 3]", "must be a dict"),
        ({"numbers": [1, 2, 3]}, "'target'"),
        ({"target": 9}, "'numbers'"),
        ({"target": "9", "numbers": [1, 2, 3]}, "'target' must be an int, got '9'"),
        ({"target": 9.0, "numbers": [1, 2, 3]}, "'target' must be an int, got 9.0"),
        ({"target": True, "numbers": [1, 2, 3]}, "'target' must be an int"),
        ({"target": None, "numbers": [1, 2, 3]}, "'target' must be an int"),
        ({"target": 9, "numbers": "123"}, "'numbers' must be a list"),
        ({"target": 9, "numbers": 123}, "'numbers' must be a list"),
        ({"target": 9, "numbers": [1, 2.5]}, "'numbers' item must be an int"),
        ({"target": 9, "numbers": [1, False]}, "'numbers' item must be an int"),
        ({"target": 9, "numbers": [1, -2]}, "'numbers' must hold"),
        ({"target": 9, "numbers": []}, "'numbers' must hold"),
        ({"target": 9, "numbers": list(range(100))}, "'numbers' must hold"),
    ],
)
def test_malformed_ground_truth_raises(gt, field):
    with pytest.raises(ValueError, match="^countdown ground_truth: ") as info:
        compute_score("countdown", "<answer>(1 + 2) * 3</answer>", gt)
    assert field in str(info.value)


def nested_list(depth: int, inner=9) -> list:
    value = inner
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "gt, field",
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"target": 9, "numbers": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
        (nested_list(100_000), "must be a dict"),
        ({"target": nested_list(100_000), "numbers": [9]}, "'target' must be an int"),
        ({"target": 9, "numbers": nested_list(100_000)}, "'numbers' item must be an int"),
        ({"target": 9, "numbers": [nested_list(100_000)]}, "'numbers' item must be an int"),
        ({"target": 9, "numbers": [10**5000, -1]}, "'numbers' must hold"),
        ({"target": 9, "numbers": [1, 2] * 10_000}, "'numbers' must hold"),
        ({"target": 9.5, "numbers": [10**5000]}, "'target' must be an int, got 9.5"),
        ({"target": 9, "numbers": [1.5, 10**5000]}, "'numbers' item must be an int"),
        ({"target": 10**5000}, "'numbers'"),
    ],
    ids=[
        "deep JSON",
        "deep JSON numbers",
        "deep list",
        "deep target",
        "deep numbers",
        "deep number",
        "huge and negative numbers",
        "too many numbers",
        "float target",
        "float and huge numbers",
        "huge target, no numbers",
    ],
)
def test_deep_or_huge_malformed_ground_truth_raises_the_documented_error(gt, field):
    # A plain repr() in the message would raise RecursionError or ValueError (int too long to print).
    with pytest.raises(ValueError, match="^countdown ground_truth: ") as info:
        compute_score("countdown", "<answer>9</answer>", gt)
    assert field in str(info.value) and len(str(info.value)) < 400


def test_huge_numbers_in_a_valid_ground_truth_are_fine():
    huge = 10**5000
    assert score("9", {"target": 9, "numbers": [9]}) == 1.0
    assert score("9 - 0", {"target": 9, "numbers": [9, huge]}) == 0.0
    assert score("9", {"target": huge, "numbers": [9]}) == 0.0


def test_malformed_ground_truth_raises_even_for_garbage_output():
    with pytest.raises(ValueError):
        compute_score("countdown", None, {"target": "x", "numbers": [1]})


# --- hostile output -------------------------------------------------------------------------


@pytest.mark.parametrize("solution", [None, b"<answer>(1 + 2) * 3</answer>", 9, ["<answer>(1 + 2) * 3</answer>"]])
def test_non_str_solution_scores_zero(solution):
    assert compute_score("countdown", solution, GT) == 0.0


HOSTILE = {
    "many opening tags": "<answer>" * 500_000,
    "many opening tags, one close": "<answer>" * 500_000 + "</answer>",
    "many closing tags": "</answer>" * 500_000,
    "megabytes of parentheses": "<answer>" + "(" * 1_000_000 + "1" + ")" * 1_000_000 + "</answer>",
    "deep and wrong": "<answer>" + "(" * 400 + "1 + 2" + ")" * 400 + " + 3</answer>",
    "deep and unbalanced": "<answer>" + "(" * 490 + "(1 + 2) * 3" + ")" * 489 + "</answer>",
    "long unary chain": "<answer>" + "-" * 990 + "1</answer>",
    "long sum": "<answer>" + "1+" * 499 + "1</answer>",
    "999-digit literal": "<answer>" + "9" * 999 + "</answer>",
    "literal over int-to-str limit": "<answer>" + "9" * 5000 + "</answer>",
    "huge product": "<answer>" + "9" * 300 + "*" + "9" * 300 + "</answer>",
    "huge quotients": "<answer>" + "/".join(["(1+2)*3"] + ["9" * 60] * 15) + "</answer>",
    "alternating signs": "<answer>" + "1--" * 333 + "1</answer>",
    "nested pairs": "<answer>" + "((" * 100 + "1" + "))" * 100 + "</answer>",
    "correct but padded past the cap": "<answer>(1+2)*3" + " " * 2_000_000 + "</answer>",
    "megabytes of text": "x" * 5_000_000,
    "lone high surrogate": "<answer>\ud800(1 + 2) * 3</answer>",
    "lone low surrogate": "<answer>(1 + 2) * 3\udcff</answer>",
    "NUL": "<answer>\x00</answer>",
}


@pytest.mark.parametrize("solution", HOSTILE.values(), ids=HOSTILE.keys())
def test_huge_garbage_and_nested_inputs_score_zero(solution):
    # How long these take is measured by benchmarks/bench_verifiers.py, not asserted here.
    assert compute_score("countdown", solution, GT) == 0.0


def test_answer_length_cap_applies_before_parsing():
    assert score("(1 + 2) * 3" + " " * (countdown.MAX_ANSWER_CHARS - 20)) == 1.0
    assert score("(1 + 2) * 3" + " " * countdown.MAX_ANSWER_CHARS) == 0.0


# --- property tests -------------------------------------------------------------------------

OPS = "+-*/"


@st.composite
def trees(draw):
    """A random expression tree: an int leaf, or (op, left, right) over 2-5 numbers in 1..100."""
    numbers = draw(st.lists(st.integers(1, 100), min_size=2, max_size=5))
    ops = iter(draw(st.lists(st.sampled_from(OPS), min_size=len(numbers) - 1, max_size=len(numbers) - 1)))
    splits = iter(draw(st.lists(st.integers(0, 99), min_size=len(numbers) - 1, max_size=len(numbers) - 1)))

    def build(items):
        if len(items) == 1:
            return items[0]
        k = 1 + next(splits) % (len(items) - 1)
        return (next(ops), build(items[:k]), build(items[k:]))

    return build(numbers)


def value(tree) -> Fraction | None:
    """Reference evaluator, independent of the module under test."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, a, b = tree
    x, y = value(a), value(b)
    if x is None or y is None or (op == "/" and y == 0):
        return None
    return {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]


def render(tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    op, a, b = tree
    return f"({render(a)} {op} {render(b)})"


def leaves(tree) -> list[int]:
    return [tree] if isinstance(tree, int) else leaves(tree[1]) + leaves(tree[2])


def paths(tree, kind, path=()):
    """Paths to every leaf ("leaf") or inner node ("op")."""
    if isinstance(tree, int):
        return [path] if kind == "leaf" else []
    own = [path] if kind == "op" else []
    return own + paths(tree[1], kind, path + (1,)) + paths(tree[2], kind, path + (2,))


def replace(tree, path, new):
    if not path:
        return new
    node = list(tree)
    node[path[0]] = replace(tree[path[0]], path[1:], new)
    return tuple(node)


def get(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def integer_trees():
    def ok(tree):
        v = value(tree)
        return v is not None and v.denominator == 1

    return trees().filter(ok)


def gt_for(tree):
    return {"target": int(value(tree)), "numbers": leaves(tree)}


@PROPERTY
@given(integer_trees(), st.booleans())
def test_property_valid_expressions_score_one(tree, with_suffix):
    gt = gt_for(tree)
    answer = render(tree) + (f" = {gt['target']}" if with_suffix else "")
    assert score(answer, json.dumps(gt)) == 1.0
    assert score(answer, {"target": gt["target"] + 1, "numbers": gt["numbers"]}) == 0.0


@PROPERTY
@given(integer_trees())
def test_property_operator_mutations_score_by_their_value(tree):
    gt = gt_for(tree)
    for path in paths(tree, "op"):
        node = get(tree, path)
        for op in OPS.replace(node[0], ""):
            mutated = replace(tree, path, (op, node[1], node[2]))
            expected = 1.0 if value(mutated) == gt["target"] else 0.0
            assert score(render(mutated), gt) == expected, render(mutated)


@PROPERTY
@given(integer_trees(), st.data())
def test_property_number_mutations_score_zero(tree, data):
    gt = gt_for(tree)
    leaf_paths = paths(tree, "leaf")
    path = data.draw(st.sampled_from(leaf_paths))
    old = get(tree, path)
    other = data.draw(st.integers(0, 1000).filter(lambda n: n != old))
    changed = replace(tree, path, other)
    duplicated = replace(tree, path, (data.draw(st.sampled_from(OPS)), old, old))
    # Dropping a number: replace the parent (a op b) by one of its children.
    parent_path = path[:-1]
    dropped = get(tree, parent_path + (3 - path[-1],))
    dropped_tree = replace(tree, parent_path, dropped)
    for mutated in (changed, duplicated, dropped_tree):
        assert score(render(mutated), gt) == 0.0, render(mutated)


def test_reference_helpers_agree_with_module():
    tree = ("*", ("+", 1, 2), 3)
    assert render(tree) == "((1 + 2) * 3)" and value(tree) == 9
    assert countdown.evaluate(countdown.parse_expression(render(tree))) == 9


@PROPERTY
@given(st.binary(max_size=300))
def test_property_random_bytes_never_raise(raw):
    for text in (raw.decode("utf-8", "surrogateescape"), raw[: len(raw) // 2 * 2].decode("utf-16-le", "surrogatepass")):
        for solution in (text, f"<answer>{text}</answer>", f"<answer>(1 + 2) * 3</answer>{text}"):
            assert compute_score("countdown", solution, GT) in (0.0, 1.0)


@PROPERTY
@given(st.text(alphabet="0123456789+-*/() =.\n<>answer_xeE", max_size=60))
def test_property_arithmetic_like_text_never_raises(text):
    result = compute_score("countdown", f"<answer>{text}</answer>", GT)
    assert result in (0.0, 1.0)
    if result == 1.0:  # then it uses exactly the numbers 1, 2, 3
        assert sorted(re.findall(r"\d+", text.partition("=")[0])) == ["1", "2", "3"]


# Negation nodes are ("neg", child). The helpers above (paths, mutations) stay on unsigned trees.


def signed_value(tree) -> Fraction | None:
    if isinstance(tree, tuple) and tree[0] == "neg":
        inner = signed_value(tree[1])
        return None if inner is None else -inner
    if isinstance(tree, int):
        return Fraction(tree)
    op, a, b = tree
    x, y = signed_value(a), signed_value(b)
    if x is None or y is None or (op == "/" and y == 0):
        return None
    return {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]


def signed_render(tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    if tree[0] == "neg":
        inner = tree[1]
        # "-5" and "-(1 + 2)" are the accepted spellings; a negated negation needs parentheses.
        if isinstance(inner, tuple) and inner[0] == "neg":
            return f"-({signed_render(inner)})"
        return "-" + signed_render(inner)
    op, a, b = tree
    return f"({signed_render(a)} {op} {signed_render(b)})"


def signed_leaves(tree) -> list[int]:
    if isinstance(tree, int):
        return [tree]
    return [n for child in tree[1:] for n in signed_leaves(child)]


def negate_some(tree, flags):
    """Wrap nodes in ("neg", node) where the next flag says so."""
    if not isinstance(tree, int):
        tree = (tree[0], negate_some(tree[1], flags), negate_some(tree[2], flags))
    for _ in range(next(flags, 0)):
        tree = ("neg", tree)
    return tree


@PROPERTY
@given(trees(), st.lists(st.integers(0, 2), min_size=9, max_size=9), st.booleans())
def test_property_signed_expressions_score_by_their_value(tree, flags, with_suffix):
    signed = negate_some(tree, iter(flags))
    target = signed_value(signed)
    if target is None or target.denominator != 1:
        return
    gt = {"target": int(target), "numbers": signed_leaves(signed)}
    answer = signed_render(signed) + (f" = {int(target)}" if with_suffix else "")
    assert score(answer, gt) == 1.0, answer
    assert score(answer, {**gt, "target": int(target) + 1}) == 0.0, answer
    # A doubled sign is rejected even where it would not change the value. Binary "-" is rendered " - ".
    if re.search(r"-(?=[0-9(])", answer):
        assert score(re.sub(r"-(?=[0-9(])", "--", answer, count=1), gt) == 0.0, answer


# --- property tests: any ground truth, any answer -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
huge_ints = st.integers(0, 40_000).map(lambda bits: 2**bits - 1)  # 40,000 bits: over 4,300 digits
deep = st.tuples(st.integers(0, 20_000), json_values).map(lambda d: nested_list(*d))
countdown_like = st.fixed_dictionaries(
    {},
    optional={
        "target": json_values | huge_ints | huge_ints.map(operator.neg) | deep,
        "numbers": st.lists(st.integers(0, 100) | huge_ints | json_values, max_size=40) | deep | json_values,
    },
)
ground_truths = countdown_like | json_values | deep | st.integers(0, 20_000).map(lambda n: "[" * n + "]" * n)
answers = st.text(alphabet="0123456789+-*/() =.\n", max_size=60) | st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(ground_truths, st.booleans(), answers)
def test_property_any_ground_truth_raises_only_the_documented_error(gt, as_json, answer):
    if as_json:
        try:
            gt = json.dumps(gt)
        except (ValueError, RecursionError):  # NaN is fine for json.dumps; huge ints and deep lists are not
            pass
    try:
        countdown.parse_ground_truth(gt)
    except ValueError as e:
        assert str(e).startswith("countdown ground_truth: ") and len(str(e)) < 400
        with pytest.raises(ValueError, match="^countdown ground_truth: "):
            compute_score("countdown", f"<answer>{answer}</answer>", gt)
        return
    for solution in (f"<answer>{answer}</answer>", answer, f"<answer>{answer} = {answer}</answer>"):
        assert compute_score("countdown", solution, gt) in (0.0, 1.0)


@PROPERTY
@given(st.lists(st.integers(0, 10**6) | huge_ints, min_size=1, max_size=8), st.integers() | huge_ints, st.data())
def test_property_answers_built_from_the_numbers_never_raise(numbers, target, data):
    # Tokens drawn from the ground truth's own numbers get past the number check into evaluation.
    pieces = [str(n) for n in numbers if n.bit_length() < 4_000] + list("+-*/()") + [" ", " = ", "0"]
    answer = "".join(data.draw(st.lists(st.sampled_from(pieces), max_size=40)))
    gt = {"target": target, "numbers": numbers}
    assert compute_score("countdown", f"<answer>{answer}</answer>", gt) in (0.0, 1.0)
