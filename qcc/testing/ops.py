"""Hypothesis strategies that draw valid applications of every registered op.

Each strategy yields an `OpCase`: the op's name, its input arrays (None for an absent optional
input) and its IR attributes (constant operands such as Reshape's shape are attributes, see
`qcc.ops.registry`). Attributes left out take the op's defaults. `OP_CASES` maps every op name to
its strategy, so a property can be checked for every op:

    import pytest
    from hypothesis import given, strategies as st
    from qcc.ir.types import TensorType
    from qcc.ops import get_op
    from qcc.testing.ops import OP_CASES

    @pytest.mark.parametrize("op", sorted(OP_CASES))
    @given(data=st.data())
    def test_my_backend(op, data):
        case = data.draw(OP_CASES[op])
        opdef = get_op(case.op)
        types = [TensorType.of(a) if a is not None else None for a in case.inputs]
        attrs = opdef.complete_attrs(case.attrs, types)
        (expected,) = opdef.evaluate(case.inputs, attrs)
        ...

Cases stay small (rank <= 4, sides of a few elements) so hundreds of them run in seconds, and
elements are bounded and finite (see `qcc.testing.tensors.arrays`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcc.testing.tensors import arrays, shapes

__all__ = [
    "OP_CASES",
    "OpCase",
    "activation_cases",
    "batch_norm_cases",
    "concat_cases",
    "conv_cases",
    "dequantize_linear_cases",
    "elementwise_cases",
    "flatten_cases",
    "gemm_cases",
    "identity_cases",
    "matmul_cases",
    "multi_threshold_cases",
    "pad_cases",
    "pool_cases",
    "quantize_linear_cases",
    "reduce_mean_cases",
    "reshape_cases",
    "squeeze_cases",
    "transpose_cases",
    "unsqueeze_cases",
]

ACTIVATIONS = ("Relu", "Sigmoid", "LeakyRelu", "Clip", "Softmax")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")


class OpCase(NamedTuple):
    """One valid application of an op: name, input arrays (None = absent optional), IR attributes."""

    op: str
    inputs: list[np.ndarray | None]
    attrs: dict[str, Any]


def _f32(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Python floats that are exact float32 values (ONNX stores float attributes as float32)."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


def _ints(draw, n: int, lo: int, hi: int) -> list[int]:
    return draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))


def _negated(draw, axis: int, rank: int) -> int:
    """`axis` or its negative spelling, so both forms get exercised."""
    return axis - rank if draw(st.booleans()) else axis


# ----------------------------------------------------------------- layers with weights
@st.composite
def conv_cases(draw, max_spatial_dims: int = 2, max_batch: int = 2) -> OpCase:
    """Conv with 1..max_spatial_dims spatial dims, groups (incl. depthwise), strides, pads, dilations."""
    nsp = draw(st.integers(1, max_spatial_dims))
    if draw(st.booleans()):  # depthwise: one input channel per group
        group, cin_g, cout_g = draw(st.integers(1, 4)), 1, draw(st.integers(1, 2))
    else:
        group, cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = _ints(draw, nsp, 1, 3)
    strides = _ints(draw, nsp, 1, 3)
    dilations = _ints(draw, nsp, 1, 2)
    pads = _ints(draw, 2 * nsp, 0, 2)
    spatial = []
    for i in range(nsp):
        low = max(1, dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + nsp])
        spatial.append(draw(st.integers(low, low + 3)))
    x = draw(arrays((draw(st.integers(1, max_batch)), group * cin_g, *spatial)))
    w = draw(arrays((group * cout_g, cin_g, *kernel)))
    b = draw(st.none() | arrays((group * cout_g,)))
    attrs = {"group": group, "kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads}
    return OpCase("Conv", [x, w, b], attrs)


@st.composite
def gemm_cases(draw) -> OpCase:
    """Gemm with transposes, alpha/beta and every bias shape that broadcasts to [M, N]."""
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    a = draw(arrays((k, m) if trans_a else (m, k)))
    b = draw(arrays((n, k) if trans_b else (k, n)))
    c_shape = draw(st.none() | st.sampled_from([(), (1,), (n,), (1, n), (m, 1), (m, n), (1, 1)]))
    c = None if c_shape is None else draw(arrays(c_shape))
    attrs = {"alpha": draw(_f32(-2, 2)), "beta": draw(_f32(-2, 2)), "transA": trans_a, "transB": trans_b}
    return OpCase("Gemm", [a, b, c], attrs)


@st.composite
def matmul_cases(draw) -> OpCase:
    """MatMul with numpy semantics: 1-d operands and broadcast batch dims."""
    shapes_ = draw(hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2, max_side=4))
    a_shape, b_shape = shapes_.input_shapes
    return OpCase("MatMul", [draw(arrays(a_shape)), draw(arrays(b_shape))], {})


@st.composite
def batch_norm_cases(draw) -> OpCase:
    """Inference BatchNormalization on rank 2..4 inputs with positive variances."""
    shape = draw(shapes(min_rank=2, max_rank=4, max_side=5))
    c = (shape[1],)
    params = [draw(arrays(c)), draw(arrays(c)), draw(arrays(c)), draw(arrays(c, min_value=0.25, max_value=4.0))]
    attrs = {"epsilon": draw(st.sampled_from([1e-5, 1e-3, 0.1]))}
    return OpCase("BatchNormalization", [draw(arrays(shape)), *params], attrs)


# ----------------------------------------------------------------- activations
@st.composite
def _clip_attrs(draw) -> dict[str, Any]:
    bounds = sorted([draw(_f32(-8, 8)), draw(_f32(-8, 8))])
    attrs = {}
    if draw(st.booleans()):
        attrs["min"] = bounds[0]
    if draw(st.booleans()):
        attrs["max"] = bounds[1]
    return attrs


def activation_cases(op: str | None = None) -> st.SearchStrategy[OpCase]:
    """Relu, Sigmoid, LeakyRelu, Clip or Softmax (`op`, or any of them when None)."""
    if op is not None and op not in ACTIVATIONS:
        raise ValueError(f"{op} is not one of {', '.join(ACTIVATIONS)}")
    return _activation_case(op)


@st.composite
def _activation_case(draw, op: str | None) -> OpCase:
    op = op or draw(st.sampled_from(ACTIVATIONS))
    x = draw(arrays(shapes(min_rank=1 if op == "Softmax" else 0, max_rank=4)))
    attrs: dict[str, Any] = {}
    if op == "LeakyRelu":
        attrs["alpha"] = draw(_f32(-1, 1))
    elif op == "Clip":
        attrs = draw(_clip_attrs())
    elif op == "Softmax":
        attrs["axis"] = draw(st.integers(-x.ndim, x.ndim - 1))
    return OpCase(op, [x], attrs)


def elementwise_cases(op: str | None = None) -> st.SearchStrategy[OpCase]:
    """Add, Sub, Mul or Div on float32 or int32 operands with broadcasting shapes (divisors non-zero)."""
    if op is not None and op not in ELEMENTWISE:
        raise ValueError(f"{op} is not one of {', '.join(ELEMENTWISE)}")
    return _elementwise_case(op)


@st.composite
def _elementwise_case(draw, op: str | None) -> OpCase:
    op = op or draw(st.sampled_from(ELEMENTWISE))
    a_shape, b_shape = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4)).input_shapes
    dtype = draw(st.sampled_from([np.float32, np.int32]))
    a = draw(arrays(a_shape, dtype, min_value=-100, max_value=100))
    if op != "Div":
        return OpCase(op, [a, draw(arrays(b_shape, dtype, min_value=-100, max_value=100))], {})
    magnitude = draw(arrays(b_shape, dtype, min_value=0.25 if dtype == np.float32 else 1, max_value=8))
    signs = draw(arrays(b_shape, np.bool_))
    return OpCase(op, [a, np.where(signs, -magnitude, magnitude).astype(dtype)], {})


# ----------------------------------------------------------------- pooling
@st.composite
def _window_case(draw, op: str) -> OpCase:
    nsp = draw(st.integers(1, 2))
    kernel = _ints(draw, nsp, 1, 3)
    strides = _ints(draw, nsp, 1, 3)
    dilations = _ints(draw, nsp, 1, 2) if op == "MaxPool" else [1] * nsp
    pads = [draw(st.integers(0, kernel[i % nsp] - 1)) for i in range(2 * nsp)]
    spatial = []
    for i in range(nsp):
        span = dilations[i] * (kernel[i] - 1) + 1
        # with dilation, sizes >= span keep at least one real tap in every window
        low = span if dilations[i] > 1 else max(1, span - pads[i] - pads[i + nsp])
        spatial.append(draw(st.integers(low, low + 3)))
    x = draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial)))
    attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": strides, "pads": pads,
                             "ceil_mode": draw(st.integers(0, 1))}
    if op == "MaxPool":
        attrs["dilations"] = dilations
    else:
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    return OpCase(op, [x], attrs)


def pool_cases(op: str | None = None) -> st.SearchStrategy[OpCase]:
    """MaxPool (with dilations), AveragePool (count_include_pad) or GlobalAveragePool; ceil_mode both ways."""
    if op is not None and op not in POOLS:
        raise ValueError(f"{op} is not one of {', '.join(POOLS)}")
    return _pool_case(op)


@st.composite
def _pool_case(draw, op: str | None) -> OpCase:
    op = op or draw(st.sampled_from(POOLS))
    if op == "GlobalAveragePool":
        return OpCase(op, [draw(arrays(shapes(min_rank=3, max_rank=5, max_side=4)))], {})
    return draw(_window_case(op))


# ----------------------------------------------------------------- data movement
@st.composite
def identity_cases(draw) -> OpCase:
    """Identity on any float tensor (rank 0..4)."""
    return OpCase("Identity", [draw(arrays(shapes(min_rank=0, max_rank=4)))], {})


@st.composite
def flatten_cases(draw) -> OpCase:
    """Flatten at every axis in [-rank, rank]."""
    x = draw(arrays(shapes(min_rank=1, max_rank=4)))
    return OpCase("Flatten", [x], {"axis": draw(st.integers(-x.ndim, x.ndim))})


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def reshape_cases(draw) -> OpCase:
    """Reshape to a random regrouping of the element count, with 0 (copy) and -1 (infer) entries."""
    x = draw(arrays(shapes(min_rank=1, max_rank=4)))
    factors = draw(st.permutations(_prime_factors(x.size)))
    rank = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(factors)), min_size=rank - 1, max_size=rank - 1)))
    bounds = [0, *cuts, len(factors)]
    target = [math.prod(factors[bounds[i]:bounds[i + 1]]) for i in range(rank)]
    shape = [0 if i < x.ndim and d == x.shape[i] and draw(st.booleans()) else d for i, d in enumerate(target)]
    if draw(st.booleans()):
        shape[draw(st.integers(0, rank - 1))] = -1
    return OpCase("Reshape", [x], {"shape": shape})


@st.composite
def transpose_cases(draw) -> OpCase:
    """Transpose with an explicit permutation or the default (reversed axes)."""
    x = draw(arrays(shapes(min_rank=1, max_rank=4)))
    if draw(st.booleans()):
        return OpCase("Transpose", [x], {})
    return OpCase("Transpose", [x], {"perm": draw(st.permutations(range(x.ndim)))})


@st.composite
def concat_cases(draw) -> OpCase:
    """Concat of 1..3 inputs that differ only along the (possibly negative) axis."""
    base = list(draw(shapes(min_rank=1, max_rank=4)))
    axis = draw(st.integers(0, len(base) - 1))
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        base[axis] = draw(st.integers(1, 4))
        inputs.append(draw(arrays(tuple(base))))
    return OpCase("Concat", inputs, {"axis": _negated(draw, axis, len(base))})


@st.composite
def squeeze_cases(draw) -> OpCase:
    """Squeeze of some size-1 axes, or of all of them (axes = [])."""
    shape = list(draw(shapes(min_rank=0, max_rank=3, min_side=2)))
    for _ in range(draw(st.integers(1, 3))):
        shape.insert(draw(st.integers(0, len(shape))), 1)
    ones = [i for i, d in enumerate(shape) if d == 1]
    chosen = draw(st.lists(st.sampled_from(ones), unique=True))
    axes = [_negated(draw, a, len(shape)) for a in chosen]
    return OpCase("Squeeze", [draw(arrays(tuple(shape)))], {"axes": axes})


@st.composite
def unsqueeze_cases(draw) -> OpCase:
    """Unsqueeze at 1..3 distinct output positions (some spelled negative)."""
    x = draw(arrays(shapes(min_rank=0, max_rank=3)))
    rank = x.ndim + draw(st.integers(1, 3))
    chosen = draw(st.lists(st.integers(0, rank - 1), min_size=rank - x.ndim, max_size=rank - x.ndim,
                           unique=True))
    return OpCase("Unsqueeze", [x], {"axes": [_negated(draw, a, rank) for a in chosen]})


@st.composite
def reduce_mean_cases(draw) -> OpCase:
    """ReduceMean over a subset of axes ([] = all), with and without keepdims."""
    x = draw(arrays(shapes(min_rank=1, max_rank=4)))
    chosen = draw(st.lists(st.integers(0, x.ndim - 1), unique=True))
    axes = [_negated(draw, a, x.ndim) for a in chosen]
    return OpCase("ReduceMean", [x], {"axes": axes, "keepdims": draw(st.integers(0, 1))})


@st.composite
def pad_cases(draw) -> OpCase:
    """Pad in constant, reflect or edge mode, with negative pads cropping first."""
    x = draw(arrays(shapes(min_rank=1, max_rank=4, max_side=5)))
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    begin, end = [], []
    for size in x.shape:
        b = draw(st.integers(-(size - 1), 3))
        e = draw(st.integers(-(size - 1 + min(b, 0)), 3))
        kept = size + min(b, 0) + min(e, 0)
        if mode == "reflect":  # reflection needs pads smaller than the (cropped) axis
            b, e = min(b, kept - 1), min(e, kept - 1)
        begin.append(b)
        end.append(e)
    attrs: dict[str, Any] = {"pads": begin + end, "mode": mode}
    if mode == "constant":
        attrs["value"] = draw(_f32(-8, 8))
    return OpCase("Pad", [x], attrs)


# ----------------------------------------------------------------- quantization
_SCALES = st.sampled_from([2.0**-k for k in range(-2, 9)]) | _f32(2.0**-10, 4.0)


@st.composite
def _quant_params(draw, shape: tuple[int, ...], dtype: np.dtype | None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(scale, zero point or None, axis) for a tensor of `shape`: per tensor or per axis."""
    rank = len(shape)
    axis = draw(st.integers(0, rank - 1))
    per_axis = draw(st.booleans())
    n = shape[axis]
    scale = np.array([draw(_SCALES) for _ in range(n)] if per_axis else draw(_SCALES), np.float32)
    zp = None
    if dtype is not None:
        info = np.iinfo(dtype)
        lo, hi = (0, 0) if dtype == np.int32 else (max(info.min, -128), min(info.max, 255))
        zp = np.array([draw(st.integers(lo, hi)) for _ in range(n)] if per_axis else draw(st.integers(lo, hi)),
                      dtype)
    return scale, zp, _negated(draw, axis, rank)


@st.composite
def quantize_linear_cases(draw) -> OpCase:
    """QuantizeLinear to int8/uint8 (default uint8), per tensor or axis, with exact .5 ties and saturation."""
    shape = draw(shapes(min_rank=1, max_rank=4, max_side=5))
    dtype = draw(st.sampled_from([np.int8, np.uint8, None]))
    scale, zp, axis = draw(_quant_params(shape, None if dtype is None else np.dtype(dtype)))
    if draw(st.booleans()):  # multiples of scale / 2: exact ties x / scale = k + 0.5
        halves = draw(arrays(shape, np.int32, min_value=-600, max_value=600)).astype(np.float32)
        s = scale if scale.ndim == 0 else scale.reshape([-1 if i == axis % len(shape) else 1
                                                        for i in range(len(shape))])
        x = (halves * np.float32(0.5) * s).astype(np.float32)
    else:
        x = draw(arrays(shape, min_value=-300, max_value=300))
    inputs = [x, scale] if zp is None else [x, scale, zp]
    return OpCase("QuantizeLinear", inputs, {"axis": axis})


@st.composite
def dequantize_linear_cases(draw) -> OpCase:
    """DequantizeLinear of int8/uint8/int32 codes, per tensor or per axis."""
    shape = draw(shapes(min_rank=1, max_rank=4, max_side=5))
    dtype = np.dtype(draw(st.sampled_from([np.int8, np.uint8, np.int32])))
    info = np.iinfo(dtype)
    x = draw(arrays(shape, dtype, min_value=max(info.min, -(2**20)), max_value=min(info.max, 2**20)))
    scale, zp, axis = draw(_quant_params(shape, dtype))
    if draw(st.booleans()):
        zp = None
    inputs = [x, scale] if zp is None else [x, scale, zp]
    return OpCase("DequantizeLinear", inputs, {"axis": axis})


@st.composite
def multi_threshold_cases(draw) -> OpCase:
    """MultiThreshold in NCHW or NHWC with per-channel or shared sorted thresholds; ties included."""
    shape = draw(shapes(min_rank=2, max_rank=4, max_side=5))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    channels = shape[1] if layout == "NCHW" else shape[-1]
    rows = draw(st.sampled_from([1, channels]))
    steps = draw(st.integers(1, 7))
    # integer-valued inputs and thresholds make x == threshold common
    x = draw(arrays(shape, np.int8, min_value=-8, max_value=8)).astype(np.float32)
    thresholds = np.sort(draw(arrays((rows, steps), np.int8, min_value=-8, max_value=8)), axis=1)
    attrs = {"out_scale": draw(_f32(-2, 2)), "out_bias": draw(_f32(-4, 4)), "data_layout": layout,
             "out_dtype": f"UINT{max(1, steps.bit_length())}"}
    return OpCase("MultiThreshold", [x, thresholds.astype(np.float32)], attrs)


OP_CASES: dict[str, st.SearchStrategy[OpCase]] = {
    "Conv": conv_cases(),
    "Gemm": gemm_cases(),
    "MatMul": matmul_cases(),
    "BatchNormalization": batch_norm_cases(),
    **{op: activation_cases(op) for op in ACTIVATIONS},
    "Identity": identity_cases(),
    **{op: elementwise_cases(op) for op in ELEMENTWISE},
    **{op: pool_cases(op) for op in POOLS},
    "Flatten": flatten_cases(),
    "Reshape": reshape_cases(),
    "Transpose": transpose_cases(),
    "Concat": concat_cases(),
    "Squeeze": squeeze_cases(),
    "Unsqueeze": unsqueeze_cases(),
    "ReduceMean": reduce_mean_cases(),
    "Pad": pad_cases(),
    "QuantizeLinear": quantize_linear_cases(),
    "DequantizeLinear": dequantize_linear_cases(),
    "MultiThreshold": multi_threshold_cases(),
}
