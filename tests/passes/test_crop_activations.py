"""crop-activations and qcc.crop: cropped regions are exactly zero and not computed, propagation is
exact, policies and errors, MAC accounting, the per-input policy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qcc.crop import (
    choose_crops,
    cropped_area,
    edge_scores,
    evaluate_interior,
    implied_output_region,
    macs_saved,
    needed_margins,
)
from qcc.errors import PassError, QccError
from qcc.integer import IntegerSemantics
from qcc.interp import FakeQuantSemantics, run
from qcc.ir.graph import Graph
from qcc.ir.quant import Region, Uniform
from qcc.ir.types import TensorType
from qcc.numerics import apply_region, fake_quant
from qcc.pass_manager import PassContext, parse_pipeline, run_pipeline
from qcc.passes.crop_activations import ALL_CUTS, CropActivationsPass, PerInputPolicy, parse_cut, run_per_input
from qcc.report import summarize
from qcc.testing import GraphOptions, graph_inputs, graphs

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeComputeAll(FakeQuantSemantics):
    """The reference: compute every position, then zero the regions (the interpreter without the hook)."""

    skip_cropped = False


class IntComputeAll(IntegerSemantics):
    skip_cropped = False


def _same(a, b) -> bool:
    if hasattr(a, "q"):
        return (np.array_equal(a.q, b.q) and np.array_equal(a.scale, b.scale)
                and np.array_equal(a.zero_point, b.zero_point))
    return np.array_equal(a, b, equal_nan=True)


def _all_values(graph: Graph, x, sem):
    return run(graph, x, mode=sem, keep_all=True, dequantize=False)


def _regions(graph: Graph) -> dict[str, Region | None]:
    return {v.name: v.region for v in graph.values()}


# ---------------------------------------------------------------------------------- semantics

def _region(draw, height: int, width: int) -> Region:
    top = draw(st.integers(0, (height - 1) // 2))
    bottom = draw(st.integers(0, height - 1 - top - 1)) if height - top > 1 else 0
    left = draw(st.integers(0, (width - 1) // 2))
    right = draw(st.integers(0, width - 1 - left - 1)) if width - left > 1 else 0
    return Region(top, bottom, left, right)


@st.composite
def integer_graphs(draw):
    """Random graphs whose input and conv weights are quantized, so Convs run on integers, and
    whose 4-d values are cropped half of the time."""
    g = draw(graphs())
    g.inputs[0].quant = Uniform(bits=8, scale=2.0 / 127, zero_point=0)
    for node in g.nodes:
        w = node.inputs[1] if node.op == "Conv" else None
        if w is not None and w.quant is None:
            bits = draw(st.integers(2, 8))
            spec = Uniform(bits=bits, scale=float(np.abs(w.data).max() / (2 ** (bits - 1) - 1)), zero_point=0)
            w.quant, w.data = spec, fake_quant(w.data, spec)
        out = node.outputs[0]
        if out.type.rank == 4 and min(out.type.shape[2:]) > 1 and draw(st.booleans()):
            out.region = _region(draw, *out.type.shape[2:])
    return g


@SETTINGS
@given(data=st.data(), integer=st.booleans())
def test_not_computed_is_bit_identical_to_computing_and_zeroing(data, integer):
    """Every value (not just outputs), fake-quant and integer-exact, on random annotated graphs."""
    g = data.draw(integer_graphs() if integer else graphs())
    x = data.draw(graph_inputs(g))
    for skip, full in ((FakeQuantSemantics(), FakeComputeAll()), (IntegerSemantics(), IntComputeAll())):
        got, want = _all_values(g, x, skip), _all_values(g, x, full)
        assert set(got) == set(want)
        for name in want:
            assert _same(got[name], want[name]), (skip.name, name)


_CROPPED_OPS = ("Conv", "Relu", "MaxPool", "AveragePool", "Add", "BatchNormalization", "Concat", "Clip")


def _alone(node, values: dict) -> np.ndarray:
    """`node` computed in full (fake-quant, no crop) on the values the graph fed it."""
    single = Graph("one")
    ins, feeds = [], {}
    for i, v in enumerate(node.inputs):
        if v is None or v.is_constant:
            ins.append(v and single.add_constant(v.name, v.data, quant=v.quant))
            continue
        ins.append(single.add_input(f"in{i}", TensorType(values[v.name].shape, v.type.dtype)))
        feeds[f"in{i}"] = values[v.name]
    n = single.add_node(node.op, ins, attrs=dict(node.attrs), name=node.name)
    n.output.quant = node.output.quant
    single.set_outputs([n.output])
    return run(single, feeds, mode="fake")[n.output.name]


@SETTINGS
@given(data=st.data())
def test_crop_pass_output_equals_interpreter_with_regions_zeroed(data):
    g = data.draw(graphs(GraphOptions(schemes=("uniform", "codebook", "thresholds", "bipolar"), head=False)))
    sides = [min(n.output.type.shape[2:]) for n in g.nodes if n.op in _CROPPED_OPS and n.output.type.rank == 4]
    assume(sides and min(sides) >= 3)
    cropped = g.clone()
    run_pipeline(cropped, [CropActivationsPass(cut=data.draw(st.sampled_from(ALL_CUTS[1:])), ops=_CROPPED_OPS)])
    x = data.draw(graph_inputs(g))
    for skip, full in ((FakeQuantSemantics(), FakeComputeAll()), (IntegerSemantics(), IntComputeAll())):
        got, want = _all_values(cropped, x, skip), _all_values(cropped, x, full)
        assert all(_same(got[name], want[name]) for name in want), skip.name
    values = run(cropped, x, mode="fake", keep_all=True)
    for node in cropped.nodes:
        if node.output.region is not None:
            expected = apply_region(_alone(node, values), node.output.region)
            np.testing.assert_array_equal(values[node.output.name], expected)
    want = run(g, x, mode="float")  # float mode ignores crops, like every other annotation
    assert all(np.array_equal(a, want[k]) for k, a in run(cropped, x, mode="float").items())


def test_float_mode_ignores_crops_like_other_annotations():
    g = _conv_graph(bias=True)
    x = {"x": np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)}
    plain = run(g, x, mode="float")["y"]
    g.value("y").region = Region(1, 1, 1, 1)
    np.testing.assert_array_equal(run(g, x, mode="float")["y"], plain)
    np.testing.assert_array_equal(run(g, x, mode="fake")["y"], apply_region(plain, Region(1, 1, 1, 1)))


def _recording(base):
    """A semantics of class `base` that records the first operand shape of what it evaluates."""

    class Recording(base):
        skip_cropped = False  # the hook is called here, recording what it evaluates

        def __init__(self):
            self.shapes = []

        def evaluate(self, node, args):
            def record(n, a):
                self.shapes.append((n.op, tuple(np.shape(a[0].q if hasattr(a[0], "q") else a[0]))))
                return base.evaluate(self, n, a)

            return evaluate_interior(node, args, record)

    return Recording()


def test_interior_is_what_gets_computed():
    """The integer Conv and a pool read only the receptive field of their interior."""
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 8, 8)), quant=Uniform(bits=8, scale=0.05, zero_point=0))
    w = np.random.default_rng(1).integers(-3, 4, size=(3, 2, 3, 3)).astype(np.float32) * 0.25
    wv = g.add_constant("w", w, quant=Uniform(bits=8, scale=0.25, zero_point=0))
    conv = g.add_node("Conv", [x, wv], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    conv.output.quant = Uniform(bits=8, scale=0.1, zero_point=3, signed=False)
    conv.output.region = Region(2, 1, 3, 0)
    pool = g.add_node("MaxPool", [conv.output], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool")
    pool.output.region = Region(1, 0, 0, 0)
    g.set_outputs([pool.output])
    data = {"x": np.random.default_rng(2).uniform(-1, 1, size=(1, 2, 8, 8)).astype(np.float32)}
    sem = _recording(IntegerSemantics)
    got = run(g, data, mode=sem)
    # conv interior rows [2, 7), cols [3, 8) read input rows [1, 8), cols [2, 8) (pads 0 top, 1 bottom)
    assert ("Conv", (1, 2, 7, 6)) in sem.shapes
    assert ("MaxPool", (1, 3, 6, 8)) in sem.shapes  # pool rows [1, 4) read rows [2, 8)
    out = g.outputs[0].name
    np.testing.assert_array_equal(got[out], run(g, data, mode=IntComputeAll())[out])


def test_float_conv_is_computed_in_full():
    """numpy's float einsum is not shape-independent in the last bit, so a float Conv is not sliced."""
    g = _conv_graph(bias=True)
    g.value("y").region = Region(1, 0, 0, 1)
    sem = _recording(FakeQuantSemantics)
    run(g, {"x": np.zeros((1, 2, 6, 6), np.float32)}, mode=sem)
    assert sem.shapes == [("Conv", (1, 2, 6, 6))]


# ---------------------------------------------------------------------------------- propagation

@SETTINGS
@given(data=st.data())
def test_propagation_is_exact(data):
    """Backward and forward propagation only add regions where the results are unread or zero anyway."""
    g = data.draw(graphs(GraphOptions(schemes=("uniform", "thresholds", "bipolar", "region"))))
    x = data.draw(graph_inputs(g))
    before = _regions(g)
    grown = g.clone()
    run_pipeline(grown, [CropActivationsPass(propagate=True, forward=True)])
    for name, region in _regions(grown).items():
        old = before[name] or Region()
        assert all(a >= b for a, b in zip((region or Region()).as_tuple(), old.as_tuple()))
    for mode in ("fake", "int"):
        want, got = run(g, x, mode=mode), run(grown, x, mode=mode)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def _conv_graph(bias: bool, k: int = 3, pad: int = 1, stride: int = 1) -> Graph:
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 6, 6)))
    rng = np.random.default_rng(0)
    w = g.add_constant("w", rng.normal(size=(2, 2, k, k)).astype(np.float32))
    ins = [x, w] + ([g.add_constant("b", np.ones(2, np.float32))] if bias else [])
    node = g.add_node("Conv", ins, attrs={"pads": [pad] * 4, "strides": [stride] * 2}, name="conv",
                      output_names=["y"])
    g.set_outputs([node.output])
    return g


def test_receptive_field_rules_by_hand():
    g = _conv_graph(bias=False)
    conv = g.node("conv")
    g.value("x").region = Region(2, 0, 3, 1)
    # forward: a 3x3 / pad 1 conv over a map cropped by t sees only zeros in its first t - 1 rows
    assert implied_output_region(conv) == Region(1, 0, 2, 0)
    g.value("y").region = Region(2, 1, 0, 3)
    # backward: outputs [2, 5) read input rows [1, 6); outputs [0, 3) read cols [0, 4)
    assert needed_margins(conv, 0) == (1, 0, 0, 2)
    assert implied_output_region(_conv_graph(bias=True).node("conv")) is None  # the bias is not zero

    p = Graph("p")
    x = p.add_input("x", TensorType((1, 1, 8, 8)))
    x.region = Region(3, 2, 0, 0)
    pool = p.add_node("MaxPool", [x], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool")
    assert implied_output_region(pool) == Region(1, 1, 0, 0)  # t // 2 rows
    pool.output.region = Region(1, 0, 0, 1)
    assert needed_margins(pool, 0) == (2, 0, 0, 2)


def test_propagate_through_relu_and_pool():
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 1, 8, 8)))
    w = g.add_constant("w", np.ones((2, 1, 3, 3), np.float32))
    b = g.add_constant("b", np.ones(2, np.float32))
    conv = g.add_node("Conv", [x, w, b], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    relu = g.add_node("Relu", [conv.output], name="relu")
    pool = g.add_node("MaxPool", [relu.output], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool")
    g.set_outputs([pool.output])
    result = CropActivationsPass(crops="pool=1,0,0,1", propagate=True)(g)
    assert result.changed
    assert relu.output.region == Region(2, 0, 0, 2) and conv.output.region == Region(2, 0, 0, 2)
    assert x.region is None
    assert not CropActivationsPass(propagate=True)(g).changed  # at the fixed point


# ---------------------------------------------------------------------------------- policies

def _example_like() -> Graph:
    """conv1 (8x8) -> relu -> conv2 (8x8) -> maxpool -> conv3 (4x4) -> gap -> flatten -> gemm."""
    g = Graph("small")
    x = g.add_input("input", TensorType(("N", 1, 8, 8)))
    rng = np.random.default_rng(3)
    v = x
    for i, (cin, cout) in enumerate([(1, 4), (4, 4)], start=1):
        w = g.add_constant(f"conv{i}.weight", rng.normal(0, 0.5, (cout, cin, 3, 3)).astype(np.float32))
        v = g.add_node("Conv", [v, w], attrs={"pads": [1, 1, 1, 1]}, name=f"/conv{i}/Conv").output
        v = g.add_node("Relu", [v], name=f"/relu{i}/Relu").output
    v = g.add_node("MaxPool", [v], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="/pool/MaxPool").output
    w = g.add_constant("conv3.weight", rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32))
    v = g.add_node("Conv", [v, w], attrs={"pads": [1, 1, 1, 1]}, name="/conv3/Conv").output
    v = g.add_node("GlobalAveragePool", [v], name="/gap").output
    v = g.add_node("Flatten", [v], name="/flatten").output
    fc = g.add_constant("fc.weight", rng.normal(0, 0.5, (3, 4)).astype(np.float32))
    g.set_outputs([g.add_node("Gemm", [v, fc], attrs={"transB": 1}, name="/fc/Gemm").output])
    return g


def test_cut_with_fraction_shrinks_with_depth():
    g = _example_like()
    CropActivationsPass(cut="1010", fraction=0.25)(g)
    assert g.node("/conv1/Conv").output.region == Region(top=2, left=2)
    assert g.node("/conv3/Conv").output.region == Region(top=1, left=1)
    h = _example_like()
    CropActivationsPass(cut="TBLR", pixels=1)(h)
    assert h.node("/conv3/Conv").output.region == Region(1, 1, 1, 1)
    assert [parse_cut(c) for c in ("0110", "bl")] == [(False, True, True, False)] * 2


def test_config_file_layers_and_default(tmp_path):
    path = tmp_path / "crop.toml"
    path.write_text('[default]\nw_bits = 8\ncrop = [1, 0, 0, 0]\n'
                    '[layers."/conv3/Conv"]\ncrop = [0, 1, 0, 1]\n[layers."/fc/Gemm"]\nw_bits = 4\n')
    g = _example_like()
    assert CropActivationsPass(config=str(path))(g).changed
    assert g.node("/conv1/Conv").output.region == Region(top=1)
    assert g.node("/conv3/Conv").output.region == Region(bottom=1, right=1)
    assert g.node("/fc/Gemm").output.region is None
    assert not CropActivationsPass(config=str(path))(g).changed


def test_edges_picks_the_quiet_edges_of_the_calibration_images():
    rng = np.random.default_rng(4)
    x = np.zeros((16, 1, 8, 8), np.float32)
    x[:, :, 1:7, 1:7] = rng.uniform(0, 1, (16, 1, 6, 6))
    x[:, :, 0, :] = rng.uniform(0, 1, (16, 1, 8))  # busy top edge
    x[:, :, :, 7] = rng.uniform(0, 1, (16, 1, 8))  # busy right edge
    g = _example_like()
    ctx = PassContext(config={"calib": {"x": x}})
    run_pipeline(g, parse_pipeline("crop-activations{edges=2,statistic=intensity}"), ctx)
    assert g.node("/conv1/Conv").output.region == Region(bottom=1, left=1)


def test_pipeline_text_and_spec_round_trip():
    (p,) = parse_pipeline('crop-activations{cut="0011",fraction=0.125,propagate=true}')
    assert p == CropActivationsPass(cut="LR", fraction=0.125, propagate=True)  # cuts are kept as edge letters
    assert p.spec() == "crop-activations{cut=LR,fraction=0.125,propagate=true}"
    assert parse_pipeline(p.spec()) == [p]


# ---------------------------------------------------------------------------------- errors

def test_crop_larger_than_the_feature_map_names_node_size_and_crop():
    g = _example_like()
    with pytest.raises(PassError, match=r"crop \[2, 2, 0, 0\] is larger than the 4x4 feature map of "
                                        r"'/conv3/Conv'") as e:
        CropActivationsPass(crops="/conv3/Conv=2,2,0,0")(g)
    assert e.value.node == "/conv3/Conv" and "crop-activations" in str(e.value)
    with pytest.raises(PassError, match="4x4 feature map of '/conv3/Conv'"):
        CropActivationsPass(cut="1100", pixels=2)(_example_like())


def test_unknown_layer_in_config_lists_close_matches(tmp_path):
    path = tmp_path / "crop.toml"
    path.write_text('[layers."/conv2/Conv2"]\ncrop = [1, 1, 1, 1]\n')
    with pytest.raises(PassError, match=r"unknown layer '/conv2/Conv2'; did you mean '/conv2/Conv'"):
        CropActivationsPass(config=str(path))(_example_like())
    with pytest.raises(PassError, match=r"unknown layer 'nothing_like_it'; layers are: /conv1/Conv"):
        CropActivationsPass(crops="nothing_like_it=1,0,0,0")(_example_like())


def test_crop_on_a_non_4d_value():
    with pytest.raises(PassError, match=r"needs an NCHW feature map, but '/fc/Gemm' \(Gemm\) outputs f32\[N,3\]"):
        CropActivationsPass(crops="/fc/Gemm=1,0,0,0")(_example_like())


@pytest.mark.parametrize("options, message", [
    ('cut="1010",edges=1', "give one crop policy, not cut and edges"),
    ("pixels=2", "give a crop policy"),
    ('cut="10x0"', "cut must be four bits"),
    ("cut=11", "quoted, so leading zeros stay"),
    ("edges=5", "edges must be between 0 and 4"),
    ('cut="1111",fraction=0.5', r"fraction must be in \(0, 0.5\)"),
    ('cut="1111",pixels=0', "pixels must be >= 1"),
    ('crops="conv1:1,1,1,1"', "expected '<node>=top,bottom,left,right'"),
    ('cut="1111",statistic=mean', "is not one of"),
    ('cut="1111",ops=[]', "ops must name at least one op type"),
])
def test_bad_options(options, message):
    with pytest.raises(QccError, match=message):
        parse_pipeline(f"crop-activations{{{options}}}")


def test_edges_without_calibration_data():
    with pytest.raises(PassError, match="edges needs calibration images"):
        CropActivationsPass(edges=1)(_example_like())


def test_config_file_errors(tmp_path):
    with pytest.raises(PassError, match="does not exist"):
        CropActivationsPass(config=str(tmp_path / "missing.toml"))(_example_like())
    bad = tmp_path / "bad.toml"
    bad.write_text('[layers."/conv1/Conv"]\ncrop = [1, -1, 0, 0]\n')
    with pytest.raises(PassError, match="crop must be 4 non-negative integers"):
        CropActivationsPass(config=str(bad))(_example_like())


# ---------------------------------------------------------------------------------- cost

def test_mac_savings_by_hand():
    """A 2 -> 3 channel 3x3 conv on 6x6: crop [1, 0, 2, 0] leaves 5 x 4 of 36 positions."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 2, 6, 6)))
    w = g.add_constant("w", np.ones((3, 2, 3, 3), np.float32))
    conv = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    relu = g.add_node("Relu", [conv.output], name="relu")
    g.set_outputs([relu.output])
    conv.output.region = Region(top=1, left=2)
    assert cropped_area(conv.output.region, 6, 6) == 16
    assert macs_saved(conv) == 16 * 3 * (2 * 3 * 3) == 864
    report = summarize(g)
    row = report.layers[0]
    assert (row.macs, row.macs_saved, row.activations_cropped) == (36 * 3 * 18, 864, 48)
    assert report.totals["macs_saved"] == 864 and report.totals["activations_cropped"] == 48
    assert "MACs saved" in report.table() and "864" in report.table()
    assert '"macs_saved": 864' in report.to_json()
    assert "MACs saved" not in summarize(_example_like()).table()  # no crops, no columns


# ---------------------------------------------------------------------------------- per input

def test_edge_scores_and_choose_crops():
    x = np.zeros((3, 1, 8, 8), np.float32)
    x[:, :, 2:6, 2:6] = 1.0  # a centred object: every edge is background
    x[1, :, 0, 3] = 1.0  # a mark on the top edge of image 1
    x[2] = np.random.default_rng(5).uniform(0, 1, (1, 8, 8))  # texture everywhere
    scores = edge_scores(x, Region(1, 1, 1, 1), "intensity")
    assert scores.shape == (3, 4) and np.all(scores[0] == 0) and scores[1, 0] > 0
    candidates = [Region(), Region(top=1), Region(bottom=1, right=1), Region(1, 1, 1, 1)]
    choice = choose_crops(x, candidates, "intensity", threshold=0.1)
    assert choice.tolist() == [3, 2, 0]
    for stat in ("gradient", "entropy"):
        low = choose_crops(x, candidates, stat, threshold=-1.0)
        assert low.tolist() == [0, 0, 0]  # only the uncut candidate (score 0) is acceptable
        saved = [cropped_area(c, 8, 8) for c in candidates]
        picks = [np.asarray(saved)[choose_crops(x, candidates, stat, t)] for t in (0.0, 0.5, 2.0, 1e9)]
        assert all(np.all(a <= b) for a, b in zip(picks, picks[1:]))  # more threshold, more cropping
        assert picks[-1].tolist() == [saved[3]] * 3


def test_run_per_input_matches_running_each_choice():
    g = _example_like()
    rng = np.random.default_rng(6)
    x = np.zeros((6, 1, 8, 8), np.float32)
    x[:, :, 1:7, 1:7] = rng.uniform(0, 1, (6, 1, 6, 6))
    x[:3, :, 0, :] = 1.0  # images 0-2 have a busy top edge
    policy = PerInputPolicy(statistic="intensity", threshold=0.2, fraction=0.125)
    result = run_per_input(g, {"x": x}, policy, mode="fake")
    cuts = [policy.cuts[i] for i in result.choice]
    assert all(c[0] == "0" for c in cuts[:3]) and cuts[3:] == ["1111"] * 3
    for index in np.unique(result.choice):  # each group runs as one batch (float sums depend on shapes)
        rows = np.flatnonzero(result.choice == index)
        h = g.clone()
        CropActivationsPass(cut=policy.cuts[index], fraction=0.125)(h)
        want = run(h, {"input": x[rows]}, mode="fake")[h.outputs[0].name]
        np.testing.assert_array_equal(result.outputs[g.outputs[0].name][rows], want)
        assert np.all(result.macs_saved[rows] == summarize(h).totals["macs_saved"])
    assert result.macs == summarize(g).totals["macs"]
    uncropped = run_per_input(g, x, PerInputPolicy(threshold=-1.0), mode="int")
    assert np.all(uncropped.choice == 0) and np.all(uncropped.macs_saved == 0)
    out = g.outputs[0].name
    np.testing.assert_array_equal(uncropped.outputs[out], run(g, {"input": x}, mode="int")[out])
