"""The hidden-word task, the warm-up's trajectories and what the warm-up teaches (fast tier: the warmed model is
built once a run, in the cache that dry-run's static check of ``hidden_word_tiny_cpu`` builds it in too).

The warm-up must train on exactly the token stream the agent loop builds, or what it teaches would not carry over
to training; this checks it against the loop itself, run on a scripted server.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import random

import pytest
from loop_helpers import ScriptedServer, standalone_kwargs

import reward_fns
from reward_fns import hidden_word as verifier
from verl_reflect import data
from verl_reflect.agent_loop import ReflectRetryAgentLoop
from verl_reflect.cpu import warmup
from verl_reflect.data import hidden_word


def test_docstring_examples():
    result = doctest.testmod(verifier, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("answer", ["", None, 3, "x" * 10**6, "city\x00", "<answer>city</answer>", "CITY", "city city"])
def test_the_verifier_scores_hostile_output_zero_without_raising(answer):
    truth = json.dumps({"words": ["city", "date", "name", "unit"], "answer": "city"})
    assert reward_fns.compute_score("hidden_word", answer, truth) == 0.0
    assert reward_fns.compute_score("hidden_word", "\ncity ", truth) == 1.0


def test_rows_hold_one_hidden_word_and_held_out_prompts_are_new(tiny_tokenizer):
    train, test = data.hidden_word_splits(200, 100, seed=3)
    assert (train, test) == data.hidden_word_splits(200, 100, seed=3)  # seeded
    sets = {"train": set(), "test": set()}
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            truth = json.loads(row["reward_model"]["ground_truth"])
            listed = row["prompt"][1]["content"].splitlines()[1:]
            assert listed == truth["words"] and len(set(listed)) == 4
            assert [w for w in listed if w in data.HIDDEN_WORDS] == [truth["answer"]]
            sets[split].add(frozenset(listed))
    assert len(sets["train"]) == 200 and not sets["train"] & sets["test"]
    # Every word is one token, at the start of a line as at the start of an assistant turn.
    for word in hidden_word.HIDDEN_WORDS + hidden_word.OTHER_WORDS:
        assert len(tiny_tokenizer.encode(word, add_special_tokens=False)) == 1
        assert tiny_tokenizer.encode("\n" + word, add_special_tokens=False)[1:] == tiny_tokenizer.encode(word)


def loop_stream(tokenizer, row: dict, words: list[str]) -> tuple[list[int], list[int]]:
    """prompt + response ids and the response mask the recipe's loop builds when the model answers ``words``."""
    reflection_prompt, retry_prompt = warmup.loop_prompts()
    server = ScriptedServer(tokenizer, list(words))
    kwargs = standalone_kwargs(tokenizer, prompt_length=128, response_length=64, hf_model_type="qwen2")

    async def main():
        loop = ReflectRetryAgentLoop(
            server_manager=server,
            **{**kwargs, "reflection_prompt": reflection_prompt, "retry_prompt": retry_prompt},
            max_attempt_tokens=2,
            max_reflection_tokens=2,
        )
        return await loop.run(
            {"temperature": 1.0},
            raw_prompt=row["prompt"],
            **{k: row[k] for k in ("data_source", "reward_model", "extra_info")},
        )

    out = asyncio.run(main())
    return list(out.prompt_ids) + list(out.response_ids), list(out.response_mask)


def test_warmup_trajectories_are_the_loops_token_stream(tiny_tokenizer):
    (row,), _ = data.hidden_word_splits(1, 1, seed=5)
    truth = json.loads(row["reward_model"]["ground_truth"])
    wrong = [w for w in truth["words"] if w != truth["answer"]]
    turns = [wrong[0], wrong[1], wrong[1]]  # a failed attempt, a reflection, a retry copying it
    ids, mask = warmup.trajectory_ids(tiny_tokenizer, row["prompt"], turns, warmup.loop_prompts())
    loop_ids, loop_mask = loop_stream(tiny_tokenizer, row, turns)
    assert ids == loop_ids
    # The loop trains the reflection only; the warm-up's loss covers every assistant turn (word + end-of-turn).
    response = mask[len(ids) - len(loop_mask) :]
    assert [i for i, bit in enumerate(loop_mask) if bit] == [i for i, bit in enumerate(response) if bit][2:4]
    assert sum(mask) == 6


def test_the_sampler_fills_the_layout_as_a_fresh_render_would(tiny_tokenizer):
    sampler = warmup.TrajectorySampler(tiny_tokenizer, warmup.loop_prompts())
    rng = random.Random(0)
    vocab = {v: k for k, v in tiny_tokenizer.get_vocab().items()}
    copies = 0
    for _ in range(20):
        ids, mask = sampler.sample(rng)
        listed = [vocab[ids[slot]] for slot in sampler.list_slots]
        attempt, reflection, retry = (vocab[ids[slot]] for slot in sampler.answer_slots)
        prompt = [{"role": "system", "content": hidden_word.HIDDEN_WORD_SYSTEM}]
        prompt.append({"role": "user", "content": hidden_word.HIDDEN_WORD_USER.format(words="\n".join(listed))})
        assert (ids, mask) == warmup.trajectory_ids(
            tiny_tokenizer, prompt, [attempt, reflection, retry], warmup.loop_prompts()
        )
        assert {attempt, reflection} <= set(listed) and retry == reflection
        assert sum(w in hidden_word.HIDDEN_WORDS for w in listed) == 1
        copies += attempt == reflection
    assert copies < 15  # attempt and reflection are drawn independently


def test_the_warmed_model_retries_with_the_word_its_reflection_named(tiny_model_dir, tiny_tokenizer):
    """What the demo's learning rests on: after the warm-up the retry copies the reflection (0.93 measured), where
    the random tiny model puts ~1/vocab on that word. The warm model is the one the recipes name (shared cache)."""
    from transformers import AutoModelForCausalLM

    sampler = warmup.TrajectorySampler(tiny_tokenizer, warmup.loop_prompts())
    copies = {}
    for name, path in (("random", tiny_model_dir), ("warmed", warmup.default_model_dir(tiny_model_dir.parent))):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        copies[name] = warmup.copy_probability(model, sampler, random.Random(1))
    assert copies["random"] < 0.05 and copies["warmed"] > 0.8, copies
