"""Benchmark: test accuracy of the bundled digits CNN under every quantization scheme (issue 3).

Usage: python bench/bench_accuracy.py [--json bench/results/accuracy.json]

Each configuration runs `fold-bn,calibrate,quantize{...}` on the calibration split and is evaluated
on the 360-image eval split in the integer-exact semantics (the specification) and in fake-quant
float; weight memory is the report's weight_bits_total (codebook index bits plus table).
No retraining anywhere: these are post-training figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from qcc.examples import MODEL, load_split
from qcc.frontend import load_model
from qcc.interp import run
from qcc.pass_manager import PassContext, run_pipeline
from qcc.report import summarize

MIDDLE = ("/conv2/Conv", "/conv3/Conv", "/conv4/Conv")

CONFIGS: list[tuple[str, str, str]] = [
    ("fp32", "", ""),
    ("uniform w8/a8", "w_bits=8,a_bits=8", ""),
    ("uniform w4/a4", "w_bits=4,a_bits=4", ""),
    ("uniform w2/a2", "w_bits=2,a_bits=2", ""),
    ("uniform w4/a8", "w_bits=4,a_bits=8", ""),
    ("dynamic fixed w8/a8", "w_scheme=dynamic-fixed,a_scheme=dynamic-fixed,w_bits=8,a_bits=8", ""),
    ("dynamic fixed w4/a8", "w_scheme=dynamic-fixed,a_scheme=dynamic-fixed,w_bits=4,a_bits=8", ""),
    ("QKeras fixed w8/a8", "w_scheme=fixed,a_scheme=fixed,w_bits=8,a_bits=8", ""),
    *[(f"k-means {kind} w{b}/a8", f"w_scheme=kmeans-{kind},w_bits={b},a_bits=8", "")
      for kind in ("linear", "gaussian", "lloyd") for b in (3, 4, 6)],
    *[(f"k-quantile w{b}/a{b}", f"w_scheme=kquantile,a_scheme=kquantile,w_bits={b},a_bits={b}", "")
      for b in (3, 4)],
    ("binary middle layers (first/last 8-bit)", "w_bits=8,a_bits=8",
     "".join(f'[layers."{n}"]\nw_scheme = "bipolar"\na_scheme = "bipolar"\n' for n in MIDDLE)),
    ("binary middle weights, a8", "w_bits=8,a_bits=8",
     "".join(f'[layers."{n}"]\nw_scheme = "bipolar"\n' for n in MIDDLE)),
]


def _accuracy(graph, x, y, mode: str) -> float:
    return float((run(graph, {"x": x}, mode=mode)["logits"].argmax(1) == y).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    calib, _ = load_split("calib")
    x, y = load_split("eval")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, options, layers in CONFIGS:
            g = load_model(MODEL)
            if options:
                cfg = Path(tmp) / "layers.toml"
                cfg.write_text(layers)
                pipeline = f'fold-bn,calibrate,quantize{{{options},config="{cfg}"}}'
                run_pipeline(g, pipeline, PassContext(config={"calib": {"x": calib}}))
            report = summarize(g).totals
            row = {"config": label, "int": _accuracy(g, x, y, "int") if options else None,
                   "fake": _accuracy(g, x, y, "fake" if options else "float"),
                   "weight_kbit": report["weight_bits_total"] / 1000}
            rows.append(row)
            acc = f"{100 * row['int']:6.2f}" if row["int"] is not None else "     -"
            print(f"{label:<42} int {acc} %  fake {100 * row['fake']:6.2f} %  weights {row['weight_kbit']:8.1f} kbit",
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
