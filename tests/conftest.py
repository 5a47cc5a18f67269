"""Shared fixtures: the embedded tiny tokenizer and model, built once per test session (~1 s, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from verl_reflect.cpu import tiny


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The embedded byte-level BPE tokenizer with the ChatML template (a ``PreTrainedTokenizerFast``)."""
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A directory holding the tiny random Qwen2 model and its tokenizer, laid out like the default cache.

    ``tiny_model_dir.parent`` works as ``$VERL_REFLECT_CACHE``, so commands that fall back to the
    default model reuse this build instead of writing to the home directory.
    """
    return tiny.default_model_dir(tmp_path_factory.mktemp("verl-reflect-cache"))


@pytest.fixture
def tiny_default(tiny_model_dir, monkeypatch):
    """Commands without --model (the tiny recipe's model) reuse the session's tiny model instead of building into
    ~/.cache."""
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))
