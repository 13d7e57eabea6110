"""The crossbar simulator equals the integer interpreter bit for bit when the ADCs are lossless."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import QccError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.quant import Codebook, Region, Uniform
from qcc.ir.types import TensorType
from qcc.targets.cim.arch import Arch
from qcc.targets.cim.mapping import map_graph
from qcc.targets.cim.simulate import simulate


def _weights(draw, rng, shape, w_bits, codebook, cout_axis):
    if codebook:
        bits = draw(st.integers(1, 3))
        cents = tuple(sorted(set(int(c) for c in rng.integers(-20, 21, size=2**bits))))
        spec = Codebook(bits=bits, centroids=cents, centroid_bits=6, centroid_scale=0.05)
        return (rng.choice(cents, size=shape) * 0.05).astype(np.float32), spec
    signed = draw(st.booleans())
    cout = shape[cout_axis]
    scales = tuple(float(s) for s in rng.uniform(0.01, 0.1, size=cout))
    probe = Uniform(bits=w_bits, signed=signed)
    zps = tuple(int(z) for z in rng.integers(probe.qmin, probe.qmax + 1, size=cout)) \
        if draw(st.booleans()) else (0,) * cout
    if not signed and not any(zps):
        zps = (0,) * cout
    spec = Uniform(bits=w_bits, signed=signed, scale=scales, zero_point=zps, axis=cout_axis)
    q = rng.integers(spec.qmin, spec.qmax + 1, size=shape)
    sc = np.array(spec.scale, np.float32).reshape([-1 if i == cout_axis else 1 for i in range(len(shape))])
    zp = np.array(spec.zero_point).reshape(sc.shape)
    return ((q - zp).astype(np.float32) * sc).astype(np.float32), spec


@st.composite
def layers(draw):
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    a_bits, w_bits = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    a_signed = draw(st.booleans()) and a_bits > 1
    probe = Uniform(bits=a_bits, signed=a_signed)
    xq = Uniform(bits=a_bits, signed=a_signed, scale=0.1,
                 zero_point=int(rng.integers(probe.qmin, probe.qmax + 1)) if draw(st.booleans()) else 0)
    codebook = draw(st.booleans()) and draw(st.booleans())
    g = Graph("t")
    if draw(st.booleans()):  # conv
        groups = draw(st.sampled_from([1, 2]))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
        k, hw = draw(st.integers(1, 3)), draw(st.integers(3, 6))
        x = g.add_input("x", TensorType(("N", cin, hw, hw), "float32"), quant=xq)
        wd, ws = _weights(draw, rng, (cout, cin // groups, k, k), w_bits, codebook, 0)
        ins = [x, g.add_constant("w", wd, quant=ws)]
        if draw(st.booleans()):
            ins.append(g.add_constant("b", rng.normal(size=cout).astype(np.float32)))
        s, d, p = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
        if d * (k - 1) + 1 > hw + 2 * p:
            d = 1
        node = g.add_node("Conv", ins, name="layer", attrs={"group": groups, "kernel_shape": [k, k],
                          "strides": [s, s], "dilations": [d, d], "pads": [p] * 4})
        out = node.outputs[0]
        oh = out.type.shape[2]
        if draw(st.booleans()) and oh >= 3:
            out.region = Region(top=1, bottom=0, left=0, right=1)
    else:
        kdim, n = draw(st.integers(1, 20)), draw(st.integers(1, 6))
        x = g.add_input("x", TensorType(("N", kdim), "float32"), quant=xq)
        trans = draw(st.booleans())
        wd, ws = _weights(draw, rng, (n, kdim) if trans else (kdim, n), w_bits, codebook, 0 if trans else 1)
        ins = [x, g.add_constant("w", wd, quant=ws), g.add_constant("b", rng.normal(size=n).astype(np.float32))]
        node = g.add_node("Gemm", ins, name="layer", attrs={"transB": int(trans)})
        out = node.outputs[0]
    out.quant = Uniform(bits=draw(st.integers(2, 8)), signed=True, scale=float(rng.uniform(0.05, 2.0)))
    g.set_outputs([out])
    shape = [3 if isinstance(d, str) else d for d in x.type.shape]
    xs = rng.uniform(-1.5, 1.5, size=shape).astype(np.float32) * 0.1 * 2**a_bits
    arch = Arch(rows=draw(st.sampled_from([2, 3, 4, 8, 16])), cols=draw(st.sampled_from([2, 4, 8, 128])),
                bits_per_cell=draw(st.integers(1, 4)), dac_bits=draw(st.integers(1, 3)), adc_bits=16,
                tiles=10**6)
    return g, xs, arch, draw(st.sampled_from(["offset", "differential"]))


@settings(max_examples=60, deadline=None)
@given(layers())
def test_simulator_equals_integer_interpreter(case):
    g, xs, arch, enc = case
    mapping = map_graph(g, arch, encoding=enc)
    assert "layer" in mapping.layers
    got = simulate(g, mapping, {"x": xs})
    want = run(g, {"x": xs}, mode="int")
    for k in want:
        assert np.array_equal(got[k], want[k])


def _example():
    from qcc.examples import MODEL, load_split
    from qcc.frontend import load_model
    from qcc.pass_manager import PassContext, run_pipeline

    g = load_model(MODEL)
    x, y = load_split("calib")
    ctx = PassContext()
    ctx.config["calib"] = {"x": x, "y": y}
    run_pipeline(g, "canonicalize,fold-bn,calibrate,quantize{w_bits=4,a_bits=4}", ctx)
    return g


@pytest.mark.parametrize("enc", ["offset", "differential"])
def test_example_model_bit_exact(enc):
    from qcc.examples import load_split

    g = _example()
    x, _ = load_split("eval")
    x = x[:64]
    mapping = map_graph(g, Arch(rows=32, cols=16, bits_per_cell=3, adc_bits=16), encoding=enc)
    assert len(mapping.layers) == 5
    got, want = simulate(g, mapping, {"input": x}), run(g, {"input": x}, mode="int")
    for k in want:
        assert np.array_equal(got[k], want[k])


def test_lossy_adc_clips():
    g = _example()
    from qcc.examples import load_split

    x, _ = load_split("eval")
    x = x[:16]
    mapping = map_graph(g, Arch(adc_bits=3, lossless=False, flip_encoding=False))
    assert all(m.adc_bits == 3 for m in mapping.layers.values())
    got, want = simulate(g, mapping, {"input": x}), run(g, {"input": x}, mode="int")
    assert not all(np.array_equal(got[k], want[k]) for k in want)


def test_input_outside_mapped_range_is_an_error():
    g = _example()
    mapping = map_graph(g, Arch())
    layer = next(iter(mapping.layers.values()))
    object.__setattr__(layer, "a_bits", 1)
    with pytest.raises(QccError, match="outside the mapped"):
        simulate(g, mapping, {"input": np.ones((1, 1, 8, 8), np.float32)})
