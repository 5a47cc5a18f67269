"""verl's async trainers through ``python -m verl.trainer.main_ppo`` on CPU: ``reflect_colocate_async`` on one Ray node,
``reflect_separate_async`` on a cluster of two Ray nodes.

Each run trains on ``toy_tasks.gated`` rows: the first six prompts (the first batch and the half batch of warm-up
verl prefetches) are always solved, so step 1 has no reflection token whatever order rollouts finish in; the rest
replay a stored failed attempt and retry on a coin, so later steps reflect and train. The ``hf`` server sleeps after
every decoding step (a slow accelerator), so generation is still running when the trainer aborts it at a weight
sync: those turns are resumed by verl's ``FullyAsyncLLMServerClient`` after it.

The ``hf`` server decodes a batch of calls until all its rows end and returns them together. With 16 rows a batch
the six step-1 groups (24 trajectories) decode in two batches, and in two suite runs out of three with another test
file beside it the second batch held the last of the first four groups to finish: all six ended together and
nothing was in flight when the trainer aborted generation (at 0.15 s and at 0.4 s a step). colocate_async decodes
4 rows a batch (one group, its samples reaching the server together): the first four groups to finish end with a
batch, and the next batch is decoding when the trainer aborts. It runs the 2 steps its checks need.

Token-exact resumption, against the trainer's own dump: step 1 trains nothing, so the weights after its sync equal the
initial ones, and a row whose turn was aborted at step 1 and resumed on version 1 (``weights_version`` 0,
``last_weights_version`` 1) must have the rollout's log-probs equal to the trainer's recomputed ones on every response
token (up to the trainer's bf16 noise); a token lost, duplicated or generated from the wrong context at the resume
point would break that. ``tests/test_hf_abort.py`` checks the same resume exactly, in-process, against a turn
generated in one go.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_trainer import OWN_RAY, REPO, check_ran, train, trained_rows

from verl_reflect import data
from verl_reflect.cpu import tiny

GATED_ROWS = 6  # train_batch_size 4 + num_warmup_batches 0.5 x 4
ASYNC_STEPS = 3  # separate_async; colocate_async runs COLOCATE_STEPS
COLOCATE_STEPS = 2


def write_gated_task(directory: Path, size: int = 24) -> tuple[Path, Path]:
    """The first ``GATED_ROWS`` rows are solved on the first try; the others replay a stored failed attempt (odd length:
    wrong by ``parity``), so every one of their rows reflects and its retry is a coin: groups with mixed retries
    train."""
    tokenizer = tiny.build_tokenizer()
    attempt = tokenizer.encode("1 + 2 = 3", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    stored = {
        "token_ids": attempt,
        "text": tokenizer.decode(attempt, skip_special_tokens=True),
        "model": "tiny-random",
        "sampling": {
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "repetition_penalty": 1.0,
            "max_attempt_tokens": 32,
        },
    }
    assert len(stored["text"]) % 2 == 1  # a failure by parity
    rows = [
        {
            **row,
            "data_source": "toy_tasks.gated",
            "reward_model": {"style": "rule", "ground_truth": json.dumps({"first_try": i < GATED_ROWS})},
            "agent_name": data.AGENT_NAME if i < GATED_ROWS else data.FAILURES_AGENT_NAME,
            data.FAILED_ATTEMPTS: [] if i < GATED_ROWS else [stored],
        }
        for i, row in enumerate(data.countdown_rows(size, seed=3, split="train"))
    ]
    data.write_parquet(rows, directory / "train.parquet")
    data.write_parquet(data.countdown_rows(4, seed=4, split="test"), directory / "test.parquet")
    return directory / "train.parquet", directory / "test.parquet"


def async_overrides(mode: str) -> list[str]:
    return [
        f"trainer.v1.trainer_mode=reflect_{mode}",
        f"trainer.v1.{mode}.num_warmup_batches=0.5",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "data.shuffle=false",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        # Slow decoding keeps trajectories in flight across a weight sync, so some get aborted and resumed (0.05 s
        # missed every sync in one run of three).
        "+actor_rollout_ref.rollout.engine_kwargs.hf.decode_step_delay_s=0.15",
    ]


def check_async_run(run: dict, steps: int = ASYNC_STEPS) -> None:
    check_ran(run, steps)  # exit 0, every step logged, no NaN in any metric
    for step in run.steps:
        assert "reflect/reflected" in step and "reflect/rows_with_gradient" in step


@pytest.fixture(scope="module")
def colocate_run(tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("colocate_async")
    return train(
        tmp_path,
        tiny_model_dir.parent,
        OWN_RAY,
        *async_overrides("colocate_async"),
        "actor_rollout_ref.rollout.max_num_seqs=4",  # one group a decode batch: see the module docstring
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",  # two mini-batches a step: each must have a trained token
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        splits=write_gated_task(tmp_path),
        steps=COLOCATE_STEPS,
    )


@pytest.mark.trainer
def test_colocate_async_skips_a_step_with_no_reflection_token_then_trains(colocate_run):
    check_async_run(colocate_run, COLOCATE_STEPS)
    first, *later = colocate_run.steps
    assert first["reflect/reflected"] == 0.0 and first["reflect/skipped_update"] == 1.0
    assert "actor/pg_loss" not in first
    # Step 2 holds replayed rows, which always reflect: the update runs, and both mini-batches get a reflection token.
    # (Whether its rows carry gradient is the retries' coin, all-equal in both groups 1.6% of the time: the
    # separate_async run checks gradient over two such steps.)
    (second,) = later
    assert second["reflect/skipped_update"] == 0.0 and "actor/pg_loss" in second
    assert second["reflect/mini_batches_without_token"] == 0.0
    # Async: batches trained one step after the weights that sampled them.
    assert max(step["training/off_policy/trajectory_staleness_worst/max"] for step in later) > 0


@pytest.mark.trainer
def test_colocate_async_resumes_aborted_turns_token_exact(colocate_run):
    check_async_run(colocate_run, COLOCATE_STEPS)
    rows = [row for step in range(1, COLOCATE_STEPS + 1) for row in trained_rows(colocate_run, step)]
    resumed = [row for row in rows if row["last_weights_version"] > row["weights_version"]]
    assert resumed, "no trajectory had a turn aborted and resumed"
    same_weights = [row for row in resumed if (row["weights_version"], row["last_weights_version"]) == (0, 1)]
    assert same_weights
    for row in same_weights:
        rollout, trainer = row["rollout_log_probs"], row["old_log_probs"]
        generated = [i for turn in row["turns"] for i in range(turn["start"], turn["start"] + turn["num_tokens"])]
        # The trainer computes in bf16: its log-probs of the rollout's own tokens differ by up to ~0.03 on every row;
        # a token off by one position, or sampled from another context, differs by ~0.3-1 (near-uniform model).
        assert max(abs(rollout[i] - trainer[i]) for i in generated) < 0.1


# ----------------------------------------------------------------------------- two Ray nodes, separate_async
# A Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``: separate raylets, each with its own CPUs
# and 2 declared GPUs), joined by main_ppo through RAY_ADDRESS. The trainer spans both nodes (trainer.nnodes=2, one
# FSDP rank each, gloo between them); the standalone rollout replica (1 GPU) takes weights over the plugin's gloo
# checkpoint engine after every step.

NODES = 2


def separate_async_overrides() -> list[str]:
    return [
        *async_overrides("separate_async"),
        "trainer.v1.separate_async.parameter_sync_step=1",  # verl: train_batch_size == sync steps x mini-batch
        "actor_rollout_ref.rollout.nnodes=1",
        "actor_rollout_ref.rollout.n_gpus_per_node=1",
        "actor_rollout_ref.rollout.checkpoint_engine.backend=gloo",  # verl_reflect/cpu/gloo_checkpoint.py
        f"trainer.nnodes={NODES}",
        "trainer.n_gpus_per_node=1",
        # 16 rows a step over 2 ranks: 8 per rank, so micro-batches of 8
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        # Resolved in each worker's directory otherwise: the driver's absolute path.
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={REPO / 'recipes/agent_loops/countdown_tiny.yaml'}",
    ]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory, tiny_model_dir):
    from ray.cluster_utils import Cluster

    tmp_path = tmp_path_factory.mktemp("separate_async_2_nodes")
    # The dashboard serves Ray's state API, which tells where each actor ran (on a free port: the machine is shared).
    head = {"num_cpus": 8, "num_gpus": 2, "include_dashboard": True, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    unadvertise(cluster.address)
    try:
        nodes = [cluster.head_node, cluster.add_node(num_cpus=8, num_gpus=2)]
        cluster.wait_for_nodes()
        # Attached through RAY_ADDRESS, with no resources of its own (Ray refuses them when attaching); the harness
        # hands the workers its environment (VERL_PLATFORM, PYTHONPATH, ...) as the job's runtime env.
        attach = (
            {"RAY_ADDRESS": cluster.address},
            ["ray_kwargs.ray_init.num_cpus=null", "ray_kwargs.ray_init.num_gpus=null"],
        )
        run = train(
            tmp_path,
            tiny_model_dir.parent,
            attach,
            *separate_async_overrides(),
            splits=write_gated_task(tmp_path),
            steps=ASYNC_STEPS,
        )
        yield run, {node.node_id for node in nodes}, placed_actors(cluster.head_node.address_info["webui_url"])
    finally:
        cluster.shutdown()


def unadvertise(address: str) -> None:
    """``Cluster`` writes its address to ``/tmp/ray/ray_current_cluster``, where a plain ``ray.init()`` anywhere on this
    machine looks first: every other main_ppo (this suite's, other users') would join this cluster. Take it back;
    main_ppo reaches the cluster through ``RAY_ADDRESS``."""
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if path.exists() and path.read_text().strip() == address:
        path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def placed_actors(dashboard: str) -> list[dict]:
    """Every actor the run started, with its class and node, from Ray's state API (dead ones included), asked of
    this cluster's dashboard by its URL: other Ray instances run on this machine."""
    from ray.util.state import list_actors

    actors = list_actors(address=f"http://{dashboard}", limit=10000, detail=True, raise_on_missing_output=False)
    return [{"class_name": actor.class_name, "node_id": actor.node_id, "name": actor.name} for actor in actors]


@pytest.mark.trainer
def test_two_node_separate_async_trains_with_workers_on_both_nodes(two_node_run):
    run, nodes, actors = two_node_run
    check_async_run(run)
    first, *later = run.steps
    assert first["reflect/skipped_update"] == 1.0 and "actor/pg_loss" not in first
    assert any(step["reflect/rows_with_gradient"] > 0 and "actor/pg_loss" in step for step in later)
    # verl fuses each rank's actor/ref/rollout roles into one WorkerDict actor named ..._<rank>:0
    ranks = {
        int(a["name"].rsplit("_", 1)[1].split(":")[0]): a["node_id"]
        for a in actors
        if a["class_name"].endswith("WorkerDict")
    }
    assert sorted(ranks) == [0, 1] and set(ranks.values()) == nodes  # one FSDP rank on each node
    servers = {a["name"]: a["node_id"] for a in actors if a["class_name"] == "HFServer"}
    (receiver,) = [a["node_id"] for a in actors if a["class_name"] == "CheckpointEngineWorker"]
    # Every hf server is pinned next to the worker that hands it weights: the trainer rank of its (hybrid) replica,
    # and the standalone replica's weight receiver (replica rank 2).
    assert servers == {"hf_server_0": ranks[0], "hf_server_1": ranks[1], "hf_server_2": receiver}
    # Weights reached the standalone replica: rows sampled after the first sync say version >= 1.
    rows = [row for step in range(2, ASYNC_STEPS + 1) for row in trained_rows(run, step)]
    assert max(row["last_weights_version"] for row in rows) >= 1
