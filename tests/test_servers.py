"""``--backend verl``: eval and build-failures generate through verl's own standalone rollout servers.

On this CPU the recipe's rollout is the CPU trainer's ``hf``; verl's LLMServerManager starts it standalone under
Ray and its LLMServerClient (load balancer included) serves the loop, the path vLLM takes on a GPU.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from verl_reflect.commands import cli, recipe, trajectories
from verl_reflect.commands.errors import UserError
from verl_reflect.commands.verl_servers import standalone_rollout


@pytest.fixture
def client_outputs(monkeypatch):
    """Every TokenOutput verl's LLMServerClient returned in this process."""
    from verl.workers.rollout.llm_server import LLMServerClient

    outputs = []
    original = LLMServerClient.generate

    async def recorded(self, request_id, **kwargs):
        output = await original(self, request_id, **kwargs)
        outputs.append(output)
        return output

    monkeypatch.setattr(LLMServerClient, "generate", recorded)
    return outputs


def _records(path):
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["index"])


@pytest.mark.trainer
def test_eval_through_verls_standalone_servers_matches_in_process_generation(
    tmp_path, tiny_default, client_outputs, capsys
):
    import ray

    args = ["eval", "--limit", "4"]
    assert cli.main([*args, "--backend", "hf", "--out-dir", str(tmp_path / "hf")]) == 0
    assert client_outputs == []
    table = capsys.readouterr().out
    assert cli.main([*args, "--backend", "verl", "--out-dir", str(tmp_path / "verl")]) == 0
    assert capsys.readouterr().out.replace("verl/", "hf/") == table  # stdout is the table alone, as in-process

    # Greedy validation sampling on the same weights: the server path changes where tokens come from, not which.
    served = _records(tmp_path / "verl" / trajectories.JSONL_NAME)
    assert served == _records(tmp_path / "hf" / trajectories.JSONL_NAME)
    # Every turn came through verl's client, with the fields a real server sends.
    assert len(client_outputs) == sum(len(r["turns"]) for r in served)
    for output in client_outputs:
        assert output.num_preempted == 0
        assert {"global_steps", "min_global_steps", "max_global_steps"} <= set(output.extra_fields)
    assert not ray.is_initialized()  # close() shut down the Ray it started, servers with it


@pytest.mark.trainer
def test_build_failures_through_verls_standalone_servers(tmp_path, tiny_default, client_outputs):
    out = tmp_path / "failures.parquet"
    argv = ["build-failures", "--limit", "3", "--k", "2", "--backend", "verl", "--out", str(out)]
    assert cli.main(argv) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 3  # the random model fails everything
    assert len(client_outputs) == 6  # k first attempts per prompt, one turn each
    generated = sorted(tuple(o.token_ids) for o in client_outputs)
    stored = [tuple(a["token_ids"]) for row in rows for a in row["failed_attempts"]]
    assert set(stored) <= set(generated)


def test_standalone_rollout_takes_this_machines_gpus():
    cfg = recipe.compose("countdown_qwen2.5-7b")  # tensor_model_parallel_size 2, 8 GPUs per node
    rollout = standalone_rollout(cfg, "/models/x", visible_gpus=4).actor_rollout_ref.rollout
    assert (rollout.nnodes, rollout.n_gpus_per_node) == (1, 4)  # two replicas of TP 2
    # verl's "dummy" means random weights until a trainer syncs real ones; no trainer will: load the checkpoint.
    assert (cfg.actor_rollout_ref.rollout.load_format, rollout.load_format) == ("dummy", "auto")
    assert cfg.actor_rollout_ref.rollout.nnodes == 0  # the recipe's config is left as it was
    assert standalone_rollout(cfg, "/models/x", None).actor_rollout_ref.model.path == "/models/x"
    with pytest.raises(UserError, match="needs 2 GPUs"):
        standalone_rollout(cfg, "/models/x", visible_gpus=1)
    # Standalone servers the recipe configures itself are taken as they are.
    own = recipe.compose(
        "countdown_qwen2.5-7b", ["actor_rollout_ref.rollout.nnodes=2", "actor_rollout_ref.rollout.n_gpus_per_node=8"]
    )
    rollout = standalone_rollout(own, "/models/x", visible_gpus=1).actor_rollout_ref.rollout
    assert (rollout.nnodes, rollout.n_gpus_per_node) == (2, 8)


def test_a_rollout_that_is_not_available_is_one_line(tmp_path, tiny_default, capsys):
    argv = ["eval", "--backend", "verl", "actor_rollout_ref.rollout.name=no_such_rollout", "--out-dir", str(tmp_path / "o")]
    rc = cli.main(argv)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verl-reflect: error: rollout 'no_such_rollout' is not available here") and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_default_backend_is_verls_servers_on_a_gpu_and_hf_on_a_cpu(monkeypatch):
    import torch

    from verl_reflect.commands import evaluate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert evaluate.build_parser().parse_args([]).backend == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert evaluate.build_parser().parse_args([]).backend == "verl"
