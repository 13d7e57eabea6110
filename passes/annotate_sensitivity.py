"""annotate-sensitivity: measure how much quantizing each variable of each layer hurts the network
(seed 002: Layer Analysis, then Network Space Exploration), and record it in attributes.

An analysis: the graph's structure and numbers are unchanged. For every layer (Conv, Gemm, MatMul;
or the `layers` option), each variable (its constant weights, its input activation), each scheme of
`schemes` valid for that variable (qcc.config.W_SCHEMES / A_SCHEMES; "float" needs no sweep) and
each bit-width of `bits` (bipolar is 1-bit only), ONLY that variable is quantized, as `quantize`
would (weights by `quantize_weights`, per output channel unless per_channel=false; activations by
`activation_spec` from the `calibrate` statistics, which must be there), and the calibration set is
run in fake-quant mode. The ENTRY recorded (seed 002 eq. 1, per-image Frobenius distances averaged
over the calibration images):

    node.attrs["sensitivity"] = {"weights": {scheme: {"<bits>": ENTRY}}, "activations": {...}}
    ENTRY = {"output_l2": mean_i sum_outputs ||y_float - y_quant||_F,
             "layers_l2": {downstream layer: mean_i ||L_float - L_quant||_F},
             "top1": accuracy | None, "top5": accuracy | None}      (with labels "y" in the calib data)
    graph.attrs["sensitivity"] = {"samples", "metric": "output_l2", "float_top1", "float_top5", "bits",
                                  and in group mode "group": [group names], "groups": {name: table}}

Group mode: each "a+b" of `groups` quantizes that variable of all its layers together.
The additive estimate of a configuration is the sum over layers of weights[w_scheme][w_bits].output_l2
+ activations[a_scheme][a_bits].output_l2; read tables with qcc.sensitivity.table(graph).

Speed (qcc.sensitivity): the float activations of the calibration set are cached once, and each
configuration re-evaluates only the nodes downstream of the quantized variable (bit-identical to a
full re-run); configurations run on a process pool of `workers` processes (1 = inline), or on a Dask
cluster at `cluster` ("tcp://host:port", or "local" for a LocalCluster). Attributes are written only
when the whole sweep has finished, so Ctrl-C or a failure leaves the graph as it was.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from qcc.calibration import batch_ranges, calibration_data, sample_count
from qcc.config import A_SCHEMES, W_SCHEMES
from qcc.errors import PassError, QccError
from qcc.ir.graph import Graph, Node
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.progress import bar
from qcc.sensitivity import (
    LAYER_OPS,
    Config,
    Sweep,
    SweepError,
    WeightFit,
    entries_by_key,
    input_quantizer,
    layer_variables,
    run_sweep,
)

__all__ = ["AnnotateSensitivityPass"]

_SCHEMES = {"weights": W_SCHEMES, "activations": A_SCHEMES}


@dataclass(frozen=True)
class AnnotateSensitivityPass(Pass):
    """Record per-layer, per-variable quantization sensitivity tables from calibration data."""

    name = "annotate-sensitivity"
    bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    schemes: tuple[str, ...] = ("uniform",)
    layers: tuple[str, ...] | None = None  # None = every layer
    groups: tuple[str, ...] = ()  # "name1+name2": quantized together
    samples: int | None = None
    batch_size: int = 64
    per_channel: bool = True
    centroid_bits: int = 8
    seed: int = 0
    workers: int | None = None  # None = os.cpu_count(); 1 = inline
    cluster: str | None = None  # Dask scheduler address, or "local"

    def __post_init__(self):
        if not self.bits:
            raise QccError("bits must list at least one bit-width")
        for b in self.bits:
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
                raise QccError(f"bits must be integers from 1 to 16, got {b!r}")
        if len(set(self.bits)) != len(self.bits):
            raise QccError(f"bits lists a bit-width twice: {list(self.bits)}")
        if not self.schemes:
            raise QccError("schemes must list at least one scheme")
        for s in self.schemes:
            if s not in W_SCHEMES and s not in A_SCHEMES:
                raise QccError(f"unknown scheme {s!r}; weight schemes: {', '.join(W_SCHEMES)}; "
                               f"activation schemes: {', '.join(A_SCHEMES)}")
        if self.samples is not None and self.samples < 1:
            raise QccError(f"samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise QccError(f"batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise QccError(f"workers must be at least 1, got {self.workers}")
        if self.cluster is not None and not self.cluster.strip():
            raise QccError("cluster must be a Dask scheduler address (tcp://host:port) or \"local\"")

    # ------------------------------------------------------------------------------ running
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = self._layers(graph, ctx)
        groups = self._groups(graph, ctx)
        calib = ctx.config.get("calib")
        try:
            data = calibration_data(graph, calib)
            count = sample_count(data)
        except QccError as e:
            raise PassError(self.name, str(e), ran_before=tuple(ctx.history)) from None
        count = min(count, self.samples) if self.samples is not None else count
        labels = calib.get("y") if isinstance(calib, dict) else None
        configs = self._configs(layers, groups)
        self._check_calibration(graph, configs, ctx)
        show = ctx.config.get("progress")
        if ctx.progress is not None:
            ctx.progress(f"annotate-sensitivity: {len(configs)} configurations on {count} samples")
        try:
            batches = batch_ranges(graph, count, self.batch_size)
            with bar(len(batches), "sensitivity: float reference", enabled=show) as b:
                sweep = Sweep(graph, data, batches, labels=labels, progress=b.update,
                              fit=WeightFit(self.per_channel, self.centroid_bits, self.seed))
            with bar(len(configs), "sensitivity", enabled=show) as b:
                entries = run_sweep(sweep, configs, workers=self.workers or os.cpu_count() or 1,
                                    cluster=self.cluster, progress=b.update)
        except SweepError as e:
            raise PassError(self.name, str(e), node=e.node_name, ran_before=tuple(ctx.history)) from None
        except QccError as e:
            raise PassError(self.name, str(e), ran_before=tuple(ctx.history)) from None
        info = {"samples": count, "metric": "output_l2", "bits": list(self.bits),
                **{f"float_{k}": v for k, v in sweep.float_accuracy().items()}}
        return PassResult(self._store(graph, layers, groups, configs, entries, info))

    # ------------------------------------------------------------------------------ what to sweep
    def _layers(self, graph: Graph, ctx: PassContext) -> list[Node]:
        every = [n for n in graph.nodes if n.op in LAYER_OPS]
        if self.layers is None:
            return every
        return [self._layer(graph, every, name, ctx) for name in dict.fromkeys(self.layers)]

    def _layer(self, graph: Graph, every: list[Node], name: str, ctx: PassContext) -> Node:
        found = next((n for n in every if n.name == name), None)
        if found is not None:
            return found
        names = [n.name for n in every]
        if any(n.name == name for n in graph.nodes):
            reason = f"'{name}' is not a layer (layers are {', '.join(LAYER_OPS)} nodes: {', '.join(names)})"
        else:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"layers are: {', '.join(names)}"
            reason = f"unknown layer '{name}'; {hint}"
        raise PassError(self.name, reason, ran_before=tuple(ctx.history))

    def _groups(self, graph: Graph, ctx: PassContext) -> list[tuple[str, list[Node]]]:
        every = [n for n in graph.nodes if n.op in LAYER_OPS]
        out = []
        for group in dict.fromkeys(self.groups):
            names = group.split("+")
            if any(not n.strip() for n in names):
                raise PassError(self.name, f"group {group!r} has an empty layer name (write \"a+b\")",
                                ran_before=tuple(ctx.history))
            out.append((group, [self._layer(graph, every, n.strip(), ctx) for n in dict.fromkeys(names)]))
        return out

    def _configs(self, layers: list[Node], groups: list[tuple[str, list[Node]]]) -> list[Config]:
        configs = []
        for node in layers:
            configs += self._variable_configs((node.name,), layer_variables(node), None)
        for name, members in groups:
            shared = [v for v in ("weights", "activations") if all(v in layer_variables(m) for m in members)]
            configs += self._variable_configs(tuple(m.name for m in members), shared, name)
        return configs

    def _variable_configs(self, names: tuple[str, ...], variables, group: str | None) -> list[Config]:
        out = []
        for variable in variables:
            for scheme in self.schemes:
                if scheme == "float" or scheme not in _SCHEMES[variable]:
                    continue
                for b in ((1,) if scheme == "bipolar" else self.bits):
                    out.append(Config(names, variable, scheme, b, group))
        return out

    def _check_calibration(self, graph: Graph, configs: list[Config], ctx: PassContext) -> None:
        """Activation quantizers fit before any work starts (missing statistics fail fast)."""
        for config in configs:
            if config.variable != "activations":
                continue
            for name in config.layers:
                try:
                    input_quantizer(graph, graph.node(name), config.scheme, config.bits)
                except SweepError as e:
                    raise PassError(self.name, str(e), node=e.node_name, ran_before=tuple(ctx.history)) from None

    # ------------------------------------------------------------------------------ storing
    def _store(self, graph: Graph, layers: list[Node], groups, configs: list[Config],
               entries: list[dict], info: dict[str, Any]) -> bool:
        tables = entries_by_key(configs, entries)
        if groups:
            info["group"] = [name for name, _ in groups]
            info["groups"] = {name: tables.get(name, {"weights": {}, "activations": {}}) for name, _ in groups}
        swept = {n.name for n in layers}
        changed = graph.attrs.get("sensitivity") != info
        graph.attrs["sensitivity"] = info
        for node in graph.nodes:
            new = tables.get(node.name, {"weights": {}, "activations": {}}) if node.name in swept else None
            if node.attrs.get("sensitivity") == new:
                continue
            changed = True
            if new is None:
                del node.attrs["sensitivity"]
            else:
                node.attrs["sensitivity"] = new
        return changed
