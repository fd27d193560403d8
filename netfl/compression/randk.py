"""Random-k sparsification: keep k entries chosen uniformly at random.

The positions are never sent: the encoder draws a 32-bit seed (from the learner's
CodecState generator, else the codec's own, seeded by `seed`), and the decoder regenerates
the same positions from it. Wire format: varint k | seed u32 (when 0 < k < n) | k float32.
unbiased=True scales decoded values by n/k so that E[decode] equals the input.
"""

from __future__ import annotations

import numpy as np

from netfl.compression.bits import Reader, u32
from netfl.compression.codec import check_int
from netfl.compression.errors import CodecError
from netfl.compression.sparse import SparseCodec


def random_positions(seed: int, n: int, k: int) -> np.ndarray:
    """Sorted k distinct positions of n, a pure function of (seed, n, k)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False, shuffle=False)).astype(np.int64)


class RandK(SparseCodec):
    """Random-k with seed-coded positions (Stich et al.; GRACE randomk)."""

    name = "randk"
    explicit_positions = False  # the seed costs the same for any k: the bound is exact

    def __init__(self, *, seed: int = 0, unbiased: bool = False, **params) -> None:
        super().__init__(**params)
        if self.k is None and self.budget_bits is None:
            raise CodecError("randk: give k (count or fraction) or budget_bits")
        self.seed = check_int(self.name, "seed", seed, 0)
        if not isinstance(unbiased, bool):
            raise CodecError(f"randk: unbiased must be a bool, got {unbiased!r}")
        self.unbiased = unbiased
        self._rng = np.random.default_rng(self.seed)

    def params(self) -> dict[str, object]:
        return {"seed": self.seed, "unbiased": self.unbiased, **super().params()}

    def _select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, bytes]:
        n = x.size
        if k >= n:
            return np.arange(n, dtype=np.int64), b""
        if k == 0:
            return np.zeros(0, dtype=np.int64), b""
        seed = int(rng.integers(2**32))
        return random_positions(seed, n, k), u32(seed)

    def _positions_bound(self, n: int, k: int) -> int:
        return 4 if 0 < k < n else 0

    def _read_positions(self, reader: Reader, n: int, k: int) -> np.ndarray:
        if k > n:
            raise CodecError(f"undecodable bytes: {k} kept entries of {n}")
        if k == n or k == 0:
            return np.arange(k, dtype=np.int64)
        reader.need(4 + 4 * k, f"randk with {k} kept entries")  # seed + k float32
        return random_positions(reader.u32(), n, k)

    def _values_bound(self, k: int, n: int) -> int:
        return 4 * k

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        return v.astype("<f4", copy=False).tobytes()

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        values = reader.array("<f4", k)
        if self.unbiased and k < n:
            values = (values * (n / k)).astype(np.float32)
        return values
