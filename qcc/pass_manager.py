"""Passes, pipelines and the context that runs them (DESIGN.md §4).

A pass is a frozen dataclass whose fields are its options; `run(graph, ctx)` returns
`PassResult(changed)`, true exactly when the IR differs. Passes are registered by name as
"module:Class" strings and imported only when used, so folding BN never imports TVM. Pipelines are
strings such as `fold-bn,calibrate{samples=64,method="kl"}`; option names may be kebab-case.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, TextIO

from lark import Lark, Transformer, UnexpectedInput

from qcc.errors import ParseError, PassError, QccError
from qcc.ir.graph import Graph

__all__ = [
    "Pass",
    "PassResult",
    "PassContext",
    "Instrument",
    "TimingInstrument",
    "PrintAfterInstrument",
    "DumpIRInstrument",
    "register_pass",
    "registered_passes",
    "get_pass_class",
    "parse_pipeline",
    "run_pipeline",
]


@dataclass(frozen=True)
class PassResult:
    changed: bool


@dataclass(frozen=True)
class Pass:
    """Base of all passes; subclasses set `name` and implement `run`."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: Graph, ctx: PassContext | None = None) -> PassResult:
        """Run this one pass with the context's instruments and verification."""
        return PassResult(run_pipeline(graph, [self], ctx or PassContext()))

    def spec(self) -> str:
        """This pass as pipeline text (options that differ from their defaults)."""
        opts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            opts.append(f"{f.name.replace('_', '-')}={_format_option(value)}")
        return self.name + (f"{{{','.join(opts)}}}" if opts else "")


class Instrument:
    """Hooks around every pass. Subclasses override these two methods only.

    A misspelt hook would be silently ignored, so defining any other public method whose name
    starts with 'before' or 'after' is an error at class creation.
    """

    _HOOKS = ("before_pass", "after_pass")

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        for attr in vars(cls):
            if attr.startswith(("before", "after")) and attr not in cls._HOOKS:
                raise TypeError(f"{cls.__name__}.{attr} is not an instrument hook; "
                                f"hooks are {', '.join(cls._HOOKS)}")

    def before_pass(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        return None

    def after_pass(self, pass_: Pass, graph: Graph, ctx: PassContext, result: PassResult,
                   seconds: float) -> None:
        return None


@dataclass
class PassContext:
    """Configuration and instruments shared by the passes of one run.

    config: free-form settings passes read (calibration data, target, budgets...).
    verify_each: run the IR verifier after every pass (on in tests and debugging).
    history: names of the passes that have run, for error messages and dumps.
    """

    config: dict[str, Any] = field(default_factory=dict)
    instruments: list[Instrument] = field(default_factory=list)
    verify_each: bool = True
    history: list[str] = field(default_factory=list)
    progress: Callable[[str], None] | None = None


class TimingInstrument(Instrument):
    """Wall time per pass, in the order the passes ran."""

    def __init__(self):
        self.timings: list[tuple[str, float]] = []

    def after_pass(self, pass_, graph, ctx, result, seconds):
        self.timings.append((pass_.name, seconds))

    def table(self) -> str:
        total = sum(s for _, s in self.timings) or 1e-12
        rows = [f"{'pass':<28} {'ms':>10} {'%':>6}"]
        rows += [f"{n:<28} {s * 1e3:>10.2f} {100 * s / total:>6.1f}" for n, s in self.timings]
        return "\n".join(rows)


class PrintAfterInstrument(Instrument):
    """Print the IR after the named passes (all when `names` is None)."""

    def __init__(self, printer: Callable[[Graph], str], stream: TextIO, names: Iterable[str] | None = None):
        self.printer = printer
        self.stream = stream
        self.names = set(names) if names is not None else None

    def after_pass(self, pass_, graph, ctx, result, seconds):
        if self.names is None or pass_.name in self.names:
            self.stream.write(f"// ----- after {pass_.spec()} -----\n{self.printer(graph)}\n")


class DumpIRInstrument(Instrument):
    """Write the IR after every pass into numbered files (`003_fold-bn.qir`)."""

    def __init__(self, directory, save: Callable[[Graph, Any], None]):
        from pathlib import Path

        self.directory = Path(directory)
        self.save = save
        self.count = 0

    def after_pass(self, pass_, graph, ctx, result, seconds):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count += 1
        self.save(graph, self.directory / f"{self.count:03d}_{pass_.name}.qir")


# ---------------------------------------------------------------------------------- registry

_PASSES: dict[str, str] = {
    "canonicalize": "qcc.passes.canonicalize:CanonicalizePass",
    "fold-bn": "qcc.passes.fold_bn:FoldBatchNormPass",
    "calibrate": "qcc.passes.calibrate:CalibratePass",
    "quantize": "qcc.passes.quantize:QuantizePass",
    "crop-activations": "qcc.passes.crop_activations:CropActivationsPass",
    "kmeans-codebook": "qcc.passes.kmeans_codebook:ExtractCodebooksPass",
    "binarize": "qcc.passes.binarize:BinarizePass",
    "residual-rewrite": "qcc.passes.residual_rewrite:RewriteResidualPass",
    "annotate-sensitivity": "qcc.passes.annotate_sensitivity:AnnotateSensitivityPass",
    "assign-bits": "qcc.passes.assign_bits:AssignBitsPass",
    "range-analysis": "qcc.passes.range_analysis:RangeAnalysisPass",
}
_loaded_entry_points = False


def register_pass(name: str, target: str | type[Pass]) -> None:
    """Register a pass by name: a "module:Class" string (imported lazily) or the class itself."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _PASSES[name] = target


def _load_entry_points() -> None:
    """Third-party passes declare an entry point in the group 'qcc.passes': name = "module:Class"."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group="qcc.passes"):
        _PASSES.setdefault(ep.name, ep.value)


def registered_passes() -> list[str]:
    _load_entry_points()
    return sorted(_PASSES)


def get_pass_class(name: str) -> type[Pass]:
    _load_entry_points()
    target = _PASSES.get(name)
    if target is None:
        raise QccError(f"unknown pass '{name}'; known passes: {', '.join(sorted(_PASSES))}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Pass)) or cls.name != name:
        raise TypeError(f"registry entry {name} -> {target} is not a Pass named '{name}'")
    return cls


# ---------------------------------------------------------------------------------- pipeline text

_PIPELINE_GRAMMAR = r"""
    pipeline: item ("," item)* ","?
    item: NAME options?
    options: "{" [option ("," option)*] "}"
    option: NAME "=" value
    ?value: NUMBER -> number
          | ESCAPED_STRING -> string
          | "[" [value ("," value)*] "]" -> list
          | WORD -> word
          | QUANTITY -> word
    NAME: /[A-Za-z_][A-Za-z0-9_\-]*/
    WORD: /[A-Za-z_.\/][A-Za-z0-9_.\/\-]*/
    NUMBER: /[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/
    QUANTITY.2: /[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[A-Za-z]+(?=[\s,\]}]|$)/
    %import common.ESCAPED_STRING
    %import common.WS
    %ignore WS
"""


class _ToItems(Transformer):
    def pipeline(self, items):
        return items

    def item(self, parts):
        return (str(parts[0]), parts[1] if len(parts) > 1 else {})

    def options(self, opts):
        return dict(o for o in opts if o is not None)

    def option(self, kv):
        return (str(kv[0]), kv[1])

    def number(self, tok):
        text = str(tok[0])
        return float(text) if any(c in text for c in ".eE") else int(text)

    def string(self, tok):
        import json

        return json.loads(tok[0])

    def word(self, tok):
        text = str(tok[0])
        return {"true": True, "false": False}.get(text.lower(), text)

    def list(self, items):
        return [i for i in items if i is not None]


_parser: Lark | None = None


def _pipeline_parser() -> Lark:
    global _parser
    if _parser is None:
        _parser = Lark(_PIPELINE_GRAMMAR, start="pipeline", parser="lalr")
    return _parser


def parse_pipeline(text: str) -> list[Pass]:
    """`fold-bn,calibrate{samples=64}` -> configured pass instances (options checked and typed)."""
    try:
        tree = _pipeline_parser().parse(text)
    except UnexpectedInput as e:
        raise ParseError(f"bad pipeline syntax near {text[max(e.pos_in_stream or 0, 0):][:20]!r}",
                         line=e.line, column=e.column, source="pipeline") from None
    items = _ToItems().transform(tree)
    return [_make_pass(name, opts) for name, opts in items]


def _make_pass(name: str, options: dict[str, Any]) -> Pass:
    cls = get_pass_class(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in options.items():
        fname = key.replace("-", "_")
        if fname not in fields:
            known = ", ".join(f.replace("_", "-") for f in fields) or "none"
            raise QccError(f"pass '{name}' has no option '{key}' (options: {known})")
        kwargs[fname] = _coerce(raw, hints[fname], f"{name}{{{key}}}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, QccError) as e:
        raise QccError(f"pass '{name}': {e}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a parsed option value against the field's type, converting where it is lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except QccError as e:
                errors.append(str(e))
        if type(None) in args and str(value).lower() == "none":
            return None
        raise QccError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise QccError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        items = value if isinstance(value, list) else [value]
        inner = args[0] if args else Any
        converted = [_coerce(v, inner, where) for v in items]
        return tuple(converted) if origin is tuple else converted
    if hint is bool:
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise QccError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ",".join(_format_option(v) for v in value) + "]"
    if isinstance(value, str):
        import json
        import re

        bare = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./\-]*", value) and value.lower() not in ("true", "false", "none")
        return value if bare else json.dumps(value)
    return repr(value)


# ---------------------------------------------------------------------------------- running

def run_pipeline(graph: Graph, passes: Sequence[Pass] | str, ctx: PassContext | None = None) -> bool:
    """Run passes in order on `graph` in place; returns whether any of them changed it."""
    from qcc.ir.verify import verify

    ctx = ctx or PassContext()
    if isinstance(passes, str):
        passes = parse_pipeline(passes)
    changed = False
    for p in passes:
        for inst in ctx.instruments:
            inst.before_pass(p, graph, ctx)
        if ctx.progress is not None:
            ctx.progress(f"running {p.spec()}")
        start = time.perf_counter()
        try:
            result = p.run(graph, ctx)
        except PassError:
            raise
        except QccError as e:
            raise PassError(p.name, str(e), node=getattr(e, "node_name", None),
                            ran_before=tuple(ctx.history)) from None
        except Exception as e:
            e.add_note(f"in pass '{p.spec()}' (after {', '.join(ctx.history) or 'nothing'})")
            raise
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult")
        ctx.history.append(p.name)
        if ctx.verify_each:
            try:
                verify(graph)
            except QccError as e:
                raise PassError(p.name, f"produced invalid IR: {e}", ran_before=tuple(ctx.history[:-1])) from None
        for inst in ctx.instruments:
            inst.after_pass(p, graph, ctx, result, seconds)
        changed |= result.changed
    return changed
