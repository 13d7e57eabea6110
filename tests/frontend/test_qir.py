"""Tests for the .qir text form: exact round trips, located errors, deterministic saves, speed.

The example files under tests/qir/ are FileCheck-like:
- tests/qir/*.qir are canonical: printing the parsed file gives the file back (minus the `#` lines);
- tests/qir/errors/*.qir start with `# ERROR: <line>:<col>: <message>` and must fail exactly there;
  `# OMIT-WEIGHT: <handle>` leaves that weight out of the weights passed to the parser.
Weights for the files are made from the declared types and annotations (values on the grid).
"""

from __future__ import annotations

import math
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.errors import ParseError, QccError, ShapeError, UnsupportedOpError, VerifyError
from qcc.frontend.qir import (
    UnknownOpError,
    declared_constants,
    format_attr,
    load,
    parse_graph,
    print_graph,
    save,
)
from qcc.interp import run
from qcc.ir import Bipolar, Codebook, Graph, Region, TensorType, Thresholds, Uniform
from qcc.ir.types import DTYPES
from qcc.numerics import fake_quant
from qcc.ops import OpDef, has_op
from qcc.ops import registry as op_registry

QIR = Path(__file__).resolve().parent.parent / "qir"
GOOD = sorted(QIR.glob("*.qir"))
BAD = sorted((QIR / "errors").glob("*.qir"))


# ------------------------------------------------------------------------------- helpers
def _split_infer(in_types, attrs):
    x = in_types[0]
    axis = attrs["axis"]
    if not 0 <= axis < x.rank or not isinstance(x.shape[axis], int) or x.shape[axis] % 2:
        raise ShapeError(f"cannot split {x} in two along axis {axis}")
    half = x.shape[axis] // 2
    t = TensorType(x.shape[:axis] + (half,) + x.shape[axis + 1:], x.dtype)
    return [t, t]


def _split_eval(args, attrs):
    return list(np.split(args[0], 2, axis=attrs["axis"]))


SPLIT = OpDef(name="QirTestSplit", inputs=("X",), outputs=("A", "B"), infer=_split_infer,
              evaluate=_split_eval, attrs={"axis": op_registry.AttrSpec("int", 1)},
              doc="Test-only: split in two halves along an axis.")


@pytest.fixture(autouse=True, scope="module")
def split_op():
    """A two-output op registered only while this module's tests run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(op_registry._REGISTRY, SPLIT.name, SPLIT)
        yield


def weights_for(text: str, omit: tuple[str, ...] = (), seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for every constant the text declares, on the grid of its annotation."""
    rng = np.random.default_rng(seed)
    out = {}
    for handle, (t, spec) in declared_constants(text).items():
        if handle in omit:
            continue
        data = rng.normal(0, 1, t.concrete()).astype(t.dtype)
        out[handle] = fake_quant(data, spec) if spec is not None else data
    return out


def canonical(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def roundtrip(graph: Graph) -> Graph:
    text = print_graph(graph)
    again = parse_graph(text, {c.name: c.data for c in graph.constants})
    assert print_graph(again) == text
    return again


def conv_graph(name: str = "g") -> Graph:
    g = Graph(name)
    x = g.add_input("x", TensorType(("N", 2, 6, 6)))
    w = g.add_constant("conv.weight", np.arange(36, dtype=np.float32).reshape(2, 2, 3, 3) / 8)
    b = g.add_constant("conv.bias", np.array([0.5, -0.25], dtype=np.float32))
    conv = g.add_node("Conv", [x, w, b], attrs={"pads": [1, 1, 1, 1]}, name="/conv/Conv")
    g.set_outputs([conv.output])
    return g


def same_attr(a, b) -> bool:
    """Structural equality where floats compare by repr (nan == nan, -0.0 != 0.0), tuples as lists."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, float) and isinstance(b, float) and repr(a) == repr(b)
    if isinstance(a, list | tuple):
        return isinstance(b, list) and len(a) == len(b) and all(same_attr(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_attr(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------- example files
@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_example_roundtrips_exactly(path):
    text = path.read_text(encoding="utf-8")
    graph = parse_graph(text, weights_for(text), source=str(path))
    assert print_graph(graph) == canonical(text)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_example_error_is_located(path):
    text = path.read_text(encoding="utf-8")
    want = re.search(r"^# ERROR: (\d+):(\d+): (.*)$", text, re.M)
    assert want, f"{path.name} has no '# ERROR: line:col: message' line"
    omit = tuple(re.findall(r"^# OMIT-WEIGHT: (.*)$", text, re.M))
    try:
        weights = weights_for(text, omit)
    except ParseError:
        weights = {}
    with pytest.raises(ParseError) as info:
        parse_graph(text, weights, source=path.name)
    err = info.value
    assert (err.line, err.column) == (int(want[1]), int(want[2])), str(err)
    assert want[3] in err.reason
    assert str(err).startswith(f"{path.name}:{want[1]}:{want[2]}: ")
    assert "\n" not in str(err)


def test_examples_exist():
    assert len(GOOD) >= 5 and len(BAD) >= 20


def test_unknown_op_is_an_unsupported_op_error():
    text = (QIR / "errors" / "unknown_op.qir").read_text(encoding="utf-8")
    with pytest.raises(UnsupportedOpError) as info:
        parse_graph(text, weights_for(text))
    assert isinstance(info.value, UnknownOpError) and isinstance(info.value, ParseError)
    assert (info.value.op_type, info.value.node_name) == ("Foo", "n1")
    assert "Conv" in str(info.value)  # lists the supported ops


# ------------------------------------------------------------------------- round trips
def test_parsed_graph_matches_the_original():
    g = conv_graph()
    g.outputs[0].quant = Uniform(bits=4, scale=0.5, zero_point=1, signed=False)
    g.outputs[0].region = Region(top=1, left=2)
    h = roundtrip(g)
    assert h.name == "g"
    assert [v.name for v in h.inputs] == ["x"]
    assert h.inputs[0].type == TensorType(("N", 2, 6, 6))
    assert [c.name for c in h.constants] == ["conv.weight", "conv.bias"]
    for c, d in zip(g.constants, h.constants):
        np.testing.assert_array_equal(c.data, d.data)
    node = h.nodes[0]
    assert (node.op, node.name) == ("Conv", "/conv/Conv")
    assert node.attrs == g.nodes[0].attrs
    assert h.outputs[0].quant == g.outputs[0].quant and h.outputs[0].region == g.outputs[0].region
    x = np.random.default_rng(1).normal(size=(2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(g, {"x": x})[g.outputs[0].name], run(h, {"x": x})[h.outputs[0].name])


@pytest.mark.parametrize("spec", [
    Uniform(bits=8, scale=0.02, zero_point=-5),
    Uniform(bits=3, signed=False, scale=(0.5, 0.25), zero_point=(0, 1), axis=1, narrow=False),
    Uniform.fixed_point(bits=6, frac_bits=3),
    Thresholds(bits=2, thresholds=((-1.0, 0.0, 1.0),), out_scale=0.5, out_bias=-1.0),
    Thresholds(bits=1, thresholds=((0.5,), (-0.5,)), axis=1),
    Bipolar(scale=0.75),
    Bipolar(scale=(1.0, 2.0), axis=1),
], ids=repr)
def test_every_activation_scheme_roundtrips(spec):
    g = conv_graph()
    g.outputs[0].quant = spec
    g.outputs[0].region = Region(1, 2, 3, 0)
    h = roundtrip(g)
    assert h.outputs[0].quant == spec and h.outputs[0].region == Region(1, 2, 3, 0)


@pytest.mark.parametrize("spec", [
    Uniform(bits=4, scale=(0.5, 0.25), zero_point=(0, 0), axis=0, narrow=True),
    Codebook(bits=2, centroids=(-3, -1, 1, 3), centroid_bits=8, centroid_scale=0.125),
    Codebook(bits=1, centroids=((-1, 1), (0, 2)), centroid_scale=0.5, axis=0),
    Bipolar(scale=(0.5, 0.25), axis=0),
], ids=repr)
def test_every_weight_scheme_roundtrips(spec):
    g = Graph("w")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    data = fake_quant(np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32), spec)
    w = g.add_constant("w", data, quant=spec)
    g.set_outputs([g.add_node("Conv", [x, w], name="conv").output])
    assert roundtrip(g).constants[0].quant == spec


def test_symbolic_dims_and_keyword_like_names_roundtrip():
    g = Graph("sym")
    x = g.add_input("x", TensorType(("batch", "true", "const")))
    g.set_outputs([x])
    text = print_graph(g)
    assert "f32[batch,true,const]" in text
    assert roundtrip(g).inputs[0].type.shape == ("batch", "true", "const")


def test_all_dtypes_roundtrip():
    g = Graph("dtypes")
    for short, numpy_name in DTYPES.items():
        g.add_input(f"x_{short}", TensorType((2,), numpy_name))
        g.add_constant(f"c_{short}", np.zeros((1, 3), numpy_name))
    g.set_outputs(g.inputs)
    h = roundtrip(g)
    assert {c.name: c.data.dtype for c in h.constants} == {c.name: c.data.dtype for c in g.constants}


def test_multi_output_node_roundtrips():
    g = Graph("multi")
    x = g.add_input("x", TensorType(("N", 4, 2, 2)))
    split = g.add_node("QirTestSplit", [x], name="split", output_names=["lo", "hi"])
    split.outputs[1].quant = Bipolar()
    g.set_outputs([split.outputs[1]])
    text = print_graph(g)
    assert '%0: f32[N,2,2,2], %hi: f32[N,2,2,2] quant bipolar{} = QirTestSplit "split" (%x) {axis = 1}' in text
    h = roundtrip(g)
    assert [len(n.outputs) for n in h.nodes] == [2] and h.outputs[0] is h.nodes[0].outputs[1]


def test_absent_optional_input_prints_as_placeholder():
    g = Graph("opt")
    x = g.add_input("x", TensorType((1, 1, 3, 3)))
    w = g.add_constant("w", np.ones((1, 1, 3, 3), np.float32))
    g.set_outputs([g.add_node("Conv", [x, w, None], name="conv").output])
    assert '(%x, %c0, _)' in print_graph(g)
    assert roundtrip(g).nodes[0].inputs[2] is None


def test_attribute_edge_cases_roundtrip():
    attrs = {
        "floats": [math.inf, -math.inf, math.nan, -0.0, 0.1, 1e-320, 1.7976931348623157e308, 1e16],
        "ints": [0, -7, 2**80],
        "strings": ["", "ünïcödé 🙂", "quote \" backslash \\ newline \n tab \t", "\x00", "\ud800"],
        "nested": [[1, [2.0, ["x", [True, None]]]], {}, []],
        "table": {"/conv1/Conv": {2: 0.5, 8: 0.01}, "a b": {-1: [1, 2]}, 3: "three"},
        "keywords": {"true": 1, "none": 2, "inf": 3, "quant": 4, "_": 5, "newline\n": 6},
        "numpy": [np.int64(3), np.float32(0.5), np.bool_(True), np.arange(3), np.array([[1.5]])],
    }
    g = conv_graph()
    g.attrs = attrs
    h = roundtrip(g)
    expected = {**attrs, "numpy": [3, 0.5, True, [0, 1, 2], [[1.5]]]}
    assert same_attr(expected, h.attrs)
    assert list(h.attrs["table"]) == [3, "/conv1/Conv", "a b"]  # integers first, then strings


def test_unprintable_attribute_is_a_clear_error():
    g = conv_graph()
    g.attrs = {"bad": object()}
    with pytest.raises(VerifyError, match="attribute value .* cannot be printed"):
        print_graph(g)
    g.attrs = {"bad": {1.5: 1}}
    with pytest.raises(VerifyError, match="dictionary key 1.5"):
        print_graph(g)


def test_renumbering_skips_names_of_inputs_and_outputs():
    g = Graph("clash")
    x = g.add_input("0", TensorType((1, 1, 3, 3)))
    g.add_input("c0", TensorType((1,)))
    w = g.add_constant("w", np.ones((1, 1, 1, 1), np.float32))
    a = g.add_node("Conv", [x, w], name="a").output
    b = g.add_node("Conv", [a, w], name="b").output
    g.set_outputs([b])
    text = print_graph(g)
    assert "%c1: f32[1,1,1,1] = const \"w\"" in text and "%1: f32[1,1,3,3] = Conv \"a\" (%0, %c1)" in text
    assert '%"b:out": f32[1,1,3,3] = Conv "b" (%1, %c1)' in text
    roundtrip(g)


def test_names_that_only_look_bare_are_quoted():
    g = Graph("g")
    g.set_outputs([g.add_input("x\n", TensorType((1,)))])
    assert '(%"x\\n": f32[1]) -> (%"x\\n")' in print_graph(g)
    assert roundtrip(g).inputs[0].name == "x\n"


def test_printing_ignores_value_names_and_constant_insertion_order():
    def build(order):
        g = Graph("g")
        x = g.add_input("x", TensorType((1, 1, 3, 3)))
        consts = {n: g.add_constant(n, np.full((1, 1, 1, 1), i + 1, np.float32)) for i, n in order}
        y = g.add_node("Conv", [x, consts["a"]], name="first", output_names=[f"tmp{len(order)}"]).output
        z = g.add_node("Conv", [y, consts["b"]], name="second").output
        g.set_outputs([z])
        return g

    assert print_graph(build([(0, "a"), (1, "b")])) == print_graph(build([(1, "b"), (0, "a")]))


def test_comments_and_free_layout_parse():
    text = canonical((QIR / "conv_gemm.qir").read_text(encoding="utf-8"))
    messy = "# leading comment\n" + text.replace(", ", " ,\n    ").replace(" {", "  # trailing\n {")
    assert print_graph(parse_graph(messy, weights_for(text))) == text


def test_omitted_attributes_get_their_defaults():
    text = ('qir 1\ngraph "g" (%x: f32[1,1,4,4]) -> (%0) {\n  %c0: f32[1,1,3,3] = const "w"\n'
            '  %0: f32[1,1,4,4] = Conv "conv" (%x, %c0) {pads = [1, 1, 1, 1]}\n}\n')
    g = parse_graph(text, weights_for(text))
    assert g.nodes[0].attrs["strides"] == [1, 1] and g.nodes[0].attrs["group"] == 1


# ------------------------------------------------------------------------------ errors
def test_parse_errors_name_the_source():
    with pytest.raises(ParseError, match=r"^model\.qir:1:1: expected 'qir', got 'nope'$"):
        parse_graph("nope", {}, source="model.qir")
    with pytest.raises(ParseError, match=r"^<input>:1:1: unexpected end of input"):
        parse_graph("", {})


def test_weight_type_mismatch_is_located():
    text = 'qir 1\ngraph "g" (%x: f32[2]) -> (%x) {\n  %c0: f32[2,3] = const "w"\n}\n'
    with pytest.raises(ParseError) as info:
        parse_graph(text, {"w": np.zeros((3, 2), np.float32)})
    assert (info.value.line, info.value.column) == (3, 25)
    assert "weight 'w' is f32[3,2] but %c0 is declared f32[2,3]" in info.value.reason


def test_off_grid_weight_is_located_at_the_constant():
    text = ('qir 1\ngraph "g" (%x: f32[2]) -> (%x) {\n'
            '  %c0: f32[2] quant uniform{bits = 4, scale = 0.5} = const "w"\n}\n')
    with pytest.raises(ParseError) as info:
        parse_graph(text, {"w": np.array([0.3, 0.5], np.float32)})
    assert (info.value.line, info.value.column) == (3, 3)
    assert "constant 'w' holds values that its uniform annotation cannot represent" in info.value.reason


def test_shape_errors_keep_shape_error_text():
    text = (QIR / "errors" / "op_shape_error.qir").read_text(encoding="utf-8")
    with pytest.raises(ParseError, match="input has 3 channels"):
        parse_graph(text, weights_for(text))
    assert issubclass(ShapeError, VerifyError)  # the parser catches the whole VerifyError family


# -------------------------------------------------------------------------- save / load
def test_save_load_roundtrip(tmp_path):
    g = conv_graph()
    g.constants[0].quant = None
    save(g, tmp_path / "model.qir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "model.qir"]
    h = load(tmp_path / "model.qir")
    assert print_graph(h) == print_graph(g)
    for c, d in zip(g.constants, h.constants):
        np.testing.assert_array_equal(c.data, d.data)
        assert not d.data.flags.writeable
    with np.load(tmp_path / "model.npz") as z:
        assert sorted(z.files) == ["conv.bias", "conv.weight"]


def test_save_is_byte_deterministic(tmp_path):
    g = conv_graph()
    g.attrs = {"b": {"y": 1.5, "x": [math.nan]}, "a": "z"}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    save(g, tmp_path / "one" / "m.qir")
    save(g.clone(), tmp_path / "two" / "m.qir")
    save(load(tmp_path / "one" / "m.qir"), tmp_path / "one" / "again.qir")
    for name in ("m.qir", "m.npz"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert (tmp_path / "one" / "again.npz").read_bytes() == (tmp_path / "one" / "m.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "one" / "m.npz") as z:  # no save time inside the archive
        assert [(i.filename, i.date_time) for i in z.infolist()] == [
            ("conv.bias.npy", (1980, 1, 1, 0, 0, 0)), ("conv.weight.npy", (1980, 1, 1, 0, 0, 0))]


def test_save_refuses_an_npz_name(tmp_path):
    with pytest.raises(QccError, match="use a .qir name"):
        save(conv_graph(), tmp_path / "m.npz")


def test_load_reports_a_corrupt_weights_file(tmp_path):
    save(conv_graph(), tmp_path / "m.qir")
    (tmp_path / "m.npz").write_bytes(b"not a zip")
    with pytest.raises(ParseError, match="cannot read weights"):
        load(tmp_path / "m.qir")


def test_save_leaves_nothing_on_failure(tmp_path):
    g = conv_graph()
    g.attrs = {"bad": object()}
    with pytest.raises(VerifyError):
        save(g, tmp_path / "m.qir")
    assert list(tmp_path.iterdir()) == []


def test_save_keeps_old_files_when_writing_fails(tmp_path, monkeypatch):
    from qcc.frontend.qir import printer

    save(conv_graph("old"), tmp_path / "m.qir")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(path, arrays):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(printer, "write_npz", broken)
    with pytest.raises(OSError):
        save(conv_graph("new"), tmp_path / "m.qir")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_load_without_weights_names_the_missing_handle(tmp_path):
    save(conv_graph(), tmp_path / "m.qir")
    (tmp_path / "m.npz").unlink()
    with pytest.raises(ParseError) as info:
        load(tmp_path / "m.qir")
    assert info.value.line == 3 and "missing weight 'conv.weight'" in info.value.reason
    assert str(info.value).startswith(str(tmp_path / "m.qir") + ":3:")


def test_load_missing_file_is_a_parse_error(tmp_path):
    with pytest.raises(ParseError, match="cannot read"):
        load(tmp_path / "absent.qir")


def test_format_attr_is_exact_for_floats():
    for x in [0.1, 1 / 3, -0.0, 5e-324, 1e22, 123456789.125]:
        assert float(format_attr(x)) == x and format_attr(x) == repr(x)
    assert format_attr(math.nan) == "nan" and format_attr(-math.inf) == "-inf"


# ------------------------------------------------------------------------- performance
def _resnet18_like() -> Graph:
    """ResNet-18's layer shapes (11.2M conv + 0.5M fc params), per-channel weight scales."""
    g = Graph("resnet18")
    x = g.add_input("input", TensorType(("N", 3, 224, 224)))
    count = 0

    def block(x, cout, k, s):
        nonlocal count
        count += 1
        cin = x.type.shape[1]
        spec = Uniform(bits=4, scale=tuple(0.01 * (1 + i % 7) for i in range(cout)), zero_point=(0,) * cout,
                       axis=0)
        w = g.add_constant(f"layer{count}.weight", np.zeros((cout, cin, k, k), np.float32), quant=spec)
        y = g.add_node("Conv", [x, w], attrs={"strides": [s, s], "pads": [k // 2] * 4},
                       name=f"/layer{count}/Conv").output
        bn = [g.add_constant(f"layer{count}.bn{i}", np.ones(cout, np.float32)) for i in range(4)]
        y = g.add_node("BatchNormalization", [y, *bn], name=f"/layer{count}/BatchNormalization").output
        y = g.add_node("Relu", [y], name=f"/layer{count}/Relu").output
        y.quant = Uniform(bits=4, signed=False, scale=0.05)
        return y

    y = block(x, 64, 7, 2)
    for cout, s in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
        y = block(block(y, cout, 3, s), cout, 3, 1)
    y = g.add_node("GlobalAveragePool", [y], name="/gap").output
    y = g.add_node("Flatten", [y], name="/flatten").output
    w = g.add_constant("fc.weight", np.zeros((1000, 512), np.float32))
    g.set_outputs([g.add_node("Gemm", [y, w], attrs={"transB": 1}, name="/fc/Gemm").output])
    return g


@pytest.mark.skipif(not all(has_op(o) for o in ("Relu", "Flatten", "GlobalAveragePool")),
                    reason="needs the activation and shape ops")
def test_resnet18_sized_text_is_fast():
    g = _resnet18_like()
    assert sum(c.data.size for c in g.constants) > 11_000_000
    weights = {c.name: c.data for c in g.constants}
    start = time.perf_counter()
    text = print_graph(g)
    h = parse_graph(text, weights)
    elapsed = time.perf_counter() - start
    assert print_graph(h) == text
    assert len(text) < 300_000  # weights stay out of the text
    assert elapsed < 1.0, f"print + parse took {elapsed:.2f} s"


# ------------------------------------------------------------------------ properties
_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 5e-324, 1e300])
_SCALARS = (st.integers(-(2**70), 2**70) | _FLOATS | st.text(max_size=8) | st.booleans() | st.none())
_KEYS = st.integers(-5, 5) | st.text(max_size=6)
_ATTRS = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_KEYS, inner, max_size=3), max_leaves=12)
_NAMES = st.text(min_size=1, max_size=8)


@st.composite
def local_graphs(draw) -> Graph:
    """Conv chains with random names, annotations, symbolic dims and graph attributes."""
    g = Graph(draw(_NAMES))
    names = draw(st.lists(_NAMES, min_size=8, max_size=8, unique=True))
    batch = draw(st.sampled_from([1, "N", "batch"]))
    c = draw(st.integers(1, 3))
    x = g.add_input(names[0], TensorType((batch, c, 5, 5)))
    y = x
    for i in range(draw(st.integers(0, 3))):
        cout = draw(st.integers(1, 3))
        spec = draw(st.none() | st.builds(Uniform, bits=st.integers(2, 8),
                                          scale=st.sampled_from([0.5, 0.125, 0.1])))
        data = np.random.default_rng(i).normal(size=(cout, c, 3, 3)).astype(np.float32)
        w = g.add_constant(names[1 + i], fake_quant(data, spec) if spec else data, quant=spec)
        bias = g.add_constant(f"{names[1 + i]}.b", np.zeros(cout, np.float32)) if draw(st.booleans()) else None
        node = g.add_node("Conv", [y, w, bias], attrs={"pads": [1, 1, 1, 1]}, name=draw(_NAMES) + f"#{i}")
        y = node.output
        y.quant = draw(st.none() | st.builds(Bipolar, scale=st.sampled_from([1.0, 0.25])))
        if draw(st.booleans()):
            y.region = Region(*draw(st.tuples(*[st.integers(0, 2)] * 4)))
        c = cout
    if draw(st.booleans()) and y is not x:
        g.rename_value(y, names[5])
    g.set_outputs([y])
    g.attrs = draw(st.dictionaries(_NAMES, _ATTRS, max_size=4))
    return g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local_graphs())
def test_property_local_graphs_roundtrip(g):
    h = roundtrip(g)
    assert same_attr(g.attrs, h.attrs)
    assert [v.name for v in h.inputs] == [v.name for v in g.inputs]
    assert [v.name for v in h.outputs] == [v.name for v in g.outputs]
    assert [n.name for n in h.nodes] == [n.name for n in g.nodes]


def _library_graphs():
    """qcc.testing.graphs restricted to the layers whose ops are registered."""
    from qcc.testing.graphs import GraphOptions, graphs

    needs = {"conv": "Conv", "depthwise": "Conv", "relu": "Relu", "bn": "BatchNormalization", "add": "Add",
             "maxpool": "MaxPool", "avgpool": "AveragePool", "concat": "Concat", "clip": "Clip"}
    layers = tuple(k for k in GraphOptions().layers if has_op(needs.get(k, k)))
    head = all(has_op(o) for o in ("GlobalAveragePool", "Flatten", "Gemm"))
    return graphs(GraphOptions(layers=layers, head=head, symbolic_batch=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_random_graphs_roundtrip_and_compute_the_same(data):
    g = data.draw(_library_graphs())
    h = roundtrip(g)
    x = np.random.default_rng(0).uniform(-2, 2, g.inputs[0].type.concrete(2)).astype(np.float32)
    for mode in ("float", "fake"):
        a = run(g, {g.inputs[0].name: x}, mode=mode)
        b = run(h, {h.inputs[0].name: x}, mode=mode)
        for out_g, out_h in zip(g.outputs, h.outputs):
            np.testing.assert_array_equal(a[out_g.name], b[out_h.name])


_PIECES = ["(", ")", "{", "}", "[", "]", ",", "=", ":", "%x", "%0", "_", "const", "quant", "crop", '"', "1",
           "-1", "1.5", "nan", "-inf", "N", "uniform{bits = 2}", "region{top = 1}", "f32", "\\", "#", "\n"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GOOD), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6), st.sampled_from(_PIECES)),
                                       min_size=1, max_size=3))
def test_property_mutated_text_fails_cleanly_or_roundtrips(path, edits):
    """Damaged text either still parses (and then round-trips) or raises a located ParseError."""
    original = path.read_text(encoding="utf-8")
    text = original
    for where, cut, piece in edits:
        i = int(where * len(text))
        text = text[:i] + piece + text[i + cut:]
    try:
        g = parse_graph(text, weights_for(original))
    except ParseError as e:
        assert e.line is not None and e.line >= 1 and e.column >= 1, str(e)
        assert "\n" not in str(e)
        return
    roundtrip(g)
