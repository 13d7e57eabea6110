"""The IR verifier: structure, types, shapes and annotation consistency.

Bad cases are checked first and each raises a VerifyError that names the node or value.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from qcc.errors import VerifyError
from qcc.ir.graph import Graph, Value
from qcc.ir.quant import Bipolar, Codebook, QuantSpec, Thresholds, Uniform
from qcc.ir.types import TensorType
from qcc.ops import get_op

__all__ = ["verify"]


def verify(graph: Graph) -> None:
    """Raise VerifyError on the first broken invariant; return None when the graph is well formed."""
    defined = _check_definitions(graph)
    _check_acyclic(graph)
    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if v is not None and id(v) not in defined:
                raise VerifyError(f"node '{node.name}' ({node.op}) input {i} uses '{v.name}', "
                                  f"which is not defined in graph '{graph.name}' (dangling value)")
            if v is not None and (node, i) not in v.uses:
                raise VerifyError(f"value '{v.name}' does not record its use by node '{node.name}'")
        opdef = get_op(node.op, node_name=node.name)
        inferred = opdef.infer_types(node.input_types(), node.attrs, node_name=node.name)
        if len(inferred) != len(node.outputs):
            raise VerifyError(f"node '{node.name}' ({node.op}) has {len(node.outputs)} outputs, "
                              f"the op defines {len(inferred)}")
        for out, t in zip(node.outputs, inferred):
            if out.producer is not node:
                raise VerifyError(f"value '{out.name}' does not name node '{node.name}' as its producer")
            if not _compatible(out.type, t):
                raise VerifyError(f"node '{node.name}' ({node.op}): output '{out.name}' is declared "
                                  f"{out.type} but the op infers {t} (shape mismatch)")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerifyError(f"graph output '{v.name}' is not defined in graph '{graph.name}'")
    for v in graph.values():
        _check_annotations(v)


def _check_definitions(graph: Graph) -> set[int]:
    defined: set[int] = set()
    names: set[str] = set()
    node_names: set[str] = set()
    for v in graph.values():
        if v.name in names:
            raise VerifyError(f"value name '{v.name}' is defined twice")
        names.add(v.name)
        defined.add(id(v))
    for v in graph.inputs:
        if v.producer is not None or v.is_constant:
            raise VerifyError(f"graph input '{v.name}' has a producer or data")
    for c in graph.constants:
        if c.data is None:
            raise VerifyError(f"constant '{c.name}' holds no data")
        if TensorType.of(c.data) != c.type:
            raise VerifyError(f"constant '{c.name}' is declared {c.type} but holds "
                              f"{TensorType.of(c.data)}")
    for node in graph.nodes:
        if node.name in node_names:
            raise VerifyError(f"node name '{node.name}' is used twice")
        node_names.add(node.name)
    return defined


def _check_acyclic(graph: Graph) -> None:
    index = graph.index()
    try:
        cycle = nx.find_cycle(index)
    except nx.NetworkXNoCycle:
        return
    raise VerifyError(f"graph '{graph.name}' has a cycle: " + " -> ".join(u.name for u, _ in cycle))


def _compatible(declared: TensorType, inferred: TensorType) -> bool:
    if declared.dtype != inferred.dtype or declared.rank != inferred.rank:
        return False
    return all(isinstance(a, str) or isinstance(b, str) or a == b
               for a, b in zip(declared.shape, inferred.shape))


def _check_annotations(v: Value) -> None:
    spec: QuantSpec | None = v.quant
    rank = v.type.rank
    if spec is not None:
        axis = getattr(spec, "axis", None)
        if axis is not None and axis >= rank and (spec.channels or 0) > 1:
            raise VerifyError(f"value '{v.name}': {spec.scheme} axis {axis} is out of range for {v.type}")
        n = spec.channels
        if n is not None and axis is not None and axis < rank:
            dim = v.type.shape[axis]
            if isinstance(dim, int) and n not in (1, dim):
                raise VerifyError(f"value '{v.name}': {n} per-channel {spec.scheme} parameters for "
                                  f"{dim} channels on axis {axis}")
        if isinstance(spec, Codebook) and not v.is_constant:
            raise VerifyError(f"value '{v.name}': codebook quantization applies to constants (weights) only")
        if v.is_constant and isinstance(spec, Uniform | Bipolar | Codebook):
            _check_on_grid(v, spec)
        if isinstance(spec, Thresholds) and v.is_constant:
            raise VerifyError(f"value '{v.name}': threshold activations do not apply to constants")
    region = v.region
    if region is not None:
        if rank != 4:
            raise VerifyError(f"value '{v.name}': a crop region needs an NCHW feature map, got {v.type}")
        h, w = v.type.shape[2], v.type.shape[3]
        if isinstance(h, int) and isinstance(w, int) and not region.fits(h, w):
            raise VerifyError(f"value '{v.name}': crop {list(region.as_tuple())} is larger than the "
                              f"{h}x{w} feature map")


def _check_on_grid(v: Value, spec: QuantSpec) -> None:
    """Constants with an annotation must already hold representable values."""
    from qcc.numerics import fake_quant

    data = np.asarray(v.data, dtype=np.float32)
    if not np.array_equal(fake_quant(data, spec), data):
        raise VerifyError(f"constant '{v.name}' holds values that its {spec.scheme} annotation cannot "
                          f"represent (quantize the data, not just the annotation)")
