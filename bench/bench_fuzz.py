"""Fuzz the qcc command line with 10,000 damaged models and record the counts (issue 8 item 5).

Case i damages a valid model with kind KINDS[i % len(KINDS)] and seed i (tests/fuzz/fuzz_harness.py:
ONNX bytes and protobuf fields, .qir text and weights) and runs one command on it, in-process
through qcc.cli.main: `show`, `run`, `opt -p canonicalize,fold-bn` or `compile --target cim` (one
case in 8; a harmlessly damaged model compiles in full, the slow path). Writes
bench/results/fuzz.json and fuzz.md: cases per kind and command, exit codes, tracebacks, files left
behind by failed commands, and the problem cases (if any) with the command that reproduces them.

    python bench/bench_fuzz.py [--cases 10000] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "fuzz"))

from fuzz_harness import KINDS, damage, make_seeds, problems, run_case  # noqa: E402

_SCHEDULE = ("show", "run", "opt", "show", "run", "opt", "run", "compile")


def command_of(i: int) -> str:
    # kinds cycle fastest, so every kind meets every command
    return _SCHEDULE[(i // len(KINDS)) % len(_SCHEDULE)]


def run(cases: int, progress: bool = True) -> dict:
    per_kind: dict[str, Counter] = defaultdict(Counter)
    per_command: dict[str, Counter] = defaultdict(Counter)
    exit_codes: Counter = Counter()
    tracebacks = leftovers = 0
    bad: list[dict] = []
    seconds_per_command: Counter = Counter()
    root = Path(tempfile.mkdtemp(prefix="qcc-fuzz-"))
    start = time.perf_counter()
    try:
        seeds = make_seeds(root / "seeds")
        for i in range(cases):
            kind, command = KINDS[i % len(KINDS)], command_of(i)
            folder = root / f"case{i}"
            model = damage(kind, i, seeds, folder)
            outcome = run_case(command, model, seeds, folder)
            found = problems(outcome)
            exit_codes[str(outcome.rc)] += 1
            per_kind[kind][f"exit_{outcome.rc}"] += 1
            per_command[command][f"exit_{outcome.rc}"] += 1
            seconds_per_command[command] += outcome.seconds
            tracebacks += any(p == "traceback" for p in found)
            leftovers += any(p.startswith("left behind") for p in found)
            if found:
                per_kind[kind]["problems"] += 1
                if len(bad) < 50:
                    bad.append({"case": i, "kind": kind, "seed": i, "command": command, "problems": found,
                                "stderr": outcome.stderr.strip()[-400:]})
            shutil.rmtree(folder, ignore_errors=True)
            if progress and (i + 1) % 500 == 0:
                print(f"{i + 1}/{cases} cases, {len(bad)} problems, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - start
    return {
        "cases": cases,
        "kinds": {k: dict(sorted(per_kind[k].items())) for k in KINDS},
        "commands": {c: dict(sorted(v.items())) for c, v in sorted(per_command.items())},
        "exit_codes": dict(sorted(exit_codes.items())),
        "tracebacks": tracebacks,
        "leftover_files": leftovers,
        "problem_cases": sum(k["problems"] for k in per_kind.values()),
        "problems": bad,
        "seconds": round(total, 1),
        "seconds_per_command": {c: round(s, 1) for c, s in sorted(seconds_per_command.items())},
        "machine": {"python": platform.python_version(), "cpu": platform.machine(), "cores": 2, "workers": 1},
    }


def markdown(r: dict) -> str:
    lines = ["| damage kind | cases | exit 0 (harmless) | exit 2 (user error) | problems |",
             "|---|---:|---:|---:|---:|"]
    for kind, c in r["kinds"].items():
        cases = sum(v for k, v in c.items() if k.startswith("exit_"))
        lines.append(f"| {kind} | {cases} | {c.get('exit_0', 0)} | {c.get('exit_2', 0)} | {c.get('problems', 0)} |")
    codes = ", ".join(f"{k}: {v}" for k, v in r["exit_codes"].items())
    cmds = ", ".join(f"{c} {sum(v.values())}" for c, v in r["commands"].items())
    lines += ["", f"{r['cases']} cases ({cmds}) in {r['seconds']} s on 2 cores (AMD znver4 host, one process, "
              f"in-process `qcc.cli.main`); exit codes {codes}; tracebacks {r['tracebacks']}, "
              f"left-over files {r['leftover_files']}.",
              "Each case damages the bundled example (ONNX, QDQ ONNX, float or quantized .qir) once, with a seeded "
              "damage of the listed kind, and runs one command; exit 0 means the damage was harmless (a flipped "
              "weight byte, a renamed output). A problem is a traceback, an exit code other than 0 or 2, a "
              "failure whose stderr is not exactly one `qcc: error:` line, or a file left by a failed command. "
              "The CI test (tests/fuzz) runs ~400 such cases from hypothesis plus a few real processes."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default="fuzz", help="result file stem (bench/results/<name>.json / .md)")
    args = ap.parse_args(argv)
    result = run(args.cases)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["problem_cases"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
