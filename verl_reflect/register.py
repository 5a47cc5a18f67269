"""Register verl-reflect in verl: the ``reflect_retry`` agent loop, the ``reflect_grpo`` estimator, the
``reflect_sync`` trainer, the CPU training path (``cpu`` platform, ``hf`` rollout; ``verl_reflect/cpu/``) and the
config resolvers the recipes name (``verl_reflect/resolvers.py``).

Imported by the ``verl.plugins`` entry point on ``import verl``, and named by every recipe in
``actor_rollout_ref.model.external_lib`` so that verl imports it, loudly, in the trainer and in
every worker process. Importing it again is a no-op.
"""

import verl_reflect.advantage  # noqa: F401  (registers reflect_grpo)
import verl_reflect.agent_loop  # noqa: F401  (registers reflect_retry)
import verl_reflect.cpu.hf_rollout  # noqa: F401  (registers the hf rollout; inert unless rollout.name=hf)
import verl_reflect.cpu.platform  # noqa: F401  (registers the cpu platform; inert unless VERL_PLATFORM=cpu)
import verl_reflect.trainer  # noqa: F401  (registers the reflect_sync trainer)
from verl_reflect.resolvers import register_resolvers

register_resolvers()  # ${verl_reflect.tiny_model:}, ${verl_reflect.required:...}
