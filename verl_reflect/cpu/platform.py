"""verl's real trainer on a CPU: the ``cpu`` device platform.

verl 0.9.1 trains on accelerators only: it knows no CPU platform, and its rollout backends need GPUs (the
``hf`` rollout, ``verl_reflect/cpu/hf_rollout.py``, is the CPU's). The platform plugs in through verl's own registry
and is inert unless selected:

    VERL_PLATFORM=cpu                  the ``cpu`` platform (verl's own override variable; never auto-detected)

``recipes/countdown_tiny_cpu.yaml`` runs on it (with the ``hf`` rollout and the rest a CPU run needs) for the
embedded tiny model.

Private verl names touched under ``VERL_PLATFORM=cpu`` only (verl is pinned to 0.9.1):
``verl.workers.engine_workers.initialize_global_process_group_ray`` (verl builds the backend string
``cpu:gloo,<device>:<backend>``, and torch rejects ``cpu:gloo,cpu:gloo``) and
``verl.workers.engine.fsdp.transformer_impl.CPUOffloadPolicy`` (``pin_memory=True`` needs an accelerator).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformRegistry
from verl.plugin.platform.platform_base import PlatformBase


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
    # verl's vLLM rollout, where vLLM's CPU build is installed: syncs must reach vLLM's CPU linear layers.
    from verl_reflect.cpu import vllm_sync

    vllm_sync.enable()


if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    _enable_cpu_training()
