"""The CPU training path's parts (``verl_reflect/cpu/platform.py``, ``verl_reflect/cpu/hf_rollout.py``): registered
where verl looks, inert unless selected, and a rollout server that samples from the weights it is handed.
tests/test_trainer.py runs them in main_ppo."""

from __future__ import annotations

import asyncio
import os

import torch
from fresh_python import run_python
from verl.plugin.platform import PlatformRegistry
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import get_rollout_replica_class

import verl_reflect.register  # noqa: F401
from verl_reflect.cpu.hf_rollout import HFReplica, HFServer, HFServerAdapter
from verl_reflect.cpu.platform import CPUPlatform

GREEDY = {"temperature": 0.0, "max_tokens": 8, "logprobs": True}


def test_registered_in_verls_registries():
    assert PlatformRegistry.get("cpu") is CPUPlatform
    assert get_rollout_replica_class("hf") is HFReplica
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_the_cpu_platform_is_never_auto_detected():
    # verl probes every registered platform when VERL_PLATFORM is unset; this one always declines.
    assert CPUPlatform().is_platform_available(use_smi_check=True) is False
    platform = CPUPlatform()
    assert (platform.device_name, platform.communication_backend_name()) == ("cpu", "gloo")
    assert torch.zeros(1).to(platform.current_device()).device.type == "cpu"  # verl's .to(get_device_id())


def test_worker_patches_apply_under_verl_platform_cpu():
    # A plain gloo process group for verl's workers; without VERL_PLATFORM they stay verl's own
    # (tests/test_registration.py, in the process that checks what `import verl` loads).
    code = (
        "import verl, verl_reflect.register, verl.workers.engine_workers as w, verl.utils.distributed as d;"
        "print(w.initialize_global_process_group_ray is d.initialize_global_process_group_ray)"
    )
    proc = run_python(code, {**os.environ, "VERL_PLATFORM": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"  # the last line: where vLLM is installed it logs to stdout


def test_hf_server_generates_with_the_weights_it_is_handed(tiny_model_dir):
    server = HFServer(str(tiny_model_dir), max_batch_size=4)
    prompt = [1, 2, 3, 4]

    async def generate():
        return await server.generate(prompt_ids=prompt, sampling_params=GREEDY, request_id="r")

    before = asyncio.run(generate())
    assert before.extra_fields == {"global_steps": None} and before.num_preempted == 0
    # An all-zero output layer makes every logit equal, and greedy decoding then picks token 0 every step.
    weights = {name: tensor.clone() for name, tensor in server.backend.model.state_dict().items()}
    weights["lm_head.weight"].zero_()
    asyncio.run(server.update_weights(weights, global_steps=3))
    after = asyncio.run(generate())
    assert after.extra_fields == {"global_steps": 3}
    assert after.token_ids == [0] * 8 != before.token_ids


def test_hf_server_refuses_weights_of_another_model(tiny_model_dir):
    server = HFServer(str(tiny_model_dir), max_batch_size=4)
    try:
        asyncio.run(server.update_weights({"not.a.parameter": torch.zeros(1)}, global_steps=1))
    except ValueError as err:
        assert "not.a.parameter" in str(err)
    else:
        raise AssertionError("unexpected weight names were accepted")
