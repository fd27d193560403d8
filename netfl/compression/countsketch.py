"""Count sketch (Charikar et al.; FetchSGD, Rothchild et al. 2020): rows x cols float32
counters, entry i added with sign s_j(i) to column h_j(i) of each row j. The decoder
estimates every entry as the median over rows of s_j(i) * S[j, h_j(i)] and keeps the top-k
estimates ("unsketch"), zero elsewhere.

The hashes are a pure function of (seed, rows, cols, n), shared by every learner of a run,
so sketches stay mergeable (the sum of sketches is the sketch of the sum); they are cached.
Wire format (payload): varint cols | rows*cols float32, row-major. With budget_bits, cols is
the largest count that fits (at most the number of entries). FetchSGD's second round trip
for exact top-k values is not modelled: the decoder returns the sketch estimates.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from netfl.compression.bits import Reader, varint, varint_len
from netfl.compression.codec import Codec, check_int, check_k, resolve_k
from netfl.compression.errors import CodecError

MAX_COLS = 2**32


CHUNK = 1 << 18  # entries per pass: bounds every temporary (a multiple of 4, see Hashes)
CACHED = 1 << 21  # rows * n up to this: the hashes are kept as whole arrays (<= 26 MB)


class Hashes:
    """The hashes of one (seed, rows, cols, n), handed out a chunk of entries at a time.

    They are the draws ``rng.integers(0, cols, (rows, n), int64)`` then ``rng.integers(0, 2,
    (rows, n), int8)`` of ``default_rng([seed, rows, cols, n])``, as when they were
    materialised whole. Up to ``CACHED`` entries they still are; above, the generator's
    state is recorded at every chunk's start in one pass and a chunk is drawn again on
    demand, so memory stays O(CHUNK) whatever n. Drawing in pieces gives the same values:
    bounded int64 draws take one 32-bit word each in sequence, and int8 draws four per
    word from a buffer that restarts with each call, hence chunks of a multiple of 4.
    """

    def __init__(self, seed: int, rows: int, cols: int, n: int, chunk: int = CHUNK,
                 cached: int = CACHED) -> None:
        self.rows, self.cols, self.n, self.chunk = rows, cols, n, chunk
        rng = np.random.default_rng([seed, rows, cols, n])
        self.whole: tuple[np.ndarray, np.ndarray] | None = None
        if rows * n <= cached:
            buckets = rng.integers(0, cols, size=(rows, n), dtype=np.int64)
            signs = (rng.integers(0, 2, size=(rows, n), dtype=np.int8) * 2 - 1).astype(np.float32)
            buckets.setflags(write=False)
            signs.setflags(write=False)
            self.whole = buckets, signs
            return
        self._rng = rng
        state = rng.bit_generator
        self._bucket_states: list[list[dict]] = []
        for _ in range(rows):
            row = []
            for a in range(0, n, chunk):
                row.append(state.state)
                rng.integers(0, cols, size=min(chunk, n - a), dtype=np.int64)
            self._bucket_states.append(row)
        self._sign_states = []
        for f in range(0, rows * n, chunk):
            self._sign_states.append(state.state)
            rng.integers(0, 2, size=min(chunk, rows * n - f), dtype=np.int8)

    def spans(self, whole: bool = False) -> list[tuple[int, int]]:
        """Chunks of entries [a, b); ``whole``: one span where the hashes are cached."""
        if whole and self.whole is not None:
            return [(0, self.n)]
        return [(a, min(self.n, a + self.chunk)) for a in range(0, self.n, self.chunk)]

    def row(self, j: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(buckets int64, signs float32) of row j for entries [a, b), a span of ``spans``."""
        if self.whole is not None:
            return self.whole[0][j, a:b], self.whole[1][j, a:b]
        self._rng.bit_generator.state = self._bucket_states[j][a // self.chunk]
        buckets = self._rng.integers(0, self.cols, size=b - a, dtype=np.int64)
        return buckets, self._signs(j * self.n + a, j * self.n + b)

    def _signs(self, start: int, stop: int) -> np.ndarray:
        """Signs of flat entries [start, stop) of the row-major (rows, n) sign draws."""
        total, out, pieces = self.rows * self.n, [], range(start // self.chunk * self.chunk,
                                                           stop, self.chunk)
        for f in pieces:
            self._rng.bit_generator.state = self._sign_states[f // self.chunk]
            drawn = self._rng.integers(0, 2, size=min(self.chunk, total - f), dtype=np.int8)
            out.append(drawn[max(start - f, 0) : stop - f])
        bits = out[0] if len(out) == 1 else np.concatenate(out)
        return (bits * 2 - 1).astype(np.float32)


@lru_cache(maxsize=32)
def hashes(seed: int, rows: int, cols: int, n: int) -> Hashes:
    """One layer size's hashes, shared by every learner of a run (cached: small ones are
    arrays, large ones a few generator states)."""
    return Hashes(seed, rows, cols, n)


def median_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Elementwise median of a few equal-length arrays by odd-even transposition sort:
    O(rows^2) vectorised min/max passes beat np.median(axis=0) several times on the
    (5, n) stacks FetchSGD uses."""
    m = len(rows)
    if m > 15:
        return np.median(np.stack(rows), axis=0).astype(rows[0].dtype)
    rows = [r.copy() for r in rows]
    for step in range(m):
        for i in range(step % 2, m - 1, 2):
            low = np.minimum(rows[i], rows[i + 1])
            np.maximum(rows[i], rows[i + 1], out=rows[i + 1])
            rows[i] = low
    if m % 2:
        return rows[m // 2]
    return ((rows[m // 2 - 1] + rows[m // 2]) / 2).astype(rows[0].dtype)


class CountSketch(Codec):
    """FetchSGD-style count sketch with `rows` rows; k: entries to recover (count or
    fraction of the layer; default cols // 10, which measured best or near best on
    Gaussian, Laplace, Student-t and sparse layers at 2% to 30% of the layer in columns)."""

    name = "countsketch"

    def __init__(
        self,
        *,
        rows: int = 5,
        cols: int | None = None,
        k: int | float | None = None,
        seed: int = 0,
        budget_bits: int | None = None,
        lossless: str | None = None,
        error_feedback: bool = False,
    ) -> None:
        super().__init__(budget_bits=budget_bits, lossless=lossless, error_feedback=error_feedback)
        self.rows = check_int(self.name, "rows", rows, 1, 255)
        self.cols = None if cols is None else check_int(self.name, "cols", cols, 1, MAX_COLS)
        if self.cols is None and self.budget_bits is None:
            raise CodecError("countsketch: give cols or budget_bits")
        self.k = check_k(self.name, k)
        self.seed = check_int(self.name, "seed", seed, 0)

    def params(self) -> dict[str, object]:
        extra = {"rows": self.rows, "cols": self.cols, "k": self.k, "seed": self.seed}
        return {**extra, **super().params()}

    def _min_payload_bits(self, n: int) -> int:
        return 8 * (1 + 4 * self.rows)

    def choose_cols(self, n: int, budget: int | None) -> int:
        cols = self.cols if self.cols is not None else MAX_COLS
        cols = min(cols, max(1, n))
        if budget is not None:
            room = budget // 8
            fit = (room - 1) // (4 * self.rows)
            while fit > 1 and varint_len(fit) + 4 * self.rows * fit > room:
                fit -= 1
            cols = min(cols, max(1, fit))
        return cols

    def _encode_payload(self, x: np.ndarray, budget: int | None, rng: np.random.Generator) -> bytes:
        n = x.size
        cols = self.choose_cols(n, budget)
        sketch = np.zeros((self.rows, cols), dtype=np.float32)
        if n:
            h = hashes(self.seed, self.rows, cols, n)
            for j in range(self.rows):
                total = np.zeros(cols)
                for a, b in h.spans(whole=True):  # one span when cached: as it always was
                    buckets, signs = h.row(j, a, b)
                    total += np.bincount(buckets, weights=signs * x[a:b], minlength=cols)
                sketch[j] = total
        return varint(cols) + sketch.astype("<f4").tobytes()

    def _decode_payload(self, reader: Reader, n: int) -> np.ndarray:
        cols = reader.varint()
        if not 1 <= cols <= MAX_COLS:
            raise CodecError(f"undecodable bytes: countsketch with {cols} columns")
        sketch = reader.array("<f4", self.rows * cols).reshape(self.rows, cols)
        # the hashes take rows * n entries whatever the payload: refuse trailing bytes first
        reader.finish()
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        # Bounded memory: the estimate is the only n-sized float array; rows are gathered,
        # signed in place and median-reduced a chunk of entries at a time.
        h = hashes(self.seed, self.rows, cols, n)
        estimate = np.empty(n, dtype=np.float32)
        for a, b in h.spans():
            rows = []
            for j in range(self.rows):
                buckets, signs = h.row(j, a, b)
                value = sketch[j].take(buckets)
                value *= signs
                rows.append(value)
            estimate[a:b] = median_rows(rows)
        k = resolve_k(self.k, n) if self.k is not None else min(n, max(1, cols // 10))
        if 0 < k < n:  # zero all but the k largest magnitudes, in place
            drop = np.argpartition(np.abs(estimate), n - k)[: n - k]
            estimate[drop] = 0
        elif k <= 0:
            estimate[:] = 0
        return estimate
