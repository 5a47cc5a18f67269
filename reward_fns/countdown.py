"""Countdown ("math equation writing"): reach the target with the given numbers.

Ground truth: ``{"target": int, "numbers": [int, ...]}``, as a JSON string or a parsed
object (``numbers`` may be a list, tuple or numpy array). A malformed one raises
``ValueError`` naming the field, never another exception.

A completion is correct iff the content of its last ``<answer>...</answer>`` block is an
arithmetic expression that

* uses only non-negative decimal integer literals, binary ``+ - * /`` and parentheses
  (no unary signs, ``**``, ``//``, ``%``, names, calls, floats, ``1_000``, ``0x10``, ``00``);
* uses exactly the given numbers, each once (as a multiset; so writing ``12`` from
  ``1`` and ``2`` is wrong);
* evaluates exactly (``fractions.Fraction``; no rounding) to the target. Intermediate
  values may be negative or fractional; dividing by zero is wrong.

One ``= <target>`` suffix is tolerated (``(1 + 2) * 3 = 9``); its right-hand side must be
the target written as a plain integer. Whitespace, newlines included, may separate tokens.

Work is bounded before parsing: answers longer than ``MAX_ANSWER_CHARS`` score 0, and so
does any intermediate value whose numerator or denominator exceeds ``MAX_BITS`` bits.
The expression is parsed with ``ast`` and walked against a whitelist; it is never
evaluated by Python.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from reward_fns import extract_answer, preview

MAX_ANSWER_CHARS = 1_000
MAX_NUMBERS = 32
MAX_BITS = 1_024

# Filtering characters before ast.parse means the parser only ever sees arithmetic-looking
# text, so hostile input cannot reach its warnings (e.g. invalid string escapes) or
# non-ASCII text (which would break the byte-based col_offset check below).
_ALLOWED_CHARS = frozenset("0123456789+-*/() ")
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Constant)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_STATED_TARGET = re.compile(r"0|-?[1-9][0-9]*")


def parse_expression(expr: str) -> ast.expr | None:
    """Return the AST of a whitelisted arithmetic expression, or None if it is not one.

    >>> parse_expression("(1 + 2) * 3") is not None
    True
    >>> [parse_expression(s) for s in ["-3 + 4", "2 ** 3", "7 // 2", "007", "1.0", "abs(1)"]]
    [None, None, None, None, None, None]
    """
    if len(expr) > MAX_ANSWER_CHARS:
        return None
    expr = " ".join(expr.split())
    if not expr or not _ALLOWED_CHARS.issuperset(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            return None
        if isinstance(node, ast.Constant):
            # The literal must be spelled exactly as its value (rejects "00", and is the
            # guard if the character filter is ever widened: "0x10", "1_0", "1e3", "True").
            if type(node.value) is not int or expr[node.col_offset : node.end_col_offset] != str(node.value):
                return None
    return tree.body


def operands(node: ast.expr) -> list[int]:
    """Integer literals of a parsed expression.

    >>> sorted(operands(parse_expression("(3 - 1) * 3")))
    [1, 3, 3]
    """
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(node: ast.expr) -> Fraction | None:
    """Exact value of a parsed expression; None on division by zero or oversized values.

    >>> evaluate(parse_expression("(1 + 2) / 4"))
    Fraction(3, 4)
    >>> evaluate(parse_expression("1 / (2 - 2)")) is None
    True
    """
    try:
        return _evaluate(node)
    except (ZeroDivisionError, OverflowError, RecursionError):
        return None


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    value = _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise OverflowError("intermediate value too large")
    return value


def states_target(text: str, target: int) -> bool:
    """Whether ``text`` is ``target`` written as a plain integer (surrounding whitespace aside).

    Compares ints, never ``str(target)``: a huge target must not make model output raise.

    >>> states_target(" -4 ", -4), states_target("04", 4), states_target("4.0", 4), states_target("-0", 0)
    (True, False, False, False)
    """
    text = text.strip()
    return len(text) <= MAX_ANSWER_CHARS and _STATED_TARGET.fullmatch(text) is not None and int(text) == target


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    **kwargs: Any,
) -> float:
    """1.0 iff the last ``<answer>`` reaches the target using each number exactly once.

    >>> gt = '{"target": 9, "numbers": [3, 1, 2]}'
    >>> compute_score("countdown", "<think>...</think><answer>(1 + 2) * 3</answer>", gt)
    1.0
    >>> compute_score("countdown", "<answer>(1 + 2) * 3 = 9</answer>", gt)
    1.0
    >>> compute_score("countdown", "<answer>(1 + 2) * 3 = 10</answer>", gt)
    0.0
    >>> compute_score("countdown", "<answer>12 - 3</answer>", gt)  # 12 is not in numbers
    0.0
    """
    target, numbers = parse_ground_truth(ground_truth)
    if not isinstance(solution_str, str):
        return 0.0
    answer = extract_answer(solution_str)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    expr, sep, stated = answer.partition("=")
    if sep and not states_target(stated, target):
        return 0.0
    node = parse_expression(expr)
    # Checking the numbers before evaluating bounds evaluation to len(numbers) operands.
    if node is None or Counter(operands(node)) != numbers:
        return 0.0
    return 1.0 if evaluate(node) == target else 0.0


def parse_ground_truth(ground_truth: Any) -> tuple[int, Counter[int]]:
    """Validate a ground truth and return ``(target, Counter(numbers))``; ValueError if malformed.

    >>> parse_ground_truth('{"target": 9, "numbers": [3, 3]}')
    (9, Counter({3: 2}))
    >>> parse_ground_truth('{"target": 9, "numbers": [[[3]]]}')
    Traceback (most recent call last):
    ValueError: countdown ground_truth: 'numbers' item must be an int, got [[3]]
    """
    if isinstance(ground_truth, (str, bytes)):
        try:
            ground_truth = json.loads(ground_truth)
        except RecursionError:
            raise ValueError("countdown ground_truth: not valid JSON (nested too deeply)") from None
        except ValueError as e:
            raise ValueError(f"countdown ground_truth: not valid JSON ({e})") from None
    if not isinstance(ground_truth, Mapping):
        raise ValueError(
            f"countdown ground_truth: must be a dict with 'target' and 'numbers', got {preview(ground_truth)}"
        )
    if "target" not in ground_truth or "numbers" not in ground_truth:
        raise ValueError(f"countdown ground_truth: missing 'target' or 'numbers' in {preview(ground_truth)}")
    target = _as_int(ground_truth["target"], "'target'")
    raw_numbers = ground_truth["numbers"]
    if isinstance(raw_numbers, (str, bytes, Mapping)) or not hasattr(raw_numbers, "__iter__"):
        raise ValueError(f"countdown ground_truth: 'numbers' must be a list of ints, got {preview(raw_numbers)}")
    numbers = [_as_int(n, "'numbers' item") for n in raw_numbers]
    if not 1 <= len(numbers) <= MAX_NUMBERS or min(numbers) < 0:
        raise ValueError(
            f"countdown ground_truth: 'numbers' must hold 1 to {MAX_NUMBERS} non-negative ints, got {preview(numbers)}"
        )
    return target, Counter(numbers)


def _as_int(value: Any, field: str) -> int:
    # operator.index accepts numpy integers (as pandas hands them over) and refuses floats.
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"countdown ground_truth: {field} must be an int, got {preview(value)}") from None
