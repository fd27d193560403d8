"""M22 (seed 003; Liu et al., arXiv:2301.09269): per layer, top-k, then the 2**R-level
quantizer that minimizes the M-magnitude weighted L2 distortion E[|g|^M (g - Q(g))^2] of the
values it quantizes; bit-packed level indices, the kept positions (bitmap or gap-coded,
whichever is shorter) and what the decoder needs to rebuild the levels.

Why the design is empirical (design="empirical", the default). Under a bit budget the values
M22 quantizes are the top-k survivors |g| >= t: two tails with nothing in between. The
seed's recipe (design="model": standardize, fit one generalized normal, design on it; see
fitted.py) fits a symmetric unimodal density to that bimodal set. On Laplace data (scale 1)
at 2 bits per entry the fitted beta sits at the grid's maximum (10: nearly flat over the
two tails' span), the outer level at 3.1 while the survivors reach 11.9, and the codec loses
its own objective to a plain uniform quantizer (tools/codec_study.py --distortion). A
truncated generalized normal (truncated below at t) would fit Laplace and generalized-normal
survivors exactly, but real update tails are only roughly generalized normal, and its design
depends on two continuous parameters (shape and t / scale), so it could not come from a
small cached grid. Instead M22 runs the seed's two-step iteration (|g|^M-weighted centroids,
midpoint thresholds) on the survivors' own magnitudes, summarized by a fine histogram
(empirical.py): the quantizer of least weighted distortion for exactly the values sent,
whatever their law, for about the cost of the old moment fit. The decoder cannot re-derive
it from a few parameters, so the payload carries the 2**(R-1) magnitude levels (6 bytes at
R = 2, 18 at R = 4), charged in the bytes like everything else. Levels are symmetric, a code
being a sign and a magnitude index: survivors of gradients are close to symmetric, and one
level set costs half the bytes of two.

Values block of a layer of n > min_size entries (its first byte tells the variants apart):
  R u8 (1..8) | level table | k codes of R bits
      table: top level f32, then L-1 u16 offsets o_i, level_i = top * 2**(-o_i / 2048)
      (ascending, L = 2**(R-1)); code j decodes to -level[L-1-j] for j < L, else level[j-L]
  0x80 u8 | value f32                    every kept value equal (a zero layer): no codes
  0x00 u8 | fitted.py's block            design="model", the seed's generalized-normal fit

Rate control: under budget_bits, k = the largest count whose codes, positions and levels fit
(sparse.py). Under a budget R defaults to "auto": one histogram of the whole layer gives,
for every R in AUTO_R, the dropped entries' weighted energy sum |g|^(M+2) plus the designed
quantizer's distortion on the top k_R, and the least total wins (a fixed R = 2 cannot win at
2 bits per entry: it keeps many entries coarsely where the weight asks for few, finely).
Under a budget min_size defaults to 0: a small layer's values cost 32 bits each as float32,
and the M-weighted energy of an update often sits in its small output layer.
Across the layers of an update (encode_update), M22 does not split the budget by layer
size: each layer's distortion-rate curve is estimated from power sums over its histogram
(dropped |g|^(M+2) plus the designed quantizer's error, for a grid of k and every R), and
the budget beyond every layer's minimum encoding goes to the steepest hull segments first
(codec.allocate_bits). An update's weighted energy often sits in a 10-entry output bias
that a size-proportional share leaves with no entry kept.
`choose_m` picks M by a short calibration run the caller supplies, as the seed suggests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from netfl.compression import empirical
from netfl.compression.bits import Reader, bucketize, f32, pack_codes, packed_len, unpack_codes
from netfl.compression.codec import allocate_bits, check_float, resolve_k
from netfl.compression.errors import CodecError
from netfl.compression.fitted import MAX_R, FittedQuantCodec
from netfl.compression.positions import MAX_RICE_B

DESIGNS = ("empirical", "model")
AUTO_R = (1, 2, 3, 4, 5, 6, 8)
_MODEL, _CONSTANT = 0x00, 0x80
#: the allocation's estimate of a designed quantizer's error on top-k survivors: the error of
#: one level (exact, from power sums) times RATE_GAIN per further bit (measured 0.25..0.36
#: from R = 1 to 2 and about 0.3 per bit beyond on Laplace, generalized normal 0.5,
#: Student-t 3 and normal data), and none once the levels outnumber the kept entries
RATE_GAIN = 0.3
#: k grid of a layer's distortion-rate curve: ratio 2**(1/K_STEPS) between counts
K_STEPS = 2


class M22(FittedQuantCodec):
    """M22 with exponent M of the distortion weight (M = 0 is plain L2 Lloyd-Max).

    design: "empirical" (levels designed on the kept values, sent) or "model" (the seed's
    generalized-normal fit, parameters sent; kept to reproduce the seed and compare).
    """

    name = "m22"
    family = "gennorm"
    sends_m = True

    def __init__(
        self,
        *,
        M: float = 2.0,
        design: str = "empirical",
        R: int | str | None = None,
        min_size: int | None = None,
        **params,
    ) -> None:
        # under a budget every bit counts: M22 chooses the split between k and R, and codes
        # small layers too (float32 values cost 32 bits each)
        budgeted = params.get("budget_bits") is not None
        if R is None:
            R = "auto" if budgeted else 2
        if min_size is None:
            min_size = 0 if budgeted else 1000
        super().__init__(R=R, min_size=min_size, **params)
        # float32 so that the encoder's design key is the value the decoder reads back
        self.M = float(np.float32(check_float(self.name, "M", M, 0.0, 64.0)))
        if design not in DESIGNS:
            raise CodecError(f"{self.name}: design must be one of {DESIGNS}, got {design!r}")
        self.design = design
        # scratch of the encode_update in progress: the layers' histograms, made once for
        # the allocation and taken back by pick_R (matched by identity of the layer's array)
        self._pending: list[tuple[np.ndarray, empirical.Histogram]] = []

    def _histogram(self, x: np.ndarray) -> empirical.Histogram:
        """empirical.histogram(x), taken from the allocation's scratch when it made it."""
        for i, (array, hist) in enumerate(self._pending):
            if array is x:
                del self._pending[i]
                return hist
        return empirical.histogram(x)

    def params(self) -> dict[str, object]:
        return {"M": self.M, "design": self.design, **super().params()}

    # ---- sizes ---------------------------------------------------------------------------
    def _values_bound(self, k: int, n: int) -> int:
        if n <= self.min_size:
            return 4 * k
        if self.design == "model":
            return 1 + super()._values_bound(k, n)
        R = self._active_R
        return 1 + empirical.table_len(2 ** (R - 1)) + packed_len(k, R)

    # ---- rate control --------------------------------------------------------------------
    def pick_R(self, x: np.ndarray, budget: int | None) -> int:
        """R in AUTO_R whose budget split (k_R kept at R bits) has the least estimated
        weighted distortion: dropped entries count |x|^(M+2), kept ones the designed
        quantizer's error, both from one histogram of the whole layer (empirical.py)."""
        if self.design == "model":
            return super().pick_R(x, budget)
        n = x.size
        if n <= self.min_size:
            return AUTO_R[0]
        hist = self._histogram(x)
        best, best_cost = AUTO_R[0], np.inf
        for R, k in zip(AUTO_R, self._choose_ks(n, budget, AUTO_R), strict=True):
            kept, dropped = empirical.top(hist, int(k))
            cost = dropped.weighted_energy(self.M + 2)
            if cost >= best_cost:  # the dropped entries alone lose more: no design needed
                continue
            if kept.mags.size:
                cost += empirical.design(kept, 2 ** (R - 1), self.M).distortion
            if cost < best_cost:
                best, best_cost = R, cost
            if cost == 0:  # nothing lost: no larger R can do better
                break
        self._active_R = best
        return best

    def _payload_bounds(self, n: int, ks: np.ndarray, R: np.ndarray) -> np.ndarray:
        """cost_bound(n, k) with R-bit codes (design="empirical"), for arrays that broadcast."""
        ks = np.asarray(ks, dtype=np.int64)
        base = _varint_lens(ks) + _positions_bounds(n, ks)
        if n <= self.min_size:
            return base + 4 * ks
        values = 1 + empirical.table_len(2 ** (R - 1)) + (ks * R + 7) // 8
        return base + np.where(ks > 0, values, 0)

    def _choose_ks(self, n: int, budget: int | None, Rs: Sequence[int]) -> np.ndarray:
        """choose_k(n, budget) at every R in Rs at once: the same counts as
        sparse.largest_k's binary search on cost_bound, found by a 16-way search that
        evaluates the costs of every R together (rate control's scalar search, repeated
        for each R, took a quarter of an encoding)."""
        cap = resolve_k(self.k, n)
        if budget is None:
            return np.full(len(Rs), cap)
        room, R = budget // 8, np.asarray(Rs, dtype=np.int64)[:, None]
        full = self._payload_bounds(n, np.full((len(Rs), 1), n), R)[:, 0] <= room
        lo, hi = np.zeros(len(Rs), dtype=np.int64), np.full(len(Rs), max(n - 1, 0))
        steps = np.arange(1, 17)
        while np.any(lo < hi):  # invariant: k = lo fits (the caller checked k = 0)
            mids = lo[:, None] + (-(-(hi - lo)[:, None] * steps // 16))
            fits = self._payload_bounds(n, mids, R) <= room
            lo = np.where(fits, mids, lo[:, None]).max(axis=1)
            hi = np.minimum(hi, np.where(fits, hi[:, None] + 1, mids).min(axis=1) - 1)
        return np.minimum(np.where(full, n, lo), cap)

    # ---- allocation over layers ---------------------------------------------------------
    def layer_budgets(
        self, xs: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]
    ) -> list[int] | None:
        """Each layer's minimum encoding plus a share of the rest of the budget chosen to
        minimize the update's total estimated weighted distortion (`rate_curve` per layer,
        `allocate_bits` over them), not in proportion to size: the |g|^M weight often sits
        in a small output layer that a size-proportional share leaves with no entry kept.
        design="model" (the seed's codec) keeps the size-proportional split."""
        if self.budget_bits is None or self.design == "model" or len(xs) < 2:
            return self.split_budget(shapes)
        mins = [self.min_bits(s) for s in shapes]
        self.split_budget(shapes)  # raises the CodecError of a budget below the minimum
        extra = self.budget_bits - sum(mins)
        hists = [empirical.histogram(x) for x in xs]
        given = allocate_bits([self.rate_curve(x, h) for x, h in zip(xs, hists)], extra)
        if self.R == "auto":  # pick_R needs the same histograms: make them once
            self._pending = [(x, h) for x, h in zip(xs, hists) if x.size > self.min_size]
        return [m + g for m, g in zip(mins, given, strict=True)]

    def rate_curve(
        self, x: np.ndarray, hist: empirical.Histogram | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(payload bits beyond the minimum, estimated weighted distortion) of keeping the
        top k of x at R bits, for k on a geometric grid (and 0) and every R this codec may
        pick. Bits are the worst-case sizes rate control charges (cost_bound); the
        distortion is the dropped entries' sum |x|^(M+2) plus the kept ones' estimated
        quantization error (RATE_GAIN), all from power sums over one histogram."""
        n = x.size
        cap = resolve_k(self.k, n)
        if cap == 0:
            return np.zeros(1), np.zeros(1)
        M = self.M
        hist = empirical.histogram(x) if hist is None else hist
        grid = np.exp2(np.arange(0, K_STEPS * np.log2(cap) + 1) / K_STEPS)
        ks = np.unique(np.concatenate([np.rint(grid), [cap]]).astype(np.int64))
        s0, s1, s2 = empirical.top_sums(hist, ks, (M, M + 1, M + 2)).T
        total = hist.weighted_energy(M + 2)
        dropped = np.maximum(total - s2, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            one_level = np.where(s0 > 0, np.maximum(s2 - s1 * s1 / s0, 0.0), 0.0)
        R = np.array(AUTO_R if self.R == "auto" else (self.R,))[:, None]  # rows: R
        bits = 8 * (self._payload_bounds(n, ks, R) - 1)  # beyond k = 0's 1 byte
        if n <= self.min_size:  # kept values sent as float32: no error
            dist = dropped
        else:
            half = 2 ** (R - 1)
            dist = dropped + np.where(ks > half, one_level * RATE_GAIN ** (R - 1), 0.0)
        return np.append(0, bits), np.append(total, dist)

    # ---- values block --------------------------------------------------------------------
    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        if n <= self.min_size:
            return v.astype("<f4", copy=False).tobytes()
        if self.design == "model":
            return bytes([_MODEL]) + super()._encode_values(v, n, rng)
        hist = empirical.histogram(v)
        if hist.mags.size == 1 and v.min() == v.max():
            return bytes([_CONSTANT]) + f32(v[0])
        R = self._active_R
        table, levels = empirical.pack_table(empirical.design(hist, 2 ** (R - 1), self.M).centers)
        inner = (levels[1:] + levels[:-1]) / 2  # midpoints of the levels the decoder reads
        codes = bucketize(v, np.concatenate([-inner[::-1], [0.0], inner]))
        return bytes([R]) + table + pack_codes(codes, R)

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        if n <= self.min_size:
            return reader.array("<f4", k)
        kind = reader.u8()
        if kind == _MODEL:
            return super()._decode_values(reader, k, n)
        if kind == _CONSTANT:
            value = reader.f32()
            if not np.isfinite(value):
                raise CodecError(f"undecodable bytes: {self.name} constant value {value}")
            return np.full(k, value, dtype=np.float32)
        if not 1 <= kind <= MAX_R:
            raise CodecError(f"undecodable bytes: {self.name} values block kind {kind}")
        R, half = kind, 2 ** (kind - 1)
        reader.need(empirical.table_len(half) + packed_len(k, R), f"{self.name} levels, codes")
        try:
            levels = empirical.read_table(reader, half).astype(np.float32)
        except ValueError as err:
            raise CodecError(f"undecodable bytes: {self.name} {err}") from None
        codes = unpack_codes(reader.take(packed_len(k, R)), k, R)
        return np.concatenate([-levels[::-1], levels])[codes]

    def warm(self) -> None:
        """Precompute the model designs (design="model"); the empirical design has none."""
        if self.design == "model":
            super().warm()


def _varint_lens(values: np.ndarray) -> np.ndarray:
    """bits.varint_len of every value (non-negative integers below 2**53)."""
    _, bit_length = np.frexp(values.astype(np.float64))
    return np.maximum(1, (bit_length + 6) // 7)


def _positions_bounds(n: int, ks: np.ndarray) -> np.ndarray:
    """positions.bound(n, k) for every k in ks (the same Rice parameters and sizes)."""
    shape = np.shape(ks)
    k = np.asarray(ks, dtype=np.int64).reshape(-1)
    centre = np.log2(np.maximum(1.0, (n - k) / np.maximum(k, 1))).astype(np.int64)
    b = np.clip(centre[:, None] + np.arange(-2, 4), 0, MAX_RICE_B)
    unary = (((n - k)[:, None] >> b) + k[:, None] + 7) // 8
    rice = 2 + (k[:, None] * b + 7) // 8 + _varint_lens(unary) + unary
    out = np.minimum(1 + (n + 7) // 8, rice.min(axis=1))
    return np.where((k == 0) | (k >= n), 0, out).reshape(shape)


def choose_m(
    evaluate: Callable[[M22], float],
    candidates: Iterable[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    **params,
) -> tuple[float, dict[float, float]]:
    """M minimizing `evaluate(codec)`, the loss of accuracy (lower is better) of a short
    calibration run with an M22 codec built from `params` and that M.

    Returns (best M, {M: score}); ties go to the smaller M. `evaluate` owns the run (data,
    model, seeds), so this helper stays independent of the simulator.
    """
    scores: dict[float, float] = {}
    for m in candidates:
        scores[float(m)] = float(evaluate(M22(M=m, **params)))
    if not scores:
        raise ValueError("choose_m needs at least one candidate M")
    best = min(sorted(scores), key=lambda m: scores[m])
    return best, scores
