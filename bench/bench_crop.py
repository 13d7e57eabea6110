"""Benchmark: activation cropping (seed 004, AQuA) on the bundled digits CNN: accuracy against MACs saved.

Usage: python bench/bench_crop.py [--json bench/results/crop.json] [--png bench/results/crop.png]

The model is imported, BatchNormalization folded into the convs (fold-bn: a crop on a conv output is
then a crop of what the next layer reads) and run on the held-out eval split in fake-quant mode, which
is float arithmetic plus the crops (the weights stay float32, as in seed 004's analysis).

- Fixed crops (seed 004 Table I): every cut bit vector [T B L R] with 1-pixel crops on the 8x8 maps
  (fraction 1/8: conv1-conv3 lose one row / column per cut edge, the 4x4 conv4 nothing), with 1 pixel
  on every map (conv4 too), and with 2 pixels on the 8x8 maps and 1 on the 4x4 (fraction 1/4).
- Per input: for each image the cut chosen from its edge strips (qcc.crop.choose_crops: a cut edge's
  strip statistic over the centre's must be <= threshold) among the 16 cuts of a family, for the
  gradient, entropy and intensity statistics over a threshold sweep.
- Oracle (seed 004's "ideal"): per image the most saving cut of a family that keeps the uncropped
  prediction (images the model gets wrong are not cropped); an upper bound for any predictor.

MACs saved are per image, relative to the uncropped model's MACs (all layers, BN folded).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from qcc.examples import MODEL, accuracy, load_split
from qcc.frontend.onnx import import_model
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.pass_manager import run_pipeline
from qcc.passes.crop_activations import ALL_CUTS, CropActivationsPass, PerInputPolicy, run_per_input
from qcc.report import summarize

FAMILIES = {  # name -> CropActivationsPass options besides the cut
    "1px@8x8": {"fraction": 0.125},
    "1px all maps": {"pixels": 1},
    "2px@8x8+1px@4x4": {"fraction": 0.25},
}
POLICY_FAMILIES = {  # name -> (options, width of the input strips the statistic reads)
    "1px@8x8": ({"fraction": 0.125}, 1),
    "1px all maps": ({"pixels": 1}, 1),
    "2px@8x8+1px@4x4": ({"fraction": 0.25}, 2),
}
STATISTICS = ("gradient", "entropy", "intensity")
THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, math.inf)


def _cut_label(cut: str) -> str:
    return "[" + " ".join(cut) + "]"


def _fixed(graph: Graph, x: np.ndarray, y: np.ndarray, macs: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, predictions = [], {}
    for family, options in FAMILIES.items():
        for cut in ALL_CUTS:
            g = graph.clone()
            run_pipeline(g, [CropActivationsPass(cut=cut, **options)])
            logits = run(g, {"x": x}, mode="fake")[g.outputs[0].name]
            totals = summarize(g).totals
            predictions[f"{family}/{cut}"] = logits.argmax(axis=1)
            rows.append({"family": family, "cut": cut, "edges": cut.count("1"), "accuracy": accuracy(logits, y),
                         "macs_saved": totals["macs_saved"], "macs_saved_pct": 100.0 * totals["macs_saved"] / macs,
                         "activations_cropped": totals["activations_cropped"]})
    return rows, predictions


def _per_input(graph: Graph, x: np.ndarray, y: np.ndarray) -> list[dict]:
    rows = []
    for family, (options, strip) in POLICY_FAMILIES.items():
        for statistic in STATISTICS:
            for threshold in THRESHOLDS:
                policy = PerInputPolicy(strip=strip, statistic=statistic, threshold=threshold, **options)
                result = run_per_input(graph, x, policy, mode="fake")
                edges = np.array([ALL_CUTS[i].count("1") for i in result.choice])
                rows.append({"family": family, "statistic": statistic, "threshold": threshold,
                             "accuracy": accuracy(result.outputs[graph.outputs[0].name], y),
                             "macs_saved_pct": 100.0 * float(result.macs_saved.mean()) / result.macs,
                             "edges_histogram": np.bincount(edges, minlength=5).tolist()})
    return rows


def _oracle(fixed: list[dict], predictions: dict[str, np.ndarray], baseline: np.ndarray, y: np.ndarray,
            macs: int) -> list[dict]:
    rows = []
    for family in POLICY_FAMILIES:
        family_rows = [r for r in fixed if r["family"] == family]
        best = np.zeros(len(y))
        for r in family_rows:
            keeps = predictions[f"{family}/{r['cut']}"] == baseline
            best = np.where(keeps & (baseline == y), np.maximum(best, r["macs_saved"]), best)
        rows.append({"family": family, "accuracy": float(np.mean(baseline == y)),
                     "macs_saved_pct": 100.0 * float(best.mean()) / macs})
    return rows


def _table(baseline_acc: float, fixed: list[dict], per_input: list[dict], oracle: list[dict]) -> str:
    lines = [f"uncropped: accuracy {100 * baseline_acc:.2f} %", "",
             f"{'fixed crops':<18} {'cut [T B L R]':<14} {'accuracy %':>10} {'MACs saved %':>13} {'0-bit acts':>10}"]
    for r in fixed:
        lines.append(f"{r['family']:<18} {_cut_label(r['cut']):<14} {100 * r['accuracy']:>10.2f} "
                     f"{r['macs_saved_pct']:>13.1f} {r['activations_cropped']:>10,}")
    lines += ["", f"{'per input':<18} {'statistic':<10} {'threshold':>9} {'accuracy %':>10} {'MACs saved %':>13}  "
              "images by cut edges 0/1/2/3/4"]
    for r in per_input:
        lines.append(f"{r['family']:<18} {r['statistic']:<10} {r['threshold']:>9} {100 * r['accuracy']:>10.2f} "
                     f"{r['macs_saved_pct']:>13.1f}  {'/'.join(map(str, r['edges_histogram']))}")
    lines += ["", f"{'oracle':<18} {'':<10} {'':>9} {'accuracy %':>10} {'MACs saved %':>13}"]
    for r in oracle:
        lines.append(f"{r['family']:<18} {'':<10} {'':>9} {100 * r['accuracy']:>10.2f} {r['macs_saved_pct']:>13.1f}")
    return "\n".join(lines)


def _plot(path: Path, baseline_acc: float, fixed: list[dict], per_input: list[dict], oracle: list[dict]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green")))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax in axes:
        for family, marker in zip(FAMILIES, "osD"):
            rows = [r for r in fixed if r["family"] == family]
            ax.scatter([r["macs_saved_pct"] for r in rows], [100 * r["accuracy"] for r in rows], marker=marker,
                       s=30, alpha=0.55, color=colors[family], label=f"fixed cuts, {family}")
        for family in POLICY_FAMILIES:
            for statistic, style in zip(STATISTICS, ("-", "--", ":")):
                rows = [r for r in per_input if r["family"] == family and r["statistic"] == statistic]
                ax.plot([r["macs_saved_pct"] for r in rows], [100 * r["accuracy"] for r in rows], style,
                        color=colors[family], marker=".", label=f"per input ({statistic}), {family}")
        for r in oracle:
            ax.scatter([r["macs_saved_pct"]], [100 * r["accuracy"]], marker="*", s=170, color=colors[r["family"]],
                       edgecolor="black", zorder=5, label=f"oracle, {r['family']}")
        ax.axhline(100 * baseline_acc, color="grey", lw=0.8)
        ax.set_xlabel("MACs saved per image (% of the uncropped model)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy on the eval split (%)")
    axes[0].set_title("all crops")
    axes[1].set_title("zoom: accuracy >= 95 %")
    axes[1].set_xlim(-1, 55)
    axes[1].set_ylim(95, 100)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Activation cropping on the digits CNN (seed 004): fixed vs per-input crops")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "crop.json")
    ap.add_argument("--png", type=Path, default=Path(__file__).parent / "results" / "crop.png")
    args = ap.parse_args()

    start = time.perf_counter()
    graph = import_model(MODEL)
    run_pipeline(graph, "fold-bn")
    x, y = load_split("eval")
    macs = summarize(graph).totals["macs"]
    logits = run(graph, {"x": x}, mode="fake")[graph.outputs[0].name]
    baseline_acc, baseline = accuracy(logits, y), logits.argmax(axis=1)
    fixed, predictions = _fixed(graph, x, y, macs)
    per_input = _per_input(graph, x, y)
    oracle = _oracle(fixed, predictions, baseline, y, macs)
    print(_table(baseline_acc, fixed, per_input, oracle))

    doc = {"model": MODEL.name, "split": "eval", "samples": int(len(y)), "mode": "fake (float32 weights + crops)",
           "pipeline": "fold-bn,crop-activations", "macs_per_image": macs,
           "baseline": {"accuracy": baseline_acc}, "fixed": fixed,
           "per_input": [{**r, "threshold": r["threshold"] if math.isfinite(r["threshold"]) else "inf"}
                         for r in per_input],
           "oracle": oracle, "seconds": round(time.perf_counter() - start, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    if _plot(args.png, baseline_acc, fixed, per_input, oracle):
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
