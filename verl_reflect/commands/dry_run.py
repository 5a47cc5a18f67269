"""``verl-reflect dry-run``: check a recipe on a laptop CPU before GPU time is spent.

    verl-reflect dry-run --config-name <recipe> [hydra overrides] [--data their.parquet] [--rows N]

The recipe is composed exactly as ``python -m verl.trainer.main_ppo`` composes it (same search path, same
overrides), then checked in two parts:

- static: verl's own config validation and dataclass conversion, batch arithmetic for the declared GPU count,
  the response budget against the agent loop's turn caps, the agent-loop config, the estimator, the reward
  function, the model's largest tensor against vLLM's weight-sync bucket (read from file headers), a verifier for
  every ``data_source``, the parquet's columns and types, and prompt lengths under the recipe's tokenizer where it
  is available locally (never downloaded);
- dynamic: one real step of ``main_ppo`` on CPU with the recipe unchanged except what must change to run there
  (the embedded tiny model, the ``hf`` rollout, one process, a few rows of the data).

One line per check, then what the real run would do on its GPUs. Exit 0 only if every check passed.
This module is the command; the checks are in ``recipe_checks`` (the config), ``data_checks`` (the data) and
``cpu_step`` (the trainer step).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from verl_reflect import resolvers
from verl_reflect.commands import config_checks, data_checks, trainer_step_check
from verl_reflect.commands.config_checks import FAIL, Check, DryRun, failed, skipped
from verl_reflect.commands.errors import ArgumentParser, UserError, one_line, positive_int
from verl_reflect.commands.recipe import RECIPES_DIR, compose_unresolved, override_key, parse_override, recipe_names


def compose_recipe(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    """main_ppo's config, unresolved. Not ``recipe.compose``: the dry run keeps the user's data files, needs every
    plugin registered (the estimator, the loops), and names the folder in its errors as main_ppo's --config-path."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import verl_reflect.register  # noqa: F401  (the ${verl_reflect.tiny_model:} resolver, estimator, loops)

    if not (config_dir / f"{config_name}.yaml").is_file():
        names = recipe_names(config_dir)
        raise UserError(f"no recipe {config_name!r} in {config_dir} (recipes there: {', '.join(names) or 'none'})")
    try:
        return compose_unresolved(config_dir, config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"cannot compose {config_name}: {one_line(err)}") from None


def gpu_summary(cfg: DictConfig) -> str:
    """What the real run does per step on its GPUs."""
    try:
        plan = config_checks.batch_plan(cfg)
        prompt, response = int(cfg.data.max_prompt_length), int(cfg.data.max_response_length)
    except Exception:
        return "on GPUs: cannot tell (batch settings missing)"
    micro = plan.mini_rows_per_gpu / plan.micro_per_gpu if plan.micro_per_gpu else float("nan")
    return (
        f"on GPUs: world size {plan.world_size}; {plan.rows} rows per step ({plan.prompts} prompts x {plan.group}); "
        f"at most {plan.rows * (prompt + response):,} tokens per step ({plan.rows} x ({prompt} + {response})); "
        f"{micro:g} micro-batch(es) of {plan.micro_per_gpu} per GPU per mini-batch"
    )


def guarded(check, *args) -> Check:
    """Run one check; a crash inside it is a failed line naming the check, never a traceback."""
    try:
        return check(*args)
    except Exception as err:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return failed(name, f"the check itself failed: {type(err).__name__}: {one_line(err)}", "report this to us")


def static_checks(recipe: DryRun) -> list[Check]:
    why_no_tokenizer = data_checks.load_tokenizer(recipe)
    checks = [
        guarded(check, recipe)
        for check in (
            config_checks.check_verl_validation,
            config_checks.check_batch_arithmetic,
            config_checks.check_estimator,
            config_checks.check_agent_loop_config,  # before the budget and agent-name checks: they read its entries
            config_checks.check_response_budget,
            config_checks.check_reward_function,
            config_checks.check_weight_sync_bucket,
            data_checks.check_data_columns,
        )
    ]
    if checks[-1].mark == FAIL:  # the row checks below read the columns this one found missing or mistyped
        return checks
    return [
        *checks,
        guarded(data_checks.check_verifiers, recipe),
        guarded(data_checks.check_agent_names, recipe),
        guarded(data_checks.check_prompt_lengths, recipe, why_no_tokenizer),
    ]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="verl-reflect dry-run",
        description=__doc__.split("\n\n")[0],
        epilog="Anything else is a hydra override, as main_ppo takes it (key=value, +key=value).",
    )
    parser.add_argument("--config-name", required=True, help="the recipe, as main_ppo's --config-name")
    parser.add_argument(
        "--config-path", type=Path, default=RECIPES_DIR, help="its folder (default: this repo's recipes/)"
    )
    parser.add_argument("--data", type=Path, help="a training parquet to check and step on (default: generated rows)")
    parser.add_argument("--rows", type=positive_int, default=2, help="prompts in the CPU step (default 2)")
    parser.add_argument("--static-only", action="store_true", help="skip the CPU trainer step")
    parser.add_argument("--step-timeout", type=positive_int, default=1200, help="seconds for the CPU step")
    parser.add_argument(
        "--step-rollout",
        choices=trainer_step_check.ROLLOUTS,
        help="the CPU step's rollout: the recipe's own vLLM rollout (the default where vLLM is installed) or hf",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    # The report is the output: verl's import-time notices (no accelerator, optional engines missing, critic
    # disabled) say nothing about the recipe.
    logging.getLogger("verl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        raise UserError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    config_dir = args.config_path.resolve()
    if args.data is not None:  # the data the run will train on: verl must see it too
        args.data = args.data.resolve()
        overrides = [o for o in overrides if override_key(o) != "data.train_files"] + [f"data.train_files={args.data}"]
    cfg = compose_recipe(config_dir, args.config_name, overrides)
    given = [str(parse_override(o).value()) for o in overrides if override_key(o) == "data.train_files"]
    if args.data is None and given:  # data.train_files on the command line instead of --data: check that file
        args.data = Path(given[-1]).absolute()
    for key in ("data.train_files", "data.val_files"):  # a recipe that leaves them to the command still validates
        if OmegaConf.is_missing(cfg, key) or resolvers.is_required(cfg, key):
            OmegaConf.update(cfg, key, str(args.data or "dry-run-generated.parquet"))
    recipe = DryRun(config_dir, args.config_name, overrides, cfg, data_path=args.data)
    try:
        OmegaConf.resolve(recipe.cfg)
    except Exception as err:
        raise UserError(f"cannot resolve {args.config_name}: {one_line(err)}") from None
    data_checks.read_data(recipe, args.rows)

    print(f"dry run of {args.config_name} ({config_dir})")
    start = time.monotonic()
    checks = static_checks(recipe)
    for check in checks:
        print(check.line(), flush=True)
    if args.static_only:
        step = skipped("trainer step", "skipped (--static-only)")
    elif any(check.mark == FAIL for check in checks):
        step = skipped("trainer step", "skipped (fix the failures above first)")
    else:
        print("  (one main_ppo step on CPU: about 2 minutes on 2 cores)", flush=True)
        step = guarded(trainer_step_check.check_trainer_step, recipe, args.rows, args.step_timeout, args.step_rollout)
    checks.append(step)
    print(step.line())
    print(gpu_summary(recipe.cfg))
    failures = sum(check.mark == FAIL for check in checks)
    verdict = "passed" if not failures else f"{failures} check(s) failed"
    print(f"{verdict} in {time.monotonic() - start:.0f} s")
    return 1 if failures else 0
