"""Registration in every process: the verl.plugins entry point, external_lib, and a loud failure without the plugin."""

from __future__ import annotations

import os

from fresh_python import run_python


def test_import_verl_loads_the_plugin_through_its_entry_point_and_leaves_a_gpu_process_as_it_was():
    result = run_python(
        "import sys, verl\n"
        "from verl.plugin.platform import PlatformRegistry\n"
        "from omegaconf import OmegaConf\n"
        "assert 'verl_reflect.plugin' in sys.modules, 'entry point not loaded'\n"
        "assert 'cpu' in PlatformRegistry.registered_names() and OmegaConf.has_resolver('verl_reflect.tiny_model')\n"
        # What import verl loads stays light: verl's trainer and the rest of the plugin wait until a process asks.
        "assert not {'verl.trainer.ppo.v1', 'verl_reflect.register'} & set(sys.modules), 'import verl got heavy'\n"
        # TaskRunner.run looks the trainer up here, before any external_lib import.
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
        "assert get_trainer_cls('reflect_sync').__module__ == 'verl_reflect.trainer'\n"
        "assert 'reflect_retry' in _agent_loop_registry, 'agent loop missing'\n"
        "assert 'reflect_grpo' in ADV_ESTIMATOR_REGISTRY, 'estimator missing'\n"
        # The cpu platform is inert: verl's workers keep their own process-group init (the patched case:
        # tests/test_cpu_path.py).
        "import verl.workers.engine_workers as w, verl.utils.distributed as d\n"
        "assert w.initialize_global_process_group_ray is d.initialize_global_process_group_ray, 'workers patched'\n",
        env={k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"},  # as in a GPU run's processes
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_external_lib_registers_in_a_process_without_entry_points():
    # What every verl worker does at start with actor_rollout_ref.model.external_lib.
    result = run_python(
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
        "assert 'reflect_grpo' not in ADV_ESTIMATOR_REGISTRY\n"
        "from verl.utils.import_utils import import_external_libs\n"
        "import_external_libs('verl_reflect.register')\n"
        "import_external_libs('verl_reflect.register')\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry\n"
        "assert 'reflect_grpo' in ADV_ESTIMATOR_REGISTRY and 'reflect_retry' in _agent_loop_registry\n",
        env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"},
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_recipe_without_the_plugin_installed_fails_at_start():
    # verl builds HFModelConfig first thing; it imports external_lib before touching the model path.
    result = run_python(
        "import sys\n"
        "sys.modules['verl_reflect'] = None  # as if verl-reflect were not installed\n"
        "from verl.workers.config.model import HFModelConfig\n"
        "HFModelConfig(path='/nonexistent-model', external_lib='verl_reflect.register')\n"
    )
    assert result.returncode != 0
    assert "verl_reflect" in result.stderr.strip().splitlines()[-1]
