"""A ``gloo`` checkpoint engine: verl's trainer-to-rollout weight sync over TCP, for ``separate_async`` on CPUs.

verl's ``separate_async`` trainer refuses the colocated ``naive`` engine (``trainer_separate_async.py:73``) and its
other engines need GPUs (``nccl`` imports cupy, ``nixl``/``mooncake`` RDMA, ``hccl`` Ascend), so on a CPU it stops at
"Checkpoint engine nccl not registered". This engine is registered in verl's ``CheckpointEngineRegistry`` by the
plugin's ``register`` (the recipes' ``external_lib`` and ``checkpoint_engine.custom_backend_module``); select it with
``actor_rollout_ref.rollout.checkpoint_engine.backend=gloo``.

Per sync, actor rank 0 (the master) opens a ``TCPStore``; it and every rollout worker form a gloo group of their own
(the actors' FSDP group is left alone), and rank 0 broadcasts the full state dict, serialised with ``torch.save``
(every actor rank walks the weight generator: FSDP gathers each tensor collectively). Meant for tiny CPU models:
one message per sync, no bucketing.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Generator

import ray
import torch
import torch.distributed as dist
from verl.checkpoint_engine.base import CheckpointEngine, CheckpointEngineRegistry
from verl.utils.net_utils import get_free_port

BACKEND = "gloo"
TIMEOUT = timedelta(minutes=10)


@CheckpointEngineRegistry.register(BACKEND)
class GlooCheckpointEngine(CheckpointEngine):
    def __init__(self, bucket_size: int, is_master: bool = False, **kwargs) -> None:
        self.bucket_size = bucket_size  # unused: one message per sync
        self.is_master = is_master
        self.rank = -1
        self.group = None
        self.store = None

    def prepare(self) -> dict | None:
        if not self.is_master:
            return None
        host = ray.util.get_node_ip_address().strip("[]")
        port, _ = get_free_port(host)
        return {"host": host, "port": port}

    @classmethod
    def build_topology(cls, actor_wg_world_size: int, rollout_world_size: int, metadata: list):
        master = metadata[0]
        assert master is not None, "actor rank 0 must be the gloo checkpoint engine's master"
        world_size = 1 + rollout_world_size
        actor = {
            "rank": [0] + [-1] * (actor_wg_world_size - 1),  # only rank 0 sends
            "world_size": [world_size] * actor_wg_world_size,
            "master": [master] * actor_wg_world_size,
        }
        rollout = {
            "rank": list(range(1, world_size)),
            "world_size": [world_size] * rollout_world_size,
            "master": [master] * rollout_world_size,
        }
        return actor, rollout

    def init_process_group(self, rank: int, world_size: int, master: dict):
        self.rank = rank
        if rank < 0:
            return
        self.store = dist.TCPStore(
            master["host"], master["port"], world_size, is_master=rank == 0, timeout=TIMEOUT, wait_for_workers=True
        )
        self.group = dist.ProcessGroupGloo(self.store, rank, world_size, TIMEOUT)

    def finalize(self):
        self.group, self.store, self.rank = None, None, -1

    def _broadcast(self, payload: torch.Tensor | None) -> torch.Tensor:
        """Rank 0's uint8 ``payload`` on every rank of the group."""
        size = torch.tensor([0 if payload is None else payload.numel()], dtype=torch.int64)
        self.group.broadcast(size, 0).wait()
        if payload is None:
            payload = torch.empty(int(size), dtype=torch.uint8)
        self.group.broadcast(payload, 0).wait()
        return payload

    async def send_weights(self, weights: Generator[tuple[str, torch.Tensor], None, None], global_steps=None):
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}  # every rank walks it
        if self.rank != 0:
            return {}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._broadcast(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
        return {}

    def receive_weights(self, global_steps=None) -> Generator[tuple[str, torch.Tensor], None, None]:
        payload = self._broadcast(None)
        yield from torch.load(io.BytesIO(payload.numpy().tobytes()), weights_only=True).items()
