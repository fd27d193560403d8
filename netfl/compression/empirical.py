"""The |x|^M-weighted Lloyd-Max quantizer of an empirical distribution of magnitudes (M22's
design for the values it actually quantizes, see m22.py).

A layer's magnitudes are summarized by a histogram read off the float32 bit pattern: the
exponent and the top SUB_BITS mantissa bits of |x| index the bin, so bins are 2**SUB_BITS
per octave (relative width at most 2**-SUB_BITS = 0.8%) and binning costs integer shifts,
no logarithms. Magnitudes more than SPAN_OCTAVES octaves below the largest share the lowest
bin (their weight |x|^M and their share of the distortion are negligible). Each non-empty
bin becomes a point mass at the mean magnitude of its entries. Beyond 2 * SAMPLE entries the
bulk is counted on an evenly strided sample and the tail (the top TAIL sampled entries'
bins and above) exactly, so a million-entry layer costs three passes over its values.

`design` runs the seed's two-step iteration (centers = |x|^M-weighted means of their cells,
thresholds = midpoints) on those point masses. Cells are runs of consecutive points, so the
iteration stops exactly when no point changes cell; cumulative sums make one step O(L log P)
for L levels and P points (P is at most a few thousand whatever the layer's size). The start
is the high-resolution optimum (Panter-Dite: point density proportional to (|x|^M f)^(1/3)),
written for log-spaced bins. `top` keeps the k largest entries of a histogram, which lets
rate control (m22.py's R = "auto") compare every split of a budget from one histogram;
`top_sums` gives the kept entries' power sums for many k at once (M22's allocation of an
update's budget over its layers).
`pack_table` / `read_table` put the levels on the wire: the top one as float32, the others
as 16-bit log offsets below it (relative step 0.034%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netfl.compression.bits import Reader, f32

SUB_BITS = 7
SPAN_OCTAVES = 24
MAX_ITER = 300
#: level table: steps of 2**(-1/LOG_STEPS) below the top level, 16 bits each
LOG_STEPS = 2048
SAMPLE = 2**17
TAIL = 2048
_MANTISSA = 23
_ABS = np.uint32(0x7FFFFFFF)


@dataclass(frozen=True)
class Histogram:
    """Point masses of a set of magnitudes: ascending bin means and entry counts."""

    mags: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def weighted_energy(self, power: float) -> float:
        """sum over entries of |x|^power (for the dropped entries: power = M + 2)."""
        return float(np.dot(self.counts, self.mags**power))


def _bins(bits: np.ndarray, floor: int) -> np.ndarray:
    """Bin index (from `floor`) of magnitudes given as float32 bit patterns (sign cleared)."""
    bins = (bits >> np.uint32(_MANTISSA - SUB_BITS)).astype(np.int64)
    bins -= floor
    np.maximum(bins, 0, out=bins)
    return bins


def histogram(v: np.ndarray, sample: int = SAMPLE) -> Histogram:
    """Histogram of |v| (v finite float32, any sign).

    Up to 2 * sample entries every entry is counted. Beyond, the bulk is counted on an
    evenly strided sample of about `sample` entries (counts scaled up), and every entry at or
    above the bin of the sample's TAIL-th largest is counted exactly: the few largest
    magnitudes, which carry most of the weight |x|^M, are never sampled away."""
    bits = np.ascontiguousarray(v, dtype=np.float32).reshape(-1).view(np.uint32) & _ABS
    shift = np.uint32(_MANTISSA - SUB_BITS)
    if bits.size <= 2 * sample:
        parts = [(bits, 1.0)]
        top = bits.max()
    else:
        strided = np.partition(bits[:: bits.size // sample], -TAIL)  # a contiguous copy
        cut_bits = int(strided[-TAIL])
        cut = np.uint32((cut_bits >> int(shift)) << int(shift))  # a bin's lower edge
        tail = bits[bits >= cut]
        bulk = strided[strided < cut]
        parts = [(tail, 1.0), (bulk, (bits.size - tail.size) / max(1, bulk.size))]
        top = tail.max()  # the largest magnitude is in the tail
    top_bin = int(top >> shift)
    floor = max(0, top_bin - (SPAN_OCTAVES << SUB_BITS))
    size = top_bin - floor + 1
    counts = np.zeros(size)
    sums = np.zeros(size)
    for part, scale in parts:
        if part.size:
            bins = _bins(part, floor)
            counts += scale * np.bincount(bins, minlength=size)
            sums += scale * np.bincount(bins, weights=part.view(np.float32), minlength=size)
    full = counts > 0
    return Histogram(sums[full] / counts[full], counts[full])


def top(h: Histogram, k: int) -> tuple[Histogram, Histogram]:
    """(the k largest entries, the others) of a histogram; the bin holding the k-th largest
    entry is split between the two by count."""
    if k <= 0:
        return Histogram(h.mags[:0], h.counts[:0]), h
    from_top = np.cumsum(h.counts[::-1])
    if k >= from_top[-1]:
        return h, Histogram(h.mags[:0], h.counts[:0])
    j = int(np.searchsorted(from_top, k))  # from_top[j] >= k
    start = h.mags.size - 1 - j
    taken = k - (from_top[j - 1] if j else 0.0)
    kept = h.counts[start:].copy()
    kept[0] = taken
    rest = h.counts[: start + 1].copy()
    rest[-1] -= taken
    return Histogram(h.mags[start:], kept), Histogram(h.mags[: start + 1], rest)


def top_sums(h: Histogram, ks: np.ndarray, powers: tuple[float, ...]) -> np.ndarray:
    """sum of |x|^power over the k largest entries, for every k in `ks` (rows) and power
    (columns); the bin holding the k-th largest entry counts in part, as in `top`. Rate
    allocation (m22.py) reads a layer's whole distortion-rate curve off these sums."""
    counts, mags = h.counts[::-1], h.mags[::-1]  # largest first
    from_top = np.concatenate([[0.0], np.cumsum(counts)])
    k = np.minimum(np.asarray(ks, dtype=np.float64), from_top[-1])
    if mags.size == 0:
        return np.zeros((k.size, len(powers)))
    i = np.clip(np.searchsorted(from_top, k, side="left") - 1, 0, mags.size - 1)
    part = k - from_top[i]  # entries of bin i kept
    out = np.empty((k.size, len(powers)))
    for col, power in enumerate(powers):
        values = mags**power
        full = np.concatenate([[0.0], np.cumsum(counts * values)])
        out[:, col] = full[i] + part * values[i]
    return out


@dataclass(frozen=True)
class Levels:
    """L ascending magnitude levels (float32-representable), the midpoint thresholds the
    encoder uses between them, and the weighted distortion sum w (|x| - level)^2 of the
    histogram they were designed on (bins at their means)."""

    centers: np.ndarray
    thresholds: np.ndarray
    distortion: float
    iterations: int


def _finish(h: Histogram, centers: np.ndarray, M: float, iterations: int) -> Levels:
    centers = np.maximum.accumulate(centers.astype(np.float32).astype(np.float64))
    thresholds = (centers[1:] + centers[:-1]) / 2
    cell = np.searchsorted(thresholds, h.mags, side="left")
    err = h.mags - centers[cell]
    distortion = float(np.dot(h.counts * h.mags**M, err * err)) if h.mags.size else 0.0
    return Levels(centers, thresholds, distortion, iterations)


def design(h: Histogram, levels: int, M: float) -> Levels:
    """The |x|^M-weighted Lloyd-Max quantizer with `levels` levels for the histogram's
    magnitudes (a fixed point of the two-step iteration from the Panter-Dite start)."""
    p, n = h.mags, h.counts
    if p.size == 0:
        return _finish(h, np.zeros(levels), M, 0)
    if p.size <= levels:  # one level per point: no error
        return _finish(h, np.concatenate([p, np.full(levels - p.size, p[-1])]), M, 0)
    w = n * p**M
    if not w.sum() > 0:  # M > 0 and every magnitude 0
        return _finish(h, np.zeros(levels), M, 0)
    density = np.cbrt(n) * p ** ((M + 2) / 3)  # (w f)^(1/3) times the bin width (~ p)
    cum = np.cumsum(density)
    cum /= cum[-1]
    centers = np.interp((np.arange(levels) + 0.5) / levels, cum, p)
    c0 = np.concatenate([[0.0], np.cumsum(w)])
    c1 = np.concatenate([[0.0], np.cumsum(w * p)])
    edges = None
    iterations = 0
    for iterations in range(1, MAX_ITER + 1):  # noqa: B007 - reported in Levels
        # a point equal to a threshold goes to the lower cell, as bits.bucketize does
        cut = np.searchsorted(p, (centers[1:] + centers[:-1]) / 2, side="right")
        if edges is not None and np.array_equal(cut, edges[1:-1]):
            break
        edges = np.concatenate([[0], cut, [p.size]])
        mass = c0[edges[1:]] - c0[edges[:-1]]
        first = c1[edges[1:]] - c1[edges[:-1]]
        with np.errstate(divide="ignore", invalid="ignore"):
            centers = np.sort(np.where(mass > 0, first / mass, centers))
    return _finish(h, centers, M, iterations)


# ---- level table on the wire --------------------------------------------------------------


def table_len(levels: int) -> int:
    """Bytes of a table of `levels` levels: the top one as float32, the others as 16-bit
    log offsets below it (relative step 2**(-1/LOG_STEPS), 0.034%; 32 octaves of range)."""
    return 4 + 2 * (levels - 1)


def pack_table(centers: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(bytes, the levels the decoder will read back) for ascending non-negative centers."""
    top = np.float32(centers[-1])
    if not top > 0:
        return f32(top) + bytes(2 * (centers.size - 1)), np.zeros(centers.size)
    with np.errstate(divide="ignore"):
        steps = -np.log2(centers[:-1] / np.float64(top)) * LOG_STEPS
    codes = np.clip(np.rint(steps), 0, 2**16 - 1).astype("<u2")
    return f32(top) + codes.tobytes(), _levels(top, codes)


def _levels(top: np.float32, codes: np.ndarray) -> np.ndarray:
    scale = np.exp2(-codes.astype(np.float64) / LOG_STEPS)
    return np.concatenate([np.float64(top) * scale, [np.float64(top)]])


def read_table(reader: Reader, levels: int) -> np.ndarray:
    """Levels of a table written by pack_table (ascending; float64)."""
    top = np.float32(reader.f32())
    codes = reader.array("<u2", levels - 1)
    if not (np.isfinite(top) and top >= 0 and np.all(np.diff(codes.astype(np.int64)) <= 0)):
        raise ValueError("level table is not a finite ascending table")
    return _levels(top, codes) if top > 0 else np.zeros(levels)
