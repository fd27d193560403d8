"""When the target distribution changes: a drift schedule over 0-based rounds.

All learners share one time-varying distribution P_t (Kamp et al. 2018, section 5); the
concept in force is a pure function of the round, so a straggler that is still in round t
sees the concept of round t, whatever the other learners do.

Concepts are small integers. Concept 0 is in force from round 0 until the first drift. The
k-th drift (k = 1, 2, ...) at round r_k switches to

- ``sudden``: the fresh concept k, in full from round r_k on;
- ``gradual``: the fresh concept k, phased in over ``width`` rounds: in round r_k + j
  (j = 0 .. width-1) each sample comes from the new concept with probability
  (j + 1) / (width + 1) and from the previous concept otherwise; from round r_k + width on
  only the new concept is left. A drift that starts while an earlier one is still phasing in
  cuts it short: the mixture is always between the two latest concepts;
- ``recurring``: concept k mod ``pool``, i.e. the schedule cycles through a fixed pool of K
  concepts (K = 2: A, B, A, B, ...), each return bringing back the identical concept.

Drift rounds are listed (``at``) or random (``random``): each round r >= 1 drifts
independently with probability p, decided by the r-th uniform of
``default_rng(SeedSequence(seed))``, drawn in fixed blocks as far as asked. The set of drift
rounds is therefore a pure function of (seed, p), whatever rounds are asked in whatever
order; a smaller p gives a subset of the drifts of a larger p with the same seed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netfl.data.datasets import DataError

MODES = ("none", "at", "random")
KINDS = ("sudden", "gradual", "recurring")
_BLOCK = 4096  # rounds decided per draw of the random schedule


@dataclass(frozen=True)
class DriftEvent:
    """A drift starting at 0-based ``round``: ``concept_from`` gives way to ``concept_to``."""

    round: int
    kind: str
    concept_from: int
    concept_to: int


class DriftSchedule:
    """Which concept is in force at each round (see the module docstring for the semantics).

    ``mode``: ``none`` (one concept forever), ``at`` (drifts at the listed ``rounds``, each
    >= 1) or ``random`` (each round >= 1 drifts with probability ``p``, seeded by ``seed``).
    ``kind``: ``sudden``, ``gradual`` (phased in over ``width`` rounds) or ``recurring``
    (cycling through ``pool`` concepts). Bad values raise DataError naming the parameter.
    """

    def __init__(
        self,
        mode: str = "none",
        *,
        rounds: Sequence[int] = (),
        p: float = 0.0,
        seed: int = 0,
        kind: str = "sudden",
        width: int = 10,
        pool: int = 2,
    ) -> None:
        if mode not in MODES:
            raise DataError(f"drift.mode: unknown {mode!r}; known: {', '.join(MODES)}")
        if kind not in KINDS:
            raise DataError(f"drift.kind: unknown {kind!r}; known: {', '.join(KINDS)}")
        self.mode = mode
        self.kind = kind
        self.width = _int("drift.width", width, 1)
        self.pool = _int("drift.pool", pool, 2)
        self.seed = _int("drift.seed", seed, 0)
        self.p = 0.0
        self._rng: np.random.Generator | None = None
        self._covered: float = math.inf  # rounds [0, covered) are decided
        self._rounds = np.empty(0, dtype=np.int64)
        if mode == "at":
            self._rounds = _round_list(rounds)
        elif rounds is not None and len(rounds) > 0:
            raise DataError(f"drift.rounds: only used with mode 'at', not {mode!r}")
        if mode == "random":
            ok = not isinstance(p, bool) and isinstance(p, (int, float, np.floating))
            if not ok or not 0.0 <= float(p) <= 1.0:
                raise DataError(f"drift.p: must be a probability in [0, 1], got {p!r}")
            self.p = float(p)
            self._rng = np.random.default_rng(np.random.SeedSequence(self.seed))
            self._covered = 0
        elif p not in (0, 0.0):
            raise DataError(f"drift.p: only used with mode 'random', not {mode!r}")

    # ------------------------------------------------------------- constructors

    @classmethod
    def none(cls) -> DriftSchedule:
        """No drift: concept 0 at every round."""
        return cls("none")

    @classmethod
    def at(cls, rounds: Sequence[int], *, kind: str = "sudden", width: int = 10,
           pool: int = 2) -> DriftSchedule:
        """Drifts at the listed 0-based rounds (each >= 1, no repeats)."""
        return cls("at", rounds=rounds, kind=kind, width=width, pool=pool)

    @classmethod
    def random(cls, p: float, *, seed: int, kind: str = "sudden", width: int = 10,
               pool: int = 2) -> DriftSchedule:
        """Each round >= 1 drifts with probability ``p``; the drift set depends on (seed, p)."""
        return cls("random", p=p, seed=seed, kind=kind, width=width, pool=pool)

    # ------------------------------------------------------------- queries

    def drift_rounds(self, up_to_round: int) -> np.ndarray:
        """Sorted int64 drift rounds r <= ``up_to_round``."""
        up_to = _round("up_to_round", up_to_round)
        self._decide(up_to + 1)
        return self._rounds[: int(np.searchsorted(self._rounds, up_to, side="right"))].copy()

    def num_drifts(self, rnd: int) -> int:
        """Number of drifts that have started at rounds <= ``rnd``."""
        rnd = _round("rnd", rnd)
        self._decide(rnd + 1)
        return int(np.searchsorted(self._rounds, rnd, side="right"))

    def concept_at(self, rnd: int) -> int:
        """The newest concept in force at round ``rnd`` (during a gradual drift, the one
        phasing in; see ``mixture_at`` for the mixing weight)."""
        return self._concept(self.num_drifts(rnd))

    def mixture_at(self, rnd: int) -> tuple[int, int, float]:
        """``(concept_from, concept_to, weight)``: at round ``rnd`` a sample comes from
        ``concept_to`` with probability ``weight`` and from ``concept_from`` otherwise.
        Outside a gradual phase-in, ``concept_from == concept_to`` and ``weight == 1``."""
        n = self.num_drifts(rnd)
        new = self._concept(n)
        if n == 0 or self.kind != "gradual":
            return new, new, 1.0
        since = int(rnd) - int(self._rounds[n - 1])
        if since >= self.width:
            return new, new, 1.0
        return self._concept(n - 1), new, (since + 1) / (self.width + 1)

    def events(self, up_to_round: int) -> list[DriftEvent]:
        """The drifts that started at rounds <= ``up_to_round``, in order."""
        return [
            DriftEvent(int(r), self.kind, self._concept(k), self._concept(k + 1))
            for k, r in enumerate(self.drift_rounds(up_to_round))
        ]

    def __repr__(self) -> str:
        detail = {"none": "", "at": f", rounds={self._rounds.tolist()}",
                  "random": f", p={self.p}, seed={self.seed}"}[self.mode]
        extra = {"gradual": f", width={self.width}", "recurring": f", pool={self.pool}"}
        return f"DriftSchedule({self.mode!r}{detail}, kind={self.kind!r}{extra.get(self.kind, '')})"

    # ------------------------------------------------------------- internals

    def _concept(self, n_drifts: int) -> int:
        return n_drifts % self.pool if self.kind == "recurring" else n_drifts

    def _decide(self, rounds: int) -> None:
        """Decide (in whole blocks, in order) whether each round < ``rounds`` drifts."""
        if rounds <= self._covered:
            return
        assert self._rng is not None
        fresh = []
        while self._covered < rounds:  # one block per draw, so the stream never depends
            start = int(self._covered)  # on how far each request reached
            flags = self._rng.random(_BLOCK) < self.p
            if start == 0:
                flags[0] = False  # round 0 starts with concept 0: nothing to drift from
            fresh.append(np.flatnonzero(flags).astype(np.int64) + start)
            self._covered = start + _BLOCK
        self._rounds = np.concatenate([self._rounds, *fresh])

def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _round(key: str, value: Any) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise DataError(f"{key}: must be an integer round >= 0, got {value!r}") from None
    if value < 0:
        raise DataError(f"{key}: must be an integer round >= 0, got {value!r}")
    return int(value)


def _round_list(rounds: Any) -> np.ndarray:
    values = [_int(f"drift.rounds[{i}]", r, 1) for i, r in enumerate(rounds)]
    if len(set(values)) != len(values):
        raise DataError(f"drift.rounds: repeated round in {values}")
    return np.array(sorted(values), dtype=np.int64)
