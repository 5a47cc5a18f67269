"""``python -m verl_reflect.data`` (and ``verl-reflect data``): write Countdown / hidden-word / addition /
function-calling parquet files."""

from __future__ import annotations

from pathlib import Path

from verl_reflect.commands.errors import ArgumentParser, UserError, positive_int
from verl_reflect.data.addition import addition_splits
from verl_reflect.data.countdown import countdown_splits
from verl_reflect.data.function_calling import SAMPLE_XLAM, function_calling_rows, load_xlam
from verl_reflect.data.hidden_word import hidden_word_splits
from verl_reflect.data.rows import write_parquet


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m verl_reflect.data", description="Write verl RL parquet files.")
    commands = parser.add_subparsers(dest="command", required=True)

    countdown = commands.add_parser("countdown", help="generate seeded, solvable Countdown problems")
    countdown.add_argument("--out-dir", required=True, type=Path, help="writes train.parquet and test.parquet here")
    countdown.add_argument("--train-size", type=positive_int, default=2000)
    countdown.add_argument("--test-size", type=positive_int, default=200)
    countdown.add_argument("--seed", type=int, default=0)

    words = commands.add_parser("hidden-word", help="generate hidden-word prompts (the CPU demo's learnable task)")
    words.add_argument("--out-dir", required=True, type=Path, help="writes train.parquet and test.parquet here")
    words.add_argument("--train-size", type=positive_int, default=192)
    words.add_argument("--test-size", type=positive_int, default=128)
    words.add_argument("--seed", type=int, default=0)

    addition = commands.add_parser("addition", help="generate two-digit sums (the real-model tier's task)")
    addition.add_argument("--out-dir", required=True, type=Path, help="writes train.parquet and test.parquet here")
    addition.add_argument("--train-size", type=positive_int, default=256)
    addition.add_argument("--test-size", type=positive_int, default=64)
    addition.add_argument("--seed", type=int, default=0)

    fc = commands.add_parser("function-calling", help="convert an xlam-function-calling-60k JSON/JSONL file")
    fc.add_argument("--input", required=True, type=Path, help=f"e.g. {SAMPLE_XLAM}")
    fc.add_argument("--out", required=True, type=Path, help="the .parquet file to write")
    fc.add_argument("--split", default="train", help="stored in extra_info.split")

    args = parser.parse_args(argv)
    if args.command == "countdown":
        train, test = countdown_splits(args.train_size, args.test_size, seed=args.seed)
        outputs = {args.out_dir / "train.parquet": train, args.out_dir / "test.parquet": test}
    elif args.command == "hidden-word":
        train, test = hidden_word_splits(args.train_size, args.test_size, seed=args.seed)
        outputs = {args.out_dir / "train.parquet": train, args.out_dir / "test.parquet": test}
    elif args.command == "addition":
        train, test = addition_splits(args.train_size, args.test_size, seed=args.seed)
        outputs = {args.out_dir / "train.parquet": train, args.out_dir / "test.parquet": test}
    else:
        if args.out.suffix != ".parquet":  # verl's RLHFDataset picks the reader by file extension
            raise UserError(f"--out must end in .parquet, got {args.out}")
        outputs = {args.out: function_calling_rows(load_xlam(args.input), split=args.split)}
    for path, rows in outputs.items():  # written only after every input was checked
        write_parquet(rows, path)
        print(f"wrote {path} ({len(rows)} rows)")
    return 0
