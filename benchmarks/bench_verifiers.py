"""Verdicts per second of each verifier on one core, on a mix of ordinary, long and hostile answers.

Reports verdicts/s over the whole mix and per kind of answer, and the slowest single call.
Times are CPU time of the scoring thread (``time.thread_time``), so a busy machine does not
inflate them; the slowest call is also given in wall-clock time.
With ``--against REV`` the same mix (same seed) also runs on ``reward_fns`` as of git revision
REV, in a subprocess, for a before/after ratio. With ``--fuzz N`` it instead scores N random
answers per verifier and reports exceptions and the slowest call (target: none, and < 50 ms).

    python benchmarks/bench_verifiers.py [--calls 20000] [--seed 0] [--against main]
    python benchmarks/bench_verifiers.py --fuzz 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = "+-*/"

# --- Countdown answers -------------------------------------------------------------------------------


def countdown_problem(rng: random.Random) -> tuple[list[int], int, str]:
    """(numbers, target, one correct expression), like verl_reflect.data's generator: 3-4 numbers up to 100."""
    while True:
        numbers = [rng.randint(1, 100) for _ in range(rng.randint(3, 4))]
        pool = [(n, str(n)) for n in numbers]
        while len(pool) > 1:
            i, j = sorted(rng.sample(range(len(pool)), 2))
            (a, ea), (b, eb) = pool.pop(j), pool.pop(i)
            op = rng.choice(OPS)
            if op == "/" and (b == 0 or a % b):
                op = "+"
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
            pool.append((value, f"({ea} {op} {eb})"))
        target, expression = pool[0]
        if 0 < target <= 1000:
            return numbers, target, expression[1:-1]


def thinking(rng: random.Random, chars: int) -> str:
    words = ["Let", "me", "try", "50", "+", "25", "=", "75,", "that", "is", "too", "big.", "Maybe", "(3 * 7)", "-", "8"]
    text, length = [], 0
    while length < chars:
        text.append(rng.choice(words))
        length += len(text[-1]) + 1
    return " ".join(text)


def wrong_expression(rng: random.Random, numbers: list[int]) -> str:
    numbers = numbers[:]
    rng.shuffle(numbers)
    return f" {rng.choice(OPS)} ".join(map(str, numbers))


def countdown_ordinary(rng: random.Random, numbers, target, expression) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.35:
        answer = expression
    elif kind < 0.45:
        answer = f"{expression} = {target}"
    elif kind < 0.5:
        answer = f"-(0 - ({expression}))" if rng.random() < 0.5 else f"-{numbers[0]} + {numbers[0]} + {expression}"
    else:
        answer = wrong_expression(rng, numbers)
    return "ordinary", f"<think>{thinking(rng, rng.randint(200, 1500))}</think>\n<answer> {answer} </answer>"


def countdown_long(rng: random.Random, numbers, target, expression) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:  # long reasoning with several revised answers
        body = "".join(f"{thinking(rng, 2000)} <answer>{wrong_expression(rng, numbers)}</answer> " for _ in range(8))
        return "long", f"<think>{body}</think><answer>{expression}</answer>"
    if kind == 1:  # correct, nested close to the length cap
        depth = (1000 - len(expression)) // 2 - 1
        return "long", f"<answer>{'(' * depth}{expression}{')' * depth}</answer>"
    if kind == 2:  # a long sum of the given numbers, near the length cap
        return "long", "<answer>" + " + ".join(str(rng.choice(numbers)) for _ in range(240)) + "</answer>"
    return "long", f"<think>{thinking(rng, 30_000)}</think><answer>{expression}</answer>"


COUNTDOWN_HOSTILE = [
    "<answer>" * 500_000,
    "</answer>" * 500_000,
    "<answer>" + "(" * 1_000_000 + "1" + ")" * 1_000_000 + "</answer>",
    "<answer>" + "(" * 499 + "1" + ")" * 499 + "</answer>",
    "<answer>" + "-" * 990 + "1</answer>",
    "<answer>" + "1--" * 333 + "1</answer>",
    "<answer>" + "9" * 999 + "</answer>",
    "<answer>" + "9" * 5000 + "</answer>",
    "<answer>" + "9" * 300 + "*" + "9" * 300 + "</answer>",
    "<answer>" + "1/" * 499 + "1</answer>",
    "<answer>(1+2)*3" + " " * 2_000_000 + "</answer>",
    "x" * 5_000_000,
    "<answer>\ud800(1 + 2) * 3</answer>",
    "<answer>__import__('os').system('true')</answer>",
    "<answer>" + "((" * 249 + "1 + 2" + "))" * 249 + "</answer>",
    "<answer>(1 + 2) * 3 = " + "9" * 990 + "</answer>",
]


def countdown_cases(rng: random.Random, calls: int) -> list[tuple[str, str, object]]:
    cases = []
    for i in range(calls):
        numbers, target, expression = countdown_problem(rng)
        gt = json.dumps({"target": target, "numbers": numbers})
        roll = rng.random()
        if roll < 0.8:
            kind, text = countdown_ordinary(rng, numbers, target, expression)
        elif roll < 0.95:
            kind, text = countdown_long(rng, numbers, target, expression)
        else:
            kind, text = "hostile", COUNTDOWN_HOSTILE[i % len(COUNTDOWN_HOSTILE)]
        cases.append((kind, text, gt))
    return cases


# --- function-calling answers ------------------------------------------------------------------------

TOOLS = ["get_weather", "search_hotels", "convert_currency", "get_stock_price", "send_email", "calculate_route"]


def random_call(rng: random.Random) -> dict:
    arguments = {}
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(["city", "days", "query", "amount", "from", "to", "limit", "filters", "ids", "metric"])
        arguments[key] = rng.choice(
            [
                rng.randint(-1000, 10**6),
                round(rng.uniform(-100, 100), 2),
                rng.choice([True, False, None]),
                "".join(rng.choice("abcdefghij é") for _ in range(rng.randint(0, 20))),
                [rng.randint(0, 9) for _ in range(rng.randint(0, 5))],
                {"stars": [4, 5], "sort": "price"},
            ]
        )
    return {"name": rng.choice(TOOLS), "arguments": arguments}


def render_calls(rng: random.Random, calls: list[dict]) -> str:
    style = rng.randrange(4)
    if style == 0:
        return "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>\n" for c in calls)
    if style == 1:
        return json.dumps(calls)
    if style == 2:
        return f"Sure.\n```json\n{json.dumps(calls, indent=2)}\n```"
    return f"<think>{thinking(rng, 300)}</think><answer>{json.dumps(calls)}</answer>"


def fc_ordinary(rng: random.Random, calls: list[dict]) -> tuple[str, str]:
    answer = [dict(c) for c in calls]
    roll = rng.random()
    if roll < 0.3 and answer:
        answer[0] = {**answer[0], "name": answer[0]["name"] + "_v2"}
    elif roll < 0.4:
        answer = answer + [random_call(rng)]
    rng.shuffle(answer)
    return "ordinary", render_calls(rng, answer)


def fc_long(rng: random.Random, calls: list[dict]) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:  # many calls
        return "long", render_calls(rng, calls + [random_call(rng) for _ in range(200)])
    if kind == 1:  # a long string argument, near the 100,000-char cap
        return "long", json.dumps([{"name": "send_email", "arguments": {"body": "lorem ipsum " * 8000}}])
    return "long", f"{thinking(rng, 50_000)} {render_calls(rng, calls)}"


FC_HOSTILE = [
    "[" * 90_000,
    "[" * 50_000 + "]" * 50_000,
    '{"a":' * 15_000 + "1" + "}" * 15_000,
    '[{"name": "f", "arguments": "' + "[" * 5000 + "]" * 5000 + '"}]',
    "[]" * 49_000,
    "[" + ",".join(["[]"] * 33_000) + "]",
    '[{"name": "f", "arguments": {"x": [' + ",".join(["0"] * 49_000) + "]}}]",
    '[{"name": "f", "arguments": {' + ",".join(f'"k{i}": {i}' for i in range(9_000)) + "}}]",
    "<tool_call>" * 100_000,
    "<tool_call></tool_call>" * 4_000,
    "<tool_call>{}</tool_call>" * 4_000,
    "<answer>" * 500_000,
    "x" * 5_000_000,
    '[{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}]",
    '[{"name": "' + "a" * 90_000,
    '["' + "\\" * 90_001,
    '<tool_call>{"name": "\ud800", "arguments": {"\udcff": "\\ud800"}}</tool_call>',
]


def fc_cases(rng: random.Random, calls: int) -> list[tuple[str, str, object]]:
    cases = []
    for i in range(calls):
        expected = [random_call(rng) for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3]))]
        gt = json.dumps(expected)
        roll = rng.random()
        if roll < 0.8:
            kind, text = fc_ordinary(rng, expected)
        elif roll < 0.95:
            kind, text = fc_long(rng, expected)
        else:
            kind, text = "hostile", FC_HOSTILE[i % len(FC_HOSTILE)]
        cases.append((kind, text, gt))
    return cases


# --- measuring ---------------------------------------------------------------------------------------


def measure(data_source: str, cases: list[tuple[str, str, object]]) -> dict:
    """Score every case once; time each call, and the total per kind."""
    from reward_fns import compute_score

    compute_score(data_source, *cases[0][1:])  # import and cache the task module outside the timing
    seconds, counts = defaultdict(float), Counter()
    slowest, slowest_kind, slowest_wall, exceptions = 0.0, "", 0.0, Counter()
    for kind, text, gt in cases:
        start, wall = time.thread_time(), time.perf_counter()
        try:
            compute_score(data_source, text, gt)
        except Exception as e:  # counted and reported: a verifier must not raise on model output
            exceptions[type(e).__name__] += 1
        elapsed, slowest_wall = time.thread_time() - start, max(slowest_wall, time.perf_counter() - wall)
        seconds[kind] += elapsed
        counts[kind] += 1
        if elapsed > slowest:
            slowest, slowest_kind = elapsed, kind
    total = sum(seconds.values())
    return {
        "calls": len(cases),
        "verdicts_per_s": len(cases) / total,
        "by_kind": {k: {"calls": counts[k], "verdicts_per_s": counts[k] / seconds[k]} for k in sorted(counts)},
        "slowest_ms": slowest * 1e3,
        "slowest_kind": slowest_kind,
        "slowest_wall_ms": slowest_wall * 1e3,
        "exceptions": dict(exceptions),
    }


def run_mix(calls: int, seed: int) -> dict:
    return {
        "countdown": measure("countdown", countdown_cases(random.Random(seed), calls)),
        "function_calling": measure("function_calling", fc_cases(random.Random(seed), calls)),
    }


def run_at_revision(rev: str, calls: int, seed: int) -> dict:
    """The same mix on reward_fns as of ``rev``, in a fresh process so the two versions never mix."""
    with tempfile.TemporaryDirectory() as tmp:
        git = ["git", "-C", str(ROOT), "archive", rev, "reward_fns"]
        archive = subprocess.run(git, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        out = subprocess.run(
            [sys.executable, __file__, "--calls", str(calls), "--seed", str(seed), "--json", "--reward-fns-from", tmp],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout)


# --- fuzzing -----------------------------------------------------------------------------------------

ARITHMETIC = "0123456789+-*/() =.\n"
JSONISH = '[]{}",:\\ 0123456789.-eEtrufalsn'


def mutate(rng: random.Random, text: str, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        pos = rng.randrange(len(chars) + 1)
        roll = rng.random()
        if roll < 0.4 or not chars:
            chars.insert(pos, rng.choice(ARITHMETIC + JSONISH + "<>/\ud800é"))
        elif roll < 0.7:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[min(pos, len(chars) - 1)] = rng.choice(ARITHMETIC + JSONISH)
    return "".join(chars)


def fuzz_countdown_answer(rng: random.Random, numbers: list[int], expression: str) -> str:
    roll = rng.random()
    if roll < 0.001:  # rare, as in training: megabytes, deep nesting, huge literals
        return rng.choice(COUNTDOWN_HOSTILE)
    if roll < 0.25:
        body = "".join(rng.choice(ARITHMETIC) for _ in range(rng.randint(0, rng.choice([20, 200, 1200]))))
    elif roll < 0.5:
        body = mutate(rng, expression, rng.randint(1, 6))
    elif roll < 0.75:  # random token streams over the right numbers: these reach evaluation
        tokens = [str(n) for n in numbers] + ["+", "-", "*", "/", "(", ")", "-(", " "]
        body = "".join(rng.choice(tokens) for _ in range(rng.randint(1, rng.choice([8, 60, 400]))))
    elif roll < 0.85:
        depth = rng.randint(0, 600)
        body = "(" * depth + rng.choice([expression, "-" + expression]) + ")" * rng.randint(depth - 2, depth + 2)
    elif roll < 0.95:
        body = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 50)))
    else:
        big = str(rng.getrandbits(rng.randint(1, 4000)))
        body = rng.choice([f"{big} * {big}", f"{big} / {big}", f"{expression} = {big}", big[:1000]])
    if rng.random() < 0.2:
        body += rng.choice(["= ", " = -", "="]) + str(rng.randint(-1000, 1000))
    wrap = rng.random()
    if wrap < 0.8:
        return f"<think>{thinking(rng, rng.randint(0, 200))}</think><answer>{body}</answer>"
    return body if wrap < 0.9 else f"<answer>{body}"


def random_json(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(
            [None, True, False, rng.randint(-(2**70), 2**70), rng.random() * 1e6, "s" * rng.randint(0, 5), 1e308]
        )
    if roll < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["name", "arguments", "parameters", "x", ""]): random_json(rng, depth + 1) for _ in range(3)}


def fuzz_fc_answer(rng: random.Random, expected: list[dict]) -> str:
    roll = rng.random()
    if roll < 0.001:
        return rng.choice(FC_HOSTILE)
    if roll < 0.25:
        body = "".join(rng.choice(JSONISH) for _ in range(rng.randint(0, rng.choice([20, 200, 2000]))))
    elif roll < 0.5:
        body = mutate(rng, render_calls(rng, expected), rng.randint(1, 6))
    elif roll < 0.7:
        body = json.dumps([random_json(rng) for _ in range(rng.randint(0, 3))])
    elif roll < 0.8:
        depth = rng.randint(0, 3000)
        body = '[{"name": "f", "arguments": {"x": ' + "[" * depth + "1" + "]" * depth + "}}]"
    elif roll < 0.9:
        body = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 50)))
    else:
        body = "".join(f"<tool_call>{mutate(rng, json.dumps(c), 1)}</tool_call>" for c in expected + [random_call(rng)])
    wrap = rng.random()
    if wrap < 0.7:
        return body
    return f"<answer>{body}</answer>" if wrap < 0.9 else f"<tool_call>{body}"


def fuzz(calls: int, seed: int) -> dict:
    from reward_fns import compute_score

    results = {}
    rng = random.Random(seed)
    problems = [countdown_problem(rng) for _ in range(200)]
    problems += [([7, 2**3000], 2**3000 + 7, "7 + 1"), ([1, 2], 10**5000, "1 + 2")]  # huge numbers and target
    expectations = [[random_call(rng) for _ in range(rng.randint(0, 3))] for _ in range(200)]
    for data_source, make in [
        ("countdown", lambda: _countdown_fuzz_case(rng, problems)),
        ("function_calling", lambda: _fc_fuzz_case(rng, expectations)),
    ]:
        slowest, slowest_input, slowest_wall, exceptions, ones, scoring = 0.0, "", 0.0, Counter(), 0, 0.0
        for _ in range(calls):
            text, gt = make()
            start, wall = time.thread_time(), time.perf_counter()
            try:
                ones += compute_score(data_source, text, gt) == 1.0
            except Exception as e:  # counted and reported: a verifier must not raise on model output
                exceptions[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            elapsed, slowest_wall = time.thread_time() - start, max(slowest_wall, time.perf_counter() - wall)
            scoring += elapsed
            if elapsed > slowest:
                slowest, slowest_input = elapsed, text[:80] + f"... ({len(text)} chars)"
        results[data_source] = {
            "calls": calls,
            "exceptions": dict(exceptions),
            "scored_one": ones,
            "slowest_ms": slowest * 1e3,
            "slowest_input": slowest_input,
            "slowest_wall_ms": slowest_wall * 1e3,
            "verdicts_per_s": calls / scoring,
        }
    return results


def _countdown_fuzz_case(rng: random.Random, problems) -> tuple[str, dict]:
    numbers, target, expression = rng.choice(problems)
    return fuzz_countdown_answer(rng, numbers, expression), {"target": target, "numbers": numbers}


def _fc_fuzz_case(rng: random.Random, expectations) -> tuple[str, str]:
    expected = rng.choice(expectations)
    return fuzz_fc_answer(rng, expected), json.dumps(expected)


# --- main --------------------------------------------------------------------------------------------


def print_mix(label: str, results: dict) -> None:
    for name, r in results.items():
        kinds = ", ".join(f"{k} {v['verdicts_per_s']:,.0f}/s" for k, v in r["by_kind"].items())
        print(
            f"{label:>8} {name:<17} {r['verdicts_per_s']:>9,.0f} verdicts/s over {r['calls']:,} calls ({kinds}); "
            f"slowest call {r['slowest_ms']:.1f} ms CPU ({r['slowest_kind']}), {r['slowest_wall_ms']:.1f} ms wall; "
            f"exceptions {r['exceptions'] or 'none'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="answers per verifier in the mix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--against", metavar="REV", help="also run the mix on reward_fns at this git revision")
    parser.add_argument("--fuzz", type=int, metavar="N", help="score N random answers per verifier instead")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--reward-fns-from", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, args.reward_fns_from or str(ROOT))
    if args.fuzz:
        results = fuzz(args.fuzz, args.seed)
        print(json.dumps(results, indent=2, ensure_ascii=True))
        return
    results = run_mix(args.calls, args.seed)
    if args.json:
        print(json.dumps(results))
        return
    print(f"One thread, CPU time; mix: 80% ordinary, 15% long, 5% hostile answers (seed {args.seed}).")
    print_mix("this", results)
    if args.against:
        before = run_at_revision(args.against, args.calls, args.seed)
        print_mix(args.against, before)
        for name in results:
            ratio = results[name]["verdicts_per_s"] / before[name]["verdicts_per_s"]
            print(f"{name}: {ratio:.2f}x the verdicts/s of {args.against}")


if __name__ == "__main__":
    main()
