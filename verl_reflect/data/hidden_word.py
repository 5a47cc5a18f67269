"""Hidden word rows (``reward_fns/hidden_word.py``): four one-token words per prompt, exactly one from a hidden set.

The words are whole tokens of the embedded tiny tokenizer at the start of a line (the prompt lists one per line, and
an assistant turn starts after a newline), so a one-word answer is one token plus the end-of-turn token.
"""

from __future__ import annotations

import json
import random

from reward_fns.hidden_word import (  # re-exported: the task's words and prompt live beside its verifier
    HIDDEN_WORD_SYSTEM,
    HIDDEN_WORD_USER,
    HIDDEN_WORDS,
    OTHER_WORDS,
    WORDS_PER_PROMPT,
)
from verl_reflect.data.rows import make_row

HIDDEN_WORD_SOURCE = "hidden_word"
__all__ = [
    "HIDDEN_WORD_SOURCE",
    "HIDDEN_WORD_SYSTEM",
    "HIDDEN_WORD_USER",
    "HIDDEN_WORDS",
    "OTHER_WORDS",
    "hidden_word_splits",
]


def hidden_word_splits(train_size: int, test_size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded train and test rows; no test prompt's word set occurs in train (held-out prompts).

    There are 4 x C(11, 3) = 660 word sets (x 24 orders), so sizes in the hundreds stay distinct.
    """
    if min(train_size, test_size) < 1:  # the command line checks sizes first; this guards library callers
        raise ValueError(f"train_size and test_size must be positive, got {train_size} and {test_size}")
    rng = random.Random(seed)
    seen: set[frozenset] = set()
    splits = []
    for split, size in (("train", train_size), ("test", test_size)):
        rows: list[dict] = []
        while len(rows) < size:
            words = [rng.choice(HIDDEN_WORDS), *rng.sample(OTHER_WORDS, WORDS_PER_PROMPT - 1)]
            if frozenset(words) in seen:
                continue
            seen.add(frozenset(words))
            answer = words[0]
            rng.shuffle(words)
            rows.append(
                make_row(
                    HIDDEN_WORD_SOURCE,
                    HIDDEN_WORD_SYSTEM,
                    HIDDEN_WORD_USER.format(words="\n".join(words)),
                    json.dumps({"words": words, "answer": answer}),
                    index=len(rows),
                    split=split,
                )
            )
        splits.append(rows)
    return splits[0], splits[1]
