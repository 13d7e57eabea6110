"""The CPU target: `qcc compile --target cpu` builds bit-serial TVM kernels for the quantized layers.

Lowering (one .so per accelerated layer, documented choice): every Conv / Gemm whose activation and
weights are integer (qcc.targets.cpu.layers.plan_layer) gets its own kernel, built with
tvm.compile for the host CPU and exported as OUTDIR/kernels/<k>.so, its bit-packed weights and
zero-point correction in OUTDIR/params.npz, its kernel spec in OUTDIR/layers.json, next to the
quantized graph OUTDIR/model.qir. Per-layer libraries keep each build small and let a layer be
rebuilt or swapped alone; the graph itself stays the schedule that calls them in order.

Simulation runs the graph with the integer semantics (qcc.integer) and dispatches each accelerated
layer's accumulator to its compiled kernel (loaded with tvm.runtime.load_module); everything else
(requantization, thresholds, pooling, residual adds, float islands) is the reference code itself,
so the whole model equals `qcc.interp.run(graph, x, mode="int")` bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qcc.crop import evaluate_interior
from qcc.errors import QccError
from qcc.integer import IntegerSemantics, evaluate_node
from qcc.ir.graph import Graph, Node
from qcc.target import Artifacts, CostReport, LayerCost, LegalBits, Target

__all__ = ["CpuTarget", "CpuSemantics", "load_layers"]

_LAYERS_FILE = "layers.json"
_PARAMS_FILE = "params.npz"
_MODEL_FILE = "model.qir"
_BITS = tuple(range(1, 9))


def _require_tvm() -> None:
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise QccError("the cpu target needs Apache TVM: pip install 'qcc[cpu]'") from None


class CpuSemantics(IntegerSemantics):
    """Integer semantics with the accelerated layers' accumulators computed by TVM kernels."""

    def __init__(self, kernels: Mapping[str, object]):
        super().__init__()
        self.kernels = dict(kernels)

    def _node(self, node: Node, args: list) -> list:
        from qcc.targets.cpu.layers import accelerated_result

        kernel = self.kernels.get(node.name)
        return evaluate_node(node, args) if kernel is None else accelerated_result(node, args, kernel)

    def evaluate(self, node: Node, args: list) -> list:
        if not self.skip_cropped:
            return self._node(node, args)
        return evaluate_interior(node, args, self._node)


def _word_ops(node: Node, plan) -> float:
    from qcc.targets.cpu.kernels import ConvSpec

    spec = plan.spec
    a_planes = 1 if spec.bipolar else spec.a_bits
    if isinstance(spec, ConvSpec):
        oh, ow = spec.out_hw
        return float(a_planes * spec.w_bits * spec.words * spec.kh * spec.kw * spec.co * oh * ow)
    return float(a_planes * spec.w_bits * spec.words * spec.n)


def load_layers(directory: Path) -> dict[str, object]:
    """The compiled layer kernels of a lowered folder, by node name."""
    import tvm

    from qcc.targets.cpu.layers import LayerKernel, LayerPlan, spec_from_json

    directory = Path(directory)
    try:
        doc = json.loads((directory / _LAYERS_FILE).read_text())
        params = np.load(directory / _PARAMS_FILE)
    except (OSError, ValueError) as e:
        raise QccError(f"{directory} has no readable cpu kernels: {e}") from None
    kernels = {}
    for entry in doc["layers"]:
        plan = LayerPlan(entry["node"], spec_from_json(entry["spec"]), params[f"{entry['key']}_wp"],
                         params[f"{entry['key']}_corr"], int(entry["qmin"]), int(entry["zx"]))
        lib = tvm.runtime.load_module(str(directory / entry["library"]))
        kernels[entry["node"]] = LayerKernel(plan, lib["main"])
    return kernels


class CpuTarget(Target):
    """Bit-serial (AND / XNOR + popcount) TVM kernels for this machine's CPU."""

    name = "cpu"

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

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        _require_tvm()
        from qcc.frontend.qir import save
        from qcc.targets.cpu.kernels import DenseSpec, build_conv, build_dense
        from qcc.targets.cpu.layers import plan_layer, spec_to_json

        out_dir = Path(out_dir)
        (out_dir / "kernels").mkdir(parents=True, exist_ok=True)
        save(graph, out_dir / _MODEL_FILE)
        entries, params, files = [], {}, {"model": out_dir / _MODEL_FILE}
        for index, node in enumerate(n for n in graph.nodes if plan_layer(n) is not None):
            plan = plan_layer(node)
            key = f"L{index}"
            lib = (build_dense if isinstance(plan.spec, DenseSpec) else build_conv)(plan.spec)
            so = out_dir / "kernels" / f"{key}.so"
            lib.export_library(str(so))
            params[f"{key}_wp"], params[f"{key}_corr"] = plan.wp, plan.corr
            entries.append({"node": node.name, "key": key, "library": f"kernels/{key}.so",
                            "spec": spec_to_json(plan.spec), "qmin": plan.qmin, "zx": plan.zx})
            files[f"kernel:{node.name}"] = so
        np.savez(out_dir / _PARAMS_FILE, **params)
        (out_dir / _LAYERS_FILE).write_text(json.dumps({"layers": entries}, indent=2) + "\n")
        files.update({"params": out_dir / _PARAMS_FILE, "layers": out_dir / _LAYERS_FILE})
        return Artifacts(directory=out_dir, files=files, target=self.name)

    def simulate(self, artifacts: Artifacts, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _require_tvm()
        from qcc.frontend.qir import load
        from qcc.interp import run

        directory = Path(artifacts.directory)
        graph = load(directory / _MODEL_FILE)
        return run(graph, inputs, mode=CpuSemantics(load_layers(directory)))
