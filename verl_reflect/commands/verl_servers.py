"""verl's own rollout servers, started without a trainer: how ``eval`` and ``build-failures`` generate on a GPU.

verl starts standalone servers the way its separate-async trainer starts its extra replicas:
``LLMServerManager.create(config)`` with ``rollout.nnodes > 0`` calls each replica's ``init_standalone()``, and
``get_client()`` returns the ``LLMServerClient`` that verl's AgentLoopWorker hands every agent loop as its
``server_manager``. ``VerlServers`` is that client, so the reflect-retry loop generates through the same client,
load balancer and server as in training: vLLM or SGLang with the recipe's rollout settings, or, on a CPU, the
``hf`` rollout the CPU trainer serves with (``verl_reflect/cpu/hf_rollout.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from verl_reflect.commands import vllm_residue
from verl_reflect.commands.errors import UserError


def replica_gpus(rollout: DictConfig) -> int:
    """GPUs one server replica takes: verl's ``RolloutReplica.world_size``."""
    return rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size


def standalone_rollout(config: DictConfig, model_path: str | Path, visible_gpus: int | None) -> DictConfig:
    """``config`` with ``model_path`` as its model and its rollout set up to serve standalone on this machine.

    A recipe leaves ``rollout.nnodes`` at 0 (the servers share the trainer's GPUs); here they get this machine
    alone: one node, ``rollout.n_gpus_per_node`` capped at the ``visible_gpus`` it has (None: take the recipe's
    count as it is, e.g. the CPU path's declared one). One replica per ``replica_gpus`` GPUs. The
    servers load the weights from ``model_path`` themselves (``load_format: auto``).
    """
    cfg = config.copy()
    OmegaConf.update(cfg, "actor_rollout_ref.model.path", str(model_path))
    rollout = cfg.actor_rollout_ref.rollout
    if rollout.load_format == "dummy":
        # verl's default: a trainer pushes the weights into the servers. Nothing will here, so they load model.path
        # (verl's own generation-only example sets the same: examples/generation/run_deepseek_llm_7b.sh).
        rollout.load_format = "auto"
    if rollout.nnodes == 0:
        rollout.nnodes = 1
        if visible_gpus is not None:
            rollout.n_gpus_per_node = min(rollout.n_gpus_per_node, visible_gpus)
    per_replica = replica_gpus(rollout)
    if rollout.n_gpus_per_node * rollout.nnodes < per_replica:
        raise UserError(
            f"a {rollout.name} replica needs {per_replica} GPUs (rollout tensor/data/pipeline parallel sizes) and "
            f"the rollout has {rollout.n_gpus_per_node * rollout.nnodes}: lower "
            "actor_rollout_ref.rollout.tensor_model_parallel_size, or use --backend hf"
        )
    return cfg


class VerlServers:
    """The recipe's rollout servers for one model, started standalone; ``generate`` is verl's LLMServerClient's.

    Starts Ray as ``main_ppo`` does (the recipe's ``ray_kwargs.ray_init`` over verl's runtime env) unless it is
    running already; ``close`` shuts it down again, which stops the servers and frees their GPUs for the next
    model.
    """

    def __init__(self, config: DictConfig, model_path: str | Path):
        import ray
        import torch
        from verl.trainer.constants_ppo import get_ppo_ray_runtime_env
        from verl.workers.rollout.llm_server import LLMServerManager
        from verl.workers.rollout.replica import get_rollout_replica_class

        import verl_reflect.register  # noqa: F401 - the plugin's ``hf`` rollout, as external_lib registers it in training

        name = config.actor_rollout_ref.rollout.name
        try:  # before Ray starts: a rollout that is not installed is the likelier mistake, and this one is fast
            get_rollout_replica_class(name)
        except (ImportError, ValueError) as err:
            raise UserError(
                f"rollout {name!r} is not available here ({type(err).__name__}: {err}); install it, or use --backend hf"
            ) from None
        self.config = standalone_rollout(
            config, model_path, torch.cuda.device_count() if torch.cuda.is_available() else None
        )
        rollout = self.config.actor_rollout_ref.rollout
        replicas = rollout.n_gpus_per_node * rollout.nnodes // replica_gpus(rollout)
        # Minutes for a large model on vLLM, with verl's own logs the only sign of life: say what is happening.
        print(f"starting {replicas} standalone {name} rollout server(s) for {model_path} (verl)", file=sys.stderr)
        # vLLM leaves shared-memory files behind when Ray ends its servers: close() removes them.
        self._shm_before = vllm_residue.shm_names() if name == "vllm" else None
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray_init = OmegaConf.to_container(self.config.ray_kwargs.get("ray_init", {}))
            runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(self.config), ray_init.pop("runtime_env", None) or {})
            # A Ray of its own unless one is named, as run_main_ppo starts main_ppo: without an address, ray.init()
            # joins the cluster any `ray start` on this machine last recorded, and the recipe's num_cpus then fails.
            ray_init.setdefault("address", os.environ.get("RAY_ADDRESS") or "local")
            ray.init(**ray_init, runtime_env=OmegaConf.to_container(runtime_env))
        with contextlib.redirect_stdout(sys.stderr):  # verl prints the server addresses; stdout is the table's
            self.manager = LLMServerManager.create(config=self.config)
        self.client = self.manager.get_client()

    async def generate(self, request_id: str, **kwargs: Any):
        """verl's server-manager call, answered by a server replica through verl's load balancer."""
        return await self.client.generate(request_id, **kwargs)

    def close(self) -> None:
        import ray

        if self._started_ray:
            ray.shutdown()
            if self._shm_before is not None:
                vllm_residue.remove_vllm_shm(self._shm_before)
