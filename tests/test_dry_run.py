"""``verl-reflect dry-run``: every shipped recipe passes, and each class of mistake a shared recipe can carry is caught.

The seeded mistakes run the static checks in this process (``--static-only``: none needs the trainer to show).
The whole dry run with its real ``main_ppo`` step runs in ``tests/test_wheel.py``, on a shipped CPU recipe copied
into a folder of its own, from an installed wheel (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from verl_reflect import data
from verl_reflect.commands import cli, config_checks, trainer_step_check
from verl_reflect.commands import recipe as recipe_mod

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("_"))


def dry_run(capsys, *args: str) -> tuple[int, list[str]]:
    """``verl-reflect dry-run --static-only <args>`` in this process: exit code and report lines."""
    code = cli.main(["dry-run", "--static-only", *args])
    return code, capsys.readouterr().out.splitlines()


def line_of(lines: list[str], check: str) -> str:
    (line,) = [line for line in lines if line[2:].startswith(f"{check}:")]
    return line


def assert_caught(code: int, lines: list[str], check: str, *fix_words: str) -> None:
    """The named check failed with a fix naming ``fix_words``, the dry run exits non-zero, no other check crashed."""
    line = line_of(lines, check)
    assert code == 1
    assert line.startswith("✗ ") and " — fix: " in line, line
    fix = line.split(" — fix: ", 1)[1]
    for word in fix_words:
        assert word in fix, line
    assert not any("the check itself failed" in other for other in lines), lines


@pytest.fixture(autouse=True)
def from_the_repo(monkeypatch, tiny_model_dir):
    # A relative agent-loop path is read from the launch directory, as main_ppo reads it.
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))


def write_rows(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("recipe", RECIPES)
def test_static_checks_pass_for_every_shipped_recipe(capsys, recipe, tiny_default):
    code, lines = dry_run(capsys, "--config-name", recipe)
    assert code == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith("✗")]
    assert lines[-2].startswith("on GPUs: world size ")


def test_the_summary_says_what_the_gpu_run_does(capsys, monkeypatch):
    import transformers

    def not_downloaded(path, **kwargs):  # what from_pretrained raises offline for a model not in the HF cache
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {path}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", not_downloaded)
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b")
    assert code == 0
    # 64 prompts x 8 = 512 rows over 8 GPUs; a mini-batch of 32 x 8 = 256 rows is 32 per GPU, micro-batches of 8.
    assert lines[-2] == (
        "on GPUs: world size 8; 512 rows per step (64 prompts x 8); "
        "at most 1,572,864 tokens per step (512 x (1024 + 2048)); 4 micro-batch(es) of 8 per GPU per mini-batch"
    )
    skipped = "- prompt lengths: skipped (tokenizer Qwen/Qwen2.5-1.5B-Instruct not available offline)"
    assert line_of(lines, "prompt lengths") == skipped


def test_a_wrong_agent_loop_path_is_caught(capsys):
    code, lines = dry_run(
        capsys,
        "--config-name",
        "countdown_qwen2.5-1.5b",
        "actor_rollout_ref.rollout.agent.agent_loop_config_path=recipes/agent_loop/countdown.yaml",
    )
    assert_caught(code, lines, "agent-loop config", "${verl_reflect.recipe_file:agent_loops/countdown.yaml}")


def test_an_estimator_typo_is_caught_and_the_right_name_suggested(capsys):
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", "algorithm.adv_estimator=reflect_grop")
    assert_caught(code, lines, "estimator", "algorithm.adv_estimator=reflect_grpo")


def test_a_data_source_without_a_verifier_is_caught(capsys, tmp_path):
    rows = data.countdown_rows(3, seed=0, split="train")
    rows[1]["data_source"] = "sudoku"
    parquet = write_rows(tmp_path / "train.parquet", rows)
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", "--data", str(parquet))
    assert_caught(code, lines, "verifiers", "reward_fns/sudoku.py")
    assert "'sudoku'" in line_of(lines, "verifiers")


def test_a_batch_that_does_not_divide_over_the_gpus_is_caught(capsys):
    # 64 prompts x 8 = 512 rows do not split over 6 GPUs.
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", "trainer.n_gpus_per_node=6")
    assert_caught(code, lines, "batch arithmetic", "data.train_batch_size")
    assert "512 rows over 6 GPUs: not divisible" in line_of(lines, "batch arithmetic")
    assert "a multiple of 3 (e.g. 66)" in line_of(lines, "batch arithmetic")


def test_a_mini_batch_that_does_not_divide_the_batch_is_caught(capsys):
    code, lines = dry_run(
        capsys, "--config-name", "countdown_qwen2.5-1.5b", "actor_rollout_ref.actor.ppo_mini_batch_size=24"
    )
    assert_caught(code, lines, "batch arithmetic", "actor_rollout_ref.actor.ppo_mini_batch_size")


def test_a_micro_batch_that_does_not_divide_a_gpus_mini_batch_is_caught(capsys):
    # A mini-batch of 32 x 8 rows over 8 GPUs is 32 rows per GPU: micro-batches of 5 do not split it.
    code, lines = dry_run(
        capsys, "--config-name", "countdown_qwen2.5-1.5b", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5"
    )
    assert_caught(code, lines, "batch arithmetic", "ppo_micro_batch_size_per_gpu one of [1, 2, 4, 8, 16, 32]")


def test_a_response_budget_too_small_for_attempt_reflection_and_retry_is_caught(capsys):
    # countdown.yaml caps attempts at 640 and reflections at 384: 640 + 384 + 640 alone exceed 1024.
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", "data.max_response_length=1024")
    assert_caught(code, lines, "response budget", "data.max_response_length=")


def test_a_parquet_missing_a_column_is_caught(capsys, tmp_path):
    rows = [{k: v for k, v in row.items() if k != "reward_model"} for row in data.countdown_rows(2, seed=0, split="t")]
    parquet = write_rows(tmp_path / "train.parquet", rows)
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", "--data", str(parquet))
    assert_caught(code, lines, "data columns", "'reward_model'")
    assert "reward_model is missing" in line_of(lines, "data columns")


def test_a_parquet_column_of_the_wrong_type_is_caught(capsys, tmp_path):
    rows = [{**row, "data_source": 7} for row in data.countdown_rows(2, seed=0, split="train")]
    parquet = write_rows(tmp_path / "train.parquet", rows)
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", "--data", str(parquet))
    assert_caught(code, lines, "data columns", "data_source as strings")


@pytest.mark.parametrize("key", ["path", "tokenizer_path"])
def test_a_prompt_longer_than_max_prompt_length_is_caught(capsys, tiny_model_dir, key):
    # The tiny model's tokenizer is on this machine, so the check runs (the GPU recipes' are skipped offline);
    # verl takes model.tokenizer_path over model.path, and so does the check.
    code, lines = dry_run(
        capsys,
        "--config-name",
        "countdown_qwen2.5-1.5b",
        f"actor_rollout_ref.model.{key}={tiny_model_dir}",
        "data.max_prompt_length=64",
    )
    assert_caught(code, lines, "prompt lengths", "data.max_prompt_length=")
    assert "exceed data.max_prompt_length 64" in line_of(lines, "prompt lengths")


def test_a_recipe_that_does_not_compose_is_one_line_and_exit_2(capsys):
    code = cli.main(["dry-run", "--config-name", "no_such_recipe"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("verl-reflect: error: no recipe 'no_such_recipe'")


def test_the_vllm_step_composes_the_recipes_rollout_on_cpu(tmp_path):
    """What the dry run launches for a vLLM recipe where vLLM's CPU build is installed: the tiny model on the CPU
    platform, the recipe's vLLM rollout with only ``recipes/cpu/vllm.yaml``'s changes, one step of ``rows`` prompts."""
    cfg = recipe_mod.compose("countdown_qwen2.5-7b")
    shipped = config_checks.DryRun(recipe_mod.RECIPES_DIR, "countdown_qwen2.5-7b", [], cfg=cfg)
    overrides = trainer_step_check.step_overrides(shipped, tmp_path / "train.parquet", 2, "vllm")
    step = recipe_mod.compose("countdown_qwen2.5-7b", overrides)
    rollout, recipe_rollout = step.actor_rollout_ref.rollout, cfg.actor_rollout_ref.rollout
    assert rollout.name == "vllm" and rollout.enforce_eager and not rollout.enable_sleep_mode
    for key in ("temperature", "top_p", "enable_prefix_caching", "val_kwargs", "mode", "gpu_memory_utilization"):
        assert rollout[key] == recipe_rollout[key], key
    assert rollout.n == 4 and step.data.train_batch_size == 2 and step.trainer.total_training_steps == 1
    assert step.trainer.device == "cpu" and step.actor_rollout_ref.model.path != cfg.actor_rollout_ref.model.path


def test_a_data_train_files_override_is_the_data_checked(capsys, tmp_path):
    rows = [{**row, "data_source": "sudoku"} for row in data.countdown_rows(2, seed=0, split="train")]
    parquet = write_rows(tmp_path / "train.parquet", rows)
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b", f"data.train_files={parquet}")
    assert_caught(code, lines, "verifiers", "reward_fns/sudoku.py")


def test_the_cpu_step_runs_failure_set_rows_as_plain_rows():
    # Stored attempts are token ids of the recipe's model: the tiny model cannot replay them.
    row = {**data.countdown_rows(1, seed=0, split="train")[0], "agent_name": data.FAILURES_AGENT_NAME}
    row[data.FAILED_ATTEMPTS] = [{"token_ids": [1, 2], "text": "x"}]
    recipe = config_checks.DryRun(REPO, "r", [], cfg=None, rows=[row, row, row])
    (plain,) = trainer_step_check.step_rows(recipe, 1)
    assert plain["agent_name"] == data.AGENT_NAME and data.FAILED_ATTEMPTS not in plain
    assert plain["prompt"] == row["prompt"]


def test_the_cpu_step_takes_what_a_cpu_needs_from_the_platform_group(tmp_path):
    from verl_reflect.commands import recipe as recipe_mod

    cfg = recipe_mod.compose("countdown_qwen2.5-7b")
    shipped = config_checks.DryRun(recipe_mod.RECIPES_DIR, "countdown_qwen2.5-7b", [], cfg=cfg)
    assert trainer_step_check.platform_overrides(shipped) == ["+platform=cpu"]
    # A recipe whose defaults list the group already: Hydra refuses it twice ("appears more than once").
    cpu_recipe = recipe_mod.compose("countdown_tiny_cpu")
    tiny = config_checks.DryRun(recipe_mod.RECIPES_DIR, "countdown_tiny_cpu", [], cfg=cpu_recipe)
    assert trainer_step_check.platform_overrides(tiny) == ["platform=cpu"]
    assert trainer_step_check.step_group(shipped.cfg) == 4  # n=8 capped at platform/cpu.yaml's n
    # The CPU recipe gets the same values from the same file, through its defaults list.
    cpu = recipe_mod.compose("countdown_tiny_cpu")
    with_platform_again = OmegaConf.merge(cpu, OmegaConf.load(trainer_step_check.PLATFORM_DIR / "cpu.yaml"))
    OmegaConf.resolve(with_platform_again)
    assert with_platform_again == cpu
    assert cpu.actor_rollout_ref.rollout.name == "hf" and cpu.trainer.device == "cpu"
    # A recipe from elsewhere finds the group on Hydra's search path: a shipped recipe's copy names the installed
    # recipes there itself; one written without them gets them added.
    (tmp_path / "theirs.yaml").write_text((recipe_mod.RECIPES_DIR / "countdown_qwen2.5-7b.yaml").read_text())
    elsewhere = config_checks.DryRun(tmp_path, "theirs", [], cfg=shipped.cfg)
    assert trainer_step_check.platform_overrides(elsewhere) == ["+platform=cpu"]
    theirs = (tmp_path / "theirs.yaml").read_text().splitlines()
    own = [line for line in theirs if trainer_step_check.SHIPPED_SEARCHPATH not in line]
    (tmp_path / "own.yaml").write_text("\n".join(own) + "\n")
    (tmp_path / "_reflect_grpo.yaml").write_text((recipe_mod.RECIPES_DIR / "_reflect_grpo.yaml").read_text())
    overrides = trainer_step_check.platform_overrides(config_checks.DryRun(tmp_path, "own", [], cfg=shipped.cfg))
    assert overrides == [
        "+platform=cpu",
        f"hydra.searchpath=[pkg://verl.trainer.config,{trainer_step_check.SHIPPED_SEARCHPATH}]",
    ]


@pytest.mark.parametrize(
    "log, error",
    [
        (  # Hydra stops before verl starts: its message, not the import warnings before it
            "/x/verl/workers/engine/__init__.py:30: UserWarning: megatron engine is not available: ImportError()\n"
            "  warnings.warn(...)\n"
            "Could not append to config. An item is already at 'platform'.\n"
            "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n",
            "Could not append to config. An item is already at 'platform'.",
        ),
        (  # verl's exception from its TaskRunner, followed by Ray's shutdown noise and a warning
            "ray.exceptions.RayTaskError(ValueError): ray::TaskRunnerV1.run() (pid=1, ip=1)\n"
            '  File "/x/agent_loop.py", line 9, in run\n'
            "ValueError: attempt=replay: row 3 (countdown) has no stored failed attempt\n"
            "(raylet) [2026-12-07 04:00:00,000 W 1 1] worker pool: stopping workers\n"
            "/x/y.py:1: UserWarning: megatron engine is not available\n",
            "ValueError: attempt=replay: row 3 (countdown) has no stored failed attempt",
        ),
    ],
)
def test_a_failed_trainer_run_names_the_error_that_stopped_it(tmp_path, log, error):
    from verl_reflect.commands.main_ppo import MainPPORun

    (tmp_path / "main_ppo.log").write_text(log)
    assert MainPPORun(1, [], tmp_path, 1.0).last_error() == error


def test_a_reward_fns_of_another_distribution_is_caught(capsys, monkeypatch, tmp_path):
    # reward_fns is a top-level name: one shipped by another package, found first, would score every row.
    (tmp_path / "reward_fns").mkdir()
    (tmp_path / "reward_fns" / "__init__.py").write_text("def compute_score(*args, **kwargs):\n    return 1.0\n")
    for name in [m for m in sys.modules if m == "reward_fns" or m.startswith("reward_fns.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, lines = dry_run(capsys, "--config-name", "countdown_qwen2.5-1.5b")
    line = line_of(lines, "reward function")  # the verifiers check, which needs our dispatch, fails on its own
    assert code == 1 and line.startswith("✗ ") and str(tmp_path / "reward_fns") in line, line
    assert line.endswith("fix: pip install --force-reinstall verl-reflect"), line
