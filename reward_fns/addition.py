"""Addition: the sum of two numbers, read as the last number of the completion.

The real-model task (``verl_reflect/data/addition.py`` writes the rows): two-digit sums, where SmolLM2-135M-Instruct
has some signal, so that reflect-retry on a real model has rows that fail and rows that succeed. The model is not
asked for a format it ignores (it rarely writes ``<answer>`` tags): whatever it writes, its last number is the answer.

Ground truth: ``{"numbers": [a, b], "answer": a + b}`` as a JSON string (trusted data: malformed, it raises
``ValueError``). A number is a run of ASCII digits, with a ``-`` sign right before it; it must read exactly as the
answer does (``85``; not ``085``, ``85.0`` or ``-85``). Any string scores without raising, at any length.
"""

from __future__ import annotations

import json
import re
from typing import Any

# ASCII digits only (``\\d`` also takes "٨٥"); a decimal point and digits after it belong to the number, so "85.5"
# reads as itself, not as 5.
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def last_number(text: str) -> str | None:
    """The last number written in ``text``, as written, or None.

    >>> last_number("47 + 38 = 85."), last_number("It is 85.5 or -3"), last_number("no digits")
    ('85', '-3', None)
    """
    last = None
    for last in _NUMBER.finditer(text):  # linear in the text; no backtracking across matches
        pass
    return last.group() if last is not None else None


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> float:
    """1.0 iff the last number in ``solution_str`` is the ground truth's ``answer``, written as an integer; else 0.0.

    >>> truth = '{"numbers": [47, 38], "answer": 85}'
    >>> compute_score("addition", "47 + 38 = 85", truth), compute_score("addition", "The sum is 85.\\n", truth)
    (1.0, 1.0)
    >>> compute_score("addition", "85, no wait: 75", truth), compute_score("addition", "085", truth)
    (0.0, 0.0)
    >>> compute_score("addition", "-85", truth), compute_score("addition", "85.0", truth)
    (0.0, 0.0)
    >>> compute_score("addition", None, truth), compute_score("addition", "9" * 10**5, truth)
    (0.0, 0.0)
    >>> compute_score("addition", "85", '{"numbers": [47, 38]}')
    Traceback (most recent call last):
    ...
    ValueError: addition ground truth needs an integer "answer": '{"numbers": [47, 38]}'
    """
    try:
        answer = json.loads(ground_truth)["answer"] if isinstance(ground_truth, (str, bytes)) else None
    except (ValueError, KeyError, TypeError):
        answer = None
    if type(answer) is not int:  # bool is an int subclass, and true is not a sum
        raise ValueError(f'addition ground truth needs an integer "answer": {str(ground_truth)[:200]!r}')
    if not isinstance(solution_str, str):
        return 0.0
    # Compared as text: int() of a hostile 10**5-digit run raises (sys.get_int_max_str_digits), str(answer) does not.
    return float(last_number(solution_str) == str(answer))
