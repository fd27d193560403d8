"""Per-learner sample streams: in round t learner i observes B fresh samples E_t^i (the
streaming setting of Kamp et al. 2018, section 2), drawn from its own partition.

A learner's stream is its partition reshuffled epoch after epoch and read B at a time, so
within an epoch no sample repeats and small partitions simply cycle. The stream of learner i
is a function of ``(seed, i, parts[i])`` alone: it comes from the child generator
``SeedSequence(seed).spawn(m)[i]`` (which does not depend on m either), and epoch ``e`` is
the argsort of the e-th block of ``len(parts[i])`` uniforms of that generator, so drawing
epochs in chunks of any size yields the same sequence. Hence a (learner, round) maps to the
same samples whatever the order, grouping or device of the calls.

The hot path is one gather from a schedule kept on the device: consecutive chunks of
rounds ``[r, m, B]``, a new chunk appended (rarely) when a later round is asked for. The
chunks grow with the schedule up to ``_CHUNK_ENTRIES`` indices each, and are never copied
into a larger tensor: a growth holds the new chunk only, not the old schedule twice (at
10,000 learners and B=10 a doubling to 256 rounds took ~200 MB at once: old, new and the
fresh draws).
"""

from __future__ import annotations

import bisect
import operator
from typing import Any

import numpy as np
import torch

from netfl.data.datasets import DataError

_TARGET_INITIAL_ENTRIES = 1 << 20  # first schedule chunk: ~4 MiB of int32
_MIN_INITIAL_ROUNDS = 16
_MAX_INITIAL_ROUNDS = 1024
_CHUNK_ENTRIES = 1 << 22  # largest later schedule chunk: 16 MiB of int32 (or 16 rounds)


class SampleStream:
    """Each learner draws B fresh samples per round from its own partition, cycling through
    reshuffled epochs.

    ``parts[i]`` holds learner i's global training-set indices (as from ``partition``);
    ``batch_size`` is B. The schedule holds ``m * B`` indices (int32 where they fit) per
    round up to the furthest round asked, plus at most one chunk ahead.
    """

    def __init__(
        self,
        parts: list[np.ndarray],
        batch_size: int,
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise DataError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        if batch_size < 1:
            raise DataError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
        self._parts: list[np.ndarray] = _index_arrays(parts)
        self._np_dtype = self._parts[0].dtype
        self._dtype = torch.int32 if self._np_dtype == np.int32 else torch.int64
        self.m: int = len(self._parts)
        self.batch_size: int = int(batch_size)
        self.device = torch.device(device)
        children = np.random.SeedSequence(int(seed)).spawn(self.m)
        self._rngs = [np.random.default_rng(child) for child in children]
        # Drawn but not yet scheduled stream entries of each learner (a partial epoch).
        self._tails: list[np.ndarray] = [np.empty(0, dtype=self._np_dtype)] * self.m
        # chunk[t - start, i] = the B indices learner i observes in round t, for the chunk's
        # rounds [start, start + len(chunk)); round-major so that the lockstep path reads
        # one contiguous block.
        self._chunks: list[torch.Tensor] = []
        self._starts: list[int] = []  # first round of each chunk
        self._rounds = 0  # rounds scheduled (the chunks' total)
        self._initial_rounds = int(np.clip(
            _TARGET_INITIAL_ENTRIES // (self.m * self.batch_size),
            _MIN_INITIAL_ROUNDS, _MAX_INITIAL_ROUNDS,
        ))

    @property
    def sizes(self) -> list[int]:
        """Partition size of each learner (samples per epoch)."""
        return [len(p) for p in self._parts]

    @property
    def rounds_cached(self) -> int:
        """Rounds currently held in the schedule (grows on demand)."""
        return self._rounds

    def indices(self, learners: torch.Tensor | Any, rounds: torch.Tensor | Any) -> torch.Tensor:
        """int64 ``[k, B]``: row j holds the global training-set indices that learner
        ``learners[j]`` observes in its round ``rounds[j]`` (0-based). ``rounds`` may also be
        a scalar shared by all learners.
        """
        learners = torch.as_tensor(learners, device=self.device)
        rounds = torch.as_tensor(rounds, device=self.device)
        if learners.is_floating_point() or rounds.is_floating_point():
            raise DataError("learners and rounds must be integer tensors")
        learners, rounds = learners.to(torch.int64), rounds.to(torch.int64)
        if rounds.dim() == 0:
            rounds = rounds.expand(learners.shape)
        if learners.dim() != 1 or rounds.shape != learners.shape:
            raise DataError(
                f"learners and rounds must be 1-D of equal length, got "
                f"{list(learners.shape)} and {list(rounds.shape)}"
            )
        if learners.numel() == 0:
            return torch.empty((0, self.batch_size), dtype=torch.int64, device=self.device)
        lo_l, hi_l, lo_r, hi_r = torch.stack(
            [learners.min(), learners.max(), rounds.min(), rounds.max()]
        ).tolist()
        if lo_l < 0 or hi_l >= self.m:
            raise DataError(f"learners: ids must lie in [0, {self.m}), got {lo_l}..{hi_l}")
        if lo_r < 0:
            raise DataError(f"rounds: must be >= 0, got {lo_r}")
        self._ensure(hi_r + 1)
        first, last = self._chunk_of(lo_r), self._chunk_of(hi_r)
        if first == last:  # the usual case: one gather
            return self._gather(first, learners, rounds)
        out = torch.empty((learners.numel(), self.batch_size), dtype=torch.int64,
                          device=self.device)
        for j in range(first, last + 1):  # a few chunks, never a loop over learners
            start = self._starts[j]
            mask = (rounds >= start) & (rounds < start + self._chunks[j].shape[0])
            out[mask] = self._gather(j, learners[mask], rounds[mask])
        return out

    def _chunk_of(self, round: int) -> int:
        return bisect.bisect_right(self._starts, round) - 1

    def _gather(self, j: int, learners: torch.Tensor, rounds: torch.Tensor) -> torch.Tensor:
        rows = self._chunks[j].view(-1, self.batch_size)
        at = (rounds - self._starts[j]) * self.m + learners
        return rows.index_select(0, at).to(torch.int64)

    def indices_all(self, round: int) -> torch.Tensor:
        """int64 ``[m, B]``: what every learner observes in ``round``; the lockstep fast path."""
        round = operator.index(round)
        if round < 0:
            raise DataError(f"round: must be >= 0, got {round}")
        if round >= self._rounds:
            self._ensure(round + 1)
        j = self._chunk_of(round)
        return self._chunks[j][round - self._starts[j]].to(torch.int64, copy=True)

    def _ensure(self, rounds: int) -> None:
        """Schedule at least ``rounds`` rounds: one new chunk of at least what is missing, as
        long as the schedule so far (so growth is rare) up to ``_CHUNK_ENTRIES`` indices
        or 16 rounds, whichever is more."""
        have = self._rounds
        if rounds <= have:
            return
        b = self.batch_size
        # at least 16 rounds a chunk: each growth draws every learner's stream (a loop)
        cap = max(_MIN_INITIAL_ROUNDS, _CHUNK_ENTRIES // (self.m * b))
        count = max(rounds - have, self._initial_rounds if not have else min(have, cap))
        fresh = np.empty((self.m, count * b), dtype=self._np_dtype)
        self._fill(fresh)
        fresh_t = torch.from_numpy(fresh).view(self.m, count, b)
        chunk = torch.empty((count, self.m, b), dtype=self._dtype, device=self.device)
        chunk.copy_(fresh_t.permute(1, 0, 2))
        self._chunks.append(chunk)
        self._starts.append(have)
        self._rounds = have + count

    def _fill(self, out: np.ndarray) -> None:
        """Write the next ``out.shape[1]`` stream entries of every learner into ``out``."""
        for i in range(self.m):  # rare: the only loop over learners
            self._draw(i, out[i])

    def _draw(self, i: int, out: np.ndarray) -> None:
        """Write the next ``len(out)`` entries of learner i's stream into ``out``."""
        part, tail = self._parts[i], self._tails[i]
        count, n, have = len(out), len(part), len(self._tails[i])
        if count <= have:
            out[:] = tail[:count]
            self._tails[i] = tail[count:]
            return
        out[:have] = tail
        if n == 1:  # a single sample has one ordering; no draws needed
            out[have:] = part[0]
            self._tails[i] = tail[:0]
            return
        missing = count - have
        keys = self._rngs[i].random((-(-missing // n), n))
        # The sort kind depends on n only, so the order is reproducible; stable is faster for
        # tiny rows, quicksort for longer ones.
        fresh = part[keys.argsort(axis=1, kind="stable" if n <= 16 else "quicksort")].ravel()
        out[have:] = fresh[:missing]
        self._tails[i] = fresh[missing:].copy()


def _index_arrays(parts: list[Any]) -> list[np.ndarray]:
    """Validated copies of the partitions, int32 where every index fits (halves the schedule).

    A partition object given for several learners (``shared``: one array for all) is
    validated and copied once, and those learners share the read-only copy: streams only
    read their partitions, and 10,000 copies of a 1,438-sample set would cost 57 MB."""
    if len(parts) == 0:
        raise DataError("parts: no learners")
    distinct: dict[int, int] = {}  # id of a given object -> its position in `arrays`
    arrays: list[np.ndarray] = []
    which = np.empty(len(parts), dtype=np.int64)
    for i, part in enumerate(parts):
        key = id(part)
        if key not in distinct:
            if hasattr(part, "detach"):  # a torch tensor
                part = part.detach().cpu().numpy()
            arr = np.asarray(part)
            if arr.ndim != 1 or arr.size == 0:
                raise DataError(f"parts[{i}]: learner {i} has an empty or non-1-D partition")
            distinct[key] = len(arrays)
            arrays.append(arr)
        which[i] = distinct[key]
    flat = np.concatenate(arrays)
    if not np.issubdtype(flat.dtype, np.integer) or flat.min() < 0:
        raise DataError("parts: indices must be non-negative integers")
    dtype = np.int32 if flat.max() < 2**31 else np.int64
    copies = np.split(flat.astype(dtype), np.cumsum([len(a) for a in arrays])[:-1])
    for copy in copies:
        copy.flags.writeable = False
    return [copies[j] for j in which.tolist()]
