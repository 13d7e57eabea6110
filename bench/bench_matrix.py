"""The cross-target equivalence matrix with more nets per cell: `python bench/bench_matrix.py --examples 15`.

Runs tests/equivalence/test_matrix.py with QCC_MATRIX_EXAMPLES and QCC_MATRIX_EXAMPLE_IMAGES and
writes the cases each cell ran to bench/results/matrix.json and the README's table to
bench/results/matrix.md: rows = schemes + the bundled example, columns = ort, cpu,
cim, fpga. The bipolar and thresholds cells of cim and fpga run last, in a second pytest run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TESTS = HERE.parent / "tests"
COLUMNS = ("ort", "cpu", "cim", "fpga")
LATE = "(cim or fpga) and (bipolar or thresholds)"  # cells other work may still be enabling: run them last


def _run(k: str, env: dict[str, str]) -> tuple[int, dict, float]:
    """One pytest run of the matrix restricted by -k; (exit code, its report, seconds)."""
    with tempfile.TemporaryDirectory(prefix="qcc-bench-matrix-") as tmp:
        report = Path(tmp) / "matrix.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "equivalence"), "-k", k]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=dict(env, QCC_MATRIX_REPORT=str(report)), cwd=TESTS)
        seconds = time.perf_counter() - start
        doc = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, doc, seconds


def _merge(docs: list[dict]) -> dict:
    out: dict = {"cases": Counter(), "ort_elements": Counter(), "example_images": Counter(), "reasons": {},
                 "failed": {}}
    for doc in docs:
        for key in ("cases", "ort_elements", "example_images"):
            out[key].update(doc.get(key, {}))
        out["failed"].update(doc.get("failed", {}))
        for cell, reasons in doc.get("reasons", {}).items():
            out["reasons"].setdefault(cell, Counter()).update(reasons)
        out["ci_defaults"] = doc.get("ci_defaults", out.get("ci_defaults"))
    return {k: (dict(sorted(v.items())) if isinstance(v, dict) else v) for k, v in out.items()}


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2g} %" if whole else "-"


def _cell(doc: dict, column: str, row: str, notes: dict[str, str]) -> str:
    failure = doc["failed"].get(f"{column}/{row}")
    if failure is not None:
        return f"FAILED {notes.setdefault(failure, f'[{len(notes) + 1}]')}"
    cases = doc["cases"]
    parts = []
    for outcome in ("equal", "within 1 LSB", "refused", "n/a"):
        n = cases.get(f"{column}/{row}/{outcome}", 0)
        if not n:
            continue
        text = f"{n} {'n/a' if outcome == 'n/a' else outcome}"
        if outcome == "within 1 LSB":
            e = doc["ort_elements"]
            layer = _percent(e.get(f"ort/{row}/layer_differ", 0), e.get(f"ort/{row}/layer", 0))
            output = _percent(e.get(f"ort/{row}/output_differ", 0), e.get(f"ort/{row}/output", 0))
            text += f" (codes differing: layers {layer}, outputs {output})"
        if outcome in ("refused", "n/a"):
            for reason in doc["reasons"].get(f"{column}/{row}", {}):
                notes.setdefault(reason, f"[{len(notes) + 1}]")
            text += " " + "".join(notes[r] for r in doc["reasons"].get(f"{column}/{row}", {}))
        parts.append(text)
    if not parts:
        return "not run"
    if row == "example":
        images = doc["example_images"].get(f"{column}/example", 0)
        parts[0] = parts[0].replace("1 ", "", 1) + f" on {images} eval images"
    return ", ".join(parts)


def _table(doc: dict) -> tuple[str, list[str]]:
    from qcc.testing.nets import SCHEME_PIPELINES

    rows = [*SCHEME_PIPELINES, "example"]
    notes: dict[str, str] = {}
    lines = [f"| scheme | {' | '.join(COLUMNS)} |", "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row} | {' | '.join(_cell(doc, c, row, notes) for c in COLUMNS)} |")
    return "\n".join(lines), [f"{mark} {reason}" for reason, mark in notes.items()]


def _reruns(run: dict) -> str:
    return "".join(f"; {', '.join(r['columns'])} re-run later: {r['seconds']} s, pytest exit {r['pytest_exit']}"
                   for r in run.get("reruns", []))


def _markdown(doc: dict) -> str:
    run, ci = doc["run"], doc.get("ci_defaults") or {}
    table, notes = _table(doc)
    per_cell = ", ".join(f"{c} {ci.get('nets_per_cell', {}).get(c, '?')}" for c in COLUMNS)
    images = ", ".join(f"{c} {ci.get('example_images', {}).get(c, '?')}" for c in COLUMNS)
    return (
        f"{run['nets_per_cell']} random nets per scheme cell ({run['fpga_nets_per_cell']} for fpga), the example "
        f"on {run['example_images']} eval images ({run['fpga_example_images']} for fpga); {run['seconds']} s on "
        f"the 2-core AMD znver4 host (shared with other jobs), pytest exit {run['pytest_exit']}{_reruns(run)}. "
        "'equal': "
        "outputs bit-identical to the integer interpreter (targets: on 3 calibration + 2 noise inputs per net; "
        "ort: every quantizer fed qcc's codes, and the whole export end to end); 'within 1 LSB': onnxruntime's "
        "float32 requantization (at or near .5 ties) or its exact residual add lands 1 code off qcc on the "
        "fraction of codes shown (asserted <= 1 LSB per layer; end to end the output accumulators that differ "
        "are counted); 'refused': a clear compile-time error; 'n/a': not expressible as QDQ ONNX. A scheme's "
        "random nets that its pipeline leaves without that scheme's quantizer (e.g. a 2-layer net under "
        "binarize{keep_first_last}) count where they ran.\n\n"
        f"{table}\n\n" + "\n".join(notes) + "\n\n"
        f"In CI (defaults of tests/equivalence/test_matrix.py): {per_cell} nets per scheme cell; the example "
        f"row on {images} eval images.\n\n"
        "Reading: every target cell that compiles is bit-identical to the interpreter. The gaps are refusals "
        "by design, not mismatches: the fpga RTL streams whole maps (no crop regions) and cannot reproduce "
        "a float BatchNormalization whose value reaches a GlobalAveragePool or a residual Add before any "
        "quantizer, which every thresholds net here keeps (fold-bn{thresholds=true} only converts BN -> ReLU "
        "-> quantizer chains). onnxruntime is 1 LSB off qcc on a small fraction of codes by design (float32 "
        "requantization vs qcc's fixed-point multiplier; exact vs scale-aligned residual adds); end to end "
        "those codes move some output accumulators. Schemes beyond 8-bit uniform grids have no QDQ form.\n")


def _drop_columns(doc: dict, columns: list[str]) -> dict:
    """The results without the cells of `columns` (which a re-run replaces)."""
    def keep(key: str) -> bool:
        return key.split("/")[0] not in columns

    return {k: ({key: v for key, v in doc.get(k, {}).items() if keep(key)})
            for k in ("cases", "ort_elements", "example_images", "reasons", "failed")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=15, help="random nets per cell")
    p.add_argument("--fpga-examples", type=int, default=None, help="random nets per fpga cell (default: --examples)")
    p.add_argument("--images", type=int, default=64, help="eval images of the example row")
    p.add_argument("--fpga-images", type=int, default=64, help="eval images of the example's fpga cell (Icarus)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for matrix.json and matrix.md")
    p.add_argument("--columns", default="", help="re-run only these columns (comma-separated, e.g. 'cpu') "
                   "and replace their cells in an existing matrix.json of the same settings")
    args = p.parse_args()
    env = dict(os.environ, QCC_MATRIX_EXAMPLES=str(args.examples), QCC_MATRIX_EXAMPLE_IMAGES=str(args.images))
    env["QCC_MATRIX_EXAMPLE_IMAGES_FPGA"] = str(args.fpga_images)
    if args.fpga_examples is not None:
        env["QCC_MATRIX_EXAMPLES_FPGA"] = str(args.fpga_examples)
    settings = {"nets_per_cell": args.examples, "fpga_nets_per_cell": args.fpga_examples or args.examples,
                "example_images": args.images, "fpga_example_images": args.fpga_images}
    columns = [c for c in args.columns.split(",") if c]
    if columns:
        old = json.loads((args.results / "matrix.json").read_text())
        if any(old["run"][k] != v for k, v in settings.items()):
            p.error(f"--columns needs the settings of the existing run: {old['run']}")
        code, new, seconds = _run(" or ".join(columns), env)
        doc = _merge([_drop_columns(old, columns), new])
        doc["run"] = old["run"]
        doc["run"]["reruns"] = [*old["run"].get("reruns", []), {"columns": columns, "pytest_exit": code,
                                                                 "seconds": round(seconds)}]
    else:
        runs = [_run(f"not ({LATE})", env), _run(LATE, env)]
        doc = _merge([d for _, d, _ in runs])
        code = max(c for c, _, _ in runs)
        doc["run"] = {**settings, "pytest_exit": code, "seconds": round(sum(s for _, _, s in runs))}
    (args.results / "matrix.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    text = _markdown(doc)
    (args.results / "matrix.md").write_text(text)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
