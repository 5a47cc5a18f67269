"""The hidden-word warm-up: a supervised pass that gives the random tiny model a path from reflection to retry.

The random tiny model's retry does not depend on its reflection (the issue's probe: across reflections the retry's
first-token distribution moves by ~0 nats), so a reward on reflection tokens has nothing to follow. A real LLM has
that path; this warm-up builds it, cheaply, and nothing more:

- every example is a whole reflect-retry trajectory of the hidden-word task (``reward_fns/hidden_word.py``) in the
  agent loop's exact token layout: the row's prompt, an attempt, the loop's reflection request
  (``recipes/agent_loops/hidden_word.yaml``), a reflection, its retry request, a retry;
- the attempt is a random word of the list, the reflection an independent random word of the list, and the retry
  copies the reflection's word; loss on the assistant tokens only (each word and its end-of-turn token).

Nothing in it says which word is right: first tries and reflections stay uniform over the four words. What the
warm-up teaches is the format and "the retry does what the reflection says"; which word the reflection should say
is left to RL (``reflect_grpo`` rewards the reflection when the retry it leads to is right).

Built once and cached like the tiny model (``hidden-word-warm-<hash>`` beside it, the hash covering the tiny model,
the task's prompts and words, the loop's prompts and the settings below); recipes name it as
``${verl_reflect.hidden_word_model:}`` (``verl_reflect/resolvers.py``).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import yaml

import reward_fns.hidden_word as hidden_word  # the task's words and prompt (the data package imports commands)
from verl_reflect.cpu import tiny
from verl_reflect.recipes import RECIPES_DIR

AGENT_LOOP_YAML = RECIPES_DIR / "agent_loops" / "hidden_word.yaml"
# Measured (copy_probability, 64 random trajectories): 200 steps 0.57, 300 0.88, 400 0.94, 1000 0.99 at lr 1e-3;
# lr 3e-3 was no faster (0.86 at 400). 400 steps of 32 trajectories: about 20 s on one core.
WARMUP = dict(steps=400, batch_size=32, lr=1e-3, seed=0)


def loop_prompts(path: Path = AGENT_LOOP_YAML) -> tuple[str, str]:
    """The ``reflect_retry`` entry's reflection and retry requests: the warm-up's user turns are the loop's."""
    (entry,) = [e for e in yaml.safe_load(path.read_text()) if e["name"] == "reflect_retry"]
    return entry["reflection_prompt"], entry["retry_prompt"]


def trajectory_ids(tokenizer, prompt: list[dict], turns: list[str], prompts: tuple[str, str]) -> tuple[list, list]:
    """Token ids of prompt + attempt, reflection request, reflection, retry request, retry (``turns``: the three
    assistant words), and the loss mask: 1 on each assistant word and its end-of-turn token, as generated.

    Built as the loop builds it: the prompt rendered with the generation prompt, each assistant turn appended as
    the model generates it (word + end-of-turn), each user turn appended as the template renders it after that.
    """
    end_of_turn = tokenizer.convert_tokens_to_ids(tiny.IM_END)
    messages = list(prompt)
    ids = _render(tokenizer, messages)
    mask = [0] * len(ids)
    for i, word in enumerate(turns):
        generated = tokenizer.encode(word, add_special_tokens=False) + [end_of_turn]
        ids, mask = ids + generated, mask + [1] * len(generated)
        messages.append({"role": "assistant", "content": word})
        if i < len(prompts):
            messages.append({"role": "user", "content": prompts[i]})
            rendered = _render(tokenizer, messages)
            assert rendered[: len(ids)] == ids, "the chat template rewrote an earlier turn"
            mask += [0] * (len(rendered) - len(ids))
            ids = rendered
    return ids, mask


def _render(tokenizer, messages: list[dict]) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )


def prompt_messages(listed: list[str]) -> list[dict]:
    """A hidden-word row's chat (as ``verl_reflect/data/hidden_word.py`` writes it) for the words ``listed``."""
    user = hidden_word.HIDDEN_WORD_USER.format(words="\n".join(listed))
    return [{"role": "system", "content": hidden_word.HIDDEN_WORD_SYSTEM}, {"role": "user", "content": user}]


class TrajectorySampler:
    """Random warm-up examples, fast: one trajectory rendered exactly (``trajectory_ids``), then each example is
    that layout with other word ids in its seven one-token word slots (four in the prompt list, three answers)."""

    def __init__(self, tokenizer, prompts: tuple[str, str]):
        self.words = hidden_word.HIDDEN_WORDS + hidden_word.OTHER_WORDS
        self.word_ids = [_one_token(tokenizer, word) for word in self.words]
        listed = [hidden_word.HIDDEN_WORDS[0], *hidden_word.OTHER_WORDS[: hidden_word.WORDS_PER_PROMPT - 1]]
        reference = [listed[0], listed[1], listed[1]]
        self.ids, self.mask = trajectory_ids(tokenizer, prompt_messages(listed), reference, prompts)
        ids_of = dict(zip(self.words, self.word_ids))
        prompt_end = self.mask.index(1)
        # Each listed word appears once in the prompt: its slot is where its id is.
        self.list_slots = [self.ids.index(ids_of[word], 0, prompt_end) for word in listed]
        self.answer_slots = [i for i, bit in enumerate(self.mask) if bit and self.ids[i] in self.word_ids]
        assert len(self.answer_slots) == 3, self.answer_slots

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """Four random list words (one hidden), attempt and reflection independent random list words, the retry
        the reflection's word."""
        listed = [rng.choice(hidden_word.HIDDEN_WORDS), *rng.sample(hidden_word.OTHER_WORDS, 3)]
        rng.shuffle(listed)
        attempt, reflection = rng.choice(listed), rng.choice(listed)
        ids = list(self.ids)
        for slot, word in zip(self.list_slots + self.answer_slots, listed + [attempt, reflection, reflection]):
            ids[slot] = self.word_ids[self.words.index(word)]
        return ids, self.mask


def _one_token(tokenizer, word: str) -> int:
    (token,) = tokenizer.encode(word, add_special_tokens=False)
    return token


def warm_up(model_dir: Path, out_dir: Path, *, steps: int, batch_size: int, lr: float, seed: int) -> Path:
    """Train the model in ``model_dir`` on ``steps`` batches of warm-up trajectories; save it to ``out_dir``."""
    import torch
    from tqdm import trange
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # One thread: on tensors this small a second one only contends (a step took 0.3 s on one thread and 5 s on
    # two, on a 2-core machine that other jobs kept busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sampler = TrajectorySampler(tokenizer, loop_prompts())
    # One layout, so the loss tokens sit at the same positions in every trajectory: the LM head runs on the K
    # positions that predict them only (half the step's time: it is the largest matmul at this model size).
    loss_positions = torch.tensor([t for t, bit in enumerate(sampler.mask) if bit])  # (K,)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    # disable=None: no bar where stderr is not a terminal (a log file would hold its frames).
    for _ in trange(steps, desc="warm-up", unit="step", dynamic_ncols=True, leave=False, disable=None):
        ids = torch.tensor([sampler.sample(rng)[0] for _ in range(batch_size)])  # (B, T)
        logits = model(input_ids=ids, logits_to_keep=loss_positions - 1).logits  # (B, K, V): t-1 predicts t
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, loss_positions])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def copy_probability(model, sampler: TrajectorySampler, rng: random.Random, n: int = 64) -> float:
    """Mean probability that the retry names the reflection's word, over ``n`` random trajectories."""
    import torch

    batch = torch.tensor([sampler.sample(rng)[0] for _ in range(n)])  # (n, T)
    reflection, retry = sampler.answer_slots[1], sampler.answer_slots[2]
    with torch.no_grad():
        probs = model(input_ids=batch).logits[:, retry - 1].softmax(-1)  # (n, V): the retry's first token
    return probs.gather(1, batch[:, reflection : reflection + 1]).mean().item()


def cached_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the warmed model lives, built or not: beside the tiny model, named by the hash of all that shapes it."""
    tiny_dir = tiny.cached_model_path(cache_dir)
    recipe = repr(
        (
            tiny_dir.name,
            sorted(WARMUP.items()),
            loop_prompts(),
            hidden_word.HIDDEN_WORDS,
            hidden_word.OTHER_WORDS,
            hidden_word.HIDDEN_WORD_SYSTEM,
            hidden_word.HIDDEN_WORD_USER,
        )
    )
    return tiny_dir.parent / f"hidden-word-warm-{hashlib.sha1(recipe.encode()).hexdigest()[:10]}"


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The warmed tiny model, built once (~20 s of CPU) into ``cached_model_path(cache_dir)`` from the tiny model
    and reused (``tiny.build_once``)."""
    return tiny.build_once(
        cached_model_path(cache_dir), lambda out_dir: warm_up(tiny.default_model_dir(cache_dir), out_dir, **WARMUP)
    )
