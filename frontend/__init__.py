"""Frontends: read models into the IR and write them back out.

`load_model` / `save_model` pick the format by file suffix (.onnx or .qir); `apply` runs passes on
an ONNX ModelProto (import -> passes -> export), so other compilers can use qcc passes without
adopting its IR.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qcc.errors import QccError
from qcc.ir.graph import Graph
from qcc.pass_manager import Pass, PassContext, run_pipeline

__all__ = ["load_model", "save_model", "apply", "MODEL_SUFFIXES"]

MODEL_SUFFIXES = (".onnx", ".qir")


def load_model(path: os.PathLike | str) -> Graph:
    """Import an .onnx or .qir file (a .qir's weights come from the .npz beside it)."""
    p = Path(path)
    if p.suffix not in MODEL_SUFFIXES:
        raise QccError(f"{p}: unknown model format '{p.suffix}'; expected .onnx or .qir")
    if not p.is_file():
        raise QccError(f"model file {p} does not exist")
    if p.suffix == ".onnx":
        from qcc.frontend.onnx import import_model

        return import_model(p)
    from qcc.frontend.qir import load

    return load(p)


def save_model(graph: Graph, path: os.PathLike | str, *, onnx_format: str = "qonnx") -> None:
    """Write .qir (+ .npz weights) or .onnx, atomically."""
    p = Path(path)
    if p.suffix == ".qir":
        from qcc.frontend.qir import save

        save(graph, p)
        return
    if p.suffix == ".onnx":
        from qcc.frontend.onnx import save_model as save_onnx

        save_onnx(graph, p, format=onnx_format)
        return
    raise QccError(f"{p}: cannot write format '{p.suffix}'; expected .onnx or .qir")


def apply(passes: str | Sequence[Pass], model, ctx: PassContext | None = None):
    """Run passes on a Graph (in place, returned) or on an ONNX ModelProto (a new ModelProto)."""
    import onnx

    if isinstance(model, Graph):
        run_pipeline(model, passes, ctx)
        return model
    if isinstance(model, onnx.ModelProto):
        from qcc.frontend.onnx import export_model, import_model

        graph = import_model(model)
        run_pipeline(graph, passes, ctx)
        return export_model(graph)
    raise TypeError(f"expected a qcc Graph or an onnx.ModelProto, got {type(model).__name__}")
