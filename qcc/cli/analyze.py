"""`qcc analyze`: sensitivity table, Pareto front of mixed-precision assignments, report and plots.

The pipeline is fold-bn, calibrate, annotate-sensitivity; then assign-bits' integer program is
swept over weight-memory budgets, and each front point, fp32 and uniform 8/4-bit are measured for
real (integer-exact semantics) on the evaluation data. Outputs go to OUTDIR atomically.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from qcc.errors import QccError

__all__ = ["cmd_analyze", "add_analyze_parser", "sensitivity_table_text"]

FRONT_POINTS = 8


def sensitivity_table_text(table: dict[str, dict[str, Any]], scheme: str = "uniform") -> str:
    """Rows `layer  variable  l2@bits...` of output L2 for one scheme."""
    bits = sorted({int(b) for row in table.values() for var in row.values() for b in var.get(scheme, {})})
    header = ["layer", "variable", *[f"{b}-bit" for b in bits]]
    rows = []
    for layer, row in table.items():
        for var in ("weights", "activations"):
            entries = row.get(var, {}).get(scheme, {})
            if entries:
                rows.append([layer, var, *[_fmt(entries.get(str(b), {}).get("output_l2")) for b in bits]])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"sensitivity: output L2 per image, {scheme} quantizer, one variable at a time\n" + "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _measure_uniform(graph, bits: int, calib, data) -> dict[str, Any]:
    from qcc.bitassign import measure
    from qcc.config import parse_config

    config = parse_config({"default": {"w_bits": bits, "a_bits": bits}}, f"uniform {bits}-bit")
    return measure(graph, config, calib, data)


def cmd_analyze(args) -> int:
    from qcc.bitassign import Solution, front, measure
    from qcc.config import LAYER_OPS
    from qcc.frontend import load_model
    from qcc.io import atomic_dir, check_output_dir, load_arrays
    from qcc.pass_manager import PassContext, get_pass_class, run_pipeline
    from qcc.plots import bubble_chart, layer_distribution, sensitivity_heatmap
    from qcc.report import summarize, uniform_totals
    from qcc.sensitivity import table

    check_output_dir(args.output)  # before the sweep, not after it
    try:
        bits = tuple(int(b) for b in args.bits.split(","))
    except ValueError:
        raise QccError(f"--bits must be comma-separated integers, e.g. 2,4,8; got {args.bits!r}") from None
    graph = load_model(args.model)
    calib = load_arrays(args.calib, what="calibration")
    data = load_arrays(args.eval, what="evaluation") if args.eval else calib
    progress = None if args.quiet else (lambda msg: print(f"qcc: {msg}", file=sys.stderr, flush=True))
    ctx = PassContext(config={"calib": calib, "eval": data, "progress": False if args.quiet else None},
                      progress=progress)
    sweep = f"annotate-sensitivity{{bits=[{','.join(map(str, bits))}]"
    sweep += f",workers={args.workers}" if args.workers else ""
    sweep += f',cluster="{args.cluster}"' if args.cluster else ""
    run_pipeline(graph, f"fold-bn,calibrate,{sweep}}}", ctx)
    sens = table(graph)
    sys.stdout.write(sensitivity_table_text(sens))

    problem = get_pass_class("assign-bits")().problem(graph, ctx)
    sizes = [sum(v.type.numel() for v in n.inputs[1:2] if v is not None) for n in graph.nodes if n.op in LAYER_OPS]
    total = sum(sizes)
    lo, hi = total * min(bits), total * max(bits)
    grid = np.unique(np.geomspace(max(lo, 1), hi, 24).round())
    rows = front(problem, {"weight_bits": grid})
    if len(rows) > FRONT_POINTS:
        rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, FRONT_POINTS).round()]
    assign = get_pass_class("assign-bits")()
    points = []
    float_top1 = None
    for row in rows:
        config = assign.configuration(Solution(choice=_choice(problem, row), objective=row["predicted_l2"], used={}))
        measured = measure(graph, config, calib, data)
        float_top1 = measured["float_top1"]
        points.append({**{k: row[k] for k in ("weight_bits", "bops", "predicted_l2", "configuration")},
                       **measured, "pareto": True})
    baselines = {}
    for b in (8, 4):
        m = _measure_uniform(graph, b, calib, data)
        float_top1 = m["float_top1"]
        report_b = uniform_totals(graph, b)
        baselines[f"uniform{b}"] = {**report_b, **m}
    report = summarize(graph, config={"command": "analyze", "model": str(args.model), "bits": list(bits)},
                       accuracy={"float_top1": float_top1})
    baselines["fp32"] = {**report.baselines["fp32"], "measured_top1": float_top1}

    with atomic_dir(args.output) as staging:
        doc = json.loads(report.to_json())
        doc["analysis"] = {"pareto": points, "baselines": baselines, "sensitivity": sens}
        (staging / "report.json").write_text(json.dumps(doc, indent=2, default=_plain) + "\n")
        sensitivity_heatmap({k: _summary(v) for k, v in sens.items()}, staging / "sensitivity.png")
        layer_rows = [json.loads(json.dumps(r)) for r in doc["layers"] if r["op"] in LAYER_OPS]
        layer_distribution(layer_rows, staging / "layers.png")
        bubbles = [{"label": k, "weight_bits": v["weight_bits_total"], "bops": v["bops"],
                    "value": 100 * (v.get("measured_top1") or 0)} for k, v in baselines.items()]
        bubbles += [{"label": "", "weight_bits": p["weight_bits"], "bops": p["bops"],
                     "value": 100 * (p.get("measured_top1") or 0), "pareto": True} for p in points]
        bubble_chart(bubbles, staging / "pareto.png")
    sys.stdout.write(_front_text(points, baselines))
    return 0


def _choice(problem, row):
    """The Option objects of a front row (its configuration labels, layer by layer)."""
    return {lc.name: next(o for o in lc.options if o.label() == row["configuration"][lc.name])
            for lc in problem.layers}


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {var: {scheme: {b: e.get("output_l2") for b, e in by_bits.items()} for scheme, by_bits in by.items()}
            for var, by in row.items()}


def _front_text(points, baselines) -> str:
    lines = ["", "configuration        weight kbit       BOPs (M)   pred. L2   meas. L2   top-1"]
    for name, b in baselines.items():
        top = b.get("measured_top1")
        lines.append(f"{name:<20} {b['weight_bits_total'] / 1e3:>11.1f} {b['bops'] / 1e6:>14.1f} {'':>10} "
                     f"{_fmt(b.get('measured_l2')):>10} {100 * top if top is not None else float('nan'):>6.2f} %")
    for i, p in enumerate(points):
        top = p.get("measured_top1")
        lines.append(f"{f'pareto {i + 1}':<20} {p['weight_bits'] / 1e3:>11.1f} {p['bops'] / 1e6:>14.1f} "
                     f"{_fmt(p['predicted_l2']):>10} {_fmt(p['measured_l2']):>10} "
                     f"{100 * top if top is not None else float('nan'):>6.2f} %")
    return "\n".join(lines) + "\n"


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def add_analyze_parser(sub, common) -> None:
    p = sub.add_parser("analyze", help="per-layer sensitivity, Pareto front of bit-width assignments, plots")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--calib", required=True, metavar="CALIB.npz")
    p.add_argument("--eval", metavar="EVAL.npz", help="evaluation data for measured accuracy (default: calib)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--bits", default="2,3,4,6,8", help="candidate bit-widths (default 2,3,4,6,8)")
    p.add_argument("--workers", type=int, default=None, help="processes for the sweep (default: all cores)")
    p.add_argument("--cluster", default=None, help='Dask scheduler address for the sweep, or "local"')
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_analyze)
