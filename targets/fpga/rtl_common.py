"""Verilog building blocks shared by every FPGA stage: memory files, per-channel parameters, post-op chains.

The post-op chain is the exact integer arithmetic of qcc.numerics written as blocking statements
(meant for a clocked always block, so a simulator evaluates it only when the stage fires): Relu is a
max with the zero point, requantization a (v - centre) * M0 product with a rounding shift half to
even, zero point and saturation, thresholds a comparator chain counting the thresholds <= v (plus a
base), bipolar a sign, centre a subtraction of the zero point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcc.targets.fpga.plan import PostOp, signed_bits

__all__ = ["pack_words", "write_mem", "lit", "clog2", "Params", "chain"]


def pack_words(values: np.ndarray, width: int) -> list[str]:
    """Rows of signed integers as hex words, element j at bits [j*width +: width]."""
    values = np.asarray(values, dtype=object)
    digits = (values.shape[1] * width + 3) // 4
    mask = (1 << width) - 1
    out = []
    for row in values:
        word = 0
        for j, v in enumerate(row):
            word |= (int(v) & mask) << (j * width)
        out.append(f"{word:0{digits}x}")
    return out


def write_mem(path: Path, rows: np.ndarray, width: int) -> Path:
    path.write_text("\n".join(pack_words(rows, width)) + "\n")
    return path


def lit(value: int, width: int) -> str:
    """A sized signed Verilog literal of `value` (at least `width` bits).

    `-W'sdN` is the negation of the W-bit signed literal N, so N itself must be a positive W-bit signed
    number: -1 needs -2'sd1 (1'sd1 is the 1-bit pattern 1, i.e. -1, and negated gives +1 once the
    expression is wider), and -2^(W-1) needs W+1 bits. Widening a signed literal never changes its value.
    """
    value = int(value)
    width = max(width, abs(value).bit_length() + 1)
    if value < 0:
        return f"-{width}'sd{-value}"
    return f"{width}'sd{value}"


def clog2(n: int) -> int:
    """Address bits for n entries (at least 1)."""
    return max(1, (max(n, 2) - 1).bit_length())


class Params:
    """Per-channel parameters: constants when uniform, else ROMs (memory files) indexed by the channel."""

    def __init__(self, prefix: str, directory: Path, channels: int):
        self.prefix, self.directory, self.channels = prefix, directory, channels
        self.decls: list[str] = []
        self.files: list[Path] = []
        self._made: set[str] = set()

    def get(self, name: str, values: np.ndarray, width: int, chan: str) -> str:
        values = np.asarray(values, dtype=np.int64).reshape(self.channels, -1)
        if np.all(values == values[0]):
            if values.shape[1] == 1:
                return lit(int(values[0, 0]), width)
            word = pack_words(values[:1], width)[0]
            return f"{values.shape[1] * width}'h{word}"
        mem = f"{self.prefix}_{name}"
        if mem not in self._made:
            self._made.add(mem)
            file = write_mem(self.directory / f"{mem}.mem", values, width)
            self.files.append(file)
            total = values.shape[1] * width
            self.decls += [f"  reg [{total - 1}:0] {mem} [0:{self.channels - 1}];",
                           f"  initial $readmemh(\"{file.name}\", {mem});"]
        if values.shape[1] == 1:
            return f"$signed({mem}[{chan}])"
        return f"{mem}[{chan}]"


def _vrange(values: np.ndarray) -> int:
    return signed_bits(int(np.min(values)), int(np.max(values)))


def chain(ops: list[PostOp], cur: str, lo: int, hi: int, params: Params, tag: str, chan: str):
    """Declarations and blocking statements of a post-op chain on `cur` in [lo, hi].

    Returns (decls, stmts, name of the result, lo, hi); `tag` keeps the temporaries unique.
    """
    decls: list[str] = []
    stmts: list[str] = []
    for k, op in enumerate(ops):
        width_in = signed_bits(lo, hi)
        out = f"{tag}_p{k}"
        ow = signed_bits(op.lo, op.hi)
        decls.append(f"  reg signed [{ow - 1}:0] {out};")
        key = f"{tag.rstrip('0123456789')}{k}"  # shared by every lane: one ROM per parameter
        if op.kind == "relu":
            z = params.get(f"{key}_relu", op.params["zp"], _vrange(op.params["zp"]), chan)
            stmts.append(f"    {out} = ({cur} >= {z}) ? {cur} : {z};")
        elif op.kind == "bipolar":
            z = params.get(f"{key}_bip", op.params["zp"], _vrange(op.params["zp"]), chan)
            stmts.append(f"    {out} = ({cur} >= {z}) ? 2'sd1 : -2'sd1;")
        elif op.kind == "centre":
            z = params.get(f"{key}_ctr", op.params["zp"], _vrange(op.params["zp"]), chan)
            stmts.append(f"    {out} = {cur} - {z};")
        elif op.kind == "thresholds":
            d, s = _thresholds(op, params, key, out, cur, chan, tag, k)
            decls += d
            stmts += s
        elif op.kind == "requant":
            d, s = _requant(op, params, key, out, cur, width_in, chan, tag, k)
            decls += d
            stmts += s
        else:
            raise ValueError(f"unknown post-op {op.kind}")
        cur, lo, hi = out, op.lo, op.hi
    return decls, stmts, cur, lo, hi


def _thresholds(op: PostOp, params: Params, key: str, out: str, cur: str, chan: str, tag: str, k: int):
    table = op.params["table"]
    tw = signed_bits(int(table.min()), int(table.max()))
    tab = params.get(f"{key}_thr", table, tw, chan)
    tname, te = f"{tag}_t{k}", f"{tag}_te{k}"
    decls = [f"  reg [{table.shape[1] * tw - 1}:0] {tname};", f"  reg signed [{tw - 1}:0] {te};"]
    base = op.params.get("base")
    start = "0" if base is None else params.get(f"{key}_base", base, _vrange(base), chan)
    step = op.params.get("step")  # per channel (+-1, +-2): counting down on a decreasing channel
    inc = "1" if step is None else params.get(f"{key}_step", step, _vrange(step), chan)
    stmts = [f"    {tname} = {tab};",
             f"    {out} = {start};",
             f"    for (i = 0; i < {table.shape[1]}; i = i + 1) begin",
             f"      {te} = {tname}[i*{tw} +: {tw}];",
             f"      if ({cur} >= {te}) {out} = {out} + {inc};",
             "    end"]
    return decls, stmts


def _requant(op: PostOp, params: Params, key: str, out: str, cur: str, width_in: int, chan: str, tag: str, k: int):
    """clip(zp + round_half_even((v - centre) * M0 / 2^n), lo, hi), exactly as qcc.numerics.requantize."""
    p = op.params
    cw = _vrange(p["centre"])
    dw = max(width_in, cw) + 1  # v - centre
    pw = dw + 32  # (v - centre) * M0 with M0 < 2^31
    nmax = pw - 1  # shifts beyond |product| < 2^(pw-2) give 0
    zw = _vrange(p["zp"])
    centre = params.get(f"{key}_centre", p["centre"], cw, chan)
    m0 = params.get(f"{key}_m0", p["m0"], 32, chan)
    n = params.get(f"{key}_n", np.minimum(p["n"], nmax), 8, chan)
    zp = params.get(f"{key}_zp", p["zp"], zw, chan)
    rw = pw + 2
    v = f"{tag}_rq{k}"
    ow = signed_bits(op.lo, op.hi)
    decls = [f"  reg signed [{dw - 1}:0] {v}_d;", f"  reg signed [{pw - 1}:0] {v}_p, {v}_fl, {v}_rem, {v}_half;",
             f"  reg signed [7:0] {v}_n;", f"  reg signed [{rw - 1}:0] {v}_r;"]
    stmts = [
        f"    {v}_d = {cur} - {centre};",
        f"    {v}_n = {n};",
        f"    {v}_p = {v}_d * {m0};",
        f"    if ({v}_n >= {nmax}) {v}_r = 0;",
        f"    else if ({v}_n == 0) {v}_r = {v}_p;",
        "    else begin",
        f"      {v}_fl = {v}_p >>> {v}_n;",
        f"      {v}_rem = {v}_p - ({v}_fl <<< {v}_n);",
        f"      {v}_half = {pw}'sd1 <<< ({v}_n - 1);",
        f"      {v}_r = {v}_fl + ((({v}_rem > {v}_half) || (({v}_rem == {v}_half) && {v}_fl[0])) ? 1 : 0);",
        "    end",
        f"    {v}_r = {v}_r + {zp};",
        f"    if ({v}_r < {lit(op.lo, rw + 1)}) {out} = {lit(op.lo, ow)};",
        f"    else if ({v}_r > {lit(op.hi, rw + 1)}) {out} = {lit(op.hi, ow)};",
        f"    else {out} = {v}_r;",
    ]
    return decls, stmts
