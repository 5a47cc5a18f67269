"""Every recipe composes onto verl's ppo_trainer on CPU, and what it names resolves to verl-reflect's parts."""

from __future__ import annotations

import asyncio
import importlib
import os
import shlex
import subprocess
from pathlib import Path

import hydra
import pytest
from chat_families import family_tokenizer
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from verl_reflect import data
from verl_reflect.advantage import compute_reflect_grpo_advantage
from verl_reflect.agent_loop import ReflectRetryAgentLoop
from verl_reflect.commands import evaluate, loop, recipe, run_args, runner
from verl_reflect.commands.main_ppo import main_ppo_command

REPO = Path(__file__).resolve().parents[1]
# The GPU recipes; the CPU ones (*_tiny_cpu) are checked by running them (tests/test_trainer.py, test_learning.py).
RECIPES = sorted(
    p.stem for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("_") and not p.stem.endswith("_tiny_cpu")
)
DATA = ["data.train_files=/data/train.parquet", "data.val_files=/data/test.parquet"]


def compose_recipe(name: str, overrides: list[str] = DATA) -> DictConfig:
    """``name`` composed with ``overrides`` and resolved, as main_ppo does before handing the config to its workers."""
    cfg = recipe.compose_unresolved(REPO / "recipes", name, overrides)
    OmegaConf.resolve(cfg)
    return cfg


# The paper's model per recipe: its checkpoint, and the chat family / config.json model_type the loop sees.
RECIPE_MODELS = {
    "countdown_llama3.2-3b": ("meta-llama/Llama-3.2-3B-Instruct", "llama3.2", "llama"),
    "countdown_qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5", "qwen2"),
    "countdown_qwen2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5", "qwen2"),
    "function_calling_llama3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1", "llama"),
    "function_calling_phi3.5-mini": ("microsoft/Phi-3.5-mini-instruct", "phi3.5", "phi3"),
    "function_calling_qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5", "qwen2"),
    "function_calling_qwen2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5", "qwen2"),
}


def test_the_recipes_cover_both_tasks_and_the_papers_models():
    assert RECIPES == sorted(RECIPE_MODELS)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves_estimator_agent_loop_and_reward(name, monkeypatch):
    cfg = compose_recipe(name)
    task = "countdown" if name.startswith("countdown_") else "function_calling"
    model_path, family, model_type = RECIPE_MODELS[name]
    assert cfg.actor_rollout_ref.model.path == model_path

    # The plugin module the recipe names is what registers the estimator; verl's standalone weight receiver imports
    # it too (separate_async), where it looks up the gloo checkpoint engine and the hf rollout.
    importlib.import_module(cfg.actor_rollout_ref.model.external_lib)
    assert cfg.actor_rollout_ref.rollout.checkpoint_engine.custom_backend_module == "verl_reflect.register"
    assert cfg.algorithm.adv_estimator == "reflect_grpo"
    assert get_adv_estimator_fn(cfg.algorithm.adv_estimator) is compute_reflect_grpo_advantage
    assert omega_conf_to_dataclass(cfg.algorithm).adv_estimator == "reflect_grpo"

    # verl turns these sections into dataclasses at start: unknown keys would crash there.
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.name == "vllm" and rollout.n > 1
    assert rollout.agent.default_agent_loop == "reflect_retry"
    assert cfg.data.train_files == "/data/train.parquet"
    assert cfg.data.max_response_length == rollout.response_length

    # The trainer the CPU runs exercise (tests/test_trainer.py), and checkpoints `verl-reflect eval` can load.
    assert cfg.trainer.v1.trainer_mode == "reflect_sync"
    assert "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents

    # Batch arithmetic on the declared GPUs: rows per step split over the world, mini-batches over micro-batches.
    world_size = cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes
    rows_per_step = cfg.data.train_batch_size * rollout.n
    rows_per_mini_batch = cfg.actor_rollout_ref.actor.ppo_mini_batch_size * rollout.n
    assert cfg.data.train_batch_size % cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 0
    assert rows_per_step % world_size == 0 and rows_per_mini_batch % world_size == 0
    assert (rows_per_mini_batch // world_size) % cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 0
    assert world_size % rollout.tensor_model_parallel_size == 0

    # The agent-loop YAML is read and instantiated the way verl's AgentLoopWorker does it.
    monkeypatch.chdir(REPO)
    entries = OmegaConf.load(rollout.agent.agent_loop_config_path)
    (entry,) = [e for e in entries if e.name == rollout.agent.default_agent_loop]

    async def build(entry):
        return hydra.utils.instantiate(
            config=entry,
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=None,
            # The model's own chat template and model_type: the loop checks at start it can follow the template.
            tokenizer=family_tokenizer(family),
            processor=None,
            hf_model_type=model_type,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([]),
        )

    agent_loop = asyncio.run(build(entry))
    assert isinstance(agent_loop, ReflectRetryAgentLoop)
    # verl's Qwen builder for qwen2; for the others, user turns come from the template (checked exact at start).
    assert (agent_loop.turn_boundary is None) == (model_type == "qwen2")
    assert agent_loop.attempt == "generate"  # validation rows measure first tries
    assert agent_loop.max_reflections == entry.max_reflections == 1
    assert agent_loop.reflection_prompt == entry.reflection_prompt
    assert agent_loop.response_length == cfg.data.max_response_length
    # Failure-set rows (build-failures' agent_name) replay their stored attempt, with every other setting shared.
    (failures_entry,) = [e for e in entries if e.name == data.FAILURES_AGENT_NAME]
    replaying = asyncio.run(build(failures_entry))
    assert replaying.attempt == "replay"
    settings = ("reflection_prompt", "retry_prompt", "max_reflections", "max_attempt_tokens", "max_reflection_tokens")
    assert [getattr(replaying, name) for name in settings] == [getattr(agent_loop, name) for name in settings]
    assert {e.name for e in entries} == {data.AGENT_NAME, data.FAILURES_AGENT_NAME}
    # Attempt, reflection and retry at their caps, plus the two user turns, fit the response budget.
    assert 2 * entry.max_attempt_tokens + entry.max_reflection_tokens + 256 <= agent_loop.response_length

    # verl's reward-function loader finds the dispatching compute_score and it scores this task.
    reward_fn = get_custom_reward_fn(cfg)
    if task == "countdown":
        sample = ("<answer> (1 + 2) * 3 </answer>", '{"target": 9, "numbers": [1, 2, 3]}')
    else:
        sample = (
            '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>',
            '[{"name": "f", "arguments": {"x": 1}}]',
        )
    assert reward_fn(data_source=task, solution_str=sample[0], ground_truth=sample[1], extra_info={}) == 1.0


def test_a_launch_without_training_data_stops_and_says_what_to_set():
    # Regression: the recipes once said `train_files: ???`, which OmegaConf drops when merging over verl's own
    # default, so a launch without data.train_files went on with verl's GSM8K paths. Composed and resolved as
    # main_ppo composes and resolves it; that main_ppo's process has the resolver is the test below.
    cfg = recipe.compose_unresolved(REPO / "recipes", RECIPES[0], ["data.val_files=/data/test.parquet"])
    assert "gsm8k" not in OmegaConf.to_yaml(cfg.data).lower()
    with pytest.raises(
        InterpolationResolutionError, match=r"data\.train_files is not set: add data\.train_files=<path> to the command"
    ):
        OmegaConf.resolve(cfg)


def test_the_readme_training_command_composes():
    # `--cfg job --resolve` makes verl's own entry point compose, resolve (the recipes' resolvers are registered in
    # its process by `import verl`) and print the config, then exit before Ray starts.
    name = RECIPES[0]
    result = subprocess.run(
        main_ppo_command(name, [*DATA, "--cfg", "job", "--resolve"]),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = OmegaConf.create(result.stdout)
    assert printed.algorithm.adv_estimator == "reflect_grpo"
    assert printed.actor_rollout_ref.rollout.agent.default_agent_loop == "reflect_retry"
    assert printed.actor_rollout_ref.model.external_lib == "verl_reflect.register"
    assert printed.data.train_files == "/data/train.parquet"  # the required-value resolver, resolved in main_ppo


class _AnswerServer:
    """Answers every turn with the same text: enough to see which turns were generated."""

    def __init__(self, tokenizer, text: str):
        self.ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        self.calls = 0

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.calls += 1
        return TokenOutput(token_ids=self.ids, stop_reason="completed")


def test_eval_and_build_failures_generate_with_the_recipe_agent_loop(tiny_model_dir, tiny_tokenizer):
    # --recipe brings the recipe's reflect_retry entry, never attempt: replay (first tries are measured), even on a
    # failure-set row.
    args = evaluate.build_parser().parse_args(["--recipe", "countdown_qwen2.5-1.5b", "--model", str(tiny_model_dir)])
    loop_recipe = loop.load_recipe(args, loop.validation_sampling)
    assert loop_recipe.entry.max_attempt_tokens == 640
    (spec,) = run_args.resolve_models([args.model], loop_recipe)
    server = _AnswerServer(tiny_tokenizer, "<answer> (1 + 2) * 3 </answer>")
    model_runner = runner.Runner(spec, server, loop_recipe)
    stored = {"token_ids": [5, 6], "text": "never replayed", "model": "m", "sampling": {}}
    row = {
        **data.countdown_rows(1, seed=0, split="train")[0],
        "reward_model": {"style": "rule", "ground_truth": '{"target": 9, "numbers": [1, 2, 3]}'},
        "agent_name": data.FAILURES_AGENT_NAME,
        data.FAILED_ATTEMPTS: [stored],
    }
    record = asyncio.run(model_runner.trajectory(row, {"temperature": 0.0}))
    assert server.calls == 1 and record["first_try_correct"] is True
    assert record["turns"][0]["text"] == "<answer> (1 + 2) * 3 </answer>"


def _trainer_loop(name: str, overrides: list[str]):
    """The loop verl's AgentLoopWorker builds for a validation row of ``name`` composed with ``overrides``:
    its config, model, tokenizer, dataset class and agent-loop registry, as in AgentLoopWorker.__init__."""
    from verl.utils.dataset.rl_dataset import get_dataset_class
    from verl.utils.import_utils import resolve_config_path
    from verl.workers.config import HFModelConfig

    cfg = compose_recipe(name, overrides)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model, dataclass_type=HFModelConfig)
    registry = {e.name: e for e in OmegaConf.load(resolve_config_path(rollout.agent.agent_loop_config_path))}
    sampling = {  # AgentLoopWorker.generate_sequences, validate=True
        "temperature": rollout.val_kwargs.temperature,
        "top_p": rollout.val_kwargs.top_p,
        "top_k": rollout.val_kwargs.top_k,
        "repetition_penalty": 1.0,
        "logprobs": rollout.calculate_log_probs,
    }

    async def build():
        return hydra.utils.instantiate(
            config=registry[rollout.agent.default_agent_loop],
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=None,
            tokenizer=model.tokenizer,
            processor=model.processor,
            hf_model_type=model.hf_config.model_type,
            dataset_cls=get_dataset_class(cfg.data),
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([]),
        )

    return asyncio.run(build()), sampling


def _eval_loop(argv: list[str]):
    """The loop ``verl-reflect eval <argv>`` runs, and its sampling params."""
    args = evaluate.build_parser().parse_args(argv)
    loop_recipe = loop.load_recipe(args, loop.validation_sampling)
    (spec,) = run_args.resolve_models([args.model], loop_recipe)
    model_runner = runner.Runner(spec, None, loop_recipe)

    async def build():
        return model_runner.build_loop(None)

    return asyncio.run(build()), loop_recipe.sampling


def _fields(loop) -> dict:
    """Every attribute of a built loop, as comparable values; the server and the event loop are per run."""
    fields = {}
    for key, value in vars(loop).items():
        if key in ("server_manager", "loop"):
            continue
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value)
        elif key in ("tokenizer", "continuous_token_builder", "turn_boundary") and value is not None:
            value = (type(value).__name__, getattr(value, "name_or_path", None))
        fields[key] = value
    return fields


@pytest.mark.parametrize("name", ["countdown_qwen2.5-1.5b", "function_calling_phi3.5-mini", "countdown_tiny_cpu"])
def test_eval_builds_the_loop_the_trainer_builds(name, tiny_model_dir, monkeypatch):
    """``eval --recipe X`` and verl's AgentLoopWorker under ``main_ppo --config-name X``: the same loop, field by
    field (the whole trainer config included), and the same validation sampling params."""
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))
    monkeypatch.chdir(REPO)  # the recipes name their agent-loop YAML relative to the launch directory
    overrides = [*DATA, "actor_rollout_ref.rollout.response_length=300"]
    model = [] if name == "countdown_tiny_cpu" else [f"actor_rollout_ref.model.path={tiny_model_dir}"]
    trainer_loop, trainer_sampling = _trainer_loop(name, overrides + model)
    eval_argv = ["--recipe", name, *overrides]
    if name != "countdown_tiny_cpu":  # the tiny recipe's model path is the tiny model already
        eval_argv += ["--model", str(tiny_model_dir)]
    eval_loop, eval_sampling = _eval_loop(eval_argv)

    assert type(eval_loop) is type(trainer_loop) is ReflectRetryAgentLoop
    trainer_fields, eval_fields = _fields(trainer_loop), _fields(eval_loop)
    assert {"config", "rollout_config", "data_config", "reflection_prompt", "max_attempt_tokens"} <= eval_fields.keys()
    assert eval_fields.keys() == trainer_fields.keys()
    for key in trainer_fields:
        assert eval_fields[key] == trainer_fields[key], key
    assert eval_sampling == trainer_sampling
    # The settings that matter are really there (not two equal defaults).
    assert eval_loop.response_length == 300 and eval_loop.attempt == "generate"
    assert eval_loop.tokenizer.name_or_path == str(tiny_model_dir)
    if name != "countdown_tiny_cpu":
        assert eval_loop.max_attempt_tokens in (640, 512)
    else:
        assert (eval_loop.max_attempt_tokens, eval_loop.max_reflection_tokens) == (32, 24)


def header_command(recipe_name: str) -> list[str]:
    """The ``main_ppo`` launch command in the recipe's header comment, as a shell run from the repository's root
    would split it."""
    header = []
    for line in (REPO / "recipes" / f"{recipe_name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    start = next(i for i, line in enumerate(header) if "verl.trainer.main_ppo" in line)
    command = ""
    for line in header[start:]:
        command += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command.replace("$PWD", str(REPO)))


@pytest.mark.parametrize("name", [*RECIPES, "countdown_tiny_cpu"])
def test_each_recipes_header_command_launches_it(name, monkeypatch, tiny_default):
    argv = header_command(name)
    argv = argv[argv.index("verl.trainer.main_ppo") + 1 :]
    # Hydra resolves a relative --config-path against verl's package, not the shell's directory.
    assert argv[:4] == ["--config-path", str(REPO / "recipes"), "--config-name", name]
    overrides = argv[4:]
    assert {o.split("=", 1)[0] for o in overrides} >= {"data.train_files", "data.val_files"}
    monkeypatch.chdir(REPO)
    cfg = recipe.compose_unresolved(REPO / "recipes", name, overrides)
    OmegaConf.resolve(cfg)
    assert cfg.algorithm.adv_estimator == "reflect_grpo"
    assert Path(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path).is_file()  # from the launch directory
