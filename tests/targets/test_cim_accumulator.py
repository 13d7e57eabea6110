"""The CIM digital accumulator (arch acc_bits): `qcc compile` proves it wide enough, the simulator wraps it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.cli import main
from qcc.frontend.qir import load, save
from qcc.integer import IntegerSemantics, QTensor, run_integer
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.quant import Uniform
from qcc.ir.types import TensorType
from qcc.ranges import ACCUMULATING_OPS, analyze
from qcc.targets.cim import CimTarget
from qcc.targets.cim.arch import Arch
from qcc.targets.cim.mapping import map_graph
from qcc.targets.cim.simulate import simulate


def qcc(*args) -> int:
    return main([str(a) for a in args])


def numpy_wrap(acc: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement wrap by numpy's floored modulo (independent of the simulator's bit masks)."""
    return np.mod(acc + 2 ** (bits - 1), 2**bits) - 2 ** (bits - 1)


class WrappedIntegerSemantics(IntegerSemantics):
    """The reference interpreter with every accumulator qcc.ranges checks wrapped to `bits` (the chip's)."""

    def __init__(self, bits: int):
        self.bits = bits

    def evaluate(self, node, args):
        out = super().evaluate(node, args)
        if node.op in ACCUMULATING_OPS and isinstance(out[0], QTensor):
            out = [QTensor(numpy_wrap(out[0].q, self.bits), out[0].scale, out[0].zero_point), *out[1:]]
        return out


def test_default_accumulator_is_the_archs():
    assert CimTarget().accumulator_bits == 32 == Arch().acc_bits
    assert CimTarget(arch=Arch(acc_bits=20)).accumulator_bits == 20


def test_arch_file_sets_the_accumulator(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("acc_bits = 24\n")
    assert CimTarget(arch=path).accumulator_bits == 24


@pytest.fixture(scope="module")
def wide_layer(tmp_path_factory):
    """A float Gemm of 64 inputs (8-bit after the default pipeline: about 20 accumulator bits) and its calib."""
    d = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 64), "float32"))
    w = g.add_constant("w", rng.normal(size=(8, 64)).astype(np.float32))
    y = g.add_node("Gemm", [x, w], name="wide", attrs={"transB": 1}).outputs[0]
    g.set_outputs([y])
    save(g, d / "m.qir")
    np.savez(d / "calib.npz", x=np.abs(rng.normal(size=(16, 64))).astype(np.float32))
    (d / "narrow.toml").write_text("acc_bits = 12\n")
    return d


def test_narrow_accumulator_is_refused_then_allowed_and_wraps(wide_layer, tmp_path, capsys):
    d = wide_layer
    refused = tmp_path / "refused"
    common = (d / "m.qir", "--target", "cim", "--calib", d / "calib.npz", "--arch", d / "narrow.toml", "-q")
    assert qcc("compile", *common, "-o", refused) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and not refused.exists()
    out = tmp_path / "out"
    assert qcc("compile", *common, "-o", out, "--allow-overflow") == 0
    graph = load(out / "model.qir")
    need = analyze(graph)["wide"].bits
    assert need > 12
    assert f"layer 'wide' (Gemm) needs an accumulator of {need} bits" in err and "acc-bits=12" in err
    assert "--allow-overflow" in err
    # the compiled folder runs the chip's arithmetic: the reference accumulator wrapped to 12 bits
    rng = np.random.default_rng(1)
    x = (rng.uniform(0, 3.2, size=(32, 64))).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert qcc("run", out, tmp_path / "in.npz", "-o", tmp_path / "y.npz") == 0
    got = np.load(tmp_path / "y.npz")["wide:out"]
    acc = run_integer(graph, {"x": x})["wide:out"]  # the exact int64 accumulator (unannotated output)
    assert np.abs(acc.q).max() >= 2**11  # some outputs do overflow 12 bits
    want = QTensor(numpy_wrap(acc.q, 12), acc.scale, acc.zero_point).real()
    assert np.array_equal(got, want)
    assert not np.array_equal(got, acc.real())


def test_wide_enough_accumulator_compiles_without_flag(wide_layer, tmp_path):
    d = wide_layer
    (d / "fits.toml").write_text("acc_bits = 20\n")
    assert qcc("compile", d / "m.qir", "--target", "cim", "--calib", d / "calib.npz", "--arch", d / "fits.toml",
               "-q", "-o", tmp_path / "out") == 0
    assert "acc_bits = 20" in (tmp_path / "out" / "arch.toml").read_text()


@st.composite
def narrow_layers(draw):
    """A quantized Conv or Gemm (bias, annotated or float output, maybe a GAP / Add after it) on an arch with
    a narrow accumulator."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    a_bits, w_bits = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    xq = Uniform(bits=a_bits, signed=False, scale=0.1, zero_point=draw(st.integers(0, 2**a_bits - 1)))
    wq = Uniform(bits=w_bits, signed=True, scale=0.05)
    g = Graph("t")
    if draw(st.booleans()):
        cin, cout, k = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        x = g.add_input("x", TensorType(("N", cin, 5, 5), "float32"), quant=xq)
        wshape, attrs, op = (cout, cin, k, k), {"kernel_shape": [k, k], "pads": [k // 2] * 4}, "Conv"
        xshape = (3, cin, 5, 5)
    else:
        kdim, cout = draw(st.integers(4, 40)), draw(st.integers(1, 5))
        x = g.add_input("x", TensorType(("N", kdim), "float32"), quant=xq)
        wshape, attrs, op, xshape = (cout, kdim), {"transB": 1}, "Gemm", (3, kdim)
    codes = rng.integers(wq.qmin, wq.qmax + 1, size=wshape)
    w = g.add_constant("w", (codes * 0.05).astype(np.float32), quant=wq)
    b = g.add_constant("b", rng.normal(size=cout).astype(np.float32))
    out = g.add_node(op, [x, w, b], name="layer", attrs=attrs).outputs[0]
    if draw(st.booleans()):
        out.quant = Uniform(bits=8, signed=True, scale=float(rng.uniform(0.05, 2.0)))
    if draw(st.booleans()):  # a digital accumulating op after the layer: it wraps in the same registers
        out = g.add_node("GlobalAveragePool", [out], name="gap").outputs[0] if op == "Conv" else \
            g.add_node("Add", [out, out], name="twice").outputs[0]
    g.set_outputs([out])
    xs = rng.uniform(-0.2, 0.1 * 2**a_bits, size=xshape).astype(np.float32)
    arch = Arch(rows=draw(st.sampled_from([4, 16, 128])), cols=draw(st.sampled_from([8, 128])),
                bits_per_cell=draw(st.integers(1, 4)), adc_bits=16, acc_bits=draw(st.integers(4, 14)),
                flip_encoding=draw(st.booleans()), tiles=10**6)
    return g, xs, arch, draw(st.sampled_from(["offset", "differential"]))


@settings(max_examples=40, deadline=None)
@given(narrow_layers())
def test_simulator_wraps_like_the_register(case):
    g, xs, arch, enc = case
    got = simulate(g, map_graph(g, arch, encoding=enc), {"x": xs})
    want = run(g, {"x": xs}, mode=WrappedIntegerSemantics(arch.acc_bits))
    for k in want:
        assert np.array_equal(got[k], want[k])
