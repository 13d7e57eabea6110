"""Bit-serial TVM kernels (targets/cpu) against the integer interpreter, bit for bit.

Random quantized Gemm and Conv layers (1-8 bit weights and activations, signed / unsigned, zero
points, per-channel weight scales, bias, bipolar XNOR layers, strides, pads, dilations, groups): the
layer's input codes come from qcc.integer (quantize_result of a float input), and the kernel's
result (accumulator + bias at scale sx*sw) must equal qcc.integer.evaluate_node exactly. Shapes are
tiny and kernels are cached by shape, so TVM compiles few of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

from qcc.errors import QccError  # noqa: E402
from qcc.integer import QTensor, constant_value, evaluate_node, quantize_result  # noqa: E402
from qcc.ir.graph import Graph  # noqa: E402
from qcc.ir.quant import Bipolar, Uniform  # noqa: E402
from qcc.ir.types import TensorType  # noqa: E402
from qcc.ops import get_op  # noqa: E402
from qcc.targets.cpu.kernels import (  # noqa: E402
    ConvSchedule,
    ConvSpec,
    DenseSpec,
    build_conv,
    conv_primfunc,
    conv_schedule_ok,
    default_conv_schedule,
    dense_primfunc,
    require_features,
    weight_bits,
)
from qcc.targets.cpu.layers import LayerKernel, accelerated_result, plan_layer  # noqa: E402
from qcc.targets.cpu.tuning import (  # noqa: E402
    LOG_VERSION,
    KernelChoice,
    choose_kernel,
    estimate_cycles,
    layer_key,
    load_log,
    save_log,
    tune,
)

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _act_spec(draw, bipolar: bool):
    if bipolar:
        return Bipolar(scale=0.5)
    bits = draw(st.integers(1, 8))
    signed = draw(st.booleans()) and bits > 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return Uniform(bits=bits, signed=signed, scale=draw(st.sampled_from([0.05, 0.1, 0.25])),
                   zero_point=draw(st.integers(lo, hi)))


def _weights(draw, rng, shape, bipolar: bool, channels: int):
    if bipolar:
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32), Bipolar(scale=1.0)
    bits = draw(st.integers(1, 8))
    signed = bits > 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 1)
    zp = draw(st.integers(lo, hi)) if draw(st.booleans()) else 0
    per_channel = draw(st.booleans())
    scale = tuple(float(s) for s in rng.choice([0.01, 0.02, 0.03], channels)) if per_channel else 0.02
    spec = Uniform(bits=bits, signed=signed, scale=scale, zero_point=zp, axis=0 if per_channel else None)
    codes = rng.integers(lo, hi + 1, shape)
    scale_arr = np.asarray(scale, np.float32).reshape((-1,) + (1,) * (len(shape) - 1)) if per_channel \
        else np.float32(scale)
    return ((codes - zp) * scale_arr).astype(np.float32), spec


def _check(node, x_float):
    x = quantize_result(x_float, node.inputs[0].quant)
    assert isinstance(x, QTensor)
    args = [x] + [constant_value(v) if v is not None else None for v in node.inputs[1:]]
    plan = plan_layer(node)
    assert plan is not None
    kernel = LayerKernel(plan)
    assert kernel.accepts(node, x)
    want = evaluate_node(node, args)[0]
    got = accelerated_result(node, args, kernel)[0]
    assert got.q.dtype == np.int64 and np.array_equal(got.q, want.q)
    assert np.array_equal(np.broadcast_to(got.scale, want.scale.shape), want.scale)


@SETTINGS
@given(data=st.data())
def test_dense_equals_integer_interpreter(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bipolar = draw(st.booleans()) and draw(st.booleans())
    k, n, m = draw(st.sampled_from([5, 64, 70])), draw(st.sampled_from([3, 8, 11])), draw(st.integers(1, 3))
    g = Graph()
    x = g.add_input("x", TensorType((m, k)), quant=_act_spec(draw, bipolar))
    w_data, w_spec = _weights(draw, rng, (n, k), bipolar, n)
    w = g.add_constant("w", w_data, quant=w_spec)
    b = g.add_constant("b", rng.normal(size=n).astype(np.float32)) if draw(st.booleans()) else None
    node = g.add_node("Gemm", [x, w, b] if b is not None else [x, w], attrs={"transB": 1})
    _check(node, rng.uniform(-3, 3, (m, k)).astype(np.float32))


@SETTINGS
@given(data=st.data())
def test_conv_equals_integer_interpreter(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bipolar = draw(st.booleans()) and draw(st.booleans())
    group = draw(st.sampled_from([1, 1, 2]))
    c = group * draw(st.sampled_from([1, 3, 65]))
    co = group * draw(st.sampled_from([1, 4, 5]))
    k = draw(st.sampled_from([1, 3]))
    h, wd = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    pads = [draw(st.integers(0, k - 1 if k > 1 else 0)) for _ in range(4)]
    strides = [draw(st.integers(1, 2)) for _ in range(2)]
    dil = [draw(st.integers(1, 2)) if k > 1 and h >= 2 * k - 1 and wd >= 2 * k - 1 else 1 for _ in range(2)]
    g = Graph()
    x = g.add_input("x", TensorType((2, c, h, wd)), quant=_act_spec(draw, bipolar))
    w_data, w_spec = _weights(draw, rng, (co, c // group, k, k), bipolar, co)
    w = g.add_constant("w", w_data, quant=w_spec)
    b = g.add_constant("b", rng.normal(size=co).astype(np.float32)) if draw(st.booleans()) else None
    attrs = {"group": group, "kernel_shape": [k, k], "strides": strides, "pads": pads, "dilations": dil}
    node = g.add_node("Conv", [x, w, b] if b is not None else [x, w], attrs=attrs)
    _check(node, rng.uniform(-3, 3, (2, c, h, wd)).astype(np.float32))


def test_weight_bits_is_the_narrowest_twos_complement():
    assert weight_bits(np.array([0])) == 1
    assert weight_bits(np.array([-1, 0])) == 1
    assert weight_bits(np.array([1])) == 2
    assert weight_bits(np.array([-8, 7])) == 4
    assert weight_bits(np.array([-9])) == 5


def _conv_case(spec, seed=0):
    from qcc.targets.cpu.kernels import conv_correction, pack_conv_weights

    rng = np.random.default_rng(seed)
    lo, hi = -(2 ** (spec.w_bits - 1)), 2 ** (spec.w_bits - 1)
    wc = rng.integers(lo, hi, (spec.co, spec.cg, spec.kh, spec.kw))
    attrs = {"group": spec.group, "kernel_shape": [spec.kh, spec.kw], "strides": list(spec.strides),
             "pads": list(spec.pads), "dilations": list(spec.dilations)}
    x = rng.integers(0, 2**spec.a_bits, (spec.n, spec.c, spec.h, spec.w)).astype(np.int32)
    corr = conv_correction(wc, 1, False, (spec.h, spec.w), attrs)
    want = np.rint(get_op("Conv").evaluate([(x - 1).astype(np.float64), wc.astype(np.float64)], attrs)[0])
    return [x, pack_conv_weights(wc, spec.w_bits), corr, np.zeros((1, spec.co_pad, *spec.out_hw), np.int64)], want


def _run(lib, arrays):
    import tvm

    args = [tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu()) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


SPEC = ConvSpec(1, 70, 4, 8, 16, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 2, 2)


@pytest.mark.parametrize("tile", [ConvSchedule(1, 1), ConvSchedule(2, 2), ConvSchedule(4, 1), ConvSchedule(3, 1)])
def test_conv_register_tiles_are_exact(tile):
    arrays, want = _conv_case(SPEC)
    got = _run(build_conv(SPEC, tile), arrays)
    assert np.array_equal(got[:, :SPEC.co], want.astype(np.int64))


def test_forced_fallback_schedule_is_exact():
    arrays, want = _conv_case(SPEC, seed=1)
    assert np.array_equal(_run(build_conv(SPEC, fallback=True), arrays)[:, :SPEC.co], want.astype(np.int64))
    assert default_conv_schedule(SPEC, fallback=True).px == 1  # 4 plane pairs: one pixel per tile


def test_missing_host_feature_is_a_clear_error_or_a_warning():
    with pytest.raises(QccError, match="lacks avx512-imaginary"):
        require_features(("avx512-imaginary",), strict=True)
    with pytest.warns(RuntimeWarning, match="fallback"):
        assert not require_features(("avx512-imaginary",))
    assert require_features(()) is True


def test_primfuncs_are_stable_and_cached():
    assert conv_primfunc(SPEC) is conv_primfunc(SPEC)
    dense = DenseSpec(1, 70, 9, 1, 1, True)
    func = dense_primfunc(dense)
    assert func is dense_primfunc(dense)
    assert [str(p.dtype) for p in func.params] == ["int32", "uint64", "int64", "int64"]


def test_choose_kernel_model_and_log(tmp_path):
    binary = ConvSpec(1, 64, 56, 56, 64, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True)
    choice = choose_kernel(binary)
    assert choice.kernel == "bitserial" and choice.source == "model" and 56 % choice.px == 0
    assert estimate_cycles(binary, "bitserial") < estimate_cycles(binary, "int8")
    path = tmp_path / "tune.json"
    save_log({"version": LOG_VERSION, "entries": {layer_key(binary): {"kernel": "int8", "px": 4, "cob": 1,
                                                                       "us": None}}}, path)
    text = path.read_text()
    assert choose_kernel(binary, load_log(path)) == KernelChoice("int8", 4, 1, "log", None)
    save_log(load_log(path), path)
    assert path.read_text() == text  # deterministic
    path.write_text("{")
    with pytest.raises(QccError, match="not valid JSON"):
        load_log(path)


def test_tune_measures_and_records(tmp_path):
    spec = DenseSpec(1, 64, 16, 2, 2)
    log = tune([spec], tmp_path / "t.json", repeat=2)
    entry = log["entries"][layer_key(spec)]
    assert entry["kernel"] in ("bitserial", "int8") and entry["us"] > 0
    assert choose_kernel(spec, load_log(tmp_path / "t.json")).source == "log"


# ---------------------------------------------------------------- pixel-vector conv and TIR dense kernels

def _conv_reference_case(spec, rng, x_dtype=np.int32):
    """Random offset codes / centred weights, the packed operands and the exact accumulator."""
    from qcc.targets.cpu.kernels import conv_correction, pack_conv_weights

    attrs = {"group": spec.group, "kernel_shape": [spec.kh, spec.kw], "strides": list(spec.strides),
             "pads": list(spec.pads), "dilations": list(spec.dilations)}
    if spec.bipolar:  # the kernel's operand is the offset code q - qmin = q + 1 in {0, 2}
        wc = np.where(rng.random((spec.co, spec.cg, spec.kh, spec.kw)) < 0.5, -1, 1)
        centred = np.where(rng.random((1, spec.c, spec.h, spec.w)) < 0.5, -1, 1)
        zx, x = 0, centred + 1
    else:
        wc = rng.integers(-(2 ** (spec.w_bits - 1)), 2 ** (spec.w_bits - 1), (spec.co, spec.cg, spec.kh, spec.kw))
        x = rng.integers(0, 2**spec.a_bits, (1, spec.c, spec.h, spec.w))
        zx = int(rng.integers(0, 2**spec.a_bits))
        centred = x - zx
    want = np.rint(get_op("Conv").evaluate([centred.astype(np.float64), wc.astype(np.float64)], attrs)[0])
    arrays = [x.astype(x_dtype), pack_conv_weights(wc, spec.w_bits, spec.bipolar),
              conv_correction(wc, zx, spec.bipolar, (spec.h, spec.w), attrs),
              np.zeros((1, spec.co_pad, *spec.out_hw), np.int64)]
    return arrays, want.astype(np.int64)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_pixel_vector_conv_equals_reference(data):
    """ConvSchedule(pixels=True) at random tiles (words in one expression or one word per pass): 1-8 bits,
    bipolar, groups, pads, row strides, dilations, ragged channel words and output rows that are not a
    multiple of 8 (overlapping last vector). Tiles too wide for one expression fall back to the default."""
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bipolar = draw(st.booleans())
    a_bits, w_bits = (1, 1) if bipolar else (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    group = draw(st.sampled_from([1, 1, 2]))
    c, co = group * draw(st.sampled_from([1, 3, 64, 65, 130])), group * draw(st.sampled_from([1, 5, 8]))
    k = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(k + 1, 6)), draw(st.integers(k + 1, 17))
    pads = tuple(draw(st.integers(0, k - 1)) for _ in range(4))
    dil = (draw(st.integers(1, 2)), 1) if h >= 2 * k else (1, 1)
    spec = ConvSpec(1, c, h, w, co, k, k, group, (draw(st.integers(1, 2)), 1), pads, dil, a_bits, w_bits, bipolar)
    nvec = -(-spec.out_hw[1] // min(8, spec.out_hw[1]))
    flat = draw(st.booleans())  # vectors over the flattened plane (one per task, no word passes) or rows
    tile = ConvSchedule(1 if flat else draw(st.sampled_from([d for d in (1, 2) if nvec % d == 0])),
                        draw(st.sampled_from([1, 2, 4, 8])), True, False if flat else draw(st.booleans()), flat)
    pixels = conv_schedule_ok(spec, tile) or default_conv_schedule(spec).pixels
    x_dtype = draw(st.sampled_from(["int32", "uint8"])) if pixels else "int32"
    arrays, want = _conv_reference_case(spec, rng, np.dtype(x_dtype))
    got = _run(build_conv(spec, tile, x_dtype=x_dtype), arrays)
    assert np.array_equal(got[:, :co], want)


@pytest.mark.parametrize("tile", [ConvSchedule(2, 8, True), ConvSchedule(2, 2, True), ConvSchedule(2, 4, True, False),
                                  ConvSchedule(1, 8, True, False)])
def test_pixel_conv_overlapping_row_with_word_passes_is_exact(tile):
    """14-pixel rows (last vector overlaps) x 3 channel words: word passes accumulate into the output,
    so the overlap must restart from corr (the whole row in one task); one-vector tasks need split=False."""
    spec = ConvSpec(1, 130, 14, 14, 16, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True)
    assert conv_schedule_ok(spec, tile)
    assert not conv_schedule_ok(spec, ConvSchedule(1, 8, True))  # split passes over a shared overlap: refused
    arrays, want = _conv_reference_case(spec, np.random.default_rng(3), np.uint8)
    assert np.array_equal(_run(build_conv(spec, tile, x_dtype="uint8"), arrays)[:, :16], want)


@pytest.mark.parametrize("shape", [(130, 14, 14), (64, 7, 5), (3, 2, 9)])
def test_flat_pixel_vectors_cross_row_ends_exactly(shape):
    """ConvSchedule(flat=True): 8 consecutive flattened outputs read shifted row copies across row ends."""
    c, h, w = shape
    spec = ConvSpec(1, c, h, w, 12, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True)
    tile = ConvSchedule(1, 4, True, False, True)
    assert conv_schedule_ok(spec, tile)
    assert conv_schedule_ok(spec, ConvSchedule(1, 4, True, True, True)) == (spec.words == 1)  # no word passes
    assert not conv_schedule_ok(ConvSpec(1, c, h, w, 12, 3, 3, 1, (2, 1), (1, 1, 1, 1), (1, 1), 1, 1, True), tile)
    arrays, want = _conv_reference_case(spec, np.random.default_rng(4), np.uint8)
    assert np.array_equal(_run(build_conv(spec, tile, x_dtype="uint8"), arrays)[:, :12], want)
    assert default_conv_schedule(ConvSpec(1, 256, 14, 14, 256, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1,
                                          True)).flat  # 14-pixel rows: flat; 56-pixel rows: rows
    assert not default_conv_schedule(ConvSpec(1, 64, 56, 56, 64, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1,
                                              True)).flat


def test_narrow_input_only_for_pixel_vectors():
    with pytest.raises(ValueError, match="uint8"):
        conv_primfunc(SPEC, ConvSchedule(1, 1), x_dtype="uint8")


def test_default_schedule_is_pixel_vectors_for_binary_layers_only_where_valid():
    binary = ConvSpec(1, 64, 56, 56, 64, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True)
    assert default_conv_schedule(binary).pixels
    assert default_conv_schedule(ConvSpec(1, 256, 14, 14, 256, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1,
                                          True)).pixels
    strided = ConvSpec(1, 64, 56, 56, 64, 3, 3, 1, (2, 2), (1, 1, 1, 1), (1, 1), 1, 1, True)
    assert not default_conv_schedule(strided).pixels  # stride along the row: channel vectors
    assert not conv_schedule_ok(strided, ConvSchedule(1, 8, True))
    wide = ConvSpec(1, 256, 14, 14, 256, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 3, 2)
    assert not default_conv_schedule(wide).pixels  # 6 plane pairs: register spills
    assert not default_conv_schedule(binary, fallback=True).pixels


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tir_dense_equals_reference(data):
    """The TIR dense kernel (vector-packed full words, scalar ragged tail, serial or parallel) and the TE
    kernel it keeps for wide layers, 1-8 bits and bipolar, against the exact integer product."""
    from qcc.targets.cpu.kernels import build_dense, dense_correction, pack_dense_weights

    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bipolar = draw(st.booleans())
    a_bits, w_bits = (1, 1) if bipolar else (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    m, k = draw(st.integers(1, 3)), draw(st.sampled_from([1, 5, 64, 70, 130, 2200]))
    n = draw(st.sampled_from([1, 8, 11]))
    spec = DenseSpec(m, k, n, a_bits, w_bits, bipolar)
    if bipolar:
        wc = np.where(rng.random((n, k)) < 0.5, -1, 1)
        x = np.where(rng.random((m, k)) < 0.5, -1, 1)
        zx, want = 0, x @ wc.T
    else:
        wc = rng.integers(-(2 ** (w_bits - 1)), 2 ** (w_bits - 1), (n, k))
        x = rng.integers(0, 2**a_bits, (m, k))
        zx = int(rng.integers(0, 2**a_bits))
        want = (x - zx) @ wc.T
    arrays = [x.astype(np.int32), pack_dense_weights(wc, w_bits, bipolar), dense_correction(wc, zx, bipolar),
              np.zeros((m, spec.n_pad), np.int64)]
    got = _run(build_dense(spec), arrays)
    assert np.array_equal(got[:, :n], want.astype(np.int64))


def test_bit_serial_kernels_above_the_serial_threshold_run_parallel_and_exact():
    """Layers over _SERIAL_DENSE popcounts take the parallel loops (the small test layers run serially)."""
    from qcc.targets.cpu import kernels as k

    rng = np.random.default_rng(5)
    spec = ConvSpec(1, 64, 24, 24, 64, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True)
    assert "parallel" in conv_primfunc(spec, x_dtype="uint8").script()
    arrays, want = _conv_reference_case(spec, rng, np.uint8)
    assert np.array_equal(_run(build_conv(spec, x_dtype="uint8"), arrays)[:, :64], want)
    dense = DenseSpec(1, 2048, 2048, 2, 2)
    assert "parallel" in dense_primfunc(dense).script()
    wc, x = rng.integers(-2, 2, (2048, 2048)), rng.integers(0, 4, (1, 2048))
    got = _run(k.build_dense(dense), [x.astype(np.int32), k.pack_dense_weights(wc, 2), k.dense_correction(wc, 1, False),
                                      np.zeros((1, 2048), np.int64)])
    assert np.array_equal(got, (x - 1) @ wc.T)
