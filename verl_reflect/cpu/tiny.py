"""An embedded default model that needs no download: a byte-level BPE tokenizer trained in-process
on a built-in corpus, and a randomly initialised tiny Qwen2 model.

Its weights are random, so it solves nothing; it exists so that every command and test runs
offline on a CPU with the same code path a real Qwen2.5 checkpoint takes (ChatML template,
``model_type == "qwen2"`` so verl picks its Qwen continuous-token builder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from filelock import FileLock
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:  # transformers takes seconds to import; only building needs it
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

# Qwen2's ChatML, without its default system message. Every turn ends "<|im_end|>\n".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Qwen2's pre-tokenizer split: digits stay single tokens (arithmetic stays legible), and a newline
# run never merges with the text around it.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS = [
    "Using the numbers [3, 7, 25, 50], create an equation that equals 81. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.",
    "<think> 50 + 25 = 75, 75 + 7 = 82, 82 - 3 = 79. Try again: 50 + 25 + 3 + 7 = 85. "
    "(50 - 25) * 3 + 7 = 82. 25 * 3 + 7 - 50 = 32. </think> <answer> (50 + 25) + (7 - 3) / 2 </answer>",
    "Your previous answer was incorrect. Reflect on what went wrong: write a short self-reflection that "
    "would help you answer correctly next time. Do not give the answer itself.",
    "I added the numbers without checking the target. I should check each step, use every number "
    "exactly once, and compute the final value before I answer.",
    "Try the task again, using your reflection. Return the final answer in <answer> </answer> tags.",
    "You have access to the following functions. To call a function, reply with a JSON object: "
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    '[{"name": "search_flights", "arguments": {"from": "SFO", "to": "JFK", "date": "2025-06-01"}}, '
    '{"name": "convert_currency", "arguments": {"amount": 100, "from": "USD", "to": "EUR"}}]',
    "The user asked for the weather and the time. The answer is correct. The answer is wrong because "
    "the function name and the arguments did not match the schema. I will read the schema first.",
    "system user assistant tool function call result error true false null question answer think "
    "reflection retry attempt number numbers equation target equals each only once step check",
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 24 25 30 36 42 48 50 64 75 81 90 96 100 "
    "+ - * / = ( ) [ ] { } < > : ; , . ! ? ' \" _ # % & @ ^ ~ | \\ ` $",
    "The quick brown fox jumps over the lazy dog. A model that fails writes why it failed, then tries again.",
    "Your answer was wrong. Reflect on what went wrong: in a few sentences, explain the mistake and how to "
    "avoid it. Now try again, using your reflection. Give the final answer in the same format as before.",
    "You are a helpful assistant. You first think about the reasoning process in your mind and then provide "
    "the user with the answer. Use parentheses, and each number must be used exactly once.",
    '{"type": "object", "properties": {"query": {"type": "string", "description": "The search query."}, '
    '"limit": {"type": "integer", "default": 10}}, "required": ["query"]}',
    "My mistake was that I forgot one of the numbers and I did not verify the result. Next time I will "
    "list the numbers, try multiplication before addition, and check the value equals the target.",
]


# Everything that shapes the build; its hash names the cache folder, so editing this file rebuilds the model.
VOCAB_SIZE = 1024
MODEL_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,  # head_dim 32: vLLM's CPU attention takes head sizes 32-512
    num_key_value_heads=1,
    intermediate_size=128,
    max_position_embeddings=4096,
    # Untied: with tied embeddings a random model just repeats its last input token.
    tie_word_embeddings=False,
)
# Picked among 0-9: the most varied greedy text (103 distinct tokens over 16 prompts), and some turns end on <|im_end|>.
SEED = 8


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus; deterministic, offline, ~0.1 s."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so every pair clears the default min_frequency and merges are stable.
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = SEED) -> Path:
    """Save the tokenizer and a random tiny Qwen2 (hidden 64, 2 layers) into ``out_dir``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer), bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, **MODEL_CONFIG
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=True, temperature=1.0
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cached_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``default_model_dir`` keeps the tiny model, built or not: ``tiny-qwen2-<hash of the recipe above>``
    under ``$VERL_REFLECT_CACHE`` (or ``~/.cache/verl-reflect``), so a changed recipe never loads a stale build."""
    root = Path(cache_dir or os.environ.get("VERL_REFLECT_CACHE") or Path.home() / ".cache" / "verl-reflect")
    recipe = repr((_CORPUS, _QWEN_SPLIT, CHAT_TEMPLATE, SPECIAL_TOKENS, VOCAB_SIZE, sorted(MODEL_CONFIG.items()), SEED))
    return root / f"tiny-qwen2-{hashlib.sha1(recipe.encode()).hexdigest()[:10]}"


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target``, a model directory in the cache, made by ``build(directory)`` unless it is there already.

    Built in a temporary directory and renamed into place, so a crash never leaves a broken cache; under a lock, so
    processes that ask at once (two commands, two test workers) wait for one build instead of each making one.
    """
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with FileLock(lock_path):
        if (target / "config.json").exists():  # built while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # Removed once the model is there (every later caller finds it, lock or not), so a cache one process built
        # holds models only; a caller that was waiting may leave an empty lock file behind, which is harmless.
        lock_path.unlink(missing_ok=True)
    return target


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The tiny model, built once into ``cached_model_path(cache_dir)`` and reused."""
    return build_once(cached_model_path(cache_dir), build_tiny_model)
