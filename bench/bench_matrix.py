"""The cross-target equivalence matrix with more nets per cell: `python bench/bench_matrix.py --examples 20`.

Runs tests/equivalence/test_matrix.py with QCC_MATRIX_EXAMPLES and writes the cases each cell ran to
bench/results/matrix.json and the README's table to bench/results/matrix.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=20, help="random nets per cell")
    p.add_argument("-k", default="", help="pytest -k expression, e.g. 'cim or cpu'")
    args = p.parse_args()
    report = RESULTS / "matrix.json"
    env = dict(os.environ, QCC_MATRIX_EXAMPLES=str(args.examples), QCC_MATRIX_REPORT=str(report))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE.parent / "tests/equivalence")]
    if args.k:
        cmd += ["-k", args.k]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=HERE.parent / "tests")
    seconds = time.perf_counter() - start
    counts = json.loads(report.read_text())
    targets = sorted({key.split("/")[0] for key in counts})
    schemes = list(dict.fromkeys(key.split("/")[1] for key in counts))
    lines = [f"| scheme | {' | '.join(targets)} |", "|---|" + "---:|" * len(targets)]
    for scheme in schemes:
        cells = []
        for t in targets:
            equal, refused = counts.get(f"{t}/{scheme}/equal", 0), counts.get(f"{t}/{scheme}/refused", 0)
            cells.append(f"{equal} equal" + (f", {refused} refused" if refused else ""))
        lines.append(f"| {scheme} | {' | '.join(cells)} |")
    text = (f"{args.examples} random nets per cell, {seconds:.0f} s, pytest exit {done.returncode}; 'equal': "
            "outputs bit-identical to the interpreter on 3 calibration + 2 noise inputs; 'refused': a clear "
            "compile-time error.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "matrix.md").write_text(text)
    print(text)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
