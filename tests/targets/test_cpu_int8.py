"""The exact int8 TVM kernels (targets/cpu/int8.py) against numpy: acc = sum (qx - zx)(qw - zw).

Both paths: the vpdpbusd (AVX-512 VNNI) kernels where the host has VNNI, and the portable int32 loop
(`fallback=True`). Codes span the full 0..255 x -128..127 range with the extremes forced in, so a
saturating instruction (vpdpbusds, pmaddubsw) would fail. Tiny shapes, few hypothesis examples (each
new shape compiles a kernel; builds are cached by spec).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

from qcc.errors import QccError  # noqa: E402
from qcc.ops import get_op  # noqa: E402
from qcc.targets.cpu import int8  # noqa: E402
from qcc.targets.cpu.kernels import ConvSpec, DenseSpec, conv_correction, dense_correction  # noqa: E402

SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])


VNNI = int8.has_vnni() and int8.VNNI_WORKS
PATHS = [pytest.param(False, id="default"), pytest.param(True, id="fallback")]


def _codes(rng, x_shape, w_shape):
    """Random full-range codes with the extremes (255 x -128 and 255 x 127 runs) forced in."""
    x, wc = rng.integers(0, 256, x_shape), rng.integers(-128, 128, w_shape)
    x.reshape(-1)[: max(1, x.size // 3)] = 255
    wc[0] = -128
    wc[-1] = 127
    return x, wc


def _run(lib, *arrays):
    import tvm

    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


@SETTINGS
@given(k=st.sampled_from([4, 70]), n=st.sampled_from([5, 32]), zx=st.integers(0, 255), seed=st.integers(0, 99))
def test_int8_dense_equals_numpy(k, n, zx, seed):
    rng = np.random.default_rng(seed)
    x, wc = rng.integers(0, 256, (1, k)), rng.integers(-128, 128, (n, k))
    spec = DenseSpec(1, k, n, 8, 8)
    corr = int8.int8_correction(dense_correction(wc, zx, False))
    out = np.zeros((1, corr.shape[0]), np.int32)
    got = _run(int8.build_int8_dense(spec), x.astype(np.int32), int8.pack_int8_dense_weights(wc), corr, out)
    assert got.dtype == np.int32 and np.array_equal(got[:, :n], (x - zx) @ wc.T)


@SETTINGS
@given(c=st.sampled_from([3, 8]), co=st.sampled_from([4, 17]), stride=st.integers(1, 2),
       pads=st.lists(st.integers(0, 1), min_size=4, max_size=4), zx=st.integers(0, 255), seed=st.integers(0, 99))
def test_int8_conv_equals_numpy(c, co, stride, pads, zx, seed):
    rng = np.random.default_rng(seed)
    h, w = 5, 6
    x, wc = rng.integers(0, 256, (1, c, h, w)), rng.integers(-128, 128, (co, c, 3, 3))
    attrs = {"group": 1, "kernel_shape": [3, 3], "strides": [stride, stride], "pads": pads, "dilations": [1, 1]}
    spec = ConvSpec(1, c, h, w, co, 3, 3, 1, (stride, stride), tuple(pads), (1, 1), 8, 8)
    corr = int8.int8_correction(conv_correction(wc, zx, False, (h, w), attrs))
    out = np.zeros((1, corr.shape[0], *spec.out_hw), np.int32)
    got = _run(int8.build_int8_conv(spec), x.astype(np.int32), int8.pack_int8_conv_weights(wc), corr, out)
    want = get_op("Conv").evaluate([(x - zx).astype(np.float64), wc.astype(np.float64)], attrs)[0]
    assert np.array_equal(got[:, :co], np.rint(want).astype(np.int64))


def test_int8_primfuncs_are_cached_and_grouped_conv_is_a_clear_error():
    spec = DenseSpec(1, 8, 16, 8, 8)
    assert int8.int8_dense_primfunc(spec) is int8.int8_dense_primfunc(spec)
    grouped = ConvSpec(1, 4, 4, 4, 4, 1, 1, 2, (1, 1), (0, 0, 0, 0), (1, 1), 8, 8)
    with pytest.raises(QccError, match="group"):
        int8.int8_conv_primfunc(grouped)


def test_int8_packing_layout_and_range_checks():
    wc = np.arange(-10, 10).reshape(2, 10)
    packed = int8.pack_int8_dense_weights(wc)
    assert packed.shape == (1, 3, 16, 4) and packed.dtype == np.int8
    assert packed[0, 0, 1, 2] == wc[1, 2] and packed[0, 2, 0, 1] == wc[0, 9] and packed[0, 2, 0, 2] == 0
    assert int8.int8_weights_fit(np.array([-128, 127])) and not int8.int8_weights_fit(np.array([128]))
    assert int8.int8_accumulator_fits(4096) and not int8.int8_accumulator_fits(2**17)


def _dense_check(spec, x, wc, zx, sched=None, fallback=False):
    corr = int8.int8_correction(dense_correction(wc, zx, False))
    out = np.zeros((spec.m, corr.shape[0]), np.int32)
    lib = int8.build_int8_dense(spec, sched, fallback)
    got = _run(lib, x.astype(np.int32), int8.pack_int8_dense_weights(wc), corr, out)
    assert np.array_equal(got[:, :spec.n], (x - zx) @ wc.T)


def _conv_check(spec, x, wc, zx, sched=None, fallback=False):
    attrs = {"group": 1, "kernel_shape": [spec.kh, spec.kw], "strides": list(spec.strides), "pads": list(spec.pads),
             "dilations": list(spec.dilations)}
    corr = int8.int8_correction(conv_correction(wc, zx, False, (spec.h, spec.w), attrs))
    out = np.zeros((spec.n, corr.shape[0], *spec.out_hw), np.int32)
    got = _run(int8.build_int8_conv(spec, sched, fallback), x.astype(np.int32), int8.pack_int8_conv_weights(wc),
               corr, out)
    want = get_op("Conv").evaluate([(x - zx).astype(np.float64), wc.astype(np.float64)], attrs)[0]
    assert np.array_equal(got[:, :spec.co], np.rint(want).astype(np.int64))


@pytest.mark.parametrize("fallback", PATHS)
@pytest.mark.parametrize("m,k,n,cob", [(1, 1, 1, 1), (3, 37, 33, 1), (2, 256, 64, 4), (1, 130, 128, 8)])
def test_int8_dense_extremes_both_paths(m, k, n, cob, fallback):
    rng = np.random.default_rng(k * n)
    x, wc = _codes(rng, (m, k), (n, k))
    for zx in (0, 255):
        _dense_check(DenseSpec(m, k, n, 8, 8), x, wc, zx, int8.Int8Schedule(1, cob), fallback)


@pytest.mark.parametrize("fallback", PATHS)
@pytest.mark.parametrize("shape,sched", [
    ((1, 5, 7, 9, 20, 3, 3, (2, 1), (1, 0, 0, 1), (1, 1)), (1, 2)),
    ((2, 16, 6, 6, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)), (6, 2)),
    ((1, 3, 8, 8, 17, 5, 3, (1, 2), (2, 1, 2, 1), (1, 1)), (4, 1)),
    ((1, 8, 9, 9, 16, 3, 3, (1, 1), (0, 0, 0, 0), (2, 2)), (5, 1)),
    ((1, 64, 4, 4, 48, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)), (2, 3)),
])
def test_int8_conv_extremes_shapes_strides_pads_both_paths(shape, sched, fallback):
    n, c, h, w, co, kh, kw, strides, pads, dil = shape
    spec = ConvSpec(n, c, h, w, co, kh, kw, 1, strides, pads, dil, 8, 8)
    x, wc = _codes(np.random.default_rng(c * co), (n, c, h, w), (co, c, kh, kw))
    for zx in (0, 255):
        _conv_check(spec, x, wc, zx, int8.Int8Schedule(*sched), fallback)


def test_int8_default_schedule_uses_vnni_exactly_when_the_host_has_it():
    dense, conv = DenseSpec(1, 64, 64, 8, 8), ConvSpec(1, 8, 56, 56, 64, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 8, 8)
    assert int8.default_int8_schedule(dense).vnni == VNNI and int8.default_int8_schedule(conv).vnni == VNNI
    assert not int8.default_int8_schedule(conv, fallback=True).vnni
    tile = int8.default_int8_schedule(conv)
    assert 56 % tile.px == 0 and (not VNNI or tile.px * tile.cob <= 14)
    assert not int8.VNNI_TENSORIZE_WORKS  # tensorize still segfaults in TVM 0.27; the intrinsic path is used


@pytest.mark.skipif(not VNNI, reason="host without AVX-512 VNNI")
def test_int8_vnni_kernel_emits_vpdpbusd_not_the_saturating_forms():
    import tvm

    spec = DenseSpec(1, 64, 32, 8, 8)
    func = int8.int8_dense_primfunc(spec)
    assert "vpdpbusd.512" in func.script()
    asm = int8.build_int8_dense(spec).mod.inspect_source("asm")
    assert "vpdpbusd" in asm and "vpdpbusds" not in asm and "vpmaddubsw" not in asm
    assert isinstance(func, tvm.tirx.PrimFunc)


def test_int8_kernels_above_the_serial_threshold_run_parallel_and_exact():
    """Layers over _SERIAL_STEPS vpdpbusd take the parallel loops (the small ones above run serially)."""
    rng = np.random.default_rng(7)
    c, co, h, w, zx = 16, 32, 32, 32, 3
    spec = ConvSpec(1, c, h, w, co, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), 8, 8)
    assert 2 * h * w * 9 * (c // 4) >= int8._SERIAL_STEPS
    assert "parallel" in int8.int8_conv_primfunc(spec).script()
    x, wc = _codes(rng, (1, c, h, w), (co, c, 3, 3))
    attrs = {"group": 1, "kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
    corr = int8.int8_correction(conv_correction(wc, zx, False, (h, w), attrs))
    out = np.zeros((1, corr.shape[0], h, w), np.int32)
    got = _run(int8.build_int8_conv(spec), x.astype(np.int32), int8.pack_int8_conv_weights(wc), corr, out)
    want = get_op("Conv").evaluate([(x - zx).astype(np.float64), wc.astype(np.float64)], attrs)[0]
    assert np.array_equal(got[:, :co], np.rint(want).astype(np.int64))
