"""Model-fitted quantizers (M22, TinyScript): top-k, standardize the kept values, fit a
density, quantize with the cached design for (shape rounded to the grid, R, M).

Values block for a layer of n > min_size entries:
  mean f32 | scale f32 | shape index u8 | R u8 | [M f32, M22 only] | k codes of R bits
decoded value = mean + scale * centers[code], centers those of lloyd.design(family, shape
index, R, M): the decoder rebuilds the quantizer from these parameters alone. scale = 0
(constant kept values, or k = 1) sends no codes. Layers of at most min_size entries (biases,
norms) are only sparsified and their kept values sent as float32, as the reference code
does (it quantizes layers of more than 1000 entries).
"""

from __future__ import annotations

import math

import numpy as np

from netfl.compression import fitting, lloyd
from netfl.compression.bits import (
    Reader,
    bucketize,
    f32,
    pack_codes,
    packed_len,
    unpack_codes,
)
from netfl.compression.codec import check_int
from netfl.compression.errors import CodecError
from netfl.compression.sparse import SparseCodec

MAX_R = 8
AUTO_R = (1, 2, 3, 4)
AUTO_SAMPLE = 32_768


class FittedQuantCodec(SparseCodec):
    """Shared machinery; subclasses set `family` and whether M is sent.

    R: bits per kept value (1..8), or "auto" with budget_bits: per layer, the R in AUTO_R
    whose (k, R) split of the budget gives the least estimated weighted distortion.
    fit: "moments" (fast, see fitting.py) or "mle" (scipy, as the reference code).
    min_size: layers of at most this many entries are sparsified only.
    `_active_R` is scratch for the call in progress: share a codec between learners of one
    simulation, not between threads.
    """

    family: str = "gennorm"
    sends_m: bool = False

    def __init__(
        self,
        *,
        R: int | str = 2,
        fit: str = "moments",
        min_size: int = 1000,
        **params,
    ) -> None:
        super().__init__(**params)
        if R == "auto":
            if self.budget_bits is None:
                raise CodecError(f"{self.name}: R='auto' needs budget_bits (it trades k for R)")
            self.R: int | str = "auto"
        else:
            self.R = check_int(self.name, "R", R, 1, MAX_R)
        self._active_R = AUTO_R[0] if self.R == "auto" else self.R
        if fit not in fitting.METHODS:
            raise CodecError(f"{self.name}: fit must be one of {fitting.METHODS}, got {fit!r}")
        self.fit = fit
        self.min_size = check_int(self.name, "min_size", min_size, 0)
        self.M = 0.0

    def params(self) -> dict[str, object]:
        extra = {"R": self.R, "fit": self.fit, "min_size": self.min_size}
        return {**extra, **super().params()}

    def _header_len(self) -> int:
        return 10 + (4 if self.sends_m else 0)

    def _values_bound(self, k: int, n: int) -> int:
        if n <= self.min_size:
            return 4 * k
        return self._header_len() + packed_len(k, self._active_R)

    def _encode_payload(self, x: np.ndarray, budget: int | None, rng: np.random.Generator) -> bytes:
        if self.R == "auto":
            self._active_R = self.pick_R(x, budget)
        return super()._encode_payload(x, budget, rng)

    def pick_R(self, x: np.ndarray, budget: int | None) -> int:
        """R in AUTO_R (with its k under the budget) minimizing the estimated weighted
        distortion sum |x|^M (x - x_hat)^2 of the whole layer: dropped entries count
        |x|^(M+2), kept ones their actual quantization error. Everything is estimated on an
        evenly strided sample of at most AUTO_SAMPLE entries (top-k thresholds included),
        so the choice costs a few milliseconds; the encoding itself uses the exact top-k."""
        n = x.size
        if n <= self.min_size:
            return AUTO_R[0]
        sample = x[:: max(1, n // AUTO_SAMPLE)]
        mag = np.abs(sample)
        ordered = np.sort(mag)
        weight = mag.astype(np.float64) ** self.M
        best, best_cost = AUTO_R[0], math.inf
        for R in AUTO_R:
            self._active_R = R
            kept_share = round(self.choose_k(n, budget) / n * sample.size)
            if kept_share <= 0:
                keep = np.zeros(sample.size, dtype=bool)
            else:
                keep = mag >= ordered[sample.size - kept_share]
            err = np.where(keep, 0.0, sample.astype(np.float64)) ** 2
            kept = sample[keep]
            if kept.size:
                mean, scale, index = self.design_for(kept)
                if scale > 0:
                    design = lloyd.design(self.family, index, R, self.M)
                    codes = bucketize(kept, mean + scale * design.thresholds)
                    err[keep] = (kept - (mean + scale * design.centers[codes])) ** 2
                else:
                    err[keep] = (kept - mean) ** 2
            cost = float(np.einsum("i,i->", weight, err))  # np.dot: BLAS threads, slow here
            if cost < best_cost:
                best, best_cost = R, cost
        self._active_R = best
        return best

    def design_for(self, v: np.ndarray) -> tuple[float, float, int]:
        """(mean, scale, grid index) of the model fitted to the kept values v."""
        mean = np.float32(v.mean(dtype=np.float64))
        centred = v - mean
        m2 = float(np.einsum("i,i->", centred, centred)) / v.size
        if v.size < 2 or not m2 > 0 or not math.isfinite(m2):
            return float(mean), 0.0, lloyd.grid_index(2.0)
        sigma = math.sqrt(m2)
        if self.fit == "moments":  # scale matches the variance at the rounded shape
            m1 = float(np.abs(centred).mean(dtype=np.float64))
            shape, _ = fitting.fit_moments(m1 / sigma, 1.0, self.family)
            index = lloyd.grid_index(shape)
            alpha = fitting.second_moment_scale(self.family, lloyd.grid_value(index), 1.0)
        else:
            shape, alpha = fitting.fit(centred / sigma, self.family, "mle")
            index = lloyd.grid_index(shape)
        scale = np.float32(sigma * alpha)
        if not (math.isfinite(scale) and scale > 0):
            return float(mean), 0.0, index
        return float(mean), float(scale), index

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        if n <= self.min_size:
            return v.astype("<f4", copy=False).tobytes()
        mean, scale, index = self.design_for(v)
        R = self._active_R
        head = f32(mean) + f32(scale) + bytes([index, R])
        if self.sends_m:
            head += f32(self.M)
        if scale == 0:
            return head
        design = lloyd.design(self.family, index, R, self.M)
        # thresholds in data units: compare float32 values directly, no standardized copy
        codes = bucketize(v, mean + scale * design.thresholds)
        return head + pack_codes(codes, R)

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        if n <= self.min_size:
            return reader.array("<f4", k)
        mean, scale = reader.f32(), reader.f32()
        index, R = reader.u8(), reader.u8()
        M = reader.f32() if self.sends_m else 0.0
        if index >= lloyd.GRID_SIZE or not 1 <= R <= MAX_R or not 0 <= M <= 64:
            raise CodecError(f"undecodable bytes: {self.name} parameters shape={index} R={R} M={M}")
        if scale == 0:
            return np.full(k, mean, dtype=np.float32)
        design = lloyd.design(self.family, index, R, float(M))
        codes = unpack_codes(reader.take(packed_len(k, R)), k, R)
        levels = (np.float64(mean) + np.float64(scale) * design.centers).astype(np.float32)
        return levels[codes]

    def warm(self) -> None:
        """Precompute this codec's designs for every grid shape (before timing a run)."""
        for R in AUTO_R if self.R == "auto" else (self.R,):
            lloyd.warm(self.family, R, self.M)
