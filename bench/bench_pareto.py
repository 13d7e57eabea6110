"""Benchmark: quality of the mixed-precision Pareto front on the example (issue 4).

Usage: python bench/bench_pareto.py [--json bench/results/pareto.json]

Runs `qcc analyze` (fold-bn, calibrate, annotate-sensitivity over 2/3/4/6/8 bits, assign-bits swept
over weight budgets), measures every front point and uniform 8/4-bit in the integer-exact semantics
on the 360-image eval split, and checks: does the front dominate uniform 8-bit and 4-bit, and what
is the smallest weight memory within 1 point of fp32 top-1 (post-training, no retraining)?
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from qcc.cli import main as qcc
from qcc.examples import CALIB, EVAL, MODEL


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "analysis"
        code = qcc(["analyze", str(MODEL), "--calib", str(CALIB), "--eval", str(EVAL), "-o", str(out), "-q"])
        if code:
            return code
        doc = json.loads((out / "report.json").read_text())
    front, base = doc["analysis"]["pareto"], doc["analysis"]["baselines"]
    fp32_top1 = base["fp32"]["measured_top1"]
    fp32_bits = base["fp32"]["weight_bits_total"]

    def dominates(p, b) -> bool:
        return p["weight_bits"] <= b["weight_bits_total"] and p["measured_top1"] >= b["measured_top1"]

    summary = {
        "dominates_uniform8": any(dominates(p, base["uniform8"]) for p in front),
        "dominates_uniform4": any(dominates(p, base["uniform4"]) for p in front),
    }
    within = [p for p in front if p["measured_top1"] >= fp32_top1 - 0.01]
    if within:
        best = min(within, key=lambda p: p["weight_bits"])
        summary.update({"smallest_within_1pt_bits": best["weight_bits"], "top1": best["measured_top1"],
                        "compression_vs_fp32": fp32_bits / best["weight_bits"],
                        "configuration": best["configuration"]})
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "front": front, "baselines": base}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
