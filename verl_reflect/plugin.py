"""What ``import verl`` loads of verl-reflect (the ``verl.plugins`` entry point): only what a process needs before a
recipe's ``external_lib`` is imported, so that ``import verl`` stays about as fast as without the plugin.

- the ``cpu`` platform (inert unless ``VERL_PLATFORM=cpu``): verl picks its device platform on import;
- the ``${verl_reflect.*}`` resolvers, for the config ``main_ppo`` composes and resolves before Ray starts;
- ``verl_reflect.register`` (everything else), once ``verl.trainer.ppo.v1`` is imported: ``TaskRunner.run`` looks
  the ``reflect_<mode>`` trainer up there before any ``external_lib`` import.

Importing ``verl_reflect.register`` here instead would make every process that imports verl (the ``main_ppo``
launcher, the reward and load-balancer workers, any script) import verl's trainer package too: 10 s against 5 s for
``import verl`` on 2 cores. The processes that use the registries import it anyway.
"""

import importlib

import wrapt

import verl_reflect.cpu.platform  # noqa: F401  (registers the cpu platform; inert unless VERL_PLATFORM=cpu)
from verl_reflect.resolvers import register_resolvers

register_resolvers()  # ${verl_reflect.tiny_model:}, ${verl_reflect.required:...}
# A package whose import is never nested in verl's own: the hook runs once it and what it imports are complete.
wrapt.register_post_import_hook(lambda _: importlib.import_module("verl_reflect.register"), "verl.trainer.ppo.v1")
