"""Shared fixtures: the embedded tiny tokenizer and model, built once per test session (~1 s, offline), and one Ray
cluster that every ``main_ppo`` run of the session attaches to."""

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


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the session's ``main_ppo`` runs, as ``(env, overrides)`` to launch them with.

    A run that starts Ray itself spends ~10-15 s of its ~60 s doing so; attached through ``RAY_ADDRESS`` (with
    ``ray_init.num_cpus/num_gpus`` null, as Ray requires when attaching) it does not. The cluster declares what the
    CPU recipe's own ``ray_init`` declares. This process never connects to it (``ray.is_initialized()`` stays False
    for the in-process tests), and only its own processes are stopped at the end.
    """
    from omegaconf import OmegaConf
    from ray.cluster_utils import Cluster

    cpu_platform = Path(__file__).resolve().parents[1] / "recipes" / "platform" / "cpu.yaml"
    ray_init = OmegaConf.load(cpu_platform).ray_kwargs.ray_init
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": ray_init.num_cpus, "num_gpus": ray_init.num_gpus, "include_dashboard": False},
    )
    try:
        yield (
            {"RAY_ADDRESS": cluster.address},
            ["ray_kwargs.ray_init.num_cpus=null", "ray_kwargs.ray_init.num_gpus=null"],
        )
    finally:
        cluster.shutdown()
