"""The cpu target's single TVM module (qcc.targets.cpu.module) against the integer interpreter.

Small random nets (conv with strides / pads / groups, ReLU, residual Add, MaxPool, GlobalAveragePool,
Flatten, Gemm), quantized by the quantize pass at 1-8 bits (uniform or bipolar), are built into one
Relax module and run on a batch of 3; the outputs must equal qcc.interp.run(graph, x, mode="int")
bit for bit. TVM builds are slow, so the examples are few and the shapes tiny.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

from qcc.frontend.qir import load as load_qir  # noqa: E402
from qcc.interp import run  # noqa: E402
from qcc.ir.graph import Graph  # noqa: E402
from qcc.ir.quant import Thresholds  # noqa: E402
from qcc.ir.types import TensorType  # noqa: E402
from qcc.pass_manager import PassContext, run_pipeline  # noqa: E402
from qcc.targets.cpu import lower_expr as lx  # noqa: E402
from qcc.targets.cpu.module import CompiledModel, build_module  # noqa: E402

SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def _net(rng, c: int, hw: int, stride: int, pad: int, group: int, pool: bool) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(("N", c, hw, hw)))
    w1 = g.add_constant("w1", rng.normal(0, 0.5, (8, c // group, 3, 3)).astype(np.float32))
    b1 = g.add_constant("b1", rng.normal(0, 0.1, 8).astype(np.float32))
    y = g.add_node("Conv", [x, w1, b1], attrs={"group": group, "kernel_shape": [3, 3], "strides": [stride] * 2,
                                                "pads": [pad] * 4, "dilations": [1, 1]}).outputs[0]
    y = g.add_node("Relu", [y]).outputs[0]
    w2 = g.add_constant("w2", rng.normal(0, 0.5, (8, 8, 1, 1)).astype(np.float32))
    h = g.add_node("Conv", [y, w2], attrs={"kernel_shape": [1, 1]}).outputs[0]
    y = g.add_node("Relu", [g.add_node("Add", [h, y]).outputs[0]]).outputs[0]
    if pool:
        y = g.add_node("MaxPool", [y], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}).outputs[0]
    y = g.add_node("GlobalAveragePool", [y]).outputs[0]
    y = g.add_node("Flatten", [y]).outputs[0]
    w3 = g.add_constant("w3", rng.normal(0, 0.5, (5, 8)).astype(np.float32))
    b3 = g.add_constant("b3", rng.normal(0, 0.1, 5).astype(np.float32))
    g.set_outputs([g.add_node("Gemm", [y, w3, b3], attrs={"transB": 1}, output_names=["out"]).outputs[0]])
    return g


def _quantized(graph: Graph, rng, shape, options: str) -> Graph:
    ctx = PassContext()
    ctx.config["calib"] = {"x": rng.uniform(-1, 1, (8, *shape[1:])).astype(np.float32)}
    run_pipeline(graph, f"calibrate,quantize{{{options}}}", ctx)
    return graph


def _check(graph: Graph, out_dir, x: np.ndarray) -> CompiledModel:
    build_module(graph, out_dir)
    model = CompiledModel(out_dir)
    saved = load_qir(out_dir / "model.qir")
    got = model({"x": x})
    want = run(saved, {"x": x}, mode="int")
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)
    return model


@SETTINGS
@given(seed=st.integers(0, 2**16), w_bits=st.integers(2, 8), a_bits=st.integers(1, 8), stride=st.integers(1, 2),
       pad=st.integers(0, 1), group=st.sampled_from([1, 2]), pool=st.booleans())
def test_small_nets_equal_the_integer_interpreter(tmp_path_factory, seed, w_bits, a_bits, stride, pad, group, pool):
    rng = np.random.default_rng(seed)
    hw = 7 if pool and stride == 1 else 9
    shape = (3, 4, hw, hw)
    graph = _quantized(_net(rng, 4, hw, stride, pad, group, pool), rng, shape, f"w_bits={w_bits},a_bits={a_bits}")
    model = _check(graph, tmp_path_factory.mktemp("net"), rng.uniform(-1.5, 1.5, shape).astype(np.float32))
    assert model.host_nodes == []  # everything ran inside the module
    assert len(model.metadata["kernels"]) == 3


def test_bipolar_net_runs_xnor_kernels(tmp_path):
    rng = np.random.default_rng(3)
    shape = (3, 4, 7, 7)
    graph = _quantized(_net(rng, 4, 7, 1, 1, 1, True), rng, shape, "w_scheme=bipolar,a_scheme=bipolar")
    model = _check(graph, tmp_path, rng.uniform(-1.5, 1.5, shape).astype(np.float32))
    assert any(k["bipolar"] for k in model.metadata["kernels"])


def test_unsupported_op_runs_on_the_host_between_segments(tmp_path):
    rng = np.random.default_rng(5)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 5, 5)))
    w = g.add_constant("w", rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32))
    y = g.add_node("Conv", [x, w], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}).outputs[0]
    y = g.add_node("Sigmoid", [y]).outputs[0]  # a float island
    w2 = g.add_constant("w2", rng.normal(0, 0.5, (3, 4, 1, 1)).astype(np.float32))
    y = g.add_node("Conv", [y, w2], attrs={"kernel_shape": [1, 1]}, output_names=["out"]).outputs[0]
    g.set_outputs([y])
    graph = _quantized(g, rng, (2, 2, 5, 5), "w_bits=4,a_bits=4")
    model = _check(graph, tmp_path, rng.uniform(-1, 1, (2, 2, 5, 5)).astype(np.float32))
    assert len(model.host_nodes) == 1
    plan = json.loads((tmp_path / "metadata.json").read_text())["plan"]
    assert [s["kind"] for s in plan] == ["module", "host", "module"]


def _run_chain(lazy: lx.Lazy, x: np.ndarray) -> np.ndarray:
    import tvm

    func, leaves = lazy.prim_func()
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    args = [tvm.runtime.tensor(x if not isinstance(leaf.source, np.ndarray) else leaf.source) for leaf in leaves]
    out = tvm.runtime.tensor(np.zeros(lazy.shape, lazy.dtype))
    lib["main"](*args, out)
    return out.numpy()


def test_input_quantization_rounds_half_to_even_in_float32():
    from qcc.ir.quant import Uniform
    from qcc.numerics import quantize

    spec = Uniform(bits=8, signed=False, scale=0.1, zero_point=3)
    ties = np.array([0.25, 0.35, 0.45, -0.25, 6.079439, 2.4317756 * 2.5, 1e9, -1e9], np.float32)
    x = np.concatenate([ties, np.random.default_rng(0).uniform(-30, 30, 1000).astype(np.float32)]).reshape(1, -1)
    lazy = lx.quantize_input(lx.Lazy.stored("x", x.shape, "float32", (0, 0)), 0.1, 3, spec.qmin, spec.qmax)
    np.testing.assert_array_equal(_run_chain(lazy, x), quantize(x, spec))


@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_requantize_and_thresholds_match_numerics(seed):
    from qcc.numerics import integer_thresholds, quantize_multiplier, requantize

    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**31), 2**31, (1, 3, 64)).astype(np.int64)
    acc[0, 0, :4] = [2**31 - 1, -(2**31), 0, 1]
    ratios = rng.uniform(1e-6, 2.0, 3)
    pairs = [quantize_multiplier(float(r)) for r in ratios]
    m0, n = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    zin, zout = np.array([0, 5, -7]), np.array([3, 0, 1])
    lazy = lx.requantize(lx.Lazy.stored("a", acc.shape, "int64", (-(2**31), 2**31)), zin, m0, n, zout, -8, 300)
    want = requantize(acc - zin.reshape(1, 3, 1), m0.reshape(1, 3, 1), n.reshape(1, 3, 1), zout.reshape(1, 3, 1),
                      -8, 300)
    np.testing.assert_array_equal(_run_chain(lazy, acc), want)
    spec = Thresholds(bits=2, thresholds=np.sort(rng.normal(0, 1, (3, 3)), axis=1).tolist(), axis=1)
    table = integer_thresholds(spec, np.full(3, 1e-9), np.zeros(3))
    lazy = lx.thresholds(lx.Lazy.stored("a", acc.shape, "int64", (0, 0)), table)
    want = (acc.transpose(0, 2, 1)[..., None] >= table).sum(-1).transpose(0, 2, 1)
    np.testing.assert_array_equal(_run_chain(lazy, acc), want)
