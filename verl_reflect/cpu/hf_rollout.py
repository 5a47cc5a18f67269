"""The ``hf`` rollout: verl's token-in/token-out rollout server, served by transformers (``HFBackend``).

verl's rollout backends (vLLM, SGLang, TensorRT-LLM) need GPUs; this one runs the CPU training path
(``recipes/countdown_tiny_cpu.yaml``, ``actor_rollout_ref.rollout.name=hf``) and ``--backend verl`` of ``eval`` and
``build-failures`` on a CPU. It plugs in through verl's own registries: the replica class
(``RolloutReplicaRegistry``, trainer side) and the server adapter (``verl.workers.rollout.base._ROLLOUT_REGISTRY``,
worker side; a private name, verl is pinned to 0.9.1).
"""

from __future__ import annotations

import os
from typing import Any, Generator, Optional

import ray
import torch
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, RolloutReplicaRegistry, TokenOutput

ROLLOUT_NAME = "hf"


class HFServer:
    """The server actor behind one ``hf`` replica: what verl's LLMServerClient and trainer call on a vLLM server.

    ``generate`` reports the weight version it generated with (``extra_fields["global_steps"]``), as
    vLLM's server does; the trainer reads it back as each trajectory's ``min/max_global_steps``.
    """

    def __init__(self, model_path: str, max_batch_size: int):
        from verl_reflect.cpu.generation import HFBackend

        self.backend = HFBackend(model_path, device="cpu", max_batch_size=max_batch_size)
        self.global_steps: Optional[int] = None

    async def generate(
        self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str, **kwargs
    ) -> TokenOutput:
        output = await self.backend.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
        # num_preempted: this server never preempts a request.
        return output.model_copy(update={"num_preempted": 0, "extra_fields": {"global_steps": self.global_steps}})

    def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int]) -> None:
        """Load the actor's weights (HF names), so the next rollout samples from the updated policy."""
        model = self.backend.model
        unexpected = set(state_dict) - set(model.state_dict())
        if unexpected:
            raise ValueError(f"hf rollout: actor weights the rollout model lacks: {sorted(unexpected)[:5]}")
        model.load_state_dict(state_dict, strict=False)  # tied weights arrive once
        self.global_steps = global_steps

    def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # The control calls verl makes on every rollout server; a transformers model on CPU has nothing to free.
    async def wake_up(self, tags: Optional[list[str]] = None): ...
    async def sleep(self): ...
    async def clear_kv_cache(self): ...
    async def release_kv_cache(self): ...
    async def resume_kv_cache(self): ...
    async def wait_for_requests_to_drain(self): ...
    async def resume_generation(self): ...
    async def start_profile(self, **kwargs): ...
    async def stop_profile(self): ...

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}


def _server_name(replica_rank: int) -> str:
    return f"{ROLLOUT_NAME}_server_{replica_rank}"


class HFReplica(RolloutReplica):
    """Trainer side of the ``hf`` rollout: starts one ``HFServer`` actor per replica."""

    async def init_standalone(self):
        # The server loads model.path itself, and no trainer pushes weights to a standalone server: none of the
        # checkpoint-engine workers verl's base class starts for that on a GPU resource pool.
        self.rollout_mode = RolloutMode.STANDALONE
        await self.launch_servers()

    async def launch_servers(self):
        server = (
            ray.remote(HFServer)
            .options(name=_server_name(self.replica_rank), max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(model_path=self.model_config.path, max_batch_size=self.config.max_num_seqs)
        )
        await server.__ray_ready__.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = _server_name(self.replica_rank)  # the load balancer's key; no HTTP endpoint


class HFServerAdapter(BaseRollout):
    """Worker side of the ``hf`` rollout, in the actor process: hands the actor's weights to the server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        world_size = self.config.tensor_model_parallel_size * self.config.data_parallel_size
        rank = int(os.environ.get("RANK", 0))
        self.replica_rank = rank // world_size if replica_rank == -1 else replica_rank
        self.is_replica_leader = rank % world_size == 0
        self._server = None

    async def resume(self, tags: list[str]):
        pass

    async def release(self):
        pass

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        global_steps: Optional[int] = None,
        wire_format: str = "named_tensors",
        **kwargs,
    ):
        assert wire_format == "named_tensors", f"hf rollout takes full tensors, got wire_format={wire_format!r}"
        # Every rank walks the generator: FSDP gathers each full tensor collectively.
        state_dict = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if not self.is_replica_leader:
            return
        if self._server is None:
            self._server = ray.get_actor(_server_name(self.replica_rank))
        await self._server.update_weights.remote(state_dict, global_steps)


RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFReplica)
_ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFServerAdapter"
