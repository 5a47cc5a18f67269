"""Countdown ("math equation writing"): reach the target with the given numbers.

Ground truth: ``{"target": int, "numbers": [int, ...]}``, as a JSON string or a parsed
object (``numbers`` may be a list, tuple or numpy array). A malformed one raises
``ValueError`` naming the field, never another exception.

A completion is correct iff the content of its last ``<answer>...</answer>`` block is an
arithmetic expression that

* uses only non-negative decimal integer literals, binary ``+ - * /``, parentheses, and
  unary minus on a number or a parenthesised group (``-1 + 64 * 7``, ``2 * -(3 - 5)``);
  not ``--1``, unary ``+``, ``**``, ``//``, ``%``, names, calls, decimals such as ``8.4``,
  ``1_000``, ``0x10`` or ``00``;
* uses exactly the given numbers, each once (as a multiset; so writing ``12`` from
  ``1`` and ``2``, or ``8.4`` from ``8`` and ``4``, is wrong);
* evaluates exactly (``fractions.Fraction``; no rounding, no tolerance) to the target.
  Intermediate values may be negative or fractional; dividing by zero is wrong.

One ``= <target>`` suffix is tolerated (``(1 + 2) * 3 = 9``); its right-hand side must be
the target written as a plain integer. Whitespace, newlines included, may separate tokens.

Work is bounded: answers longer than ``MAX_ANSWER_CHARS`` score 0, and so does any
intermediate value whose numerator or denominator exceeds ``MAX_BITS`` bits. The
expression is parsed by a small parser with explicit stacks, so nesting depth is limited
only by the length cap; it is never evaluated by Python.
"""

from __future__ import annotations

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

# A parsed expression in postfix order: ints are operands, NEG is unary minus, the
# strings "+-*/" are binary operators. "(1 + 2) * -3" is [1, 2, "+", 3, NEG, "*"].
Token = int | str
NEG = "neg"

_ALLOWED_CHARS = frozenset("0123456789+-*/() ")
# Only ASCII digits: str.isdigit and int() also accept "٣" and "３".
_TOKEN = re.compile(r"[0-9]+|[-+*/()]")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, NEG: 3}
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_STATED_TARGET = re.compile(r"0|-?[1-9][0-9]*")


def parse_expression(expr: str) -> list[Token] | None:
    """The expression in postfix order if it is a whitelisted arithmetic expression, else None.

    >>> parse_expression("(1 + 2) * -3")
    [1, 2, '+', 3, 'neg', '*']
    >>> [parse_expression(s) for s in ["--3", "+3", "2 ** 3", "7 // 2", "007", "8.4", "abs(1)", "(1))"]]
    [None, None, None, None, None, None, None, None]
    """
    if len(expr) > MAX_ANSWER_CHARS:
        return None
    expr = " ".join(expr.split())
    if not expr or not _ALLOWED_CHARS.issuperset(expr):
        return None
    # Shunting-yard with explicit stacks: no recursion, so no depth limit but the length cap.
    output: list[Token] = []
    pending: list[str] = []  # operators and "(" not yet written to output
    expect_operand = True
    for token in _TOKEN.findall(expr):
        if expect_operand:
            if token.isdigit():
                if token[0] == "0" and len(token) > 1:  # "00", "007": not how the number is written
                    return None
                output.append(int(token))
                expect_operand = False
            elif token == "(":
                pending.append(token)
            elif token == "-" and not (pending and pending[-1] == NEG):  # one sign only: "--3" is rejected
                pending.append(NEG)
            else:
                return None
        elif token == ")":
            while pending and pending[-1] != "(":
                output.append(pending.pop())
            if not pending:
                return None
            pending.pop()
        elif token in _BINARY:
            # Pop what binds at least as tightly: left associativity, and unary minus first.
            while pending and pending[-1] != "(" and _PRECEDENCE[pending[-1]] >= _PRECEDENCE[token]:
                output.append(pending.pop())
            pending.append(token)
            expect_operand = True
        else:  # a number or "(" right after an operand, as in "1 2" or "3 (4)"
            return None
    if expect_operand or "(" in pending:
        return None
    output.extend(reversed(pending))
    return output


def operands(postfix: list[Token]) -> list[int]:
    """Integer literals of a parsed expression.

    >>> sorted(operands(parse_expression("-(3 - 1) * 3")))
    [1, 3, 3]
    """
    return [t for t in postfix if type(t) is int]


def evaluate(postfix: list[Token]) -> Fraction | None:
    """Exact value of a parsed expression; None on division by zero or oversized values.

    >>> evaluate(parse_expression("-(1 + 2) / 4"))
    Fraction(-3, 4)
    >>> evaluate(parse_expression("1 / (2 - 2)")) is None
    True
    """
    stack: list[Fraction] = []
    for token in postfix:
        if type(token) is int:
            stack.append(Fraction(token))
        elif token == NEG:
            stack.append(-stack.pop())
        else:
            right = stack.pop()
            if token == "/" and right == 0:
                return None
            value = _BINARY[token](stack.pop(), right)
            # Literals are bounded by the answer's length; only results can grow without bound.
            if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
                return None
            stack.append(value)
    return stack[0]


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
    >>> compute_score("countdown", "<answer>-1 + 2 * 3</answer>", '{"target": 5, "numbers": [1, 2, 3]}')
    1.0
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
    postfix = parse_expression(expr)
    # Checking the numbers before evaluating bounds evaluation to len(numbers) operands.
    if postfix is None or Counter(operands(postfix)) != numbers:
        return 0.0
    return 1.0 if evaluate(postfix) == target else 0.0


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
