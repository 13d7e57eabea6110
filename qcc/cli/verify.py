"""`qcc verify`: compile a model for one target or all, and check it against the integer interpreter.

Exit 0 when every checked input gives outputs equal to the interpreter's, 1 on a mismatch (with the
shrunk counterexample saved as .npz, the first layer that differs, and the command that replays it),
2 for user errors as everywhere else.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import numpy as np

from qcc.errors import QccError

__all__ = ["cmd_verify", "add_verify_parser"]

EXIT_MISMATCH = 1


def _targets(name: str) -> list[str]:
    from qcc.target import registered_targets

    return registered_targets() if name == "all" else [name]


def _replay_command(args, target: str, counterexample: Path) -> str:
    argv = ["qcc", "verify"] + ([args.model] if args.model else []) + ["--target", target, "--inputs",
                                                                       str(counterexample)]
    for flag in ("calib", "config", "arch", "energy_budget", "device", "cycles_per_frame", "lut_budget"):
        value = getattr(args, flag, None)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(argv)


def _verify_one(args, name: str, model: Path, given) -> tuple[str, bool]:
    from qcc.cli import _progress, _target, compile_graph
    from qcc.io import write_npz
    from qcc.verification import check_inputs, compile_to, verify_target

    target = _target(args, name)
    graph, ctx = compile_graph(args, target, model)
    with tempfile.TemporaryDirectory(prefix=f"qcc-verify-{name}-") as tmp:
        artifacts = compile_to(target, graph, Path(tmp))
        if given is not None:
            result = check_inputs(graph, target, artifacts, given)
        else:
            result = verify_target(graph, target, artifacts, calibration=ctx.config.get("calib"),
                                   examples=args.examples, seed=args.seed, progress=_progress(args))
    cases = ", ".join(f"{n} {kind}" for kind, n in sorted(result.cases.items()))
    if result.passed:
        return f"{name}: PASS: {sum(result.cases.values())} inputs ({cases}) equal the integer interpreter", True
    m = result.mismatch
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"counterexample-{name}.npz"
    write_npz(path, m.inputs)
    where = f"first differing layer: {m.layer}" if m.layer else "no single layer's prefix shows it"
    lines = [f"{name}: MISMATCH: output '{m.output}' differs in {m.differing_elements} element(s), "
             f"max |diff| {m.max_abs_diff:.6g} ({sum(result.cases.values())} inputs checked: {cases})",
             f"  {where}",
             f"  counterexample (shrunk): {path}",
             f"  replay: {_replay_command(args, name, path)}"]
    return "\n".join(lines), False


def cmd_verify(args) -> int:
    from qcc.cli import _model_arg
    from qcc.io import load_arrays

    if args.examples < 1:
        raise QccError(f"--examples must be at least 1, got {args.examples}")
    names = _targets(args.target)
    model = _model_arg(args.model)
    given = None
    if args.inputs:
        given = {k: np.asarray(v, np.float32) for k, v in load_arrays(args.inputs).items()}
    ok = True
    for name in names:
        line, passed = _verify_one(args, name, model, given)
        print(line, flush=True)
        ok = ok and passed
    return 0 if ok else EXIT_MISMATCH


def add_verify_parser(sub, add_pass_options, add_target_options) -> None:
    p = sub.add_parser("verify", help="check a compiled target against the integer interpreter on generated inputs")
    p.add_argument("model", nargs="?", metavar="MODEL", help="default: the bundled example")
    p.add_argument("--target", required=True, metavar="T", help="cpu | cim | fpga | all")
    p.add_argument("--examples", type=int, default=100, metavar="N", help="generated inputs per target (100)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the input search (0)")
    p.add_argument("--inputs", metavar="INPUTS.npz", help="check these inputs only (e.g. a saved counterexample)")
    p.add_argument("--save-dir", default=".", metavar="DIR", help="where a counterexample is saved (.)")
    add_target_options(p)
    add_pass_options(p)
    p.set_defaults(func=cmd_verify)
