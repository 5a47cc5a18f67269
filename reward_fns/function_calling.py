"""Function calling (APIGen, xlam-function-calling-60k format): make exactly the expected calls.

Ground truth: the expected calls ``[{"name": str, "arguments": {...}}, ...]`` as a JSON
string (xlam's ``answers`` column) or a parsed list.

Where the model's calls are read, in order:

1. If the text has an ``<answer>...</answer>`` block, only the last one is read.
2. If that region contains ``<tool_call>``, the calls are the JSON objects of all
   ``<tool_call>...</tool_call>`` blocks, as Qwen writes them. Text between blocks is
   ignored; an unclosed or malformed block makes the answer wrong.
3. Otherwise the calls are the last top-level JSON ``[...]`` or ``{...}`` in the region
   (the whole text, a fenced code block, or a value after some prose): a list of calls
   or a single call. An expected empty list is thus matched by answering ``[]``.

A call is an object with a string ``name`` and an object ``arguments`` (or, when
``arguments`` is absent, ``parameters``); the object may also be given as a JSON string.
Other keys of the call are ignored.

Correct iff the model's calls equal the expected calls as a multiset: call order and key
order do not matter; tool names, argument names and values must match exactly. Numbers
compare by value (``1 == 1.0``), booleans only equal booleans (``true != 1``), strings
compare exactly, lists in order, objects by keys. NaN and infinities are malformed.

Bounds: a region longer than ``MAX_ANSWER_CHARS`` or values nested deeper than
``MAX_DEPTH`` score 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Hashable

from reward_fns import extract_answer, preview

MAX_ANSWER_CHARS = 100_000
MAX_DEPTH = 32

Call = tuple[str, Hashable]


def canonical_value(value: Any, depth: int = 0) -> Hashable:
    """A hashable form of a JSON value that is equal exactly when the values match.

    Type tags keep ``True`` apart from ``1`` (Python says ``True == 1``) while ``1`` and
    ``1.0`` share the "number" tag and so stay equal.

    >>> canonical_value(1) == canonical_value(1.0), canonical_value(True) == canonical_value(1)
    (True, False)
    >>> canonical_value({"a": [1, 2]}) == canonical_value({"a": [2, 1]})
    False
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return ("string", str(value))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r}")
        return ("number", value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(canonical_value(v, depth + 1) for v in value))
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("object keys must be strings")
        return ("object", frozenset((k, canonical_value(v, depth + 1)) for k, v in value.items()))
    raise ValueError(f"not a JSON value: {type(value).__name__}")


def canonical_call(call: Any) -> Call:
    """``(name, canonical arguments)`` of one call object; ValueError if it is not a call.

    >>> a = canonical_call({"name": "f", "parameters": '{"x": 1}'})
    >>> a == canonical_call({"arguments": {"x": 1.0}, "name": "f"})
    True
    """
    if not isinstance(call, dict):
        raise ValueError(f"a call must be an object, got {type(call).__name__}")
    name = call.get("name")
    if not isinstance(name, str):
        raise ValueError("'name' must be a str")
    if "arguments" in call:
        arguments = call["arguments"]
    elif "parameters" in call:
        arguments = call["parameters"]
    else:
        raise ValueError("'arguments' is missing")
    if isinstance(arguments, str):
        arguments = _loads(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("'arguments' must be a dict")
    return str(name), canonical_value(arguments)


def parse_calls(text: str) -> list[Call] | None:
    """The model's calls in canonical form, or None if the answer holds no well-formed calls.

    >>> parse_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>') == [("f", ("object", frozenset()))]
    True
    >>> parse_calls('Sure! [{"name": "f", "arguments": {"x": 1}}]')[0][0]
    'f'
    >>> parse_calls('<tool_call>{"name": "f", "arguments": {}}') is None  # unclosed block
    True
    """
    answer = extract_answer(text)
    region = text if answer is None else answer
    if len(region) > MAX_ANSWER_CHARS:
        return None
    try:
        if "<tool_call>" in region:
            blocks = _tool_call_blocks(region)
            if blocks is None:
                return None
            calls = [_loads(block) for block in blocks]
        else:
            span = _last_json_span(region)
            if span is None:
                return None
            value = _loads(span)
            calls = value if isinstance(value, list) else [value]
        return [canonical_call(call) for call in calls]
    except ValueError:
        return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


def _tool_call_blocks(text: str) -> list[str] | None:
    blocks, pos = [], 0
    while (start := text.find(_OPEN, pos)) >= 0:
        end = text.find(_CLOSE, start)
        if end < 0:
            return None
        blocks.append(text[start + len(_OPEN) : end])
        pos = end + len(_CLOSE)
    return blocks


def _last_json_span(text: str) -> str | None:
    # One linear pass that matches brackets outside JSON strings. Re-trying json at every
    # "[" instead would be quadratic on "[[[[...".
    depth, start, last = 0, 0, None
    in_string = escaped = False
    for i, ch in enumerate(text):
        if depth == 0:
            if ch in "[{":
                depth, start = 1, i
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                last = text[start : i + 1]
    return last


def parse_ground_truth(ground_truth: Any) -> Counter[Call]:
    """Validate the expected calls and return them as a multiset; ValueError if malformed.

    >>> sum(parse_ground_truth('[{"name": "f", "arguments": {}}, {"name": "f", "arguments": {}}]').values())
    2
    """
    if isinstance(ground_truth, (str, bytes)):
        try:
            ground_truth = json.loads(ground_truth)
        except RecursionError:
            raise ValueError("function_calling ground_truth: not valid JSON (nested too deeply)") from None
        except ValueError as e:
            raise ValueError(f"function_calling ground_truth: not valid JSON ({e})") from None
    if not isinstance(ground_truth, (list, tuple)):
        raise ValueError(f"function_calling ground_truth: must be a list of calls, got {preview(ground_truth)}")
    calls = []
    for i, call in enumerate(ground_truth):
        try:
            calls.append(canonical_call(call))
        except (ValueError, RecursionError) as e:
            raise ValueError(f"function_calling ground_truth: call {i}: {e}, got {preview(call)}") from None
    return Counter(calls)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    **kwargs: Any,
) -> float:
    """1.0 iff the model makes exactly the expected calls, in any order.

    >>> gt = '[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]'
    >>> call = '{"name": "get_weather", "arguments": {"days": 3.0, "city": "Paris"}}'
    >>> compute_score("function_calling", f"Checking. <tool_call>{call}</tool_call>", gt)
    1.0
    >>> compute_score("function_calling", '[{"name": "get_weather", "arguments": {"city": "paris", "days": 3}}]', gt)
    0.0
    """
    expected = parse_ground_truth(ground_truth)
    if not isinstance(solution_str, str):
        return 0.0
    calls = parse_calls(solution_str)
    return 1.0 if calls is not None and Counter(calls) == expected else 0.0
