"""The CPU target: `qcc compile --target cpu` builds the quantized graph into ONE TVM module.

Lowering (qcc.targets.cpu.module, its docstring justifies Relax): the whole quantized graph becomes
Relax functions over pre-scheduled TIR: input quantization, bit-serial (AND / XNOR + popcount)
Conv / Gemm kernels (qcc.targets.cpu.kernels) with the bias folded into their correction term,
requantization, thresholds, pooling, residual adds and dequantized outputs, compiled once for the
host CPU into OUTDIR/model.so next to OUTDIR/params.npz (packed weights, corrections, multipliers),
OUTDIR/metadata.json (the call plan, kernels, nodes left to the host) and the quantized graph
OUTDIR/model.qir. `simulate` (and `qcc run OUTDIR`) runs the module through the Relax VM and equals
`qcc.interp.run(graph, x, mode="int")` bit for bit; `load(OUTDIR)` gives the same as a callable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node
from qcc.target import Artifacts, CostReport, LayerCost, LegalBits, Target

__all__ = ["CpuTarget", "load"]

_BITS = tuple(range(1, 9))
_LOADED: dict = {}


def _require_tvm() -> None:
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise QccError("the cpu target needs Apache TVM: pip install 'qcc[cpu]'") from None


def load(directory: Path):
    """The compiled model of a cpu folder as a callable: model({input: x}) -> {output: float array}."""
    _require_tvm()
    from qcc.targets.cpu.module import CompiledModel

    return CompiledModel(Path(directory))


def _cached(directory: Path):
    """The loaded model of a folder, reused while its files are unchanged (--eval calls per batch)."""
    from qcc.targets.cpu.module import METADATA_FILE

    key = str(Path(directory).resolve())
    stamp = (Path(directory) / METADATA_FILE).stat().st_mtime_ns
    hit = _LOADED.get(key)
    if hit is None or hit[0] != stamp:
        hit = _LOADED[key] = (stamp, load(directory))
    return hit[1]


def _word_ops(node: Node, plan) -> float:
    from qcc.targets.cpu.kernels import ConvSpec

    spec = plan.spec
    a_planes = 1 if spec.bipolar else spec.a_bits
    if isinstance(spec, ConvSpec):
        oh, ow = spec.out_hw
        return float(a_planes * spec.w_bits * spec.words * spec.kh * spec.kw * spec.co * oh * ow)
    return float(a_planes * spec.w_bits * spec.words * spec.n)


class CpuTarget(Target):
    """Bit-serial (AND / XNOR + popcount) TVM kernels for this machine's CPU."""

    name = "cpu"
    table_fields = ("word_ops", "a_bits", "w_bits")
    # The bit-serial kernels and every requantization accumulate in int64, so `qcc compile` proves the
    # model's accumulators fit 64 bits (qcc.ranges.prove_no_overflow). The int8 (VNNI) kernels
    # accumulate in int32, but the module only chooses them where the layer's exact accumulator bound
    # is below 2^31 (module._prefer_int8; int8.int8_accumulator_fits), so 64 is the binding width.
    accumulator_bits = 64

    def __init__(self, **options):
        if options:
            raise QccError(f"the cpu target takes no option {', '.join('--' + k.replace('_', '-') for k in options)}")

    def legal_bits(self, node: Node) -> LegalBits:
        return LegalBits(weight_bits=_BITS, activation_bits=_BITS,
                         schemes=("uniform", "fixed", "dynamic-fixed", "bipolar", "kmeans-linear",
                                  "kmeans-gaussian", "kmeans-lloyd", "kquantile"))

    @property
    def default_pipeline(self) -> str:
        return "canonicalize,fold-bn,calibrate,quantize"

    def cost(self, graph: Graph) -> CostReport:
        from qcc.targets.cpu.layers import plan_layer

        layers = []
        for node in graph.nodes:
            plan = plan_layer(node)
            if plan is None:
                continue
            layers.append(LayerCost(node.name, node.op, {"word_ops": _word_ops(node, plan),
                                                         "a_bits": float(plan.spec.a_bits),
                                                         "w_bits": float(plan.spec.w_bits)}))
        totals = {"word_ops": sum(c.fields["word_ops"] for c in layers), "accelerated_layers": float(len(layers))}
        return CostReport(tuple(layers), totals, {"word_ops": "64-bit AND/XNOR+popcount per sample"})

    def explain(self, graph: Graph) -> dict[str, tuple[str, str]]:
        _require_tvm()
        from qcc.targets.cpu.module import explain_lowering

        return explain_lowering(graph)

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        _require_tvm()
        from qcc.targets.cpu.module import build_module

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = build_module(graph, out_dir)
        _LOADED.pop(str(out_dir.resolve()), None)
        return Artifacts(directory=out_dir, files=files, target=self.name)

    def simulate(self, artifacts: Artifacts, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _cached(Path(artifacts.directory))(inputs)
