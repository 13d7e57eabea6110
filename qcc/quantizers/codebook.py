"""Codebook results shared by the k-means and CDF quantizers, and seed 002's memory accounting.

A codebook quantizer stores, per weight, an index of `bits` bits into a small table (seed 002 §4.1,
after Han et al.'s shared weights). QUENN keeps the table itself in fixed point "with suitable FL"
rather than floating point, so here the table is integers of `centroid_bits` bits times one
power-of-two `centroid_scale` = 2^-FL, with FL the largest that fits every centroid (the dynamic
fixed point rule applied to the table). Decoding is then exact in float32: centroid * 2^-FL needs no
rounding for centroid_bits <= 24, so the decoded weights lie exactly on the spec's grid
(`qcc.numerics.fake_quant(decoded, spec) == decoded`).

Tables are sorted ascending (index order = value order, so the index map is monotone), duplicates
that rounding to the integer grid creates are merged, and unused entries may be dropped.

Memory (seed 002 eq. 5 and the text after it): n_weights * log2(K) index bits plus the table,
K * (bits of the shared value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.ir.quant import Codebook
from qcc.numerics import nearest_index
from qcc.quantizers._common import MAX_FRAC_BITS, QuantizerError, as_data, ceil_log2, check_bits

__all__ = ["CodebookFit", "codebook_memory_bits", "encode_codebook", "check_centroid_bits", "build_codebook",
           "nearest_index"]

_MAX_CENTROID_BITS = 24  # decoding c * 2^-FL is exact in float32 up to 24-bit centroids


@dataclass(frozen=True, eq=False)
class CodebookFit:
    """A fitted codebook: the spec, the index array (data's shape) and the decoded data."""

    spec: Codebook
    indices: np.ndarray
    data: np.ndarray

    @property
    def table_size(self) -> int:
        return sum(len(t) for t in self.spec.tables())

    @property
    def memory_bits(self) -> int:
        """Storage per seed 002 eq. 5: index bits plus the centroid table(s)."""
        return codebook_memory_bits(int(self.indices.size), self.spec.bits, self.table_size,
                                    self.spec.centroid_bits)


def codebook_memory_bits(n_weights: int, bits: int, table_size: int, centroid_bits: int) -> int:
    """Seed 002 eq. 5: n_weights * bits (log2 of the 2^bits intervals) + table_size * centroid_bits.

    table_size counts every entry of every table (one table per channel when per-channel).
    """
    what = "codebook_memory_bits"
    bits = check_bits(what, bits)
    for name, v in (("n_weights", n_weights), ("table_size", table_size), ("centroid_bits", centroid_bits)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise QuantizerError(f"{what}: {name} must be a non-negative integer, got {v!r}")
    return int(n_weights) * bits + int(table_size) * int(centroid_bits)


def encode_codebook(data: object, table: object, bits: int, *, centroid_bits: int = 16) -> CodebookFit:
    """Encode data with a given table of values (e.g. from a configuration): nearest entry, ties low.

    The table is sorted, rounded to the integer centroid grid and de-duplicated; more than 2^bits
    distinct entries is an error. Per tensor.
    """
    what = "encode_codebook"
    bits = check_bits(what, bits)
    centroid_bits = check_centroid_bits(what, centroid_bits)
    x = as_data(what, data)
    values = np.unique(as_data(f"{what} table", table).astype(np.float64))
    if len(values) > 2**bits:
        raise QuantizerError(f"{what}: a table of {len(values)} values does not fit {bits}-bit indices "
                             f"(at most {2**bits})")
    return build_codebook(x, bits, centroid_bits, [x.reshape(-1)], [values], None, per_channel=False,
                          compact=False)


def check_centroid_bits(what: str, centroid_bits: object) -> int:
    return check_bits(what, centroid_bits, lo=2, hi=_MAX_CENTROID_BITS, name="centroid_bits")


def build_codebook(x: np.ndarray, bits: int, centroid_bits: int, rows: list[np.ndarray],
                   tables: list[np.ndarray], indices: list[np.ndarray] | None, *, per_channel: bool,
                   compact: bool) -> CodebookFit:
    """Turn float tables (ascending, at most 2^bits entries, one per row) into a Codebook and decode.

    `rows` are x's elements per channel (one row when per-tensor). `indices` are the rows' indices
    into `tables`; None means "nearest entry of the rounded table" (Lloyd's assignment step).
    """
    frac_bits = _table_frac_bits(max(float(np.max(np.abs(t))) for t in tables), centroid_bits)
    limit = 2 ** (centroid_bits - 1)
    int_tables, out_idx = [], []
    for ch, (row, table) in enumerate(zip(rows, tables)):
        ints = np.clip(np.rint(np.ldexp(table, frac_bits)), -limit, limit - 1).astype(np.int64)
        if indices is None:
            idx = nearest_index(row.astype(np.float64), np.ldexp(ints, -frac_bits).astype(np.float64))
        else:
            idx = indices[ch]
        ints, idx = _merge(ints, idx, compact)
        int_tables.append(ints)
        out_idx.append(idx)
    scale = 2.0**-frac_bits
    centroids = tuple(tuple(int(c) for c in t) for t in int_tables)
    spec = Codebook(bits=bits, centroids=centroids if per_channel else centroids[0],
                    centroid_bits=centroid_bits, centroid_scale=scale, axis=0 if per_channel else None)
    index_rows = np.stack(out_idx) if per_channel else out_idx[0][None]
    decoded_rows = np.stack([np.ldexp(t[i], -frac_bits) for t, i in zip(int_tables, index_rows)])
    # rows are x.reshape(channels, -1) (channel axis 0) or x.reshape(1, -1): reshape back directly
    return CodebookFit(spec=spec, indices=index_rows.astype(np.int64).reshape(x.shape),
                       data=decoded_rows.astype(x.dtype).reshape(x.shape))


def _table_frac_bits(peak: float, centroid_bits: int) -> int:
    """Largest FL with round(peak * 2^FL) <= 2^(centroid_bits-1) - 1, within [-60, 60]."""
    if peak == 0:
        return centroid_bits - 1
    frac_bits = centroid_bits - 1 - ceil_log2(peak)
    if np.rint(np.ldexp(peak, frac_bits)) > 2 ** (centroid_bits - 1) - 1:
        frac_bits -= 1
    return max(-MAX_FRAC_BITS, min(MAX_FRAC_BITS, frac_bits))


def _merge(ints: np.ndarray, idx: np.ndarray, compact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Merge equal table entries (and drop unused ones when compact), remapping the indices."""
    keep = np.unique(ints[np.unique(idx)]) if compact else np.unique(ints)
    return keep, np.searchsorted(keep, ints[idx])

