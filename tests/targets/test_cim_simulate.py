"""The crossbar simulator equals the integer interpreter bit for bit when the ADCs are lossless."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import QccError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.quant import Codebook, Region, Uniform
from qcc.ir.types import TensorType
from qcc.targets.cim.arch import Arch, NonIdeal
from qcc.targets.cim.mapping import map_graph
from qcc.targets.cim.simulate import measure_top1, programmed_levels, simulate


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
                tiles=10**6, flip_encoding=draw(st.booleans()))
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


def _example8():
    from qcc.examples import MODEL, load_split
    from qcc.frontend import load_model
    from qcc.pass_manager import PassContext, run_pipeline

    g = load_model(MODEL)
    x, y = load_split("calib")
    ctx = PassContext()
    ctx.config["calib"] = {"x": x, "y": y}
    run_pipeline(g, "canonicalize,fold-bn,calibrate,quantize", ctx)  # the target's default: 8 bits
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


def gemm_graph(codes, a_bits=1, w_bits=2):
    """x [N, K] (unsigned a_bits codes, scale 1) @ W [K, N] of unsigned w_bits codes (scale 1)."""
    codes = np.asarray(codes, np.float32)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", codes.shape[0]), "float32"), quant=Uniform(bits=a_bits, signed=False))
    w = g.add_constant("w", codes, quant=Uniform(bits=w_bits, signed=False))
    node = g.add_node("Gemm", [x, w], name="layer")
    node.outputs[0].quant = Uniform(bits=8, signed=False, scale=1.0)
    g.set_outputs(node.outputs)
    return g


def _sim(g, arch, x):
    (out,) = g.outputs
    return simulate(g, map_graph(g, arch), {"x": x})[out.name]


def test_flip_encoding_by_hand():
    # one column of four 3s on 2-bit cells: levels sum 12 > 4 * 3 / 2, so the column is stored flipped
    # (all 0) and read back digitally as 3 * sum(x) - 0; the largest sum 6 instead of 12: 3 ADC bits, not 4
    g = gemm_graph([[3], [3], [3], [3]])
    arch = Arch(rows=4, cols=4)
    m = map_graph(g, arch).layers["layer"]
    assert m.adc_bits == 3 and m.level_max == 3
    assert m.flipped[0, 0].tolist() == [True]
    assert m.stored_levels(0, 0, 4).tolist() == [[0], [0], [0], [0]]
    x = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], np.float32)
    assert _sim(g, arch, x).ravel().tolist() == [12, 6, 0]
    assert map_graph(g, Arch(rows=4, cols=4, flip_encoding=False)).layers["layer"].adc_bits == 4
    # the same 3-bit ADC without the flip clips the sum of 12 at 7
    lossy = Arch(rows=4, cols=4, flip_encoding=False, adc_bits=3, lossless=False)
    assert map_graph(g, lossy).layers["layer"].adc_bits == 3
    assert _sim(g, lossy, x).ravel().tolist() == [7, 6, 0]


def test_unflipped_and_flipped_columns_side_by_side():
    # column 0 sums 2 <= 6 (kept), column 1 sums 9 > 6 (flipped)
    g = gemm_graph([[1, 3], [0, 3], [1, 3], [0, 0]])
    arch = Arch(rows=4, cols=4)
    m = map_graph(g, arch).layers["layer"]
    assert m.flipped[0, 0].tolist() == [False, True]
    assert m.stored_levels(0, 0, 4).tolist() == [[1, 0], [0, 0], [1, 0], [0, 3]]
    x = np.array([[1, 1, 1, 1], [0, 1, 0, 1]], np.float32)
    assert _sim(g, arch, x).tolist() == [[2, 9], [0, 3]]
    (out,) = g.outputs
    assert np.array_equal(_sim(g, arch, x), run(g, {"x": x}, mode="int")[out.name])


def test_stuck_cells_by_hand():
    g = gemm_graph([[3], [3], [3], [3]])
    x = np.array([[1, 1, 1, 1], [1, 0, 1, 0]], np.float32)
    plain = dict(rows=4, cols=4, flip_encoding=False, adc_bits=4)
    # every cell stuck at 0: the column reads 0; stuck at 3: it reads 3 * sum(x)
    assert _sim(g, Arch(**plain, nonideal=NonIdeal(stuck_at_zero=1.0)), x).ravel().tolist() == [0, 0]
    assert _sim(g, Arch(**plain, nonideal=NonIdeal(stuck_at_one=1.0)), x).ravel().tolist() == [12, 6]
    # flipped (stored 0, read back as 3 * sum(x) - read) with a 3-bit ADC: stuck at 3 the column sums
    # 12 and 6, the ADC reads min(sum, 7), so the results are 12 - 7 = 5 and 6 - 6 = 0
    assert _sim(g, Arch(rows=4, cols=4, nonideal=NonIdeal(stuck_at_one=1.0)), x).ravel().tolist() == [5, 0]
    assert _sim(g, Arch(rows=4, cols=4, nonideal=NonIdeal(stuck_at_zero=1.0)), x).ravel().tolist() == [12, 6]


def test_conductance_variation_is_deterministic_per_seed():
    g = _example()
    from qcc.examples import load_split

    x, _ = load_split("eval")
    x = x[:8]
    noisy = Arch(nonideal=NonIdeal(conductance_sigma=0.3, seed=1))
    m = map_graph(g, noisy)
    layer = next(iter(m.layers.values()))
    a, b = programmed_levels(layer, 0, 0, noisy), programmed_levels(layer, 0, 0, noisy)
    assert np.array_equal(a, b) and not np.array_equal(a, layer.stored_levels(0, 0, noisy.rows))
    assert a.min() >= 0
    (out,) = g.outputs
    first, again = simulate(g, m, {"input": x})[out.name], simulate(g, map_graph(g, noisy), {"input": x})[out.name]
    other = simulate(g, map_graph(g, Arch(nonideal=NonIdeal(conductance_sigma=0.3, seed=2))), {"input": x})
    assert np.array_equal(first, again) and not np.array_equal(first, other[out.name])
    assert not np.array_equal(first, run(g, {"input": x}, mode="int")[out.name])


def test_replicas_get_their_own_cells_under_variation():
    g = _example()
    from qcc.examples import load_split

    x, _ = load_split("eval")
    x = x[:4]
    (out,) = g.outputs
    ideal = Arch(replication="balance", max_crossbars=64)
    assert max(m.replicas for m in map_graph(g, ideal).layers.values()) > 1
    assert np.array_equal(simulate(g, map_graph(g, ideal), {"input": x})[out.name],
                          run(g, {"input": x}, mode="int")[out.name])
    noisy = replace(ideal, nonideal=NonIdeal(conductance_sigma=0.3))
    single = replace(noisy, replication="none")
    assert not np.array_equal(simulate(g, map_graph(g, noisy), {"input": x})[out.name],
                              simulate(g, map_graph(g, single), {"input": x})[out.name])


def test_accuracy_under_conductance_variation():
    from qcc.examples import load_split

    g = _example8()
    x, y = load_split("eval")
    x, y = x[:180], y[:180]
    ideal = measure_top1(g, map_graph(g, Arch()), x, y)
    (out,) = g.outputs
    assert ideal == np.mean(np.argmax(run(g, {"input": x}, mode="int")[out.name], axis=1) == y)
    small = measure_top1(g, map_graph(g, Arch(nonideal=NonIdeal(conductance_sigma=0.02))), x, y, batch=64)
    large = measure_top1(g, map_graph(g, Arch(nonideal=NonIdeal(conductance_sigma=0.5))), x, y)
    assert abs(small - ideal) <= 0.02
    assert large < ideal - 0.3


def test_measure_top1_errors():
    g = _example()
    with pytest.raises(QccError, match="labels"):
        measure_top1(g, map_graph(g, Arch()), np.zeros((2, 1, 8, 8), np.float32), np.zeros(3, np.int64))


@st.composite
def nets(draw):
    """A small float net (conv, relu, conv + residual add, flatten, dense) quantized by the pipeline."""
    from qcc.pass_manager import PassContext, run_pipeline

    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    c, hw = draw(st.integers(1, 4)), draw(st.integers(3, 5))
    g = Graph("net")
    x = g.add_input("x", TensorType(("N", c, hw, hw), "float32"))
    conv = {"kernel_shape": [3, 3], "strides": [1, 1], "dilations": [1, 1], "pads": [1, 1, 1, 1]}

    def const(name, shape):
        return g.add_constant(name, rng.normal(size=shape).astype(np.float32) * 0.5)

    h = g.add_node("Conv", [x, const("w1", (c, c, 3, 3)), const("b1", (c,))], attrs=conv, name="c1").outputs[0]
    h = g.add_node("Relu", [h], name="r1").outputs[0]
    groups = draw(st.sampled_from([1, c]))
    h2 = g.add_node("Conv", [h, const("w2", (c, c // groups, 3, 3))], attrs={**conv, "group": groups},
                    name="c2").outputs[0]
    h = g.add_node("Add", [h, h2], name="res").outputs[0]
    h = g.add_node("Flatten", [h], name="flat").outputs[0]
    h = g.add_node("Gemm", [h, const("w3", (3, c * hw * hw)), const("b3", (3,))], attrs={"transB": 1},
                   name="fc").outputs[0]
    g.set_outputs([h])
    xs = rng.normal(size=(6, c, hw, hw)).astype(np.float32)
    ctx = PassContext()
    ctx.config["calib"] = {"x": xs}
    w_bits, a_bits = draw(st.integers(2, 8)), draw(st.integers(2, 8))  # the pipeline quantizes 1-bit as bipolar
    run_pipeline(g, f"calibrate,quantize{{w_bits={w_bits},a_bits={a_bits}}}", ctx)
    arch = Arch(rows=draw(st.sampled_from([4, 16, 128])), cols=draw(st.sampled_from([4, 32])),
                bits_per_cell=draw(st.integers(1, 4)), dac_bits=draw(st.integers(1, 2)), adc_bits=16,
                flip_encoding=draw(st.booleans()), tiles=10**6)
    return g, xs, arch, draw(st.sampled_from(["offset", "differential"]))


@settings(max_examples=12, deadline=None)
@given(nets())
def test_small_nets_equal_the_integer_interpreter(case):
    g, xs, arch, enc = case
    mapping = map_graph(g, arch, encoding=enc)
    assert set(mapping.layers) == {"c1", "c2", "fc"}
    got, want = simulate(g, mapping, {"x": xs}), run(g, {"x": xs}, mode="int")
    for k in want:
        assert np.array_equal(got[k], want[k])
