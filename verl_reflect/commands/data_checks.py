"""The data the dry run checks and steps on, and its static checks against the recipe.

The data is the user's parquet (``--data`` or ``data.train_files``), or without one a few generated rows of the
recipe's task. The checks: the parquet's columns and arrow types, a verifier for every ``data_source``, an
agent-loop entry for every ``agent_name``, and prompt lengths under the recipe's tokenizer.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from verl_reflect.commands.config_checks import Check, DryRun, failed, passed, skipped
from verl_reflect.commands.errors import UserError, one_line

# -----------------------------------------------------------------------------
# The data: the user's parquet, or generated rows of the recipe's task.


def read_data(recipe: DryRun, rows: int) -> None:
    """The user's parquet (all rows: every data_source and prompt is checked), or generated rows of the task."""
    if recipe.data_path is None:
        from verl_reflect import data

        recipe.rows = data.task_rows(OmegaConf.select(recipe.cfg, "verl_reflect.task"), rows, split="train")
        return
    if not recipe.data_path.is_file():
        raise UserError(f"{recipe.data_path}: no such file (the training data: --data or data.train_files)")
    try:
        recipe.rows = pq.read_table(recipe.data_path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{recipe.data_path}: not a readable parquet file ({one_line(err)})") from None


# -----------------------------------------------------------------------------
# The checks, one function each.


def check_data_columns(recipe: DryRun) -> Check:
    """The columns and arrow types verl's RLHFDataset and the agent loop read."""
    name = "data columns"
    if recipe.data_path is None:
        task = OmegaConf.select(recipe.cfg, "verl_reflect.task")
        return passed(name, f"no --data: {len(recipe.rows)} generated {task} rows (pass --data for yours)")
    try:
        schema = pq.read_schema(recipe.data_path)
    except (pa.ArrowException, OSError) as err:
        return failed(name, f"{recipe.data_path}: not a readable parquet file ({one_line(err)})", "--data <a parquet>")
    problems = column_problems(schema)
    if problems:
        column, problem, fix = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return failed(name, f"{recipe.data_path.name}: {column} {problem}{more}", fix)
    return passed(name, f"{recipe.data_path.name}: {len(recipe.rows)} rows, columns and types as verl reads them")


def column_problems(schema: pa.Schema) -> list[tuple[str, str, str]]:
    """(column, problem, fix) for every column verl needs that is missing or of the wrong type."""
    write = "write it with `verl-reflect data` / `build-failures`, or as verl_reflect.data._row does"
    problems = []
    for column in ("prompt", "data_source", "reward_model", "extra_info"):
        if column not in schema.names:
            problems.append((column, "is missing", f"add a {column!r} column ({write})"))
    types = {f.name: f.type for f in schema}
    prompt = types.get("prompt")
    if prompt is not None and not (
        pa.types.is_list(prompt)
        and pa.types.is_struct(prompt.value_type)
        and {"role", "content"} <= {f.name for f in prompt.value_type}
    ):
        problems.append(("prompt", f"is {prompt}, not a list of {{role, content}} messages", "chat messages"))
    for column in ("data_source", "agent_name"):
        if column in types and not pa.types.is_string(types[column]) and not pa.types.is_large_string(types[column]):
            problems.append((column, f"is {types[column]}, not a string", f"write {column} as strings"))
    reward_model = types.get("reward_model")
    if reward_model is not None and not (
        pa.types.is_struct(reward_model) and "ground_truth" in {f.name for f in reward_model}
    ):
        problems.append(("reward_model", f"is {reward_model}, not a struct with ground_truth", "{style, ground_truth}"))
    extra_info = types.get("extra_info")
    if extra_info is not None and not pa.types.is_struct(extra_info):
        problems.append(("extra_info", f"is {extra_info}, not a struct", "write extra_info as {index, ...}"))
    return problems


def check_verifiers(recipe: DryRun) -> Check:
    """Every data_source in the data has a verifier under the recipe's reward dispatch (reward_fns)."""
    name = "verifiers"
    sources = sorted({str(row.get("data_source")) for row in recipe.rows})
    if not sources:
        return skipped(name, "skipped (no data_source column to check)")
    if str(recipe.cfg.reward.custom_reward_function.path) != "pkg://reward_fns":
        return skipped(name, "skipped (the recipe's reward function is not verl-reflect's data_source dispatch)")
    import reward_fns
    from verl_reflect.agent_loop import task_packages

    for source in sources:
        try:
            reward_fns.get_compute_score(source, task_packages(recipe.cfg))
        except ValueError as err:
            message = one_line(err)
            detail, _, fix = message.partition(": add ")
            return failed(name, detail, f"add {fix}" if fix else "add a reward module for it")
    return passed(name, f"{', '.join(sources)}: each has a compute_score")


def check_agent_names(recipe: DryRun) -> Check:
    """Every row's agent_name is an entry of the agent-loop config (verl looks rows up by it)."""
    name = "agent names"
    used = sorted({str(row["agent_name"]) for row in recipe.rows if row.get("agent_name")})
    if not recipe.agent_loops:
        return skipped(name, "skipped (no agent-loop config)")
    known = {str(e["name"]) for e in recipe.agent_loops}
    missing = [n for n in used if n not in known]
    if missing:
        return failed(
            name,
            f"rows name agent loop(s) {', '.join(missing)} that the agent-loop YAML lacks",
            f"add an entry named {missing[0]!r} to the agent-loop YAML",
        )
    default = recipe.cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    return passed(name, f"{', '.join(used) or f'none set: every row runs {default}'}")


def load_tokenizer(recipe: DryRun) -> str:
    """The recipe's tokenizer if it is on this machine (never downloaded); returns why not when it is not.
    As verl picks it: ``actor_rollout_ref.model.tokenizer_path``, else the model's own."""
    from transformers import AutoTokenizer

    model = recipe.cfg.actor_rollout_ref.model
    path = str(model.tokenizer_path or model.path)
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        recipe.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return ""
    except Exception:
        return f"tokenizer {path} not available offline"
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def check_prompt_lengths(recipe: DryRun, why_no_tokenizer: str) -> Check:
    """Each prompt, rendered by the chat template as verl renders it, against data.max_prompt_length."""
    name = "prompt lengths"
    if recipe.tokenizer is None:
        return skipped(name, f"skipped ({why_no_tokenizer})")
    limit = int(recipe.cfg.data.max_prompt_length)
    kwargs = recipe.cfg.data.get("apply_chat_template_kwargs") or {}
    kwargs = OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else dict(kwargs)
    tokenizer = recipe.tokenizer
    lengths = [
        len(
            tokenizer.encode(
                tokenizer.apply_chat_template(
                    list(row["prompt"]), add_generation_prompt=True, tokenize=False, **kwargs
                ),
                add_special_tokens=False,
            )
        )
        for row in recipe.rows
    ]
    longest = max(lengths)
    over = sum(length > limit for length in lengths)
    if over:
        consequence = "dropped silently" if recipe.cfg.data.filter_overlong_prompts else "an error at start"
        return failed(
            name,
            f"{over} of {len(lengths)} prompts exceed data.max_prompt_length {limit} (longest {longest}): "
            f"{consequence}",
            f"data.max_prompt_length={longest} or shorter prompts",
        )
    return passed(name, f"longest of {len(lengths)} prompts is {longest} tokens <= {limit}")
