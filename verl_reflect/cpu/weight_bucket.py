"""The weight-sync bucket a model needs where verl syncs vLLM through shared memory (a CPU: no CUDA IPC).

verl's vLLM rollout sends the trainer's weights to vLLM in buckets of ``rollout.checkpoint_engine.
update_weights_bucket_megabytes``. Over CUDA IPC a tensor larger than the bucket is sent on its own; through shared
memory (``use_shm``: no CUDA IPC, as on a CPU) it is an ``AssertionError`` at the first sync
(``vllm_rollout/bucketed_weight_transfer.py``: "is too large to fit in the bucket"). The tensors sent are the actor's,
in its ``model_dtype`` (float32 by default: verl's "model parameters are in fp32 full precision"), whatever dtype the
checkpoint stores, so a bucket must hold the largest parameter tensor at 4 bytes an element: SmolLM2-135M's embedding,
49152 x 576, is 108 MiB, over the 64 MiB the tiny model needed.

Everything here reads file headers and ``config.json`` only, never the weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
# The bucket for a model whose tensors fit it: fewer, larger buckets cost shared memory, not time, at this size.
MIN_BUCKET_MB = 64
# The bucket when the model's files are not on this machine (a hub id not yet downloaded): verl's own default.
VERL_DEFAULT_BUCKET_MB = 2048
SYNC_BYTES_PER_ELEMENT = 4  # float32: the actor's weights as verl sends them
BUCKET_KEY = "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes"


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]

    @property
    def sync_bytes(self) -> int:
        """Bytes of this tensor as verl syncs it (float32)."""
        return math.prod(self.shape) * SYNC_BYTES_PER_ELEMENT

    def describe(self) -> str:
        """``model.embed_tokens.weight 49152x576 (108.0 MiB in float32)``."""
        return f"{self.name} {'x'.join(map(str, self.shape))} ({self.sync_bytes / MIB:.1f} MiB in float32)"


def model_dir(model_path: str | os.PathLike) -> Path | None:
    """The local folder of ``model_path``: the folder itself, or a hub id's snapshot already in the Hugging Face cache
    (never downloaded); None when neither is on this machine."""
    path = Path(model_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model_path), local_files_only=True))
    except Exception:  # not a hub id, or not cached: the files are not here
        return None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header: 8 bytes of little-endian length, then that much JSON."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def largest_tensor(model_path: str | os.PathLike) -> Tensor | None:
    """The largest parameter tensor of a model: from its safetensors headers (one file, or the shards of
    ``model.safetensors.index.json``), else estimated from ``config.json`` (the embedding or an MLP projection, the
    largest matrices of a transformer); None when the model's files are not on this machine or say neither."""
    folder = model_dir(model_path)
    if folder is None:
        return None
    index = folder / "model.safetensors.index.json"
    files = (
        sorted({folder / shard for shard in json.loads(index.read_text())["weight_map"].values()})
        if index.is_file()
        else sorted(folder.glob("*.safetensors"))
    )
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        shapes.update(_safetensors_shapes(file))
    if shapes:
        name = max(shapes, key=lambda n: math.prod(shapes[n]))
        return Tensor(name, shapes[name])
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    hidden = config.get("hidden_size")
    if not hidden:
        return None
    candidates = [
        Tensor("embed_tokens (from config.json)", (int(config.get("vocab_size") or 0), int(hidden))),
        Tensor("mlp projection (from config.json)", (int(config.get("intermediate_size") or 0), int(hidden))),
    ]
    return max(candidates, key=lambda t: t.sync_bytes)


def needed_megabytes(tensor: Tensor) -> int:
    """The smallest bucket (whole MiB, as verl's setting counts them) that holds ``tensor``."""
    return -(-tensor.sync_bytes // MIB)


def bucket_megabytes(model_path: str | os.PathLike) -> int:
    """The bucket for ``model_path``: its largest tensor rounded up to a whole MiB, at least ``MIN_BUCKET_MB``;
    ``VERL_DEFAULT_BUCKET_MB`` when its files are not on this machine to read."""
    tensor = largest_tensor(model_path)
    if tensor is None:
        return VERL_DEFAULT_BUCKET_MB
    return max(MIN_BUCKET_MB, needed_megabytes(tensor))
