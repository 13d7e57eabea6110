"""The FPGA cost model: LUTs, FFs, BRAM bits, DSPs, cycles per frame and latency before synthesis.

Each layer is first reduced to a `LayerShape` (pure numbers: matrix size, folding, operand widths,
post-ops), either exactly from the lowering plan (qcc.targets.fpga.plan) or, for a graph that is
only partly quantized (assign-bits costs one candidate layer at a time), approximately from the node
and its annotations. The structure then follows what the RTL (qcc.targets.fpga.rtl) instantiates:

- PE x SIMD multiply lanes (Verilog sizes each product to the accumulator, so a LUT multiplier is
  acc x acc bits, low half kept), an SIMD-deep adder chain of accumulator width, PE accumulators;
  bipolar lanes are XNOR + popcount;
- an input slice multiplexer (SIMD words of the stream width chosen from ceil(in / SIMD)), the
  input vector buffer, and the output vector written PE codes at a time at a variable offset
  (out[ch*w +: w] <= v), which Yosys builds as a shift network over the whole vector (`_outreg`);
- the weight ROM (depth ceil(in/SIMD) x ceil(out/PE) words of PE x SIMD x w bits) in block RAM when
  Yosys maps it there (`_BRAM_MIN_BITS`, observed), else in logic; per-channel parameters (bias,
  requant multipliers, thresholds) as small logic ROMs read by every PE;
- per PE the post-ops: requantization (a d x 32-bit multiply, a rounding shift by a variable n:
  a barrel shifter, clamp), comparator chains for thresholds, Relu and sign;
- multipliers go to DSP blocks where Yosys's synth_<family> puts them (ECP5 MULT18X18D for any
  product of operands of >= 2 bits, Xilinx DSP48E1 for products of >= 9 bits; none on iCE40);
- a convolution's (or max pooling's) sliding-window generator: a line buffer of R rows x W pixels
  (block RAM when large enough, else registers and multiplexers) and the window register filled at
  a variable slot (a shift network again, `_window`); a fork's FIFOs likewise; weightless stages
  (pooling, global average pooling, residual add, post-op maps) as lanes of their core operation
  and post-op chain.

LUTs and FFs are linear in these structural features. The coefficients per family (`COEFFS`) were
fitted by non-negative least squares on relative error, pulled gently toward physical priors (a
ridge term), against Yosys 0.23 (`synth_<family> -noflatten`, per-module `stat`, a layer's window
generator counted with it) on generated layers: MLPs of 2-8 bits at several foldings, W1A1-style
bipolar MLPs and small conv nets (conv, max pool, global average pool, residual add). `python
bench/bench_fpga.py --calibrate` regenerates the data (bench/results/fpga_calibration*.json) and
`--fit` prints the fit and its leave-one-design-out error; paste the printed coefficients here.
The fit has about 20 % mean error per layer (cross-validated); errors partly cancel over a design.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = ["LayerShape", "COEFFS", "FEATURES", "FF_FEATURES", "features", "ff_features", "estimate",
           "shape_of_layer", "bram_blocks", "BRAM_GEOMETRY", "total_cost", "LATENCY_STAGES"]

# per family: block RAM (bits per block, (depth, width) shapes it offers for one read port)
BRAM_GEOMETRY: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {
    "ice40": (4096, ((256, 16), (512, 8), (1024, 4), (2048, 2))),
    "ecp5": (18432, ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))),
    "xilinx": (18432, ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))),
}
# a ROM smaller than this (bits) stays in logic (observed Yosys 0.23 behaviour per family)
_BRAM_MIN_BITS = {"ice40": 4096, "ecp5": 8192, "xilinx": 16384}
# DSP blocks: (max A width, max B width, min operand width, min product width) of synth_<family>'s
# mul2dsp mapping (Yosys 0.23 techlibs), and DSPs per matrix-vector unit for its index arithmetic
_DSP = {"ecp5": (18, 18, 2, 0), "xilinx": (25, 18, 2, 9)}
_DSP_PER_MVU = {"ecp5": 1, "xilinx": 0}
LATENCY_STAGES = 3  # ROM read, accumulate, post-ops

FEATURES = ("layer", "mul", "add", "mux", "rom", "params", "requant", "compare", "outreg", "stage", "lanes",
            "window", "ram")
FF_FEATURES = ("layer", "buffers", "acc", "wword", "requant", "stage", "window", "ram")

# Fitted by bench/bench_fpga.py --calibrate (nnls on relative error, Yosys 0.23); see the module doc.
COEFFS: dict[str, dict[str, dict[str, float]]] = {
    "ice40": {
        "luts": {"layer": 36.619, "mul": 1.432, "add": 0.685, "mux": 0.643, "rom": 0.087, "params": 0.101,
                  "requant": 1.289, "compare": 1.021, "outreg": 0.496, "stage": 40.0, "lanes": 2.0, "window": 1.0,
                  "ram": 1.0},
        "ffs": {"layer": 4.939, "buffers": 1.05, "acc": 0.939, "wword": 0.918, "requant": 0.508, "stage": 10.0,
                  "window": 1.0, "ram": 1.0},
    },
    "ecp5": {
        "luts": {"layer": 42.57, "mul": 0.895, "add": 0.919, "mux": 0.641, "rom": 0.112, "params": 0.099,
                  "requant": 1.78, "compare": 1.019, "outreg": 0.963, "stage": 44.162, "lanes": 2.189, "window": 2.168,
                  "ram": 0.01},
        "ffs": {"layer": 7.411, "buffers": 0.832, "acc": 1.016, "wword": 0.943, "requant": 0.324, "stage": 8.687,
                  "window": 1.594, "ram": 0.0},
    },
    "xilinx": {
        "luts": {"layer": 27.008, "mul": 0.676, "add": 0.191, "mux": 0.395, "rom": 0.035, "params": 0.054,
                  "requant": 0.674, "compare": 0.591, "outreg": 0.419, "stage": 18.048, "lanes": 0.916, "window": 0.91,
                  "ram": 0.0},
        "ffs": {"layer": 7.88, "buffers": 0.836, "acc": 0.978, "wword": 0.533, "requant": 0.311, "stage": 9.04,
                  "window": 1.305, "ram": 0.0},
    },
}


@dataclass(frozen=True)
class LayerShape:
    """What the cost model needs of one matrix-vector unit (all integers).

    n_in / n_out: the matrix (a convolution's K*K*Cin by Cout); pixels: matrix-vector products per
    frame (output pixels of a convolution, 1 for a dense layer); w_bits: stored weight width;
    x_bits: multiplier operand width (input minus zero point); in_bits / out_bits: stream element
    widths; acc_bits: accumulator width; post: post-op kinds ("relu", "requant", "thresholds:T",
    "bipolar"); param_bits: bits per output channel of the non-constant per-channel parameters;
    bipolar: XNOR-popcount lanes. kind: "mvu" (a matrix-vector unit) or a weightless stage ("maxpool",
    "gap", "add", "map", "fork": n_in = n_out = channels, pe = lanes). window_bits: the window vector
    of a sliding-window generator (0 without one); ram_depth x ram_width: its line buffer, or a
    fork's FIFOs (ram_count of them).
    """

    name: str
    op: str
    n_in: int
    n_out: int
    pe: int = 1
    simd: int = 1
    w_bits: int = 8
    x_bits: int = 9
    in_bits: int = 8
    out_bits: int = 8
    acc_bits: int = 24
    post: tuple[str, ...] = ("requant",)
    param_bits: int = 0
    pixels: int = 1
    window_bits: int = 0
    bipolar: bool = False
    kind: str = "mvu"
    ram_depth: int = 0
    ram_width: int = 0
    ram_count: int = 1
    stage_cycles: int = 0  # a weightless stage's cycles per frame

    @property
    def sf(self) -> int:
        return math.ceil(self.n_in / self.simd)

    @property
    def nf(self) -> int:
        return math.ceil(self.n_out / self.pe)

    @property
    def cycles(self) -> int:
        return self.sf * self.nf * self.pixels if self.kind == "mvu" else self.stage_cycles

    @property
    def rom_depth(self) -> int:
        return self.sf * self.nf if self.kind == "mvu" else 0

    @property
    def rom_width(self) -> int:
        return self.pe * self.simd * (1 if self.bipolar else self.w_bits) if self.kind == "mvu" else 0

    def folded(self, pe: int, simd: int) -> LayerShape:
        return replace(self, pe=pe, simd=simd)


def _requant_width(s: LayerShape) -> int:
    return s.acc_bits + 1 + 32 if "requant" in s.post else 0


def _thresholds(s: LayerShape) -> int:
    return sum(int(p.split(":")[1]) for p in s.post if p.startswith("thresholds:"))


def bram_blocks(depth: int, width: int, family: str) -> int:
    """Block RAMs of `family` holding a depth x width ROM (the cheapest aspect ratio)."""
    _, shapes = BRAM_GEOMETRY[family]
    return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in shapes)


def _bram_ok(depth: int, width: int, family: str) -> bool:
    return depth * width >= _BRAM_MIN_BITS[family] and depth >= 16


def _in_bram(s: LayerShape, family: str) -> bool:
    return _bram_ok(s.rom_depth, s.rom_width, family)


def _ram_in_bram(s: LayerShape, family: str) -> bool:
    return _bram_ok(s.ram_depth, s.ram_width, family)


def _ram_bits(s: LayerShape, family: str) -> int:
    """Line buffer / FIFO bits left in registers (not in block RAM)."""
    return 0 if _ram_in_bram(s, family) else s.ram_count * s.ram_depth * s.ram_width


def _dsp_count(a: int, b: int, family: str) -> int:
    spec = _DSP.get(family)
    if spec is None or min(a, b) < spec[2] or a + b < spec[3]:
        return 0
    amax, bmax, _, _ = spec
    a, b = max(a, b), min(a, b)
    return min(math.ceil(a / amax) * math.ceil(b / bmax), math.ceil(a / bmax) * math.ceil(b / amax))


def _mac_in_dsp(s: LayerShape, family: str) -> bool:
    return not s.bipolar and _dsp_count(s.w_bits, s.x_bits, family) > 0


def features(s: LayerShape, family: str) -> dict[str, float]:
    """The structural LUT features of one layer on one family (see FEATURES and the module doc)."""
    if s.kind != "mvu":
        return _stage_features(s, family)
    lanes = s.pe * s.simd
    window = {"window": float(_window(s)), "ram": float(_ram_bits(s, family))}
    if s.bipolar:
        mul = lanes + s.pe * s.simd.bit_length() * 2
    elif _mac_in_dsp(s, family):
        mul = 0
    else:  # Verilog sizes each product to the accumulator: an acc x acc multiplier, low half kept
        mul = lanes * s.acc_bits * s.acc_bits // 2
    rq = _requant_width(s)
    requant_mul = 0 if rq == 0 or _dsp_count(s.acc_bits + 1, 32, family) else s.pe * (s.acc_bits + 1) * 32
    requant, compare = _post_features(s)
    return {
        "layer": 1.0,
        "mul": float(mul + requant_mul),
        "add": float(lanes * s.acc_bits),
        "mux": float(s.simd * s.in_bits * (s.sf - 1) + s.window_bits // 4),
        "rom": 0.0 if _in_bram(s, family) else float(s.rom_depth * s.rom_width),
        "params": float(_params(s)),
        "requant": requant,
        "compare": compare,
        "outreg": float(_outreg(s)),
        "stage": 0.0, "lanes": 0.0, **window,
    }


def _params(s: LayerShape) -> int:
    """Per-channel parameter ROMs read by every PE at its channel; constants when one pass covers all."""
    return 0 if s.nf == 1 else s.pe * s.n_out * s.param_bits


def _window(s: LayerShape) -> int:
    """The window register filled one pixel (ram_width bits) per cycle at a variable slot: a shift network."""
    if not s.window_bits or not s.ram_width:
        return 0
    slots = max(1, s.window_bits // s.ram_width)
    pow2 = s.ram_width & (s.ram_width - 1) == 0
    stages = math.ceil(math.log2(slots + 1)) + (0 if pow2 else math.ceil(math.log2(s.ram_width + 1)))
    return s.window_bits * stages


def _outreg(s: LayerShape) -> int:
    """The output vector written PE codes at a time at a variable offset (out[ch*w +: w] <= v): Yosys
    builds a shift network (data and mask) over the whole vector, one stage per bit of ch*w."""
    bits = s.n_out * s.out_bits
    pow2 = s.out_bits & (s.out_bits - 1) == 0  # ch * w is then ch << log2(w): no stages for the low bits
    stages = math.ceil(math.log2(s.n_out + 1)) + 1 + (0 if pow2 else math.ceil(math.log2(s.out_bits + 1)))
    return bits * stages


def _post_features(s: LayerShape) -> tuple[float, float]:
    """Per lane: requantization's rounding shift by a variable n (a barrel shifter over the d+32-bit
    product), rounding and clamp; comparators (thresholds, relu, sign) of accumulator width."""
    rq = _requant_width(s)
    shifter = rq * max(1, math.ceil(math.log2(rq))) if rq else 0
    compare = s.pe * (_thresholds(s) + ("relu" in s.post) + ("bipolar" in s.post)) * s.acc_bits
    return float(s.pe * shifter), float(compare)


def _stage_features(s: LayerShape, family: str) -> dict[str, float]:
    """A weightless stage: `pe` lanes of core + post-ops, a window generator or FIFOs."""
    requant, compare = _post_features(s)
    core = s.pe * s.acc_bits * (2 if s.kind == "add" else 1)
    return {"layer": 0.0, "mul": 0.0, "add": 0.0, "mux": 0.0, "rom": 0.0,
            "params": float(_params(s)), "requant": requant, "compare": compare,
            "outreg": float(_outreg(s)), "stage": 1.0, "lanes": float(core),
            "window": float(_window(s)), "ram": float(_ram_bits(s, family))}


def ff_features(s: LayerShape, family: str) -> dict[str, float]:
    """The structural flip-flop features of one layer."""
    mvu = s.kind == "mvu"
    return {
        "layer": 1.0 + math.log2(max(s.rom_depth, 2)) if mvu else 0.0,
        "buffers": float((s.n_in * s.in_bits if mvu else s.n_in * s.acc_bits) + s.n_out * s.out_bits),
        "acc": float(s.pe * s.acc_bits) if mvu else 0.0,
        "wword": float(s.rom_width) if mvu and not _in_bram(s, family) else 0.0,
        "requant": float(s.pe * _requant_width(s)),
        "stage": 0.0 if mvu else 1.0,
        "window": float(s.window_bits),
        "ram": float(_ram_bits(s, family)),
    }


def _linear(feats: Mapping[str, float], coeffs: Mapping[str, float]) -> float:
    return sum(coeffs.get(k, 0.0) * v for k, v in feats.items())


def estimate(s: LayerShape, family: str) -> dict[str, float]:
    """LUTs, FFs, BRAM (blocks and bits), DSPs, cycles and latency of one layer on `family`."""
    coeffs = COEFFS[family]
    bram = bram_blocks(s.rom_depth, s.rom_width, family) if _in_bram(s, family) else 0
    if _ram_in_bram(s, family):
        bram += s.ram_count * bram_blocks(s.ram_depth, s.ram_width, family)
    dsps = s.pe * s.simd * _dsp_count(s.w_bits, s.x_bits, family) if s.kind == "mvu" and _mac_in_dsp(s, family) else 0
    dsps += _DSP_PER_MVU.get(family, 0) if s.kind == "mvu" else 0
    if _requant_width(s):
        dsps += s.pe * _dsp_count(s.acc_bits + 1, 32, family)
    return {
        "luts": float(round(_linear(features(s, family), coeffs["luts"]))),
        "ffs": float(round(_linear(ff_features(s, family), coeffs["ffs"]))),
        "bram": float(bram),
        "bram_bits": float(bram * BRAM_GEOMETRY[family][0]),
        "rom_bits": float(s.rom_depth * s.rom_width),
        "dsps": float(dsps),
        "cycles": float(s.cycles),
        "latency_cycles": float(s.cycles + LATENCY_STAGES),
        "pe": float(s.pe),
        "simd": float(s.simd),
        "acc_bits": float(s.acc_bits),
    }


def total_cost(rows: list[dict[str, float]]) -> dict[str, float]:
    """Totals of a dataflow chain: resources add up, the slowest layer sets the frame rate."""
    if not rows:
        return {}
    totals = {k: float(sum(r[k] for r in rows)) for k in ("luts", "ffs", "bram", "bram_bits", "dsps")}
    totals["cycles_per_frame"] = max(r["cycles"] for r in rows)
    totals["latency_cycles"] = float(sum(r["latency_cycles"] for r in rows))
    return totals


def _post_shape(post, n_out: int) -> tuple[tuple[str, ...], int]:
    """Post-op kinds and the bits per channel of their non-constant parameters (logic ROMs)."""
    from qcc.targets.fpga.plan import signed_bits

    kinds, bits = [], 0
    for op in post:
        if op.kind == "thresholds":
            table = op.params["table"]
            kinds.append(f"thresholds:{table.shape[1]}")
            if not (table == table[0]).all():
                bits += table.shape[1] * signed_bits(int(table.min()), int(table.max()))
            continue
        kinds.append(op.kind)
        for key, value in op.params.items():
            if getattr(value, "size", 1) == n_out and n_out > 1 and len(set(value.tolist())) > 1:
                bits += 32 if key == "m0" else (8 if key == "n" else signed_bits(int(value.min()), int(value.max())))
    return tuple(kinds), bits


def shape_of_layer(layer) -> LayerShape:
    """The LayerShape of a plan stage (qcc.targets.fpga.plan: DenseLayer / ConvLayer, or a weightless
    stage: PoolLayer, GapLayer, AddLayer, ForkLayer, MapLayer), exactly."""
    from qcc.targets.fpga.plan import signed_bits

    if not hasattr(layer, "weights"):
        return _stage_shape(layer)
    post, param_bits = _post_shape(layer.post, layer.n_out)
    if len(set(layer.bias.tolist())) > 1:
        param_bits += layer.acc_width
    x_bits = signed_bits(layer.in_lo - layer.in_zp, layer.in_hi - layer.in_zp)
    windowed = bool(getattr(layer, "windowed", False))
    ram_depth = ram_width = 0
    if windowed:
        c, _, w = layer.in_shape
        ram_depth, ram_width = layer.window_rows * w, c * signed_bits(layer.stream_lo, layer.stream_hi)
    return LayerShape(name=layer.name, op="Conv" if hasattr(layer, "in_shape") else "Gemm", n_in=layer.n_in,
                      n_out=layer.n_out, pe=layer.pe, simd=layer.simd, w_bits=layer.weight_width, x_bits=x_bits,
                      in_bits=layer.in_width, out_bits=layer.out_width, acc_bits=layer.acc_width,
                      post=post, param_bits=param_bits, pixels=int(layer.pixels),
                      window_bits=layer.n_in * layer.in_width if windowed else 0,
                      bipolar=bool(getattr(layer, "bipolar", False)), ram_depth=ram_depth, ram_width=ram_width)


_STAGE_OPS = {"maxpool": "MaxPool", "gap": "GlobalAveragePool", "add": "Add", "map": "Relu", "fork": "Fork"}


def _stage_shape(st) -> LayerShape:
    post, param_bits = _post_shape(st.post, st.channels)
    for chain in getattr(st, "align", ()):
        more, bits = _post_shape(chain, st.channels)
        post, param_bits = post + more, param_bits + bits
    window_bits = ram_depth = ram_width = 0
    ram_count = 1
    if st.kind == "maxpool":
        ram_depth, ram_width = st.window_rows * st.in_hw[1], st.channels * st.in_width
        window_bits = st.kernel[0] * st.kernel[1] * st.channels * st.in_width
    if st.kind == "fork":
        ram_depth, ram_width = max(st.fifo_depths), st.channels * st.in_width
        ram_count = len(st.fifo_depths)
    return LayerShape(name=st.name, op=_STAGE_OPS.get(st.kind, st.kind), kind=st.kind, n_in=st.channels,
                      n_out=st.channels, pe=st.lanes, simd=1, w_bits=0, x_bits=st.in_width, in_bits=st.in_width,
                      out_bits=st.out_width, acc_bits=st.acc_width, post=post, param_bits=param_bits,
                      window_bits=window_bits, ram_depth=ram_depth, ram_width=ram_width, ram_count=ram_count,
                      stage_cycles=int(st.cycles))
