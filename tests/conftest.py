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


# The files that start verl's trainer, longest first (worker-seconds in the full suite on 2 cores): the real-model
# tier (SmolLM2 on hf and vLLM), the demo and its control, kill-and-resume, the async modes, the vLLM tier, the
# installed wheel, the toy-task run, verl's rollout servers for the commands.
TRAINER_FILES_LONGEST_FIRST = (
    "test_real_model.py",
    "test_learning.py",
    "test_resume.py",
    "test_async_trainers.py",
    "test_vllm_cpu.py",
    "test_wheel.py",
    "test_trainer.py",
    "test_servers.py",
)


def pytest_collection_modifyitems(items):
    """Files that start verl's trainer run first, longest first, each file's tests kept together and in order: under
    the README's ``-n 2 --dist loadfile --no-loadscope-reorder`` xdist hands out the 1st and 3rd file to one worker
    and the 2nd and 4th to the other, the rest as workers free up, so both begin on long runs (the SmolLM2 tier,
    700 worker-seconds, and the demo with its control, 440) and the fast files fill the gaps, instead of one long file
    starting last while the other worker idles."""
    trainer_files = {item.path.name for item in items if item.get_closest_marker("trainer")}
    order = [name for name in TRAINER_FILES_LONGEST_FIRST if name in trainer_files]
    order += sorted(trainer_files - set(order))  # a new trainer file: after the measured ones, before the fast ones

    def rank(item) -> int:
        return order.index(item.path.name) if item.path.name in order else len(order)

    items.sort(key=rank)  # stable: a file's tests stay in order, the fast files in collection order


def pytest_unconfigure(config):
    """Nothing is left to collect: at exit Python's collector would walk every object the session made (verl,
    torch, transformers) several times over, 2-5 s of CPU per test process (measured: an interpreter that imported
    verl's workers exits in 1.9-2.3 s, 0.3 s after ``gc.freeze()``)."""
    import gc

    gc.freeze()
