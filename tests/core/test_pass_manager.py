"""Pass manager: pipeline parsing, option typing, registry, instruments, errors."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from qcc.errors import ParseError, PassError, QccError
from qcc.ir import Graph, TensorType
from qcc.pass_manager import (
    Instrument,
    Pass,
    PassContext,
    PassResult,
    PrintAfterInstrument,
    TimingInstrument,
    get_pass_class,
    parse_pipeline,
    register_pass,
    run_pipeline,
)


@dataclass(frozen=True)
class _ScaleWeightsPass(Pass):
    """Test pass: multiplies every constant by `factor`."""

    name = "test-scale-weights"
    factor: float = 2.0
    mode: Literal["all", "none"] = "all"
    layers: tuple[str, ...] = ()
    note: str | None = None

    def run(self, graph, ctx):
        if self.mode == "none" or self.factor == 1.0:
            return PassResult(False)
        for c in list(graph.constants):
            new = graph.add_constant(graph.fresh_name(c.name), c.data * self.factor)
            graph.replace_all_uses(c, new)
            graph.remove_constant(c)
        return PassResult(True)


@dataclass(frozen=True)
class _BreakGraphPass(Pass):
    name = "test-break"

    def run(self, graph, ctx):
        node = graph.nodes[0]
        node.outputs[0].type = TensorType((1, 99), "float32")
        return PassResult(True)


@dataclass(frozen=True)
class _FailPass(Pass):
    name = "test-fail"

    def run(self, graph, ctx):
        raise QccError("no good")


for _cls in (_ScaleWeightsPass, _BreakGraphPass, _FailPass):
    register_pass(_cls.name, _cls)


def _graph() -> Graph:
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 4)))
    w = g.add_constant("w", np.ones((3, 4), np.float32))
    g.set_outputs(g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc").outputs)
    return g


def test_pipeline_parses_options_with_types():
    p1, p2 = parse_pipeline('test-scale-weights{factor=3, layers=[a,"b c"], note=hi},canonicalize')
    assert p1 == _ScaleWeightsPass(factor=3.0, layers=("a", "b c"), note="hi")
    assert isinstance(p1.factor, float)
    assert p2.name == "canonicalize"
    assert p1.spec() == 'test-scale-weights{factor=3.0,layers=[a,"b c"],note=hi}'
    assert parse_pipeline(p1.spec())[0] == p1


def test_kebab_case_options_map_to_fields():
    (p,) = parse_pipeline("canonicalize{fold-constants=false}")
    assert p.fold_constants is False


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown pass 'nope'"),
    ("test-scale-weights{bogus=1}", "has no option 'bogus'"),
    ("test-scale-weights{factor=abc}", "expected float"),
    ("test-scale-weights{mode=some}", "not one of"),
])
def test_bad_pipelines_are_user_errors(text, message):
    with pytest.raises(QccError, match=message):
        parse_pipeline(text)


def test_pipeline_syntax_error_has_position():
    with pytest.raises(ParseError) as e:
        parse_pipeline("canonicalize{fold-constants=}")
    assert e.value.line == 1 and e.value.column is not None


def test_changed_flag_and_history():
    g = _graph()
    ctx = PassContext()
    assert run_pipeline(g, "test-scale-weights{factor=2}", ctx) is True
    assert run_pipeline(g, "test-scale-weights{mode=none}", ctx) is False
    assert ctx.history == ["test-scale-weights", "test-scale-weights"]
    assert float(g.constants[0].data[0, 0]) == 2.0


def test_pass_error_names_pass_and_predecessors():
    with pytest.raises(PassError) as e:
        run_pipeline(_graph(), "canonicalize,test-fail")
    assert "pass 'test-fail' failed" in str(e.value)
    assert "after canonicalize" in str(e.value)


def test_verify_each_catches_broken_ir():
    with pytest.raises(PassError, match="produced invalid IR.*shape mismatch"):
        run_pipeline(_graph(), "test-break")
    run_pipeline(_graph(), "test-break", PassContext(verify_each=False))


def test_instruments_see_every_pass():
    timing = TimingInstrument()
    out = io.StringIO()
    ctx = PassContext(instruments=[timing, PrintAfterInstrument(lambda g: f"<{len(g)} nodes>", out)])
    run_pipeline(_graph(), "canonicalize,test-scale-weights", ctx)
    assert [n for n, _ in timing.timings] == ["canonicalize", "test-scale-weights"]
    assert out.getvalue().count("<1 nodes>") == 2
    assert "canonicalize" in timing.table()


def test_misspelt_instrument_hook_is_rejected():
    with pytest.raises(TypeError, match="not an instrument hook"):
        type("Bad", (Instrument,), {"after_passes": lambda self: None})


def test_registry_is_lazy_and_checked():
    assert get_pass_class("canonicalize").name == "canonicalize"
    register_pass("test-wrong-name", "qcc.passes.canonicalize:CanonicalizePass")
    with pytest.raises(TypeError):
        get_pass_class("test-wrong-name")


def test_pass_is_callable_on_a_graph():
    g = _graph()
    assert _ScaleWeightsPass(factor=0.5)(g).changed is True


@pytest.mark.parametrize("note", ["0011", "true", "none", "a b", "x=1", "/tmp/a.toml", "-3"])
def test_string_options_print_and_parse_back(note):
    p = _ScaleWeightsPass(note=note)
    assert parse_pipeline(p.spec())[0] == p
