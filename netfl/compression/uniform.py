"""Uniform scalar quantizer: R bits per kept value, exactly 2**R levels.

Levels are lo + j * (hi - lo) / (2**R - 1) for j = 0 .. 2**R - 1, with lo, hi the smallest
and largest kept value, so both extremes are reproduced exactly (the reference code's
2**R + 1 levels bug is avoided: codes always fit in R bits). Rounding to the nearest level.
Wire format (values block): lo f32 | hi f32 | k codes of R bits. With budget_bits the codec
keeps the top-k entries with k chosen to meet the rate (seed 003's comparison setting).
"""

from __future__ import annotations

import numpy as np

from netfl.compression.bits import Reader, f32, pack_codes, packed_len, unpack_codes
from netfl.compression.codec import check_int
from netfl.compression.sparse import SparseCodec


class Uniform(SparseCodec):
    """Top-k (optional) + R-bit uniform quantizer over [min, max] of the kept values."""

    name = "uniform"

    def __init__(self, *, R: int = 4, **params) -> None:
        super().__init__(**params)
        self.R = check_int(self.name, "R", R, 1, 16)

    def params(self) -> dict[str, object]:
        return {"R": self.R, **super().params()}

    def _values_bound(self, k: int, n: int) -> int:
        return 8 + packed_len(k, self.R)

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        lo, hi = np.float32(v.min()), np.float32(v.max())
        step = (np.float64(hi) - np.float64(lo)) / (2**self.R - 1)
        if step > 0:
            codes = np.clip(np.rint((v - np.float64(lo)) / step), 0, 2**self.R - 1)
        else:
            codes = np.zeros(v.size)
        return f32(lo) + f32(hi) + pack_codes(codes.astype(np.int64), self.R)

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        lo, hi = reader.f32(), reader.f32()
        codes = unpack_codes(reader.take(packed_len(k, self.R)), k, self.R)
        step = (np.float64(hi) - np.float64(lo)) / (2**self.R - 1)
        return (lo + codes * step).astype(np.float32)
