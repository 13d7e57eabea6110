"""The exact int8 TVM kernels (targets/cpu/int8.py) against numpy: acc = sum (qx - zx)(qw - zw).

Tiny shapes, few hypothesis examples (each new shape compiles a kernel; builds are cached by spec).
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
