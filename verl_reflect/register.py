"""Register verl-reflect in verl: the ``reflect_retry`` agent loop and the ``reflect_grpo`` estimator.

Imported by the ``verl.plugins`` entry point on ``import verl``, and named by every recipe in
``actor_rollout_ref.model.external_lib`` so that verl imports it, loudly, in the trainer and in
every worker process. Importing it again is a no-op.
"""

import verl_reflect.advantage  # noqa: F401  (registers reflect_grpo)
import verl_reflect.agent_loop  # noqa: F401  (registers reflect_retry)
