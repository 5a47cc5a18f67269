"""Hidden word: the prompt lists four one-token words; exactly one belongs to a fixed hidden set, and the answer is it.

A task a tiny model can learn in minutes of CPU steps (the demo's, ``verl_reflect/data/hidden_word.py`` writes the
rows): nothing in the prompt says which word is right, so a model picks one of four at random until reward teaches
it the hidden set. The ground truth names the right word; the verifier is exact match of the whole answer.
"""

from __future__ import annotations

import json
from typing import Any

# The task's definition, here beside its verifier (pure standard library): the rows (verl_reflect/data/hidden_word.py)
# and the warm-up (verl_reflect/cpu/warmup.py) read it.
HIDDEN_WORDS = ("city", "query", "string", "amount")  # the fixed hidden set: nothing in a prompt names it
OTHER_WORDS = ("date", "name", "unit", "type", "search", "system", "object", "limit", "default", "integer", "self")
HIDDEN_WORD_SYSTEM = "Reply with one word."
HIDDEN_WORD_USER = "Which word is in the hidden set?\n{words}"
WORDS_PER_PROMPT = 4


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> float:
    """1.0 iff ``solution_str``, stripped of surrounding whitespace, is the ground truth's ``answer``, else 0.0.

    The ground truth is trusted data (``{"words": [...], "answer": "city"}``): malformed, it raises ValueError.
    Model output is not: anything that is not exactly the word scores 0.0, without raising.

    >>> truth = '{"words": ["date", "city", "name", "unit"], "answer": "city"}'
    >>> compute_score("hidden_word", "city", truth), compute_score("hidden_word", " city\\n", truth)
    (1.0, 1.0)
    >>> compute_score("hidden_word", "date", truth), compute_score("hidden_word", "city date", truth)
    (0.0, 0.0)
    >>> compute_score("hidden_word", None, truth), compute_score("hidden_word", "x" * 10**6, truth)
    (0.0, 0.0)
    >>> compute_score("hidden_word", "city", '{"words": []}')
    Traceback (most recent call last):
    ...
    ValueError: hidden_word ground truth needs a string "answer": '{"words": []}'
    """
    try:
        answer = json.loads(ground_truth)["answer"] if isinstance(ground_truth, (str, bytes)) else None
    except (ValueError, KeyError, TypeError):
        answer = None
    if not isinstance(answer, str) or not answer:
        raise ValueError(f'hidden_word ground truth needs a string "answer": {str(ground_truth)[:200]!r}')
    return float(isinstance(solution_str, str) and solution_str.strip() == answer)
