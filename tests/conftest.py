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
def tiny_model_dir(tmp_path_factory, worker_id) -> Path:
    """A directory holding the tiny random Qwen2 model and its tokenizer, laid out like the default cache.

    ``tiny_model_dir.parent`` works as ``$VERL_REFLECT_CACHE``, so commands that fall back to the
    default model reuse this build instead of writing to the home directory. One cache for the whole run: under
    pytest-xdist each worker's temporary folder sits in one shared folder, so the hidden-word warm-up beside the
    tiny model is built once, not once per worker.
    """
    root = tmp_path_factory.getbasetemp()
    return tiny.default_model_dir((root if worker_id == "master" else root.parent) / "verl-reflect-cache")


@pytest.fixture
def tiny_default(tiny_model_dir, monkeypatch):
    """Commands without --model (the tiny recipe's model) reuse the session's tiny model instead of building into
    ~/.cache."""
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))


def pytest_collection_modifyitems(items):
    """Files that start verl's trainer run first, each file's tests kept together and in order: under the README's
    ``-n 2 --dist loadfile --no-loadscope-reorder`` both workers begin on the long runs and the fast files fill the
    gaps, instead of one long file starting last while the other worker idles."""
    trainer_files = {item.path for item in items if item.get_closest_marker("trainer")}
    items.sort(key=lambda item: item.path not in trainer_files)  # stable
