"""Sparsify-then-code: the shared skeleton of every codec that keeps k entries of a layer
and codes their values (topk, fp16/bf16/fp8/fp4, uniform, qsgd, tinyscript, m22, randk).

Payload: varint k | positions block (see positions.py) | values block (subclass).

Rate control: with a budget, k starts at the largest count whose worst-case encoded size
fits (`largest_k`, from exact upper bounds of every block), so an encoding never exceeds its
budget; `_fill` then spends the slack the worst case left (real gaps code shorter than the
bound) with a few exact re-encodings. With no k and no budget a codec keeps every entry
(dense) and then sends no positions at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netfl.compression import positions as _positions
from netfl.compression.bits import Reader, varint, varint_len
from netfl.compression.codec import Codec, check_k, resolve_k
from netfl.compression.errors import CodecError


def largest_k(n: int, budget_bytes: int, cost: Callable[[int], int], lo: int = 0) -> int:
    """Largest k in [lo, n] with cost(k) <= budget_bytes, for costs non-decreasing on
    [lo, n) (k = n is checked apart: keeping everything needs no positions). cost(lo) must
    fit: the caller checked the minimum encoding."""
    if cost(n) <= budget_bytes:
        return n
    hi = n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


class SparseCodec(Codec):
    """Keep k entries (top-k by magnitude unless a subclass selects otherwise), code values.

    k: count (int) or fraction (float in (0, 1]) of each layer's entries; with budget_bits
    the codec keeps min(k, largest k that fits).
    """

    #: positions are sent as a bitmap or gaps (False for randk, which sends a seed)
    explicit_positions: bool = True

    def __init__(
        self,
        *,
        k: int | float | None = None,
        budget_bits: int | None = None,
        lossless: str | None = None,
        error_feedback: bool = False,
    ) -> None:
        super().__init__(budget_bits=budget_bits, lossless=lossless, error_feedback=error_feedback)
        self.k = check_k(self.name, k)

    def params(self) -> dict[str, object]:
        return {"k": self.k, **super().params()}

    # ---- value hooks (bytes) ----------------------------------------------------------
    def _values_bound(self, k: int, n: int) -> int:
        """Upper bound, in bytes, of the values block of k kept entries (k >= 1)."""
        raise NotImplementedError

    def _encode_values(self, v: np.ndarray, n: int, rng: np.random.Generator) -> bytes:
        raise NotImplementedError

    def _decode_values(self, reader: Reader, k: int, n: int) -> np.ndarray:
        raise NotImplementedError

    # ---- selection hooks (randk replaces them) ----------------------------------------
    def _select(self, x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, bytes]:
        """Sorted kept positions and their encoded block."""
        if k >= x.size:
            pos = np.arange(x.size, dtype=np.int64)
        else:
            pos = _positions.topk(x, k)
        return pos, _positions.encode(pos, x.size)

    def _positions_bound(self, n: int, k: int) -> int:
        return _positions.bound(n, k)

    def _read_positions(self, reader: Reader, n: int, k: int) -> np.ndarray:
        return _positions.decode(reader, n, k)

    # ---- skeleton ---------------------------------------------------------------------
    def cost_bound(self, n: int, k: int) -> int:
        """Worst-case payload bytes when keeping k of n entries."""
        values = self._values_bound(k, n) if k > 0 else 0
        return varint_len(k) + self._positions_bound(n, k) + values

    def choose_k(self, n: int, budget: int | None) -> int:
        """Entries to keep for a layer of n entries under a payload budget in bits."""
        k = resolve_k(self.k, n)
        if budget is not None:
            k = min(k, largest_k(n, budget // 8, lambda j: self.cost_bound(n, j)))
        return k

    def _min_payload_bits(self, n: int) -> int:
        return 8 * self.cost_bound(n, 0)

    def _encode_payload(self, x: np.ndarray, budget: int | None, rng: np.random.Generator) -> bytes:
        n = x.size
        pos, block = self._select(x, self.choose_k(n, budget), rng)
        if budget is not None:
            pos, block = self._fill(x, budget // 8, pos, block, rng)
        k = pos.size
        if k == 0:
            return varint(0) + block
        values = x if k == n else x[pos]  # all kept: no gather
        return varint(k) + block + self._encode_values(values, n, rng)

    def _fill(
        self, x: np.ndarray, room: int, pos: np.ndarray, block: bytes, rng: np.random.Generator
    ) -> tuple[np.ndarray, bytes]:
        """Spend what the worst-case position bound left over. Real gaps code shorter than
        bound() assumes; positions.superset_bound gives a valid bound for every larger top-k
        set from the gaps of this one. Each re-selection closes most of the remaining gap;
        it stops once less than 0.2% of the budget is left (at most three)."""
        n = x.size
        if not self.explicit_positions:
            return pos, block
        mag, nnz = np.abs(x), int(np.count_nonzero(x))
        for _ in range(3):
            k = pos.size
            used = varint_len(k) + len(block) + self._values_bound(k, n)
            if k == 0 or k >= min(n, nnz) or room - used < max(16, room // 500):
                break
            position_cost, bs = _positions.superset_bound(pos, n)

            def cost(j: int, position_cost=position_cost) -> int:
                return varint_len(j) + position_cost(j) + self._values_bound(j, n)

            j = largest_k(n, room, cost, lo=k)
            if j <= k:
                break
            more = np.arange(n, dtype=np.int64) if j >= n else _positions.topk(x, j, mag, nnz)
            if more.size <= k:
                break
            more_block = _positions.encode(more, n, extra_b=bs)
            if varint_len(more.size) + len(more_block) + self._values_bound(more.size, n) > room:
                break  # cannot happen (superset_bound is a bound); keep the valid set
            pos, block = more, more_block
        return pos, block

    def _decode_payload(self, reader: Reader, n: int) -> np.ndarray:
        # n <= MAX_ENTRIES (read_shape); every block that k sizes is checked against the
        # payload before it is allocated, and the dense output only once the whole payload
        # parsed with no trailing bytes, so corrupt bytes cost at most the claimed layer.
        k = reader.varint()
        if k > n:
            raise CodecError(f"undecodable bytes: {k} kept entries of {n}")
        if k == n:
            return self._decode_values(reader, k, n) if k else np.zeros(0, dtype=np.float32)
        pos = self._read_positions(reader, n, k)
        values = self._decode_values(reader, k, n) if k else None
        reader.finish()
        out = np.zeros(n, dtype=np.float32)
        if k:
            out[pos] = values
        return out
