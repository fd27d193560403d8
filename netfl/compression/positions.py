"""Positions of the kept entries of a sparsified layer: bitmap or gap-coded, whichever is
shorter, plus a tight upper bound on that size so that rate control can pick k before
encoding.

Block layout (absent when k == 0 or k == n, which the decoder infers from k and n):
  mode u8 = 1, bitmap of n bits (LSB first)
  mode u8 = 2, b u8, remainders (k codes of b bits), varint U, U bytes of unary quotients
Gap coding is Golomb-Rice with the two parts in separate streams so that both encode and
decode are vectorised: gap g = (q << b) | r, q in unary (q ones then a zero).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netfl.compression.bits import (
    Reader,
    pack_codes,
    packed_len,
    unpack_codes,
    varint,
    varint_len,
)
from netfl.compression.errors import CodecError

BITMAP, RICE = 1, 2
MAX_RICE_B = 40


def _rice_bound(n: int, k: int, b: int) -> int:
    """Bytes of a Rice block with parameter b for any k sorted positions in [0, n)."""
    unary = (((n - k) >> b) + k + 7) // 8  # sum of gaps <= n - k
    return 2 + packed_len(k, b) + varint_len(unary) + unary


def _best_bound_b(n: int, k: int) -> int:
    mean_gap = max(1.0, (n - k) / max(k, 1))
    centre = int(np.log2(mean_gap))
    cands = range(max(0, centre - 2), min(MAX_RICE_B, centre + 3) + 1)
    return min(cands, key=lambda b: _rice_bound(n, k, b))


def bound(n: int, k: int) -> int:
    """Upper bound (bytes) of encode(positions) for any k positions out of n."""
    if k == 0 or k >= n:
        return 0
    return min(1 + (n + 7) // 8, _rice_bound(n, k, _best_bound_b(n, k)))


def _rice_cost(gaps: np.ndarray, b: int) -> int:
    unary = (int((gaps >> b).sum()) + gaps.size + 7) // 8
    return 2 + packed_len(gaps.size, b) + varint_len(unary) + unary


def _rice(gaps: np.ndarray, b: int) -> bytes:
    q = gaps >> b
    r = gaps & ((1 << b) - 1)
    bits = np.ones(int(q.sum()) + q.size, dtype=np.uint8)
    bits[np.cumsum(q + 1) - 1] = 0
    unary = np.packbits(bits, bitorder="little").tobytes()
    return bytes([RICE, b]) + pack_codes(r, b) + varint(len(unary)) + unary


def superset_bound(positions: np.ndarray, n: int) -> tuple[Callable[[int], int], tuple[int, ...]]:
    """(cost, bs): cost(j) bounds the block of any j-entry superset of `positions` (sorted),
    assuming Rice parameters bs, which encode() must then try (`extra_b`).

    Tighter than bound(): adding positions only splits gaps, and floor(g1 / 2**b) +
    floor(g2 / 2**b) <= floor(g / 2**b) when g1 + g2 < g, so a superset's unary part is at
    most this set's sum of quotients (the stretch after the last position included) plus one
    terminator per entry. Rate control uses it to spend the worst-case bound's slack."""
    gaps = np.diff(positions.astype(np.int64, copy=False), prepend=-1) - 1
    tail = n - 1 - int(positions[-1])
    centre = int(np.log2(max(1.0, float(gaps.mean()))))
    bs = tuple(range(max(0, centre - 4), min(MAX_RICE_B, centre + 1) + 1))
    sums = {b: int((gaps >> b).sum()) + (tail >> b) for b in bs}
    bitmap = 1 + (n + 7) // 8

    def cost(j: int) -> int:
        if j == 0 or j >= n:
            return 0
        rice = min(
            2 + packed_len(j, b) + varint_len(u) + u
            for b, u in ((b, (sums[b] + j + 7) // 8) for b in bs)
        )
        return min(bitmap, rice)

    return cost, bs


def encode(positions: np.ndarray, n: int, extra_b: tuple[int, ...] = ()) -> bytes:
    """Block for sorted, distinct positions in [0, n); at most bound(n, len(positions)), and
    at most a superset_bound cost when its Rice parameters are passed as extra_b."""
    k = positions.size
    if k == 0 or k >= n:
        return b""
    bitmap_len = 1 + (n + 7) // 8
    if 2 + (k + 7) // 8 >= bitmap_len:  # unary quotients alone would outweigh the bitmap
        return _bitmap(positions, n)
    gaps = np.diff(positions.astype(np.int64, copy=False), prepend=-1) - 1
    centre = int(np.log2(max(1.0, float(gaps.mean()))))
    cands = {
        _best_bound_b(n, k), *extra_b, *range(max(0, centre - 1), min(MAX_RICE_B, centre + 2) + 1)
    }
    costs = {b: _rice_cost(gaps, b) for b in sorted(cands)}
    best = min(costs, key=costs.__getitem__)
    if bitmap_len <= costs[best]:
        return _bitmap(positions, n)
    return _rice(gaps, best)


def _bitmap(positions: np.ndarray, n: int) -> bytes:
    mask = np.zeros(n, dtype=np.uint8)
    mask[positions] = 1
    return bytes([BITMAP]) + np.packbits(mask, bitorder="little").tobytes()


def decode(reader: Reader, n: int, k: int) -> np.ndarray:
    """Sorted positions (int64) of the k kept entries of n."""
    if k > n:
        raise CodecError(f"undecodable bytes: {k} kept entries of {n}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    mode = reader.u8()
    if mode == BITMAP:
        raw = np.frombuffer(reader.take((n + 7) // 8), dtype=np.uint8)
        positions = np.flatnonzero(np.unpackbits(raw, count=n, bitorder="little").view(bool))
    elif mode == RICE:
        b = reader.u8()
        if b > MAX_RICE_B:
            raise CodecError(f"undecodable bytes: Rice parameter {b}")
        # k remainders of b bits, then a unary stream holding at least k zero bits
        reader.need(packed_len(k, b) + 1 + (k + 7) // 8, f"{k} Rice-coded positions")
        r = unpack_codes(reader.take(packed_len(k, b)), k, b)
        unary = np.unpackbits(np.frombuffer(reader.take(reader.varint()), dtype=np.uint8),
                              bitorder="little")
        zeros = np.flatnonzero(unary == 0)[:k]
        if zeros.size < k:
            raise CodecError("undecodable bytes: gap stream ends early")
        q = np.diff(zeros, prepend=-1) - 1
        positions = np.cumsum(((q << b) | r) + 1) - 1
    else:
        raise CodecError(f"undecodable bytes: position mode {mode}")
    if positions.size != k or (k and positions[-1] >= n):
        raise CodecError(f"undecodable bytes: positions do not match k={k} of n={n}")
    return positions.astype(np.int64, copy=False)


def topk(
    x: np.ndarray, k: int, mag: np.ndarray | None = None, nnz: int | None = None
) -> np.ndarray:
    """Sorted positions of the k largest |x| (ties: lowest positions first); O(n).

    Zeros are never kept: asking for more than the nonzero entries returns those. mag = |x|
    and nnz = count_nonzero(x) may be passed when the caller selects several times."""
    n = x.size
    k = min(k, int(np.count_nonzero(x)) if nnz is None else nnz)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    mag = np.abs(x) if mag is None else mag
    thr = np.partition(mag, n - k)[n - k]
    mask = mag > thr
    missing = k - int(np.count_nonzero(mask))
    if missing > 0:
        mask[np.flatnonzero(mag == thr)[:missing]] = True
    return np.flatnonzero(mask)
