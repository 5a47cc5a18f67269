"""verl's real trainer on a CPU: a ``cpu`` device platform and an ``hf`` rollout backend (transformers).

verl 0.9.1 trains on accelerators only: its rollout backends (vLLM, SGLang, TensorRT-LLM) need GPUs and
it knows no CPU platform. Everything here plugs in through verl's own registries, and is inert unless
selected:

    VERL_PLATFORM=cpu                  the ``cpu`` platform (verl's own override variable; never auto-detected)
    actor_rollout_ref.rollout.name=hf  the ``hf`` rollout: verl_reflect.backend.HFBackend in a Ray actor

``recipes/countdown_tiny_cpu.yaml`` sets both (and the rest a CPU run needs) for the embedded tiny model.

Private verl names touched (verl is pinned to 0.9.1): ``verl.workers.rollout.base._ROLLOUT_REGISTRY``
(worker-side rollout lookup, always), and under ``VERL_PLATFORM=cpu`` only:
``verl.workers.engine_workers.initialize_global_process_group_ray`` (verl builds the backend string
``cpu:gloo,<device>:<backend>``, and torch rejects ``cpu:gloo,cpu:gloo``) and
``verl.workers.engine.fsdp.transformer_impl.CPUOffloadPolicy`` (``pin_memory=True`` needs an accelerator).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Generator, Optional

import ray
import torch
from verl.plugin.platform import PlatformRegistry
from verl.plugin.platform.platform_base import PlatformBase
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, RolloutReplicaRegistry, TokenOutput

ROLLOUT_NAME = "hf"


def _no_op(*args, **kwargs):
    return None


# torch.cpu has synchronize/current_device/...; verl also calls the CUDA memory API on its device module.
_CPU_DEVICE_MODULE = SimpleNamespace(
    **{
        name: getattr(torch.cpu, name)
        for name in ("current_device", "device_count", "synchronize", "Stream", "current_stream", "stream", "Event")
    },
    is_available=lambda: True,
    set_device=_no_op,
    empty_cache=_no_op,
    ipc_collect=_no_op,
    set_per_process_memory_fraction=_no_op,
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    get_rng_state=torch.get_rng_state,
    set_rng_state=torch.set_rng_state,
    memory_allocated=lambda *a, **k: 0,
    memory_reserved=lambda *a, **k: 0,
    max_memory_allocated=lambda *a, **k: 0,
    max_memory_reserved=lambda *a, **k: 0,
    reset_peak_memory_stats=_no_op,
    mem_get_info=lambda *a, **k: (0, 0),
    get_device_name=lambda *a, **k: "cpu",
)


@PlatformRegistry.register(platform="cpu")
class CPUPlatform(PlatformBase):
    """Device ``cpu``, collectives over ``gloo``. Chosen only by ``VERL_PLATFORM=cpu``, never auto-detected,
    so a machine with an accelerator keeps verl's own platform."""

    device_name = "cpu"
    vendor_name = "cpu"
    device_module = _CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return False  # auto-detection never picks it

    def current_device(self) -> str:
        # verl passes get_device_id() wherever torch takes a device (``.to(...)``, ``torch.device(...)``);
        # an int there means an accelerator index.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: Optional[int] = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # verl reserves placement-group "GPU"s (declared with ray_init.num_gpus); Ray sets this variable for them.
        return "CUDA_VISIBLE_DEVICES"

    def nvtx_range(self, msg: str):
        import contextlib

        return contextlib.nullcontext()

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def _enable_cpu_training() -> None:
    """What verl's workers need beyond the platform: the FSDP engine under device ``cpu``, a plain ``gloo``
    process group, and FSDP2's CPU offload (the reference model's) without pinned memory."""
    import verl.workers.engine.fsdp.transformer_impl as fsdp_impl
    import verl.workers.engine_workers as engine_workers
    from verl.workers.engine.base import EngineRegistry

    # The FSDP engine is device-agnostic (it places tensors on get_device_name()); verl registers it for
    # cuda/npu only.
    EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")(
        fsdp_impl.FSDPEngineWithLMHead
    )
    # Pinning needs an accelerator; verl hard-codes pin_memory=True for the reference model's offload.
    offload_policy = fsdp_impl.CPUOffloadPolicy
    fsdp_impl.CPUOffloadPolicy = lambda pin_memory=True: offload_policy(pin_memory=False)
    init_process_group = engine_workers.initialize_global_process_group_ray

    def init_gloo_process_group(timeout_second=None, backend=None):
        init_process_group(timeout_second=timeout_second, backend=backend or "gloo")

    engine_workers.initialize_global_process_group_ray = init_gloo_process_group


# -----------------------------------------------------------------------------
# The ``hf`` rollout: one Ray actor per replica serves verl's token-in/token-out ``generate`` with HFBackend.


class HFServer:
    """The server actor behind one ``hf`` replica: what verl's LLMServerClient and trainer call on a vLLM server.

    ``generate`` reports the weight version it generated with (``extra_fields["global_steps"]``), as
    vLLM's server does; the trainer reads it back as each trajectory's ``min/max_global_steps``.
    """

    def __init__(self, model_path: str, max_batch_size: int):
        from verl_reflect.backend import HFBackend

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

if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    _enable_cpu_training()
