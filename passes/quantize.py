"""quantize: apply a per-layer quantization configuration (weights and activations).

For every layer (Conv, Gemm, MatMul) with configuration c (pass options as the base, then the TOML
file's [default], then its [layers."<node name>"]; or a QuantConfig in ctx.config["quant_config"],
e.g. from bit-width assignment):

- weights: W is replaced by q(W), fitted by c.w_scheme at c.w_bits (qcc.quantizers.quantize_weights;
  per output channel when c.per_channel), annotated with the spec; biases stay float (the integer
  semantics folds them into the accumulator);
- the layer's input activation x gets the quantizer of c.a_scheme at c.a_bits, fitted on x's
  calibration statistics (run `calibrate` first). When several layers read x with different
  settings, x carries the first and the others read an Identity that requantizes;
- c.crop marks the layer output's zero-bit edges (top, bottom, left, right).

Scheme "float" leaves that part unquantized.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcc.calibration import calibration_of
from qcc.config import LAYER_OPS, LayerConfig, QuantConfig, load_config, parse_config
from qcc.errors import PassError, QccError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import QuantSpec, Region
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.quantizers import activation_spec, quantize_weights

__all__ = ["QuantizePass", "LAYER_OPS", "output_axis"]



@dataclass(frozen=True)
class QuantizePass(Pass):
    """Quantize weights and input activations of every layer by a per-layer configuration."""

    name = "quantize"
    w_bits: int = 8
    a_bits: int = 8
    w_scheme: str = "uniform"
    a_scheme: str = "uniform"
    per_channel: bool = True
    config: str | None = None  # TOML file; overrides the options above
    centroid_bits: int = 8
    seed: int = 0

    def __post_init__(self):
        self.base()  # validate the options early

    def base(self) -> LayerConfig:
        doc = {"default": {"w_bits": self.w_bits, "a_bits": self.a_bits, "w_scheme": self.w_scheme,
                           "a_scheme": self.a_scheme, "per_channel": self.per_channel}}
        return parse_config(doc, "quantize options").default

    def resolve(self, ctx: PassContext) -> QuantConfig:
        """The configuration: the TOML file or ctx.config["quant_config"] over these options."""
        given = ctx.config.get("quant_config")
        if self.config is not None:
            return load_config(self.config, base=self.base())
        if isinstance(given, QuantConfig):
            return given
        if isinstance(given, dict):
            return parse_config(given, "quant_config", base=self.base())
        return QuantConfig(default=self.base(), layers={})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(self.apply(graph, self.resolve(ctx), ctx))

    def apply(self, graph: Graph, config: QuantConfig, ctx: PassContext) -> bool:
        """Quantize `graph` by `config`; whether it changed. Passes that build a QuantConfig (binarize) call this."""
        config.check_layers([n.name for n in graph.nodes], where=f"pass '{self.name}' configuration")
        changed = False
        claimed: set[int] = set()  # inputs already given a quantizer by an earlier layer in this run
        for node in graph.nodes:
            if node.op not in LAYER_OPS:
                continue
            layer = config.for_layer(node.name)
            changed |= self._weights(graph, node, layer)
            changed |= self._activation(graph, node, layer, ctx, claimed)
            changed |= self._crop(node, layer)
        return changed

    # -------------------------------------------------------------------- parts
    def _weights(self, graph: Graph, node: Node, layer: LayerConfig) -> bool:
        w = node.inputs[1]
        if layer.w_scheme == "float" or w is None or not w.is_constant:
            return False
        axis = output_axis(node) if layer.per_channel else None
        if _already(w.quant, layer, axis):
            return False  # refitting quantized data could move a float32 scale by one ulp
        try:
            spec, data = quantize_weights(w.data, layer.w_scheme, layer.w_bits, axis=axis,
                                          centroid_bits=self.centroid_bits, seed=self.seed)
        except QccError as e:
            raise PassError(self.name, str(e), node=node.name) from None
        if w.quant == spec and (data == w.data).all():
            return False
        graph.replace_constant_input(node, 1, data, spec)
        return True

    def _activation(self, graph: Graph, node: Node, layer: LayerConfig, ctx: PassContext,
                    claimed: set[int]) -> bool:
        x = node.inputs[0]
        if layer.a_scheme == "float" or x is None or x.is_constant:
            return False
        stats = calibration_of(graph, x)
        if stats is None:
            raise PassError(self.name, f"input '{x.name}' has no calibration statistics; run 'calibrate' "
                            "first (e.g. -p \"calibrate,quantize\" --calib CALIB.npz)", node=node.name,
                            ran_before=tuple(ctx.history))
        try:
            spec = activation_spec(stats, layer.a_scheme, layer.a_bits)
        except QccError as e:
            raise PassError(self.name, str(e), node=node.name) from None
        return _annotate_input(graph, node, x, spec, claimed)

    def _crop(self, node: Node, layer: LayerConfig) -> bool:
        if layer.crop is None:
            return False
        out = node.output
        if out.type.rank != 4:
            raise PassError(self.name, f"crop needs an NCHW output, got {out.type}", node=node.name)
        region = Region(*layer.crop)
        h, w = out.type.shape[2], out.type.shape[3]
        if isinstance(h, int) and isinstance(w, int) and not region.fits(h, w):
            raise PassError(self.name, f"crop {list(layer.crop)} is larger than the {h}x{w} output feature map",
                            node=node.name)
        if out.region == region:
            return False
        out.region = region
        return True


_W_SCHEME_SPEC = {"uniform": "uniform", "fixed": "uniform", "dynamic-fixed": "uniform", "bipolar": "bipolar",
                  "kmeans-linear": "codebook", "kmeans-gaussian": "codebook", "kmeans-lloyd": "codebook",
                  "kquantile": "codebook"}


def _already(spec: QuantSpec | None, layer: LayerConfig, axis: int | None) -> bool:
    """Whether weights already carry a quantizer of the configured scheme, bits and granularity."""
    if spec is None or spec.scheme != _W_SCHEME_SPEC.get(layer.w_scheme):
        return False
    bits_ok = spec.scheme == "bipolar" or spec.bits == layer.w_bits
    return bits_ok and (getattr(spec, "axis", None) is None) == (axis is None)


def output_axis(node: Node) -> int:
    """The weight axis that indexes output channels."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB") else 1
    return node.inputs[1].type.rank - 1  # MatMul [K, N]


def _annotate_input(graph: Graph, node: Node, x: Value, spec: QuantSpec, claimed: set[int]) -> bool:
    """x carries `spec`, unless another layer already set a different one: then requantize."""
    if id(x) not in claimed:
        claimed.add(id(x))
        if x.quant == spec:
            return False
        x.quant = spec
        return True
    if x.quant == spec:
        return False
    ident = graph.add_node("Identity", [x], name=graph.fresh_node_name(f"{node.name}.requant"))
    ident.output.quant = spec
    graph.set_input(node, 0, ident.output)
    return True
