"""verl's vLLM rollout on a CPU (vLLM's CPU build, ``packaging/install-cpu-test-deps.sh``): the GPU recipes' rollout in
CI.

The ``vllm`` tier shares its vLLM starts between checks, in one module-scoped pipeline on a test-only task
(``toy_tasks.parity``, right about half the time):

1. ``build-failures`` (in-process, greedy, k=1) keeps the prompts the tiny model fails, with their failed attempts;
2. ``python -m verl.trainer.main_ppo`` with ``countdown_tiny_cpu +cpu=vllm`` (the shared recipes' vLLM rollout
   section, the CPU changes of ``recipes/cpu/vllm.yaml``; through ``commands.main_ppo.run_main_ppo``) trains 2
   steps on that failure set, replayed: the trainer's
   ``trained_<step>.jsonl`` dump is checked against the chat template, the masks, the reflect metrics and the
   weight sync (``training/rollout_probs_diff_max``; ``VERL_REFLECT_VLLM_SKIP_SYNCS=1`` in the environment makes
   vLLM ignore every sync after the first, and that test fails);
3. ``eval --backend verl`` starts vLLM standalone through verl's ``LLMServerManager`` and gives the same records as
   in-process ``--backend hf`` (greedy, float32 on both): every turn's text, token layout and verdict, first attempts
   included. ``build-failures --backend verl`` generates through the same servers (``tests/test_servers.py`` runs it
   on the ``hf`` rollout); a second vLLM start for it here would cost about 75 s and check nothing more.

``dry-run`` keeps a GPU recipe's vLLM rollout in ``tests/test_dry_run.py``'s countdown trainer step (the default
here).

After each, no process of the run is left and no vLLM file stays in ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from verl_reflect import data
from verl_reflect.commands import cli, trainer_step_check, vllm_residue
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.commands.recipe import compose
from verl_reflect.cpu import tiny, vllm_sync

REPO = Path(__file__).resolve().parents[1]
# The recipe allows the test-only task package (a dataset alone cannot make reward_fns import it).
TOY_TASKS = "reward.custom_reward_function.reward_kwargs.task_packages=[toy_tasks]"
FIXTURES = REPO / "tests" / "fixtures"
STEPS = 2
TRAIN_PROMPTS = 32
SYNC_METRICS = ("training/rollout_probs_diff_max", "training/rollout_actor_probs_pearson_corr")
# The run's processes (Ray's, vLLM's) inherit this variable: none may be alive once a command is done.
RUN_MARKER = "VERL_REFLECT_TEST_RUN"
# Greedy and float32 on both sides: the hf backend computes in float32 on a CPU, the recipes' rollout in bf16 (verl's
# default), whose rounding differs between vLLM's and transformers' kernels; the random tiny model's near-tied logits
# turn any such difference into other tokens.
VLLM_STANDALONE = [trainer_step_check.VLLM_ON_CPU, "actor_rollout_ref.rollout.dtype=float32"]


def vllm_tier(test):
    """The slow tier: a trainer or rollout servers on vLLM's CPU build. On a CUDA machine vLLM is the GPU build, and
    the GPU recipes run as they are: nothing here applies."""
    on_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="vLLM's CPU build; this machine runs vLLM on CUDA")
    return pytest.mark.trainer(pytest.mark.vllm(on_cpu(test)))


# ----------------------------------------------------------------------------- residue


def processes_of(marker: str) -> list[int]:
    """Live processes (not this one) whose environment carries ``RUN_MARKER=marker``."""
    needle = f"{RUN_MARKER}={marker}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(pid) != os.getpid() and needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
    return found


def vllm_shm_left(before: set[str]) -> set[str]:
    """vLLM's shared-memory files that appeared since ``before`` and that no live process holds."""
    return {n for n in vllm_residue.shm_names() - before if vllm_residue.is_vllm_shm(n)} - vllm_residue.shm_in_use()


@contextlib.contextmanager
def one_run():
    """Marks the processes started inside (through the environment they inherit); afterwards asserts that none is
    alive (Ray and vLLM take some seconds to go) and that no vLLM file of the run is left in /dev/shm."""
    marker, before = uuid.uuid4().hex, vllm_residue.shm_names()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RUN_MARKER, marker)
        # A Ray of its own, as on a machine alone: ray.init() without an address joins the cluster another user's
        # `ray start` (or ray.cluster_utils.Cluster) left in /tmp/ray/ray_current_cluster; num_cpus then fails.
        mp.setenv("RAY_ADDRESS", "local")
        yield
    deadline = time.monotonic() + 60
    while processes_of(marker) and time.monotonic() < deadline:
        time.sleep(1)
    assert processes_of(marker) == [], "processes of the run are still alive"
    assert vllm_shm_left(before) == set()


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """Steps 1-3 above; each command's output and timing."""
    tmp = tmp_path_factory.mktemp("vllm")
    cache = str(tiny_model_dir.parent)
    # Countdown prompts scored by a coin (toy_tasks.parity): greedy first attempts fail about half of them (52 of 96
    # measured), more than the 8 prompts two training steps take.
    train, test = tmp / "train.parquet", tmp / "test.parquet"
    for path, size in ((train, TRAIN_PROMPTS), (test, 8)):
        rows = data.countdown_rows(size, seed=1, split=path.stem)
        data.write_parquet([{**row, "data_source": "toy_tasks.parity"} for row in rows], path)
    out: dict = {"dir": tmp, "seconds": {}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VERL_REFLECT_CACHE", cache)
        mp.syspath_prepend(str(FIXTURES))  # the verifier of toy_tasks.parity, for the in-process commands
        argv = ["build-failures", "--data", str(train), "--k", "1", "--temperature", "0", "--backend", "hf", TOY_TASKS]
        assert cli.main([*argv, "--out", str(tmp / "failures.parquet")]) == 0

        start = time.monotonic()
        with one_run():  # run_main_ppo removes the vLLM files the run leaves in /dev/shm
            out["main_ppo"] = run_main_ppo(
                "countdown_tiny_cpu",
                [
                    trainer_step_check.VLLM_ON_CPU,
                    TOY_TASKS,
                    f"data.train_files={tmp / 'failures.parquet'}",
                    f"data.val_files={test}",
                    f"trainer.total_training_steps={STEPS}",
                    f"trainer.rollout_data_dir={tmp / 'rollouts'}",
                    "trainer.save_freq=-1",
                    # A large learning rate moves the policy far in one step: a rollout on stale weights shows.
                    "actor_rollout_ref.actor.optim.lr=1e-2",
                ],
                out_dir=tmp / "main_ppo",
                cwd=REPO,
                env={"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])},
                timeout=900,
                progress=False,
            )
        out["seconds"]["main_ppo"] = time.monotonic() - start

        for backend in ("hf", "verl"):
            start = time.monotonic()
            with one_run():
                argv = ["eval", "--limit", "4", "--backend", backend, "--out-dir", str(tmp / f"eval_{backend}")]
                assert cli.main([*argv, *(VLLM_STANDALONE if backend == "verl" else [])]) == 0
            out["seconds"][f"eval {backend}"] = time.monotonic() - start
    print("vllm tier seconds:", {k: round(v) for k, v in out["seconds"].items()})
    for step in out["main_ppo"].steps:
        print(*(f"{k}={step.get(k)}" for k in ("training/global_step", *SYNC_METRICS)))
    return out


def ran(pipeline) -> list[dict]:
    run = pipeline["main_ppo"]
    assert run.returncode == 0, run.log[-4000:]
    assert [step["training/global_step"] for step in run.steps] == list(range(1, STEPS + 1))
    return run.steps


def trained_rows(pipeline, step: int) -> list[dict]:
    path = pipeline["dir"] / "rollouts" / f"trained_{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@vllm_tier
def test_main_ppo_on_vllm_replays_the_failure_set_and_logs_reflect_metrics(pipeline):
    steps = ran(pipeline)
    for step in steps:
        for key in ("first_try_correct", "final_correct", "reflected", "reflection_tokens"):
            key = f"reflect/{key}"
            assert math.isfinite(step[key]), key
        # Failure replay: every row starts from its stored failed attempt and reflects.
        assert step["reflect/replayed_attempt"] == step["reflect/reflected"] == 1.0
        assert step["reflect/first_try_correct"] == 0.0
    assert any(step["reflect/rows_with_gradient"] > 0 and "actor/pg_loss" in step for step in steps)
    failure_set = data.read_rows(pipeline["dir"] / "failures.parquet")
    assert 8 <= len(failure_set) < TRAIN_PROMPTS  # two training steps of 4 prompts
    stored = {tuple(row["failed_attempts"][0]["token_ids"]) for row in failure_set}
    for step in range(1, STEPS + 1):
        for row in trained_rows(pipeline, step):
            (attempt,) = [turn for turn in row["turns"] if turn["kind"] == "attempt"]
            assert tuple(row["response_ids"][attempt["start"] : attempt["start"] + attempt["num_tokens"]]) in stored


@vllm_tier
def test_the_rollout_samples_from_the_weights_synced_after_each_step(pipeline):
    steps = ran(pipeline)
    # vLLM's log-probs of the sampled tokens against the actor's own: ~5e-5 with syncs (bf16 rollout); with
    # VERL_REFLECT_VLLM_SKIP_SYNCS=1, vLLM keeps step 1's weights and step 2 reads far more (measured: README).
    for step in steps:
        assert step["training/rollout_probs_diff_max"] < 2e-4, step["training/global_step"]
    assert {row["weights_version"] for row in trained_rows(pipeline, 2)} == {1}


@vllm_tier
def test_the_trained_stream_is_the_chat_template_rendering_of_vllms_tokens(pipeline, tiny_model_dir):
    """Each row's response, re-rendered: the turns vLLM generated, verbatim, and between them exactly the chat
    template's user turns; the mask is 1 on the reflection's generated tokens and nowhere else."""
    from transformers import AutoTokenizer

    ran(pipeline)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    entry = compose("countdown_tiny_cpu").actor_rollout_ref.rollout.agent.agent_loop_config_path
    prompts = {e["name"]: e for e in yaml.safe_load((REPO / entry).read_text())}["reflect_retry"]
    eos = tokenizer.convert_tokens_to_ids(tiny.IM_END)
    probe = [{"role": "user", "content": "x"}]
    for step in range(1, STEPS + 1):
        for row in trained_rows(pipeline, step):
            ids, turns = row["response_ids"], row["turns"]
            assert [turn["kind"] for turn in turns] == ["attempt", "reflection", "retry"]
            messages = list(probe)
            for turn, user in zip(turns, [prompts["reflection_prompt"], prompts["retry_prompt"], None]):
                generated = ids[turn["start"] : turn["start"] + turn["num_tokens"]]
                content = tokenizer.decode(generated[:-1] if generated[-1] == eos else generated)
                messages.append({"role": "assistant", "content": content})
                if user is not None:
                    messages.append({"role": "user", "content": user})
            rendered = tokenizer.apply_chat_template(messages, tokenize=False)
            prefix = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            stream = tokenizer.decode(ids)
            # The stream stops inside the last turn's closing: after its <|im_end|>, or before it when cut at the cap.
            assert rendered[len(prefix) :] in (stream + "\n", stream + tiny.IM_END + "\n")
            reflection = next(turn for turn in turns if turn["kind"] == "reflection")
            span = set(range(reflection["start"], reflection["start"] + reflection["num_tokens"]))
            assert {i for i, bit in enumerate(row["response_mask"]) if bit} == span
            assert {i for i, a in enumerate(row["advantages"]) if a} <= span


@vllm_tier
def test_eval_on_vllm_gives_the_records_of_in_process_generation(pipeline):
    def records(backend):
        path = pipeline["dir"] / f"eval_{backend}" / "trajectories.jsonl"
        return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["index"])

    served = records("verl")
    assert len(served) == 4 and all(len(r["turns"]) == 3 for r in served)  # attempt, reflection, retry each
    assert served == records("hf")  # verdicts, turn texts, token layouts


# ----------------------------------------------------------------------------- fast: no vLLM needed


def test_dry_run_falls_back_to_hf_without_vllm_and_says_why(monkeypatch):
    from verl_reflect.commands.config_checks import DryRun as Recipe
    from verl_reflect.commands.recipe import RECIPES_DIR

    check = trainer_step_check
    cfg = compose("countdown_qwen2.5-1.5b")
    recipe = Recipe(RECIPES_DIR, "countdown_qwen2.5-1.5b", [], cfg=cfg)
    monkeypatch.setattr(vllm_sync, "cpu_build_installed", lambda: True)
    assert check.step_rollout(cfg, None) == ("vllm", "the recipe's, with recipes/cpu/vllm.yaml")
    vllm_step = check.step_overrides(recipe, Path("train.parquet"), 2, "vllm")
    # The CPU platform (its hf rollout), then the vLLM changes on top: the rollout is vLLM again.
    assert vllm_step.index("+platform=cpu") < vllm_step.index(check.VLLM_ON_CPU)
    assert check.step_rollout(cfg, "hf") == ("hf", "--step-rollout hf")
    monkeypatch.setattr(vllm_sync, "cpu_build_installed", lambda: False)
    rollout, why = check.step_rollout(cfg, None)
    assert rollout == "hf" and "not installed" in why
    hf_step = check.step_overrides(recipe, Path("train.parquet"), 2, "hf")
    assert "+platform=cpu" in hf_step and check.VLLM_ON_CPU not in hf_step


def test_the_cpu_changes_a_vllm_rollout_needs_are_one_group_that_leaves_the_rest_of_the_recipe():
    composed = compose("countdown_qwen2.5-1.5b", [trainer_step_check.VLLM_ON_CPU])
    env_vars = composed.ray_kwargs.ray_init.runtime_env.env_vars
    assert (env_vars.VLLM_CPU_KVCACHE_SPACE, env_vars.VERL_PLATFORM) == ("1", "cpu")
    rollout = composed.actor_rollout_ref.rollout
    assert (rollout.enforce_eager, rollout.free_cache_engine, rollout.enable_sleep_mode) == (True, False, False)
    # Only CPU changes: the recipe's own rollout settings stay.
    recipe = compose("countdown_qwen2.5-1.5b").actor_rollout_ref.rollout
    for key in ("n", "temperature", "top_p", "enable_prefix_caching", "agent", "val_kwargs", "mode"):
        assert rollout[key] == recipe[key], key


def test_vllm_cpu_linear_layers_read_their_live_weight():
    packed = []
    dispatch = vllm_sync._live_weight_dispatch(lambda layer, remove_weight: packed.append(layer))
    linear = torch.nn.Linear(4, 3)
    weight = linear.weight
    dispatch(linear, remove_weight=True)
    assert linear.weight is weight and packed == []  # kept in place, for verl's in-place load_weights
    x = torch.randn(2, 4)
    with torch.no_grad():
        linear.weight.add_(1.0)  # a sync
    assert torch.equal(linear.cpu_linear(x, linear.weight, linear.bias), linear(x))
    conv = torch.nn.Conv1d(2, 2, 3)  # not a 2-D weight: vLLM's own handling
    dispatch(conv, remove_weight=False)
    assert packed == [conv]


def test_vllm_shm_cleanup_removes_only_the_runs_unheld_vllm_files(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_residue, "SHM_DIR", tmp_path)
    (tmp_path / "psm_before").touch()
    before = vllm_residue.shm_names()
    for name in ("psm_new", "sem.mp-new", "psm_held", "torch_other"):
        (tmp_path / name).touch()
    with open(tmp_path / "psm_held"):  # another live run's file
        assert vllm_residue.remove_vllm_shm(before, wait_s=0) == ["psm_new", "sem.mp-new"]
    assert sorted(vllm_residue.shm_names()) == ["psm_before", "psm_held", "torch_other"]
