"""The plugin's ``gloo`` checkpoint engine, in-process: actor rank 0 broadcasts the weights, a second actor rank walks
the generator and sends nothing, a rollout worker receives them bit for bit. The same calls, in the same order, as
verl's ``CheckpointEngineManager.update_weights`` (prepare, build_topology, init_process_group, send/receive,
finalize), with threads standing in for the processes."""

from __future__ import annotations

import asyncio
import threading

import ray
import torch
from verl.checkpoint_engine.base import CheckpointEngineRegistry

from verl_reflect.cpu import gloo_checkpoint


def test_weights_cross_a_gloo_group_bit_for_bit(monkeypatch):
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    weights = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5, dtype=torch.float32), "c": torch.ones(2).half()}
    engine_cls = CheckpointEngineRegistry.get(gloo_checkpoint.BACKEND)
    actors = [engine_cls(bucket_size=1 << 20, is_master=rank == 0) for rank in range(2)]
    rollout = engine_cls(bucket_size=1 << 20)
    metadata = [engine.prepare() for engine in (*actors, rollout)]
    actor_kwargs, rollout_kwargs = engine_cls.build_topology(2, 1, metadata)
    assert actor_kwargs["rank"] == [0, -1] and rollout_kwargs["rank"] == [1]

    walked, received = [], {}

    def actor(rank):
        actors[rank].init_process_group(**{key: values[rank] for key, values in actor_kwargs.items()})

        def generator():  # FSDP gathers each tensor collectively: every rank must walk it
            for item in weights.items():
                walked.append(rank)
                yield item

        asyncio.run(actors[rank].send_weights(generator(), global_steps=3))
        actors[rank].finalize()

    def receiver():
        rollout.init_process_group(**{key: values[0] for key, values in rollout_kwargs.items()})
        received.update(rollout.receive_weights(global_steps=3))
        rollout.finalize()

    threads = [threading.Thread(target=actor, args=(rank,)) for rank in range(2)] + [threading.Thread(target=receiver)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(walked) == [0] * 3 + [1] * 3
    assert received.keys() == weights.keys()
    for name, tensor in weights.items():
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor)
