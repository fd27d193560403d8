"""Float formats: none (exact float32), topk (float32 values), fp16, bf16, and the
minifloats of CO3 / seed 003's "8fp/4fp": fp8 = [1 sign, 5 exponent, 2 mantissa] with
bias 15 (247 finite values) and fp4 = [1, 2, 1] with bias 1 (11 values).

Wire formats (values block, after varint k and positions, see sparse.py):
  topk: k float32 | fp16: k IEEE half | bf16: k bfloat16 (round to nearest even)
  fp8 / fp4: scale f32, then k codes of 8 / 4 bits, each the index of the nearest value in
  the sorted table of representable values; decoded value = table[code] * scale, where
  scale maps the largest kept magnitude to the largest representable value.
fp16/bf16/fp8/fp4 are dense unless given k or budget_bits; then they keep the top-k entries
with k chosen to meet the rate. fp16/bf16 saturate instead of overflowing to Inf.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from netfl.compression.bits import Reader, f32, pack_codes, packed_len, unpack_codes
from netfl.compression.codec import Codec
from netfl.compression.errors import CodecError
from netfl.compression.sparse import SparseCodec


class NoneCodec(Codec):
    """Exact float32 (the full model): the reference every codec is compared with."""

    name = "none"
    lossy = False
    allows_nonfinite = True

    def _min_payload_bits(self, n: int) -> int:
        return 32 * n

    def _encode_payload(self, x: np.ndarray, budget: int | None, rng: np.random.Generator) -> bytes:
        return x.astype("<f4", copy=False).tobytes()

    def _decode_payload(self, reader: Reader, n: int) -> np.ndarray:
        return reader.array("<f4", n)


class TopK(SparseCodec):
    """Top-k by magnitude, values as float32 (Stich et al. / GRACE topk)."""

    name = "topk"

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.k is None and self.budget_bits is None:
            raise CodecError("topk: give k (count or fraction) or budget_bits")

    def _values_bound(self, k: int, n: int) -> int:
        return 4 * k

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        return v.astype("<f4", copy=False).tobytes()

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        return reader.array("<f4", k)


FP16_MAX = 65504.0
BF16_MAX = float(np.array([0x7F7F0000], dtype=np.uint32).view(np.float32)[0])


class Fp16(SparseCodec):
    """IEEE half precision (PyTorch DDP's fp16 hook), saturating at +-65504."""

    name = "fp16"

    def _values_bound(self, k: int, n: int) -> int:
        return 2 * k

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        return np.clip(v, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        return reader.array("<f2", k).astype(np.float32)


class Bf16(SparseCodec):
    """bfloat16: float32's exponent with 7 mantissa bits, so no overflow worries."""

    name = "bf16"

    def _values_bound(self, k: int, n: int) -> int:
        return 2 * k

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        bits = np.clip(v, -BF16_MAX, BF16_MAX).astype(np.float32).view(np.uint32)
        rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16  # round half to even
        return rounded.astype("<u2").tobytes()

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        return (reader.array("<u2", k).astype(np.uint32) << 16).view(np.float32)


@cache
def minifloat_table(exponent_bits: int, mantissa_bits: int) -> np.ndarray:
    """Sorted finite values of an IEEE-like minifloat: bias 2**(e-1)-1, subnormals, the top
    exponent reserved for Inf/NaN, a single zero. (5, 2) gives 247 values, (2, 1) gives 11."""
    bias = 2 ** (exponent_bits - 1) - 1
    frac = np.arange(2**mantissa_bits) / 2**mantissa_bits
    positive = [frac * 2.0 ** (1 - bias)]  # subnormals (and zero)
    for e in range(1, 2**exponent_bits - 1):
        positive.append((1.0 + frac) * 2.0 ** (e - bias))
    pos = np.unique(np.concatenate(positive))
    return np.concatenate([-pos[:0:-1], pos])


def round_minifloat(t: np.ndarray, exponent_bits: int, mantissa_bits: int) -> np.ndarray:
    """Index in minifloat_table of the value nearest to each t (round half to even).

    Arithmetic, not a table search: for IEEE-like formats the bit pattern (exponent,
    mantissa) of a non-negative value is monotone in it and counts the representable values
    below it. Normal range: round float64's 52-bit mantissa to `mantissa_bits` on the integer
    bits (a carry moves to the next binade by itself); subnormal range: a fixed quantum."""
    bias = 2 ** (exponent_bits - 1) - 1
    emin = 1 - bias
    top = (2**exponent_bits - 1) * 2**mantissa_bits - 1  # largest finite pattern
    mag = np.abs(t.astype(np.float64))
    bits = mag.view(np.uint64)
    shift = np.uint64(52 - mantissa_bits)
    half = np.uint64((1 << (52 - mantissa_bits - 1)) - 1)
    rounded = (bits + half + ((bits >> shift) & np.uint64(1))) >> shift
    pattern = rounded.astype(np.int64) - ((1023 + emin - 1) << mantissa_bits)
    small = mag < 2.0**emin
    pattern[small] = np.rint(mag[small] * 2.0 ** (mantissa_bits - emin)).astype(np.int64)
    np.clip(pattern, 0, top, out=pattern)
    return np.where(t < 0, top - pattern, top + pattern)


class _Minifloat(SparseCodec):
    exponent_bits: int
    mantissa_bits: int

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._table = minifloat_table(self.exponent_bits, self.mantissa_bits)
        self._bits = int(np.ceil(np.log2(self._table.size)))

    def _values_bound(self, k: int, n: int) -> int:
        return 4 + packed_len(k, self._bits)

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        peak = float(np.abs(v).max())
        scale = np.float32(peak / self._table[-1]) if peak > 0 else np.float32(1.0)
        if scale == 0:  # peak below float32's subnormal range after division
            scale = np.float32(np.finfo(np.float32).smallest_subnormal)
        codes = round_minifloat(v / np.float64(scale), self.exponent_bits, self.mantissa_bits)
        return f32(scale) + pack_codes(codes, self._bits)

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        scale = reader.f32()
        codes = unpack_codes(reader.take(packed_len(k, self._bits)), k, self._bits)
        if codes.size and codes.max() >= self._table.size:
            raise CodecError(f"undecodable bytes: {self.name} code {codes.max()}")
        return (self._table * np.float64(scale)).astype(np.float32)[codes]


class Fp8(_Minifloat):
    """8-bit float [1, 5, 2], bias 15, 247 values, per-tensor scale (CO3's layout)."""

    name = "fp8"
    exponent_bits, mantissa_bits = 5, 2


class Fp4(_Minifloat):
    """4-bit float [1, 2, 1], 11 values {0, +-0.5, +-1, +-1.5, +-2, +-3} times a scale."""

    name = "fp4"
    exponent_bits, mantissa_bits = 2, 1
