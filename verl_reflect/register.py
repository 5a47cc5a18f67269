"""Register verl-reflect in verl: the ``reflect_retry`` agent loop, the ``reflect_grpo`` estimator, the
``reflect_<mode>`` trainers, the CPU training path (``cpu`` platform, ``hf`` rollout, ``gloo`` checkpoint engine;
``verl_reflect/cpu/``) and the config resolvers the recipes name (``verl_reflect/resolvers.py``).

Named by every recipe in ``actor_rollout_ref.model.external_lib``, so that verl imports it, loudly, in the trainer
and in every worker process, and in ``rollout.checkpoint_engine.custom_backend_module`` (a standalone rollout's weight
receiver); imported by ``verl_reflect.plugin`` (the ``verl.plugins`` entry point) once a process
imports verl's trainer package. Importing it again is a no-op.
"""

import verl_reflect.advantage  # noqa: F401  (registers reflect_grpo)
import verl_reflect.agent_loop  # noqa: F401  (registers reflect_retry)
import verl_reflect.cpu.gloo_checkpoint  # noqa: F401  (registers the gloo checkpoint engine; inert unless selected)
import verl_reflect.cpu.hf_rollout  # noqa: F401  (registers the hf rollout; inert unless rollout.name=hf)
import verl_reflect.cpu.platform  # noqa: F401  (registers the cpu platform; inert unless VERL_PLATFORM=cpu)
import verl_reflect.trainer  # noqa: F401  (registers reflect_sync, reflect_colocate_async, reflect_separate_async)
from verl_reflect.resolvers import register_resolvers

register_resolvers()  # ${verl_reflect.tiny_model:}, ${verl_reflect.required:...}
