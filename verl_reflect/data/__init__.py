"""Training data for verl-reflect: verl RL parquet files for Countdown and function calling.

One module per task (``countdown``, ``function_calling``: prompts and ground truths), ``rows`` (the row schema and
parquet I/O every task shares) and ``cli`` (``python -m verl_reflect.data``). The names are re-exported here.

    python -m verl_reflect.data countdown --out-dir data/countdown [--train-size 2000] [--test-size 200] [--seed 0]
    python -m verl_reflect.data function-calling --input xlam.json --out data/fc/train.parquet [--split train]

Every row has the columns verl's ``RLHFDataset`` reads (see ``verl/utils/dataset/rl_dataset.py``):

    prompt        list of chat messages {"role", "content"}
    data_source   "countdown" or "function_calling" (picks the verifier)
    reward_model  {"style": "rule", "ground_truth": <JSON string>}
    extra_info    {"index": 0..n-1, "split": "train" | "test" | ...}
    agent_name    "reflect_retry" (verl runs this agent loop for the row)

The ground truth is always a JSON string, whatever the task, so files of different tasks share one
parquet schema and can be mixed in one training run.

A failure set written by ``verl-reflect build-failures`` (``verl_reflect/commands/build_failures.py``) has the same
columns, ``agent_name`` set to ``reflect_retry_failures``, ``extra_info.source_index`` (the row's index in
the input) and one more column, the failed first attempts the loop can replay (``attempt: replay``):

    failed_attempts  list of {
        token_ids  list<int64>: the attempt's ids exactly as generated (with the end-of-turn token it stopped on)
        text       the same ids decoded (special tokens skipped), for people to read
        model      the model directory that generated it
        sampling   {temperature, top_p, top_k, repetition_penalty, max_attempt_tokens}
    }   in sampling order; the loop replays the first
"""

from verl_reflect.data.addition import ADDITION_SOURCE, addition_splits
from verl_reflect.data.cli import main
from verl_reflect.data.countdown import (
    COUNTDOWN_MAX_STALL,
    COUNTDOWN_MAX_TARGET,
    COUNTDOWN_SYSTEM,
    COUNTDOWN_USER,
    countdown_problems,
    countdown_rows,
    countdown_splits,
)
from verl_reflect.data.function_calling import FUNCTION_CALLING_SYSTEM, SAMPLE_XLAM, function_calling_rows, load_xlam
from verl_reflect.data.hidden_word import (
    HIDDEN_WORD_SOURCE,
    HIDDEN_WORDS,
    hidden_word_splits,
)
from verl_reflect.data.rows import (
    AGENT_NAME,
    FAILED_ATTEMPTS,
    FAILED_ATTEMPTS_TYPE,
    FAILURES_AGENT_NAME,
    REQUIRED_COLUMNS,
    make_row,
    read_rows,
    write_parquet,
)
from verl_reflect.data.tasks import TASKS, task_rows

__all__ = [
    "ADDITION_SOURCE",
    "addition_splits",
    "HIDDEN_WORD_SOURCE",
    "HIDDEN_WORDS",
    "hidden_word_splits",
    "TASKS",
    "task_rows",
    "AGENT_NAME",
    "COUNTDOWN_MAX_STALL",
    "COUNTDOWN_MAX_TARGET",
    "COUNTDOWN_SYSTEM",
    "COUNTDOWN_USER",
    "FAILED_ATTEMPTS",
    "FAILED_ATTEMPTS_TYPE",
    "FAILURES_AGENT_NAME",
    "FUNCTION_CALLING_SYSTEM",
    "REQUIRED_COLUMNS",
    "SAMPLE_XLAM",
    "countdown_problems",
    "countdown_rows",
    "countdown_splits",
    "function_calling_rows",
    "load_xlam",
    "main",
    "make_row",
    "read_rows",
    "write_parquet",
]
