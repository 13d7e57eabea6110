"""The `qcc` command line: the one place in the core that wires frontends, passes and targets.

Exit codes: 0 ok, 2 user error (one line on stderr, no traceback), 1 internal error (a bug in qcc).
Outputs are written atomically: a failing command leaves no file behind.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from qcc import __version__
from qcc.errors import QccError

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2

# compile options handed to the target's constructor (each target rejects those it does not take)
TARGET_OPTIONS = ("arch", "energy_budget", "device", "cycles_per_frame", "lut_budget", "synth", "pnr")


class _UsageError(QccError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as QccError (exit 2, one line) instead of exiting itself."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _load(path):
    from qcc.frontend import load_model

    return load_model(path)


def _default_model() -> Path:
    from qcc.examples import MODEL

    return Path(MODEL)


def _model_arg(value: str | None) -> Path:
    return Path(value) if value else _default_model()


def _progress(args):
    if getattr(args, "quiet", False):
        return None
    if not sys.stderr.isatty() and not getattr(args, "progress", False):
        return None
    return lambda msg: print(f"qcc: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ commands

def cmd_import(args) -> int:
    from qcc.frontend import save_model

    out = Path(args.output)
    if out.suffix != ".qir":
        raise QccError(f"output {out} must end in .qir (weights go to {out.with_suffix('.npz').name})")
    if Path(args.model).suffix != ".onnx":
        raise QccError(f"{args.model} must be an .onnx model (import converts ONNX to .qir)")
    graph = _load(args.model)
    save_model(graph, out)
    return EXIT_OK


def cmd_show(args) -> int:
    graph = _load(args.model)
    if args.summary or args.json:
        from qcc.report import summarize

        report = summarize(graph, config={"command": "show", "model": str(args.model)})
        sys.stdout.write(report.to_json() if args.json else report.table())
        return EXIT_OK
    from qcc.frontend.qir import print_graph

    sys.stdout.write(print_graph(graph))
    return EXIT_OK


def cmd_run(args) -> int:
    from qcc.interp import run
    from qcc.io import load_arrays, save_npz

    inputs = load_arrays(args.inputs)
    if Path(args.model).is_dir():  # a compiled folder: run the target's artifacts
        from qcc.target import get_target, read_artifacts

        artifacts = read_artifacts(Path(args.model))
        outputs = get_target(artifacts.target).simulate(artifacts, inputs)
        save_npz(args.output, {k: np.asarray(v) for k, v in outputs.items()})
        print(f"wrote {args.output} ({artifacts.target} artifacts in {args.model})")
        return EXIT_OK
    graph = _load(args.model)
    mode = args.mode
    if mode == "auto":
        annotated = any(v.quant is not None or v.region is not None for v in graph.values())
        mode = "int" if annotated else "float"
    outputs = run(graph, inputs, mode=mode)
    save_npz(args.output, {k: np.asarray(v) for k, v in outputs.items()})
    shapes = ", ".join(f"{k} {'x'.join(map(str, np.shape(v)))}" for k, v in outputs.items())
    print(f"wrote {args.output} ({shapes}; {mode} semantics)")
    labels = inputs.get("y")
    if labels is not None and len(outputs) == 1:
        (logits,) = outputs.values()
        if logits.ndim == 2 and len(logits) == len(labels):
            top1 = float(np.mean(np.argmax(logits, axis=1) == labels))
            print(f"top-1 accuracy against y: {100 * top1:.2f} % ({len(labels)} samples)")
    return EXIT_OK


def _context(args):
    from qcc.pass_manager import DumpIRInstrument, PassContext, PrintAfterInstrument, TimingInstrument

    ctx = PassContext(progress=_progress(args))
    ctx.config["progress"] = True if args.progress else (False if args.quiet else None)  # progress bars
    timing = None
    if args.time_passes:
        timing = TimingInstrument()
        ctx.instruments.append(timing)
    if args.print_after_all:
        from qcc.frontend.qir import print_graph

        ctx.instruments.append(PrintAfterInstrument(print_graph, sys.stderr))
    if args.dump_dir:
        from qcc.frontend.qir import save

        ctx.instruments.append(DumpIRInstrument(args.dump_dir, save))
    if args.calib:
        from qcc.io import load_arrays

        ctx.config["calib"] = load_arrays(args.calib, what="calibration")
    if args.config:
        from qcc.config import load_config

        ctx.config["quant_config"] = load_config(args.config)
    budgets = {k: getattr(args, k) for k in ("weight_budget", "act_budget", "bops_budget")
               if getattr(args, k, None) is not None}
    if budgets:
        ctx.config["budgets"] = budgets
    return ctx, timing


def cmd_opt(args) -> int:
    from qcc.frontend import save_model
    from qcc.pass_manager import parse_pipeline, run_pipeline

    passes = parse_pipeline(args.pipeline)  # bad pipelines fail before any work
    if any(getattr(args, k) for k in ("weight_budget", "act_budget", "bops_budget")) \
            and not any(p.name == "assign-bits" for p in passes):
        raise QccError("budgets are applied by the assign-bits pass; add it to the pipeline, e.g. "
                       "-p \"fold-bn,calibrate,annotate-sensitivity,assign-bits,quantize\"")
    out = Path(args.output)
    if out.suffix not in (".qir", ".onnx"):
        raise QccError(f"output {out} must end in .qir or .onnx")
    graph = _load(args.model)
    ctx, timing = _context(args)
    run_pipeline(graph, passes, ctx)
    save_model(graph, out, onnx_format=args.onnx_format)
    if args.report:
        from qcc.io import write_bytes
        from qcc.report import summarize

        report = summarize(graph, config={"command": "opt", "model": str(args.model), "pipeline": args.pipeline})
        write_bytes(args.report, report.to_json().encode())
    if timing is not None:
        print(timing.table(), file=sys.stderr)
    return EXIT_OK


def _target(args, name: str):
    from qcc.target import get_target

    options = {k: getattr(args, k) for k in TARGET_OPTIONS if getattr(args, k, None) not in (None, False)}
    return get_target(name, **options)


def compile_graph(args, target, model: Path):
    """The model after the target's default pipeline, with the command's pass options (shared by compile, verify)."""
    from qcc.pass_manager import run_pipeline

    graph = _load(model)
    ctx, timing = _context(args)
    if "calib" not in ctx.config and model.resolve() == _default_model().resolve():  # the bundled example
        from qcc.examples import CALIB
        from qcc.io import load_arrays

        ctx.config["calib"] = load_arrays(CALIB, what="calibration")
    ctx.config["target"] = target
    if "quant_config" in ctx.config:
        target.configure(ctx.config["quant_config"])  # per-layer target settings (e.g. FPGA pe / simd)
    run_pipeline(graph, target.default_pipeline, ctx)
    if timing is not None:
        print(timing.table(), file=sys.stderr)
    return graph, ctx


def cmd_compile(args) -> int:
    from qcc.io import atomic_dir, check_output_dir
    from qcc.report import summarize
    from qcc.target import Artifacts, write_artifacts

    target = _target(args, args.target)  # an unknown or unavailable target fails before any work
    check_output_dir(args.output)
    model = _model_arg(args.model)
    evaluation = _eval_data(args.eval) if args.eval else None
    graph, ctx = compile_graph(args, target, model)
    if target.accumulator_bits and not args.allow_overflow:
        _refuse_overflow(graph, target)
    with atomic_dir(args.output) as staging:
        artifacts = target.lower(graph, staging)
        write_artifacts(Artifacts(directory=staging, files=artifacts.files, target=target.name))
        accuracy = None
        if evaluation is not None:
            accuracy = measure_accuracy(graph, target, Artifacts(staging, artifacts.files, target.name),
                                        *evaluation, progress=ctx.progress)
        report = summarize(graph, config={"command": "compile", "target": args.target, "model": str(model)},
                           target=target, accuracy=accuracy)
        (staging / "report.json").write_text(report.to_json())
    sys.stdout.write(report.table())
    if args.explain:
        from qcc.target import explain_table

        sys.stdout.write("\n" + explain_table(graph, target))
    if accuracy is not None:
        same = "bit-identical to" if accuracy["target_equals_int"] else "DIFFERENT from"
        print(f"top-1 on {accuracy['eval_samples']} samples: {args.target} {100 * accuracy['target_top1']:.2f} %, "
              f"integer interpreter {100 * accuracy['int_top1']:.2f} % (outputs {same} the interpreter's)")
    return EXIT_OK


def _refuse_overflow(graph, target) -> None:
    """A design whose accumulators can overflow the target's width is a user error (qcc.ranges proves it)."""
    from qcc.ranges import prove_no_overflow

    violations = prove_no_overflow(graph, target.accumulator_bits)
    if violations:
        more = f"; {len(violations) - 1} more layer(s) too" if len(violations) > 1 else ""
        raise QccError(f"target '{target.name}': {violations[0].message()}{more}; use fewer bits for that layer "
                       f"(--config) or pass --allow-overflow to accept wrapped results")


def _eval_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of an evaluation file: an .npz with float inputs 'x' and integer labels 'y'."""
    from qcc.io import load_arrays

    data = load_arrays(path, what="evaluation")
    if "x" not in data or "y" not in data:
        raise QccError(f"evaluation file {path} must hold arrays 'x' (inputs) and 'y' (labels); "
                       f"it holds {', '.join(sorted(data)) or 'nothing'}")
    x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"])
    if len(x) == 0:
        raise QccError(f"evaluation file {path} holds no samples")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise QccError(f"evaluation file {path}: 'y' must be one integer label per sample of 'x' "
                       f"({len(x)} samples)")
    return x, y


def measure_accuracy(graph, target, artifacts, x: np.ndarray, y: np.ndarray, *, batch: int = 64,
                     progress=None) -> dict:
    """Top-1 of the compiled artifacts (target.simulate) next to the integer interpreter's, batch by batch."""
    from qcc.interp import run

    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QccError("--eval needs a model with one input and one output")
    name = graph.inputs[0].name
    hits_target = hits_int = 0
    equal = True
    for start in range(0, len(x), batch):
        if progress:
            progress(f"evaluating {start}/{len(x)}")
        xb, yb = x[start:start + batch], y[start:start + batch]
        (ref,) = run(graph, {name: xb}, mode="int").values()
        (out,) = target.simulate(artifacts, {name: xb}).values()
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.ndim != 2 or len(ref) != len(yb):
            raise QccError(f"--eval needs a classifier: the output has shape {ref.shape}, not [N, classes]")
        equal = equal and out.shape == ref.shape and np.array_equal(out, ref)
        hits_target += int(np.sum(np.argmax(out, axis=1) == yb))
        hits_int += int(np.sum(np.argmax(ref, axis=1) == yb))
    return {"eval_samples": int(len(x)), "target_top1": hits_target / len(x), "int_top1": hits_int / len(x),
            "target_equals_int": bool(equal)}


# ------------------------------------------------------------------------------ parser

def _add_pass_options(p) -> None:
    p.add_argument("--calib", metavar="CALIB.npz", help="calibration data (x float32 NCHW, y labels)")
    p.add_argument("--config", metavar="LAYERS.toml", help="per-layer quantization configuration")
    p.add_argument("--weight-budget", metavar="SIZE", help="weight memory for assign-bits, e.g. 1Mb, 64KB")
    p.add_argument("--act-budget", metavar="SIZE", help="on-chip activation buffer for assign-bits, e.g. 64KB")
    p.add_argument("--bops-budget", metavar="N", help="bit operations for assign-bits, e.g. 2G")
    p.add_argument("--time-passes", action="store_true", help="print the time each pass took")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--dump-dir", metavar="DIR", help="write the IR after every pass as DIR/NNN_<pass>.qir")
    p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def _add_target_options(p) -> None:
    p.add_argument("--arch", metavar="ARCH.toml", help="cim: architecture description (default: ISAAC)")
    p.add_argument("--energy-budget", metavar="E", help="cim: energy per inference for assign-bits, e.g. 5uJ")
    p.add_argument("--device", choices=["ice40", "ecp5", "xilinx"], help="fpga: synthesis family")
    p.add_argument("--cycles-per-frame", type=int, metavar="N", help="fpga: throughput target for folding")
    p.add_argument("--lut-budget", type=int, metavar="N", help="fpga: resource budget for folding")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qcc", description="qcc: a quantization compiler for neural networks.")
    parser.add_argument("--version", action="version", version=f"qcc {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("import", help="import an ONNX model into qcc's text IR (.qir + .npz)")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.qir")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("show", help="print a model's IR, or a per-layer summary")
    p.add_argument("model", metavar="MODEL", help=".onnx or .qir")
    p.add_argument("--summary", action="store_true", help="per-layer table: op, shape, MACs, params, activations")
    p.add_argument("--json", action="store_true", help="the per-layer summary as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("run", help="interpret a model on inputs from .npz/.npy")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("inputs", metavar="INPUTS.npz")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUTS.npz")
    p.add_argument("--mode", choices=["auto", "float", "fake", "int"], default="auto",
                   help="semantics: float reference, fake-quant float, or integer-exact "
                        "(auto: int when the model is quantized, else float)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("opt", help="run a pass pipeline and write the result")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-p", "--pipeline", required=True, help='e.g. "canonicalize,fold-bn"')
    p.add_argument("-o", "--output", required=True, metavar="OUT.(qir|onnx)")
    p.add_argument("--onnx-format", choices=["qonnx", "qdq"], default="qonnx",
                   help="how quantization annotations are written to ONNX")
    p.add_argument("--report", metavar="REPORT.json", help="write the per-layer report (qcc.report/1)")
    _add_pass_options(p)
    p.set_defaults(func=cmd_opt)

    p = sub.add_parser("compile", help="compile a model for a target (default model: the bundled example)")
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument("--target", required=True, metavar="T", help="cpu | cim | fpga")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--eval", metavar="EVAL.npz", help="evaluation data for measured accuracy")
    _add_target_options(p)
    p.add_argument("--synth", action="store_true", help="fpga: synthesize with Yosys")
    p.add_argument("--pnr", action="store_true", help="fpga: place and route with nextpnr")
    p.add_argument("--allow-overflow", action="store_true",
                   help="compile even when an accumulator can overflow the target's width (see range-analysis)")
    p.add_argument("--explain", action="store_true",
                   help="print, per node, which kernel / crossbar mapping / RTL block it became and why")
    _add_pass_options(p)
    p.set_defaults(func=cmd_compile)

    from qcc.cli.analyze import add_analyze_parser
    from qcc.cli.verify import add_verify_parser

    add_analyze_parser(sub, _add_pass_options)
    add_verify_parser(sub, _add_pass_options, _add_target_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    show_tb = "--traceback" in argv
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "command", None):
            raise _UsageError("no command given; commands: import, show, run, opt, compile, analyze, verify "
                              "(see 'qcc --help')")
        return args.func(args)
    except QccError as e:
        print(f"qcc: error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("qcc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug in qcc: say so plainly, keep the traceback for --traceback
        if show_tb:
            traceback.print_exc()
        notes = " ".join(getattr(e, "__notes__", []))
        print(f"qcc: internal error: {type(e).__name__}: {e} {notes}".rstrip()
              + "\n(this is a bug in qcc; rerun with --traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL
