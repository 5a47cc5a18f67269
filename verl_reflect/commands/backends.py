"""The generation backends ``eval`` and ``build-failures`` take: verl's own rollout servers, or transformers here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verl_reflect.commands.errors import UserError

# The backends ``eval`` and ``build-failures`` take: ``verl`` is verl's own rollout servers, started standalone
# (``verl_servers.py``), the ones training generates with; ``hf`` is HFBackend in this process.
BACKENDS = ("hf", "verl")


def default_backend() -> str:
    """``verl`` on a GPU machine (the recipe's vLLM servers), ``hf`` on a CPU: the backend the CPU trainer's
    ``hf`` rollout serves with, in-process, without starting Ray."""
    import torch

    return "verl" if torch.cuda.is_available() else "hf"


def check_model_dir(model_path: str | Path) -> Path:
    """``model_path`` as a Path if it holds a Hugging Face model (a ``config.json``), else a UserError."""
    path = Path(model_path)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise UserError(f"model path {str(model_path)!r} {what} (give a local Hugging Face model directory)")
    return path


def make_backend(
    model_path: str | Path, backend: str = "hf", *, config: Any = None, max_batch_size: int = 16, **kwargs: Any
) -> Any:
    """The generation backend for a local model directory: ``HFBackend`` (``kwargs`` go to it), or the recipe
    ``config``'s rollout servers serving it (``VerlServers``)."""
    path = check_model_dir(model_path)
    if backend == "hf":
        from verl_reflect.cpu.generation import HFBackend

        return HFBackend(path, max_batch_size=max_batch_size, **kwargs)
    if backend == "verl":
        if config is None:
            raise ValueError("backend 'verl' starts the recipe's rollout servers: pass the composed recipe as config")
        from verl_reflect.commands.verl_servers import VerlServers

        return VerlServers(config, path)
    raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
