"""QSGD (Alistarh et al. 2017): s levels per sign, stochastic rounding, one norm per bucket.

Each kept value v in a bucket with norm ||b|| (L2 by default, or max) becomes
sign(v) * l / s * ||b||, with l in {0..s} drawn so that the result is unbiased. Codes are
sign*l + s in {0..2s}, packed at ceil(log2(2s+1)) bits (fixed width; a lossless stage can
squeeze the skewed codes further). The random draws come from the learner's CodecState
generator or the codec's own generator (seeded by `seed`), never the global one; the decoder
needs none. Wire format (values block): ceil(k/bucket) norms f32 | k codes.
"""

from __future__ import annotations

import math

import numpy as np

from netfl.compression.bits import Reader, pack_codes, packed_len, unpack_codes
from netfl.compression.codec import check_int
from netfl.compression.errors import CodecError
from netfl.compression.sparse import SparseCodec


class QSGD(SparseCodec):
    """Top-k (optional) + QSGD stochastic quantization with s levels per sign."""

    name = "qsgd"

    def __init__(
        self, *, s: int = 7, bucket: int = 512, norm: str = "l2", seed: int = 0, **params
    ) -> None:
        super().__init__(**params)
        self.s = check_int(self.name, "s", s, 1, 2**15 - 1)
        self.bucket = check_int(self.name, "bucket", bucket, 1)
        if norm not in ("l2", "max"):
            raise CodecError(f"qsgd: norm must be 'l2' or 'max', got {norm!r}")
        self.norm = norm
        self.seed = check_int(self.name, "seed", seed, 0)
        self._rng = np.random.default_rng(self.seed)
        self._bits = math.ceil(math.log2(2 * self.s + 1))

    def params(self) -> dict[str, object]:
        extra = {"s": self.s, "bucket": self.bucket, "norm": self.norm, "seed": self.seed}
        return {**extra, **super().params()}

    def _values_bound(self, k: int, n: int) -> int:
        return 4 * -(-k // self.bucket) + packed_len(k, self._bits)

    def _norms(self, v: np.ndarray) -> np.ndarray:
        pad = -v.size % self.bucket
        blocks = np.pad(v.astype(np.float64), (0, pad)).reshape(-1, self.bucket)
        if self.norm == "l2":
            return np.sqrt(np.einsum("ij,ij->i", blocks, blocks)).astype(np.float32)
        return np.abs(blocks).max(axis=1).astype(np.float32)

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        norms = self._norms(v)
        per = np.repeat(norms.astype(np.float64), self.bucket)[: v.size]
        safe = np.where(per > 0, per, 1.0)
        r = np.minimum(np.abs(v) / safe * self.s, self.s)
        level = np.floor(r)
        level += rng.random(v.size) < (r - level)
        level = np.minimum(level, self.s).astype(np.int64)
        codes = np.where(v < 0, -level, level) + self.s
        return norms.astype("<f4").tobytes() + pack_codes(codes, self._bits)

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        norms = reader.array("<f4", -(-k // self.bucket))
        codes = unpack_codes(reader.take(packed_len(k, self._bits)), k, self._bits).astype(np.int64)
        if codes.size and codes.max() > 2 * self.s:
            raise CodecError(f"undecodable bytes: qsgd code {codes.max()} > 2s")
        per = np.repeat(norms.astype(np.float64), self.bucket)[:k]
        return ((codes - self.s) / self.s * per).astype(np.float32)
