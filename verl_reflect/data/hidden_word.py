"""Hidden word rows (``reward_fns/hidden_word.py``): four one-token words per prompt, exactly one from a hidden set.

The words are whole tokens of the embedded tiny tokenizer at the start of a line (the prompt lists one per line, and
an assistant turn starts after a newline), so a one-word answer is one token plus the end-of-turn token.
"""

from __future__ import annotations

import json
import random

from verl_reflect.data.rows import check_positive, make_row

HIDDEN_WORD_SOURCE = "hidden_word"
HIDDEN_WORDS = ("city", "query", "string", "amount")  # the fixed hidden set: nothing in a prompt names it
OTHER_WORDS = ("date", "name", "unit", "type", "search", "system", "object", "limit", "default", "integer", "self")
HIDDEN_WORD_SYSTEM = "Reply with one word."
HIDDEN_WORD_USER = "Which word is in the hidden set?\n{words}"
WORDS_PER_PROMPT = 4


def hidden_word_splits(train_size: int, test_size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded train and test rows; no test prompt's word set occurs in train (held-out prompts).

    There are 4 x C(11, 3) = 660 word sets (x 24 orders), so sizes in the hundreds stay distinct.
    """
    check_positive("train_size", train_size)
    check_positive("test_size", test_size)
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
