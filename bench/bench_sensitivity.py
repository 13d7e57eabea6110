"""Benchmark: the annotate-sensitivity sweep, cached + parallel vs naive (issue 4, goal >= 3x).

Usage: python bench/bench_sensitivity.py [--image 112] [--samples 32] [--workers 2] [--repeats 5] [--skip-resnet]
                                         [--json bench/results/sensitivity.json]

Two models, measured side by side in one run, on the same sweep (every layer, weights and input
activations, uniform, bits 2/3/4/6/8):
- the bundled digits CNN, its 288 calibration images (batches of 64);
- a ResNet-18-sized net (bench/resnet_onnx.py's resnet(): 11.7 M parameters, 1000 classes, BN folded
  first), `--samples` random calibration inputs at `--image` x `--image` pixels (224 would make the
  naive run alone take about 15 minutes on 2 cores; 112 keeps it near 4).

Three ways, each timed from the float reference (run once per way, every way needs it) to the last
entry: naive = a full re-run of the quantized graph per configuration, inline; cached = only the
nodes downstream of the quantized variable, from cached float activations, inline; cached +
parallel = the same on a process pool of `--workers` processes (what the pass does by default).
The example's times are the best of `--repeats` runs (it takes seconds and the machine is shared); the
ResNet's are single runs. The script checks that all three give bit-identical entries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from resnet_onnx import resnet  # noqa: E402

from qcc.examples import MODEL, load_split  # noqa: E402
from qcc.frontend import load_model  # noqa: E402
from qcc.frontend.onnx import import_model  # noqa: E402
from qcc.io import write_bytes  # noqa: E402
from qcc.ir.graph import Graph  # noqa: E402
from qcc.pass_manager import PassContext, run_pipeline  # noqa: E402
from qcc.sensitivity import Config, Sweep, layer_variables, run_sweep  # noqa: E402

BITS = (2, 3, 4, 6, 8)


def _configs(graph: Graph) -> list[Config]:
    layers = [n for n in graph.nodes if n.op in ("Conv", "Gemm", "MatMul")]
    return [Config((n.name,), v, "uniform", b) for n in layers for v in layer_variables(n) for b in BITS]


WAYS = (("naive", "naive (full re-run, inline)", {"workers": 1, "naive": True}),
        ("cached_inline", "cached (downstream only, inline)", {"workers": 1}))


def _once(graph: Graph, inputs: dict, batches: list, configs: list[Config], **how) -> tuple[float, list]:
    start = time.perf_counter()
    sweep = Sweep(graph, inputs, batches)
    entries = run_sweep(sweep, configs, **how)
    return time.perf_counter() - start, entries


def _measure(name: str, graph: Graph, inputs: dict, batch: int, workers: int, repeats: int) -> dict:
    """Each way's best of `repeats` wall times, the ways interleaved so that a busy spell of the shared
    machine slows all of them alike."""
    samples = len(next(iter(inputs.values())))
    batches = [(s, min(s + batch, samples)) for s in range(0, samples, batch)]
    configs = _configs(graph)
    print(f"{name}: {len(graph)} nodes, {len(configs)} configurations, {samples} samples, best of {repeats}",
          flush=True)
    ways = [*WAYS, ("cached_parallel", f"cached + {workers} processes", {"workers": workers})]
    best = {key: float("inf") for key, _, _ in ways}
    entries = {}
    for _ in range(repeats):
        for key, _, how in ways:
            seconds, entries[key] = _once(graph, inputs, batches, configs, **how)
            best[key] = min(best[key], seconds)
    for key, label, _ in ways:
        print(f"  {label:<34} {best[key]:8.2f} s   {best['naive'] / best[key]:5.2f}x", flush=True)
    return {"nodes": len(graph), "configurations": len(configs), "samples": samples, "batch": batch,
            "naive_s": best["naive"], "cached_inline_s": best["cached_inline"],
            "cached_parallel_s": best["cached_parallel"], "workers": workers, "repeats": repeats,
            "speedup_cached": best["naive"] / best["cached_inline"],
            "speedup": best["naive"] / best["cached_parallel"],
            "identical": entries["naive"] == entries["cached_inline"] == entries["cached_parallel"]}


def _example(workers: int, repeats: int) -> dict:
    x, _ = load_split("calib")
    g = load_model(MODEL)
    run_pipeline(g, "calibrate", PassContext(config={"calib": {"x": x}}))
    return _measure("digits CNN (example)", g, {"input": x}, 64, workers, repeats)


def _resnet(image: int, samples: int, workers: int) -> dict:
    g = import_model(resnet(image=image))
    x = np.random.default_rng(0).normal(size=(samples, 3, image, image)).astype(np.float32)
    run_pipeline(g, "fold-bn,calibrate", PassContext(config={"calib": {"x": x}}))
    row = _measure(f"ResNet-18 at {image}x{image}", g, {"input": x}, samples, workers, repeats=1)
    return {"image": image, **row}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=int, default=112)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timings of the example (best of); ResNet runs once")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = {"machine_cpus": os.cpu_count(), "bits": list(BITS), "schemes": ["uniform"],
               "example": _example(args.workers, args.repeats)}
    if not args.skip_resnet:
        results["resnet18"] = _resnet(args.image, args.samples, args.workers)
    print()
    print(f"{'model':<14} {'configs':>7} {'naive s':>9} {'cached s':>9} {'cached+par s':>13} {'speed-up':>9} "
          f"{'identical':>9}")
    for key in ("example", "resnet18"):
        r = results.get(key)
        if r is not None:
            print(f"{key:<14} {r['configurations']:>7} {r['naive_s']:>9.2f} {r['cached_inline_s']:>9.2f} "
                  f"{r['cached_parallel_s']:>13.2f} {r['speedup']:>8.2f}x {str(r['identical']):>9}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(args.json, (json.dumps(results, indent=2) + "\n").encode())
    return 0 if all(r["identical"] for k, r in results.items() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
