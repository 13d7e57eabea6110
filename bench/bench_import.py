"""Benchmark: import + verify + print of a ResNet-18-sized ONNX model, and how import scales with depth.

Usage: python bench/bench_import.py [--repeats 5] [--json bench/results/import.json]

Every figure is a median over interleaved repeats in one run (the machine is shared and noisy);
the scaling series is reported as ratios to the 1x model, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from resnet_onnx import resnet  # noqa: E402

from qcc.frontend.onnx import import_model  # noqa: E402
from qcc.frontend.qir import print_graph  # noqa: E402
from qcc.ir.verify import verify  # noqa: E402


def _phases(path: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    g = import_model(path)
    t1 = time.perf_counter()
    verify(g)
    t2 = time.perf_counter()
    text = print_graph(g)
    t3 = time.perf_counter()
    assert text
    return {"import": t1 - t0, "verify": t2 - t1, "print": t3 - t2, "total": t3 - t0, "nodes": len(g)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        models = {"resnet18": resnet()}
        for factor in (1, 4, 16):
            models[f"depth{factor}x"] = resnet(blocks_per_stage=(2 * factor,) * 4, width=8, classes=10,
                                               image=32)
        paths = {}
        for name, m in models.items():
            paths[name] = Path(tmp) / f"{name}.onnx"
            onnx.save(m, paths[name])
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in paths}
        for _ in range(args.repeats):
            for name, p in paths.items():  # interleaved, so drift hits every model alike
                samples[name].append(_phases(p))

    result: dict[str, dict[str, float]] = {}
    for name, runs in samples.items():
        result[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = result["depth1x"]
    print(f"{'model':<10} {'nodes':>6} {'import s':>9} {'verify s':>9} {'print s':>8} {'total s':>8} "
          f"{'import/1x':>10} {'nodes/1x':>9}")
    for name, r in result.items():
        ratio = r["import"] / base["import"]
        print(f"{name:<10} {int(r['nodes']):>6} {r['import']:>9.3f} {r['verify']:>9.3f} {r['print']:>8.3f} "
              f"{r['total']:>8.3f} {ratio:>10.2f} {r['nodes'] / base['nodes']:>9.2f}")
        r["import_ratio_to_1x"] = ratio
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
