"""Power-of-two fixed point: QKeras quantized_bits (seed 000) and QUENN dynamic fixed point (seed 002 §4.1).

Both are the Uniform special case scale = 2^-FL, zero_point = 0 (`Uniform.fixed_point`), so they run
through the same rounding rule as every other uniform quantizer (round half to even, then saturate).
Multiplying by 2^FL and dividing by 2^-FL are the same exact float operation, so QKeras's formula
and `qcc.numerics.fake_quant` agree bit for bit.

QKeras (seed 000):  q(x) = 2^(int-bits+1) * clip(round(x * 2^(bits-int-1)), -2^(bits-1), 2^(bits-1)-1)
  i.e. FL = bits - int - 1 with signed `bits`-bit integers; symmetric=1 raises the lower clip to
  -2^(bits-1)+1 (narrow range); keep_negative=False (QKeras's unsigned form) uses FL = bits - int and
  clips to [0, 2^bits - 1]. QKeras computes 1 signed bit as sign(x), not by this formula: that case
  is a bipolar quantizer here (`fit_bipolar`).

QUENN (seed 002 §4.1, eqs. 2-3): IL = ceil(log2 max|V|) integer bits, FL = BW - IL. The format is
signed (seed 002 Fig. 5), so IL counts the sign bit, as in Ristretto (seed 002 ref. 18) which QUENN
builds on: IL = ceil(log2 max|V|) + 1. (Without it the BW-bit word would need BW+1 bits.) With
signed=False (data >= 0, e.g. after ReLU) there is no sign bit. Then "if FL > Y(V): FL = Y(V)",
where Y(V) is the fractional length minimising the L2 error over a range of candidates.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from qcc.ir.quant import Uniform
from qcc.numerics import fake_quant
from qcc.quantizers._common import MAX_FRAC_BITS, QuantizerError, as_data, ceil_log2, check_bits

__all__ = ["quantized_bits", "quantized_bits_formula", "integer_length", "fit_dynamic_fixed_point"]

_SEARCH_RADIUS = 8  # default candidates: FL0 - 8 ... FL0 + 8 around the eq. 3 value FL0


def quantized_bits(bits: int, integer: int = 0, *, symmetric: bool = False,
                   keep_negative: bool = True) -> Uniform:
    """The spec of QKeras `quantized_bits(bits, integer, symmetric, keep_negative)` (seed 000).

    2^(int-bits+1) * clip(round(x * 2^(bits-int-1)), -2^(bits-1) [+1 if symmetric], 2^(bits-1)-1)
    = Uniform.fixed_point(bits, FL = bits - int - 1); unsigned (keep_negative=False): FL = bits - int,
    clip to [0, 2^bits - 1].
    """
    what = "quantized_bits"
    bits = check_bits(what, bits)
    if isinstance(integer, bool) or not isinstance(integer, int | np.integer):
        raise QuantizerError(f"{what}: integer must be an integer, got {integer!r}")
    if keep_negative and bits == 1:
        raise QuantizerError(f"{what}: 1 signed bit is QKeras's sign quantizer; use fit_bipolar")
    if symmetric and not keep_negative:
        raise QuantizerError(f"{what}: symmetric needs keep_negative=True (an unsigned range has no negative side)")
    frac_bits = bits - int(keep_negative) - int(integer)
    _check_frac_bits(what, frac_bits)
    spec = Uniform.fixed_point(bits, frac_bits, signed=bool(keep_negative))
    return spec.replace(narrow=True) if symmetric else spec


def quantized_bits_formula(x: object, bits: int, integer: int = 0, *, symmetric: bool = False,
                           keep_negative: bool = True) -> np.ndarray:
    """QKeras's formula evaluated literally (reference for tests; use `quantized_bits` + fake_quant).

    m = 2^(bits - keep_negative), m_i = 2^integer:
    m_i * clip(round(x * m / m_i), keep_negative * (-m + symmetric), m - 1) / m
    """
    quantized_bits(bits, integer, symmetric=symmetric, keep_negative=keep_negative)  # validates
    arr = as_data("quantized_bits_formula", x)
    m = 2.0 ** (bits - int(keep_negative))
    m_i = 2.0**integer
    lower = int(keep_negative) * (-m + int(symmetric))
    p = arr * arr.dtype.type(m / m_i)
    return (m_i * np.clip(np.rint(p), lower, m - 1) / m).astype(arr.dtype)


def integer_length(data: object, *, signed: bool = True) -> int:
    """QUENN eq. 2: IL = ceil(log2 max|V|), plus the sign bit when signed (seed 002 §4.1).

    All-zero data has IL = 1 if signed else 0 (any FL represents it exactly).
    """
    return _integer_length("integer_length", as_data("integer_length", data), signed)


def _integer_length(what: str, x: np.ndarray, signed: bool) -> int:
    if not signed and np.any(x < 0):
        raise QuantizerError(f"{what}: signed=False but the data has negative values (min {x.min():g})")
    peak = float(np.max(np.abs(x)))
    sign_bit = 1 if signed else 0
    return sign_bit if peak == 0 else ceil_log2(peak) + sign_bit


def fit_dynamic_fixed_point(data: object, bits: int, *, signed: bool = True, search: bool = True,
                            cap: bool = True, candidates: Iterable[int] | None = None) -> Uniform:
    """QUENN dynamic fixed point (seed 002 §4.1): Uniform with scale 2^-FL, zero point 0.

    FL0 = BW - IL with IL = ceil(log2 max|V|) (+1 sign bit when signed), eqs. 2-3. With search,
    Y = argmin over candidate FLs of the L2 error ||V - Q_FL(V)||_2 (ties: closest to FL0, then the
    smaller FL); candidates default to FL0-8 ... FL0+8 (seed 002 §3.2 searched the fixed range
    8..20), and FL0 is always one. cap=True is the seed's rule "if FL > Y: FL = Y", i.e. FL = min(FL0, Y);
    cap=False takes Y itself (it may saturate outliers for finer steps). Either way the error is never
    larger than FL0's. FL is kept within [-60, 60].
    """
    what = "fit_dynamic_fixed_point"
    bits = check_bits(what, bits)
    x = as_data(what, data)
    fl0 = _clamp_frac_bits(bits - _integer_length(what, x, signed))
    if not search:
        return Uniform.fixed_point(bits, fl0, signed=signed)
    pool = _candidates(what, fl0, candidates)
    errors = {fl: _l2_error(x, Uniform.fixed_point(bits, fl, signed=signed)) for fl in pool}
    best = min(pool, key=lambda fl: (errors[fl], abs(fl - fl0), fl))
    frac_bits = min(fl0, best) if cap else best
    return Uniform.fixed_point(bits, frac_bits, signed=signed)


def _candidates(what: str, fl0: int, candidates: Iterable[int] | None) -> list[int]:
    if candidates is None:
        pool = set(range(fl0 - _SEARCH_RADIUS, fl0 + _SEARCH_RADIUS + 1))
    else:
        pool = set()
        for fl in candidates:
            if isinstance(fl, bool) or not isinstance(fl, int | np.integer):
                raise QuantizerError(f"{what}: candidate FL values must be integers, got {fl!r}")
            pool.add(int(fl))
    pool = {fl for fl in pool if -MAX_FRAC_BITS <= fl <= MAX_FRAC_BITS}
    return sorted(pool | {fl0})


def _l2_error(x: np.ndarray, spec: Uniform) -> float:
    diff = x.astype(np.float64) - fake_quant(x, spec).astype(np.float64)
    return float(np.sqrt(np.sum(diff * diff)))


def _check_frac_bits(what: str, frac_bits: int) -> None:
    if not -MAX_FRAC_BITS <= frac_bits <= MAX_FRAC_BITS:
        raise QuantizerError(f"{what}: fractional bits {frac_bits} outside [-{MAX_FRAC_BITS}, {MAX_FRAC_BITS}]")


def _clamp_frac_bits(frac_bits: int) -> int:
    return max(-MAX_FRAC_BITS, min(MAX_FRAC_BITS, frac_bits))
