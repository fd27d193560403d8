"""When each learner is online: a two-state Markov chain, a fixed schedule or a trace.

Real clients come and go (FedScale replays when 136k phones were charging and
idle; FLGo models availability as a two-state chain). An offline learner
neither trains nor sends nor receives (``Simulation.set_online``): the engine
stops its steps, the network loses its messages and the protocol is told.

- ``markov``: each learner alternates online and offline periods drawn
  independently from exponentials with means ``mean_online`` and
  ``mean_offline`` (or ``offline_fraction`` f with ``mean_offline``: then
  ``mean_online = mean_offline (1 - f) / f``, so a fraction f is offline at any
  time). Each learner starts in its stationary state (offline with probability
  ``mean_offline / (mean_online + mean_offline)``).
- ``schedule``: windows ``{learners, at, for}`` in which the listed learners are
  offline; overlapping windows nest (a learner is online when no window holds it).
- ``trace``: online intervals per learner from a CSV file (``learner, start_s,
  end_s``, optional ``period_s``), FedScale's layout converted by
  ``tools/convert_fedscale_trace.py``. With ``wrap`` the trace repeats with its
  period (a learner's ``period_s``, else the file's last ``end_s``), as FedScale
  wraps time modulo a client's ``finish_time``. Learners map to trace clients by
  sorted id (learner i takes the i-th client, cycling when the trace has fewer)
  or, with ``assign: random``, by a seeded draw.

Every change is one heap entry; learners changing at the same instant change in
one call. Nothing here runs once the run has nothing left to do (``quiet``).
Hand-written because no library models per-client availability over a SimPy
clock; the draws come from the availability seed only.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from netfl.sim.instant import starting
from netfl.sim.traces import csv_rows, pick

_EPS = 1e-12


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and line."""


@dataclass
class Intervals:
    """Online intervals of one learner: sorted, disjoint ``[start, end)`` within a period."""

    starts: np.ndarray
    ends: np.ndarray
    period: float | None  # None: no wrap (offline after the last interval)
    edges: np.ndarray = field(init=False, repr=False)  # where the state may change

    def __post_init__(self) -> None:
        edges = np.unique(np.concatenate([self.starts, self.ends]))
        edges = edges[np.isfinite(edges)]
        self.edges = edges if self.period is None else edges[edges <= self.period]

    def state_at(self, t: float) -> bool:
        t = self._fold(t)
        i = np.searchsorted(self.starts, t, side="right") - 1
        return bool(i >= 0 and t < self.ends[i])

    def _fold(self, t: float) -> float:
        if self.period is None:
            return t
        return t - math.floor(t / self.period + _EPS) * self.period

    def next_change(self, t: float) -> float:
        """The first instant after ``t`` at which the state changes (inf: never)."""
        edges = self.edges
        if self.period is None:
            candidates = edges[edges > t + _EPS]
        else:
            base = math.floor(t / self.period + _EPS) * self.period
            candidates = np.concatenate([base + edges, base + self.period + edges])
            candidates = candidates[candidates > t + _EPS]
        now = self.state_at(t)
        for c in candidates.tolist():
            if self.state_at(c) != now:
                return c
        return math.inf


def read_trace(path: str | Path) -> dict[int, tuple[list[tuple[float, float]], float | None]]:
    """Online intervals per trace client from ``learner,start_s,end_s[,period_s]`` rows."""
    path = Path(path)
    out: dict[int, tuple[list[tuple[float, float]], float | None]] = {}
    rows = csv_rows(path, ("learner", "start_s", "end_s"), "learner, start_s, end_s[, period_s]",
                    "availability trace", TraceError)
    for line, row in rows:
        try:
            client = int(row["learner"])
            start, end = float(row["start_s"]), float(row["end_s"])
            period = float(row["period_s"]) if row.get("period_s") not in (None, "") else None
        except (TypeError, ValueError):
            raise TraceError(f"{path}, line {line}: learner must be an integer and "
                             "start_s, end_s, period_s numbers") from None
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise TraceError(f"{path}, line {line}: need 0 <= start_s < end_s, "
                             f"got {start}, {end}")
        if period is not None and not (math.isfinite(period) and period >= end):
            raise TraceError(f"{path}, line {line}: period_s must be >= end_s, got {period}")
        spans, old = out.get(client, ([], None))
        spans.append((start, end))
        out[client] = (spans, period if period is not None else old)
    if not out:
        raise TraceError(f"{path}: no intervals")
    return out


def merge(spans: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint intervals covering the union of ``spans``."""
    starts, ends = [], []
    for start, end in sorted(spans):
        if starts and start <= ends[-1] + _EPS:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return np.array(starts), np.array(ends)


def trace_intervals(trace: dict[int, tuple[list[tuple[float, float]], float | None]], m: int,
                    *, wrap: bool, assign: str, rng: np.random.Generator) -> list[Intervals]:
    """One learner's intervals per learner, mapped from the trace's clients."""
    clients = sorted(trace)
    picks = pick(len(clients), m, assign, rng)
    last = max(end for spans, _ in trace.values() for _, end in spans)
    out = []
    for k in picks.tolist():
        spans, period = trace[clients[k]]
        starts, ends = merge(spans)
        out.append(Intervals(starts, ends, (period or last) if wrap else None))
    return out


class Availability:
    """Drives ``set_online(learners, online)`` over simulated time from one of the models.

    ``initial`` is each learner's state at time 0; ``next_change(learners, now, online)``
    gives, for learners that just entered state ``online``, the instant they leave it.
    Driven by event callbacks, not a generator process, so that a checkpoint can pickle
    it with the SimPy queue (netfl.checkpoint); the events and their order are those a
    process would have."""

    def __init__(self, env: simpy.Environment, m: int, initial: np.ndarray,
                 next_change: Callable[[np.ndarray, float, np.ndarray], np.ndarray],
                 set_online: Callable[[np.ndarray, bool], None]) -> None:
        self.env, self.m = env, m
        self.state = np.asarray(initial, dtype=bool).copy()
        self.next_change = next_change
        self.set_online = set_online
        self.quiet: simpy.Event | None = None
        self.changes = 0
        self._heap: list[tuple[float, int]] = []

    def start(self) -> None:
        everyone = np.arange(self.m)
        self._push(everyone, 0.0)
        starting(self.env, self._begin)

    def _push(self, learners: np.ndarray, now: float) -> None:
        times = self.next_change(learners, now, self.state[learners])
        for t, i in zip(times.tolist(), learners.tolist()):
            if t < math.inf:
                heapq.heappush(self._heap, (t, i))

    def _begin(self, _event: simpy.Event) -> None:
        offline = np.flatnonzero(~self.state)
        if len(offline):
            self.set_online(offline, False)
        self._next()

    def _next(self) -> None:
        """Wait for the heap's next change (or change now if it is due)."""
        heap = self._heap
        if not heap:
            return
        when = heap[0][0]
        if when > self.env.now:
            wait = self.env.timeout(when - self.env.now)
            event = wait if self.quiet is None else self.env.any_of([wait, self.quiet])
            event.callbacks.append(self._fire)
            return
        self._fire(None)

    def _fire(self, _event: simpy.Event | None) -> None:
        if self.quiet is not None and self.quiet.triggered:
            return
        self._change()

    def _change(self) -> None:
        heap = self._heap
        due = []
        while heap and heap[0][0] <= self.env.now + _EPS:
            due.append(heapq.heappop(heap)[1])
        learners = np.array(sorted(due), dtype=np.int64)
        self.state[learners] = ~self.state[learners]
        self.changes += len(learners)
        for online in (False, True):
            moved = learners[self.state[learners] == online]
            if len(moved):
                self.set_online(moved, online)
        self._push(learners, self.env.now)
        self._next()


@dataclass
class MarkovChanges:
    """Exponential sojourns with means by state (one vectorized draw per change batch)."""

    mean_online: float
    mean_offline: float
    rng: np.random.Generator

    def __call__(self, learners: np.ndarray, now: float, online: np.ndarray) -> np.ndarray:
        means = np.where(online, self.mean_online, self.mean_offline)
        return now + self.rng.exponential(1.0, len(learners)) * means


@dataclass
class IntervalChanges:
    """The next change of each learner's online intervals."""

    intervals: list[Intervals]

    def __call__(self, learners: np.ndarray, now: float, online: np.ndarray) -> np.ndarray:
        return np.array([self.intervals[i].next_change(now) for i in learners.tolist()])


def markov(mean_online: float, mean_offline: float, m: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, Callable[[np.ndarray, float, np.ndarray], np.ndarray]]:
    """Stationary start and exponential sojourns."""
    initial = rng.random(m) >= mean_offline / (mean_online + mean_offline)
    return initial, MarkovChanges(mean_online, mean_offline, rng)


def windows(entries: list[dict[str, Any]], m: int
            ) -> tuple[np.ndarray, Callable[[np.ndarray, float, np.ndarray], np.ndarray]]:
    """Offline windows as per-learner intervals of being online, within [0, inf)."""
    spans: list[list[tuple[float, float]]] = [[] for _ in range(m)]
    for entry in entries:
        end = entry["at"] + entry["for"] if entry.get("for") is not None else math.inf
        for learner in entry["learners"]:
            spans[learner].append((entry["at"], end))
    intervals = []
    for learner_spans in spans:
        off_starts, off_ends = merge(learner_spans) if learner_spans else (np.array([]),) * 2
        # online = complement of the offline windows
        starts = np.concatenate([[0.0], off_ends])
        ends = np.concatenate([off_starts, [math.inf]])
        keep = ends > starts + _EPS
        intervals.append(Intervals(starts[keep], ends[keep], None))
    return from_intervals(intervals)


def from_intervals(intervals: list[Intervals]
                   ) -> tuple[np.ndarray, Callable[[np.ndarray, float, np.ndarray], np.ndarray]]:
    initial = np.array([iv.state_at(0.0) for iv in intervals], dtype=bool)
    return initial, IntervalChanges(intervals)
