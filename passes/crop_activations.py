"""crop-activations: mark zero-bit edge regions on layer outputs (seed 004, AQuA activation cropping).

The rewrite sets `Value.region = Region(top, bottom, left, right)` on chosen NCHW layer outputs; no
node changes. Algebra: the cropped value is y'[n, c, h, w] = 0 for (h, w) in the edge strips and
y[n, c, h, w] elsewhere. The cropped positions are 0-bit: consumers read exact zeros, the
interpreter does not compute them (qcc.crop.evaluate_interior) and the report counts the MACs and
activations saved (qcc.report: macs_saved, activations_cropped). Cropping changes the numbers on
purpose (an approximation, like quantization); `propagate` and `forward` below never do.

Policies (at most one; `propagate` / `forward` may also run alone on crops already in the graph):
- `config=PATH`: the per-layer TOML of `quantize` (qcc.config): `[layers."<node>"] crop = [t, b, l, r]`
  crops that node's output; `[default] crop = [...]` every layer whose op is in `ops`.
- `crops="<node>=t,b,l,r;<node>=t,b,l,r"`: the same, inline.
- `cut="1010"`: seed 004's cut bit vector [T B L R] (or edge letters, "TL", the form it is kept
  in): those edges of every `ops` layer's output are cropped by `pixels` rows / columns, or, when
  `fraction` is set, by floor(fraction * side) of each map, so the crop shrinks with the feature
  map as the layer goes deeper (seed 004 Table II: 25 of 224 at conv1, 2 of 14 at conv5).
- `edges=k`: as `cut`, with the k edges whose input strips are quietest on the calibration data
  (`ctx.config["calib"]["x"]`; mean `statistic` score of the strip against the image centre, see
  qcc.crop.edge_scores).
- Per input (seed 004's predictor): a static annotation cannot vary per image, so `PerInputPolicy`
  and `run_per_input` choose, per image, one of several cut vectors from a cheap image statistic
  and run the graph cropped accordingly (qcc.crop.choose_crops).

Propagation (both exact: the graph's outputs do not change):
- `propagate=true` (backward): a producer's output positions that only feed cropped outputs of every
  consumer are cropped too (max with any crop it has). For a 3x3 / stride 1 / pad 1 consumer the
  producer's crop is one smaller; through a Relu it is the same, through a 2x2 / stride 2 pool twice
  as large. Graph inputs and outputs are left alone.
- `forward=true`: a layer that maps zero to zero (Relu, pools, a conv without bias, Add of cropped
  maps; its quantizer keeping zero) gets the region its cropped inputs imply: the outputs whose
  receptive field lies wholly in the cropped input, t -> floor((t + pad - span) / stride) + 1 rows
  (t - 1 for a 3x3 conv): the crop shrinks as the layer goes deeper. A conv with a bias or a
  BatchNormalization ends it, since their outputs over zeros are not zero.
Both repeat until nothing changes.

Errors name the pass and the node: a crop larger than the feature map (its size and the crop), an
unknown layer name (with close matches), a crop on a value that is not a 4-d NCHW map.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcc.config import load_config
from qcc.crop import SIDES, STATISTICS, choose_crops, edge_scores, implied_output_region, needed_margins
from qcc.errors import PassError, QccError
from qcc.interp import run
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Region
from qcc.pass_manager import Pass, PassContext, PassResult, run_pipeline
from qcc.report import summarize

__all__ = ["CropActivationsPass", "PerInputPolicy", "PerInputResult", "run_per_input", "ALL_CUTS", "parse_cut"]

_log = logging.getLogger(__name__)

# seed 004 Table I: every cut bit vector [T B L R], in the table's order (by the number of cut edges)
ALL_CUTS: tuple[str, ...] = (
    "0000",
    "0001", "0010", "0100", "1000",
    "1010", "1001", "0110", "0101", "1100", "0011",
    "1110", "1101", "1011", "0111",
    "1111",
)


def parse_cut(cut: str) -> tuple[bool, bool, bool, bool]:
    """A cut bit vector "1010" ([T B L R]) or edge letters "TL" as four flags."""
    text = cut.strip().upper()
    if len(text) == 4 and set(text) <= {"0", "1"}:
        return tuple(c == "1" for c in text)  # type: ignore[return-value]
    if set(text) <= set("TBLR") and len(set(text)) == len(text):
        return tuple(side in text for side in "TBLR")  # type: ignore[return-value]
    raise QccError(f"cut must be four bits [T B L R] such as \"1010\" (quoted, so leading zeros stay) or "
                   f"edge letters such as \"TL\", got {cut!r}")


def _parse_inline(text: str) -> dict[str, tuple[int, int, int, int]]:
    """"<node>=t,b,l,r;<node>=t,b,l,r" as {node: crop}."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, eq, numbers = item.rpartition("=")
        parts = [p.strip() for p in numbers.split(",")]
        if not eq or not name.strip() or len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise QccError(f"crops: expected '<node>=top,bottom,left,right' entries separated by ';' "
                           f"(non-negative integers), got {item!r}")
        out[name.strip()] = tuple(int(p) for p in parts)  # type: ignore[assignment]
    return out


@dataclass(frozen=True)
class CropActivationsPass(Pass):
    """Mark zero-bit edge regions (activation crops) on layer outputs."""

    name = "crop-activations"
    config: str | None = None  # TOML: [layers."<node>"] crop = [t, b, l, r]
    crops: str | None = None  # inline: "<node>=t,b,l,r;<node>=t,b,l,r"
    cut: str | None = None  # [T B L R] bits, e.g. "1010", or letters "TL"
    edges: int | None = None  # crop the k quietest edges on the calibration data
    pixels: int = 1  # crop width of cut / edges on every map
    fraction: float | None = None  # instead of pixels: floor(fraction * side) per map
    statistic: Literal["gradient", "entropy", "intensity"] = "gradient"  # for edges
    ops: tuple[str, ...] = ("Conv",)  # the layers cut / edges / [default] crop
    propagate: bool = False  # also crop producer positions that only feed cropped outputs
    forward: bool = False  # also crop outputs that see only cropped zeros (zero-preserving layers)

    def __post_init__(self):
        given = [n for n in ("config", "crops", "cut", "edges") if getattr(self, n) is not None]
        if len(given) > 1:
            raise QccError(f"give one crop policy, not {' and '.join(given)}")
        if not given and not (self.propagate or self.forward):
            raise QccError("give a crop policy (config, crops, cut or edges) or propagate / forward")
        if self.cut is not None:  # kept as edge letters: "0011" would print as a number and lose its zeros
            flags = parse_cut(self.cut)
            object.__setattr__(self, "cut", "".join(side for side, on in zip("TBLR", flags) if on))
        if self.crops is not None:
            _parse_inline(self.crops)
        if self.edges is not None and not 0 <= self.edges <= 4:
            raise QccError(f"edges must be between 0 and 4, got {self.edges}")
        if self.pixels < 1:
            raise QccError(f"pixels must be >= 1, got {self.pixels}")
        if self.fraction is not None and not 0.0 < self.fraction < 0.5:
            raise QccError(f"fraction must be in (0, 0.5), got {self.fraction}")
        if self.statistic not in STATISTICS:
            raise QccError(f"statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if not self.ops:
            raise QccError("ops must name at least one op type")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        before = {id(v): v.region for v in graph.values()}
        for node, crop in self._plan(graph, ctx).items():
            self._set_crop(node, crop, ctx)
        while self.propagate or self.forward:  # regions only grow, so this ends
            grown = _propagate_backward(graph) if self.propagate else False
            grown |= _propagate_forward(graph) if self.forward else False
            if not grown:
                break
        return PassResult(any(v.region != before.get(id(v)) for v in graph.values()))

    def _error(self, reason: str, ctx: PassContext, node: Node | None = None) -> PassError:
        return PassError(self.name, reason, node=node.name if node else None, ran_before=tuple(ctx.history))

    # ------------------------------------------------------------------------------ policies

    def _plan(self, graph: Graph, ctx: PassContext) -> dict[Node, tuple[int, int, int, int]]:
        if self.config is not None:
            return self._from_config(graph, ctx)
        if self.crops is not None:
            named = _parse_inline(self.crops)
            self._check_names(graph, named, "crops", ctx)
            return {graph.node(name): crop for name, crop in named.items()}
        if self.cut is not None:
            return self._from_cut(graph, parse_cut(self.cut), ctx)
        if self.edges is not None:
            return self._from_cut(graph, self._quiet_edges(graph, ctx), ctx)
        return {}

    def _from_config(self, graph: Graph, ctx: PassContext) -> dict[Node, tuple[int, int, int, int]]:
        try:
            cfg = load_config(self.config)
        except QccError as e:
            raise self._error(str(e), ctx) from None
        self._check_names(graph, cfg.layers, f"configuration {self.config}", ctx)
        plan = {}
        for node in graph.nodes:
            own = cfg.layers.get(node.name)
            crop = own.crop if own is not None and own.crop is not None else None
            if crop is None and node.op in self.ops and _is_map(node):
                crop = cfg.default.crop
            if crop is not None:
                plan[node] = crop
        return plan

    def _check_names(self, graph: Graph, names, where: str, ctx: PassContext) -> None:
        known = [n.name for n in graph.nodes]
        for name in names:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
                f"layers are: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''}"
            raise self._error(f"{where}: unknown layer '{name}'; {hint}", ctx)

    def _from_cut(self, graph: Graph, cut: tuple[bool, ...], ctx: PassContext) -> dict[Node, tuple[int, int, int, int]]:
        plan = {}
        for node in graph.nodes:
            if node.op not in self.ops or not _is_map(node):
                continue
            h, w = node.output.type.shape[2:]
            if not (isinstance(h, int) and isinstance(w, int)):
                raise self._error(f"output of '{node.name}' has symbolic spatial dims {h}x{w}; "
                                  f"cut needs a concrete feature map size", ctx, node)
            rows, cols = self._width(h), self._width(w)
            plan[node] = tuple(n if on else 0 for n, on in zip((rows, rows, cols, cols), cut))
        return plan

    def _width(self, side: int) -> int:
        return math.floor(self.fraction * side) if self.fraction is not None else self.pixels

    def _quiet_edges(self, graph: Graph, ctx: PassContext) -> tuple[bool, ...]:
        x = _calibration_images(graph, ctx.config.get("calib"))
        if x is None:
            raise self._error("edges needs calibration images (ctx.config['calib']['x'], qcc opt --calib) "
                              "of a single NCHW input; give cut instead", ctx)
        strip = max(1, self._width(x.shape[2]))
        scores = [edge_scores(x, Region(**{side: strip}), self.statistic)[:, i].mean()
                  for i, side in enumerate(SIDES)]
        chosen = set(np.argsort(scores, kind="stable")[: self.edges].tolist())
        cut = tuple(i in chosen for i in range(4))
        _log.info("crop-activations: edges=%d chose cut %s (mean %s scores %s)", self.edges,
                  "".join("1" if c else "0" for c in cut), self.statistic, np.round(scores, 4).tolist())
        return cut

    # ------------------------------------------------------------------------------ checks

    def _set_crop(self, node: Node, crop: tuple[int, int, int, int], ctx: PassContext) -> None:
        if len(node.outputs) != 1:
            raise self._error(f"'{node.name}' ({node.op}) has {len(node.outputs)} outputs; a crop needs one", ctx, node)
        out = node.output
        if out.type.rank != 4:
            raise self._error(f"a crop needs an NCHW feature map, but '{node.name}' ({node.op}) outputs "
                              f"{out.type}", ctx, node)
        region = Region(*crop)
        h, w = out.type.shape[2:]
        if isinstance(h, int) and isinstance(w, int) and not region.fits(h, w):
            raise self._error(f"crop {list(crop)} is larger than the {h}x{w} feature map of '{node.name}' "
                              f"(top + bottom must be < {h} and left + right < {w})", ctx, node)
        out.region = None if region.empty else region


def _is_map(node: Node) -> bool:
    return len(node.outputs) == 1 and node.outputs[0].type.rank == 4


def _calibration_images(graph: Graph, calib) -> np.ndarray | None:
    if not isinstance(calib, Mapping) or len(graph.inputs) != 1:
        return None
    x = calib.get("x", calib.get(graph.inputs[0].name))
    x = np.asarray(x) if x is not None else None
    return x if x is not None and x.ndim == 4 and x.shape[0] > 0 else None


# ---------------------------------------------------------------------------------- propagation

def _grow(value: Value, region: Region) -> bool:
    """value.region := per-side max with `region`, when that still fits; whether it changed."""
    old = value.region or Region()
    new = Region(*(max(a, b) for a, b in zip(old.as_tuple(), region.as_tuple())))
    h, w = value.type.shape[2:]
    if new == old or not new.fits(h, w):
        return False
    value.region = new
    return True


def _unread(graph: Graph, value: Value) -> Region | None:
    """The edge strips of `value` that no consumer reads for a computed output (backward rule)."""
    if graph.is_output(value) or not value.uses or value.type.rank != 4:
        return None
    if not all(isinstance(d, int) for d in value.type.shape[2:]):
        return None
    margins = [needed_margins(consumer, index) for consumer, index in value.uses]
    return Region(*(min(m[i] for m in margins) for i in range(4)))


def _propagate_backward(graph: Graph) -> bool:
    changed = False
    for node in reversed(graph.nodes):  # consumers before producers
        for out in node.outputs:
            region = _unread(graph, out)
            if region is not None and not region.empty:
                changed |= _grow(out, region)
    return changed


def _propagate_forward(graph: Graph) -> bool:
    changed = False
    for node in graph.nodes:  # producers before consumers
        region = implied_output_region(node)
        if region is not None:
            changed |= _grow(node.output, region)
    return changed


# ---------------------------------------------------------------------------------- per input

@dataclass(frozen=True)
class PerInputPolicy:
    """Per image, the cut vector whose input edge strips look like background (seed 004's predictor)."""

    cuts: tuple[str, ...] = ALL_CUTS  # candidate cut vectors
    pixels: int = 1  # crop width per map (as the pass)
    fraction: float | None = None
    strip: int = 1  # width of the input strips the statistic reads
    statistic: str = "gradient"
    threshold: float = 0.5  # a cut edge's strip must score <= threshold (higher: more cropping)
    ops: tuple[str, ...] = ("Conv",)
    propagate: bool = False

    def passes(self) -> list[CropActivationsPass]:
        return [CropActivationsPass(cut=c, pixels=self.pixels, fraction=self.fraction, ops=self.ops,
                                    propagate=self.propagate) for c in self.cuts]

    def strips(self) -> list[Region]:
        """The input-image region each candidate's statistic looks at."""
        return [Region(*(self.strip if on else 0 for on in parse_cut(c))) for c in self.cuts]


@dataclass(frozen=True)
class PerInputResult:
    outputs: dict[str, np.ndarray]  # graph outputs, samples in input order
    choice: np.ndarray  # per sample, the index into policy.cuts
    macs: int  # MACs of one uncropped sample
    macs_saved: np.ndarray  # per sample, MACs its crop saves


def run_per_input(graph: Graph, x: np.ndarray | Mapping[str, np.ndarray], policy: PerInputPolicy,
                  mode: str = "fake") -> PerInputResult:
    """Run `graph` with each image cropped by the candidate the policy chooses for it.

    x: the images (NCHW) of the graph's single input, or a data dict holding them under the input's
    name or "x". Crops take effect in the "fake" and "int" modes (float mode ignores annotations).
    """
    name, images = _images(graph, x)
    variants = []
    for crop in policy.passes():
        g = graph.clone()
        run_pipeline(g, [crop], PassContext())
        variants.append(g)
    saved = [summarize(g).totals["macs_saved"] for g in variants]
    choice = choose_crops(images, policy.strips(), policy.statistic, policy.threshold, savings=saved)
    outputs: dict[str, np.ndarray] = {}
    for index in np.unique(choice):
        rows = np.flatnonzero(choice == index)
        for key, arr in _run_rows(variants[index], name, images[rows], mode).items():
            if key not in outputs:
                outputs[key] = np.zeros((len(images), *arr.shape[1:]), dtype=arr.dtype)
            outputs[key][rows] = arr
    macs = summarize(graph).totals["macs"]
    return PerInputResult(outputs, choice, macs, np.asarray(saved, dtype=np.int64)[choice])


def _images(graph: Graph, x) -> tuple[str, np.ndarray]:
    if len(graph.inputs) != 1:
        raise QccError(f"run_per_input needs a single-input graph, got {len(graph.inputs)} inputs")
    name = graph.inputs[0].name
    if isinstance(x, Mapping):
        if name not in x and "x" not in x:
            raise QccError(f"run_per_input: no images under '{name}' or 'x' (keys: {', '.join(map(str, x))})")
        x = x[name] if name in x else x["x"]
    images = np.asarray(x)
    if images.ndim != 4:
        raise QccError(f"run_per_input needs NCHW images, got shape {list(images.shape)}")
    return name, images


def _run_rows(graph: Graph, name: str, images: np.ndarray, mode: str) -> dict[str, np.ndarray]:
    """Run the images, in chunks of the batch size when the graph's batch dimension is fixed."""
    batch = graph.inputs[0].type.shape[0]
    if not isinstance(batch, int) or batch == len(images):
        return run(graph, {name: images}, mode=mode)
    if len(images) % batch:
        raise QccError(f"the graph's batch size is fixed at {batch}; {len(images)} images do not divide into it")
    parts = [run(graph, {name: images[i:i + batch]}, mode=mode) for i in range(0, len(images), batch)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
