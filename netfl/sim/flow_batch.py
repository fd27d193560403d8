"""The flow model (netfl.sim.flow) for one batch of messages sent at one instant, as arrays.

``Network.send_many`` hands a batch here when nothing else is in flight in the flow
model and every message can take the array path (see ``Network.send_many``): the
messages then move as rows of numpy arrays (remaining bits, rate, bottleneck, phase)
over the batch's links held as arrays too (load, held count, statistics), with no
Flow or Transit object per message. Every step is the object path's step, applied to
all rows at once, with the same float operations in the same order, at the same
simulated instants and through the same SimPy events (latency timer, end-of-instant
flush, completion alarm): so times, bytes and link statistics are bit for bit those of
sending the messages one by one.

- activation: flows that can start without a refill do (``FlowSharing._join_alone``),
  a leading run of them at a time where none shares a link with an earlier one; the
  rest wait for the flush, whose refill is the weighted progressive filling of the
  connected components that the new flows touch, one saturating link (or rate bound)
  per component per step, every component at once;
- completion: the flows due within ``_FINISH_TOLERANCE`` leave, the leading ones that
  need no refill at once (``_leave_alone``, decided for all of them together), the
  rest at the flush, which refills what they leave.

Anything else that touches the flow model while the batch is in flight (another flow
starting anywhere, a link failing, an endpoint going offline, counters being reset)
first turns the batch into the object path's flows, in the exact state they would have
there (``materialize``), and the object path carries on.

The messages themselves are columns (``netfl.sim.network.Columns``): a Message object is
made only when something reads that message (a callback iterating its arrivals, a trace
row, a hand-over to the object path). Link statistics stay in ``LinkArrays`` between
batches and go back to the links when the object path or a report needs them. A
``Layout`` (routes as link keys, bounds, weights, index arrays) is built once per
sequence of endpoint pairs and reused by every round's uploads and broadcasts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components

from netfl.sim.flow import _DONE, _FINISH_TOLERANCE, _LATENT, _SHARING, _TINY, Flow

if TYPE_CHECKING:
    from netfl.sim.flow import FlowSharing
    from netfl.sim.links import Link
    from netfl.sim.network import Batch, Columns

_NONE, _JOIN, _LEAVE = 0, 1, 2  # what a flow waits for at the flush
_EMPTY = np.zeros(0, dtype=np.int64)


def _segments(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions ``indptr[r]:indptr[r + 1]`` of each of ``rows``, concatenated in order."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if not total:
        return _EMPTY
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(total, dtype=np.int64) + offsets


class LinkArrays:
    """Flow-model state and statistics of every link as arrays indexed by ``Link.key``.

    While an array batch runs, and after it until the object path next needs the links
    (``Network._unstore``), these arrays hold the values of the links marked ``loaded``;
    the links' own attributes are stale. Bandwidth and latency never change.
    """

    FIELDS = ("load", "held", "delay", "active", "peak", "busy", "busy_since", "bytes")

    def __init__(self, links: list[Link]) -> None:
        self.links = links  # by key
        count = len(links)
        self.bw = np.array([link.bandwidth for link in links], dtype=np.float64)
        self.lat = np.array([link.latency for link in links], dtype=np.float64)
        self.loss = np.array([link.loss for link in links], dtype=np.float64)
        self.key = np.arange(count, dtype=np.int64)
        self.load = np.zeros(count)
        self.held = np.zeros(count, dtype=np.int64)
        self.delay = np.zeros(count)
        self.active = np.zeros(count, dtype=np.int64)
        self.peak = np.zeros(count, dtype=np.int64)
        self.busy = np.zeros(count)
        self.since = np.full(count, np.nan)
        self.bytes = np.zeros(count, dtype=np.int64)
        self.left = np.zeros(count)
        self.weights = np.zeros(count)
        self.unfixed = np.zeros(count, dtype=np.int64)
        self.loaded = np.zeros(count, dtype=bool)
        self.any_loaded = False

    def read(self, keys: np.ndarray) -> None:
        """Take the values of links ``keys`` (distinct) that are not loaded yet."""
        keys = keys[~self.loaded[keys]]
        if not len(keys):
            return
        links = self.links
        get = attrgetter(*self.FIELDS)
        columns = list(zip(*(get(links[k]) for k in keys.tolist())))
        for name, values in zip(("load", "held", "delay", "active", "peak", "busy", "since",
                                 "bytes"), columns):
            getattr(self, name)[keys] = values
        self.loaded[keys] = True
        self.any_loaded = True

    def write(self, keep: bool = False) -> None:
        """Put the loaded values back on the links; with ``keep`` the arrays stay the
        reference (a batch in flight goes on), else nothing stays loaded."""
        if not self.any_loaded:
            return
        keys = np.flatnonzero(self.loaded)
        if not keep:
            self.loaded[keys] = False
            self.any_loaded = False
        links = self.links
        rows = zip(keys.tolist(), self.load[keys].tolist(), self.held[keys].tolist(),
                   self.delay[keys].tolist(), self.active[keys].tolist(),
                   self.peak[keys].tolist(), self.busy[keys].tolist(),
                   self.since[keys].tolist(), self.bytes[keys].tolist())
        for k, load, held, delay, active, peak, busy, since, size in rows:
            link = links[k]
            link.load, link.held, link.delay, link.active = load, held, delay, active
            link.peak, link.busy, link.busy_since, link.bytes = peak, busy, since, size

    def reset(self) -> None:
        """``Link.reset`` of the loaded links."""
        keys = self.loaded
        self.bytes[keys] = 0
        self.busy[keys] = 0.0
        self.since[keys] = np.nan
        self.active[keys] = 0
        self.peak[keys] = 0
        self.delay[keys] = 0.0


class Layout:
    """What every batch between the same endpoint pairs, in the same order, shares: the
    routes as link keys in CSR form (row i: message i's route), each flow's rate bound
    and sharing weight, the route latency, and the index arrays the batch works with
    (built once, reused by each round's uploads and broadcasts)."""

    def __init__(self, keys: list[int] | np.ndarray, lengths: np.ndarray, bound: np.ndarray,
                 weight: np.ndarray, latency: np.ndarray, directions: np.ndarray,
                 links: list[Link]) -> None:
        n = len(lengths)
        link_count = len(links)
        self.links, self.n, self.latency = links, n, latency
        self.bound, self.weight, self.directions = bound, weight, directions
        self.lengths = lengths
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.indptr[1:])
        idx = self.idx = np.asarray(keys, dtype=np.int64)
        self.owner = np.repeat(np.arange(n, dtype=np.int64), lengths)  # row of each entry
        order = np.argsort(idx, kind="stable")  # per link, its flows in row order
        self.t_flows = self.owner[order]
        self.t_indptr = np.zeros(link_count + 1, dtype=np.int64)
        np.cumsum(np.bincount(idx, minlength=link_count), out=self.t_indptr[1:])
        self.used = np.flatnonzero(self.t_indptr[1:] > self.t_indptr[:-1])
        self._labels: np.ndarray | None = None

    def components(self) -> np.ndarray:
        """Connected components of the flow-link graph of all the rows (rows, then links)."""
        if self._labels is None:
            n, count = self.n, len(self.links)
            graph = csr_array((np.ones(len(self.idx), dtype=np.int8),
                               (self.owner, n + self.idx)), shape=(n + count, n + count))
            self._labels = connected_components(graph, directed=False)[1]
        return self._labels

    def route(self, row: int) -> tuple[Link, ...]:
        """Message ``row``'s route as links (the router's very tuple's links)."""
        links = self.links
        return tuple(links[k] for k in self.idx[self.indptr[row]:self.indptr[row + 1]].tolist())


class FlowBatch:
    """Flows of one batch: row i is message i, with flow seq ``fseq0 + i``.

    Args:
        sharing: the flow model; this batch is its ``array`` while in flight.
        store: every link's state as arrays (the layout's link ids are link keys).
        batch: the messages' arrival callback.
        msgs: the messages, in send order, and ``sizes`` their sizes.
        layout: their routes and flow parameters.
        seq0: network seq of message 0 (its Transit's seq on the object path).
    """

    def __init__(self, transport: FlowSharing, store: LinkArrays, batch: Batch,
                 msgs: Columns, sizes: np.ndarray, layout: Layout, seq0: int) -> None:
        sharing = transport
        self.sharing, self.network, self.env = sharing, sharing.network, sharing.env
        self.batch, self.msgs, self.layout, self.links = batch, msgs, layout, store.links
        self.store = store
        n, nl = len(msgs), len(store.links)
        self.n, self.nl = n, nl
        self.indptr, self.idx, self.lengths = layout.indptr, layout.idx, layout.lengths
        self.owner, self.t_flows, self.t_indptr = layout.owner, layout.t_flows, layout.t_indptr
        self.bound, self.weight = layout.bound, layout.weight
        self.seq0, self.fseq0 = seq0, sharing.next_seq
        sharing.next_seq += n
        self.remaining = sizes.astype(np.float64) * 8.0
        self.rate = np.zeros(n)
        self.updated = np.zeros(n)
        self.version = np.zeros(n, dtype=np.int64)
        self.bottleneck = np.full(n, -1, dtype=np.int64)
        self.phase = np.full(n, _LATENT, dtype=np.int8)
        self.pending = np.zeros(n, dtype=np.int8)
        self.finish = np.full(n, math.inf)
        self.level = np.full(n, -1.0)
        self.delivered = np.zeros(n, dtype=bool)
        self.left_count = n  # not yet delivered
        self.joins, self.leaves = _EMPTY, _EMPTY
        self.objs: dict[int, Flow] | None = None  # set once materialized: row -> flow
        store.read(layout.used)
        self.bw, self.lat, self.key = store.bw, store.lat, store.key
        self.load, self.held, self.delay = store.load, store.held, store.delay
        self.active, self.peak, self.busy = store.active, store.peak, store.busy
        self.since, self.bytes = store.since, store.bytes
        self.left, self.weights, self.unfixed = store.left, store.weights, store.unfixed
        np.add.at(self.bytes, self.idx, sizes[self.owner])
        sharing.array = self
        # one latency timer per activation instant, made in the order of first use, as the
        # object path's batch makes them (FlowSharing.start inside open_batch)
        at = self.env.now + layout.latency
        self.groups: list[np.ndarray] = []
        if (at == at[0]).all():  # one instant (equal route latencies): one timer
            self.groups.append(np.arange(n, dtype=np.int64))
            self.env.timeout(float(layout.latency[0]), 0).callbacks.append(self.activate)
            return
        _, first, group = np.unique(at, return_index=True, return_inverse=True)
        rows_by_group = np.argsort(group, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(group))))
        for g in np.argsort(first, kind="stable").tolist():
            rows = rows_by_group[bounds[g]:bounds[g + 1]]
            delay = float(layout.latency[rows[0]])
            self.env.timeout(delay, len(self.groups)).callbacks.append(self.activate)
            self.groups.append(rows)

    def _occupy(self, count: np.ndarray, now: float) -> None:
        start = (count > 0) & (self.active == 0)
        self.since[start] = now
        self.active += count
        np.maximum(self.peak, self.active, out=self.peak)

    def _release(self, count: np.ndarray, now: float) -> None:
        self.active -= count
        idle = (count > 0) & (self.active == 0)
        self.busy[idle] += now - self.since[idle]
        self.since[idle] = np.nan

    def _entries(self, rows: np.ndarray) -> np.ndarray:
        """Entry positions (into ``idx``) of the routes of ``rows``, in row order."""
        return _segments(self.indptr, rows)

    # -- the batch's life -------------------------------------------------------------------------

    def activate(self, event: simpy.Event) -> None:
        """A group's route latency is over: its flows join, alone where they can, in order
        (``FlowSharing._activate_many``)."""
        rows = self.groups[event.value]
        if self.objs is not None:
            join, objs = self.sharing._join, self.objs
            for i in rows.tolist():
                flow = objs.get(i)
                if flow is not None and flow.phase == _LATENT:
                    join(flow)
            return
        links = self.idx[self._entries(rows)]
        np.add.at(self.delay, links, self.lat[links])
        sharing = self.sharing
        done = 0 if sharing._flush_scheduled else self._join_alone(rows, self.env.now)
        if done < len(rows):
            rest = rows[done:]
            self.joins = np.concatenate((self.joins, rest))
            self.pending[rest] = _JOIN
            sharing._schedule_flush()

    def _join_alone(self, rows: np.ndarray, now: float) -> int:
        """``FlowSharing._join_alone`` for ``rows`` in order up to the first that fails;
        returns how many joined. Rows go in chunks of consecutive rows none of which shares
        a link with another of the chunk: each then sees only earlier chunks' flows, so a
        chunk is decided at once, exactly as one row after another."""
        n = len(rows)
        ents = self._entries(rows)
        links = self.idx[ents]
        pos = np.repeat(np.arange(n, dtype=np.int64), self.lengths[rows])
        order = np.argsort(links, kind="stable")
        sorted_links, sorted_pos = links[order], pos[order]
        prev = np.full(len(links), -1, dtype=np.int64)
        same = sorted_links[1:] == sorted_links[:-1]
        prev[order[1:][same]] = sorted_pos[:-1][same]
        starts = np.concatenate(([0], np.cumsum(self.lengths[rows])[:-1]))
        max_prev = np.maximum.reduceat(prev, starts)  # latest earlier row sharing a link
        a = 0
        while a < n:
            width, b = 64, n
            while a + 1 < n:
                stop = min(n, a + 1 + width)
                later = np.flatnonzero(max_prev[a + 1:stop] >= a)
                if len(later):
                    b = a + 1 + int(later[0])
                    break
                if stop == n:
                    break
                width *= 4
            joined = self._join_chunk(rows[a:b], now)
            if joined < b - a:
                return a + joined
            a = b
        return n

    def _join_chunk(self, rows: np.ndarray, now: float) -> int:
        """``rows``, no two sharing a link: join alone up to the first that cannot; returns
        how many joined."""
        lengths = self.lengths[rows]
        ents = self._entries(rows)
        links = self.idx[ents]
        seg = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        spare = self.bw[links] - self.load[links]
        bound, weight = self.bound[rows], self.weight[rows]
        rate = np.minimum(bound, np.minimum.reduceat(spare, starts))
        ok = rate > _TINY * weight
        level = rate / weight
        limit = rate * (1 + 1e-12) + _TINY
        at_limit = np.flatnonzero((spare <= limit[seg]) & (rate < bound)[seg])
        if len(at_limit):  # a flow on a saturated link above the new flow's level: refill
            on = links[at_limit]
            others = self.t_flows[_segments(self.t_indptr, on)]
            entry = np.repeat(at_limit, np.diff(self.t_indptr)[on])
            high = (self.phase[others] == _SHARING) & (
                self.rate[others] > level[seg[entry]] * self.weight[others] * (1 + 1e-12))
            ok[seg[entry[high]]] = False
        bad = np.flatnonzero(~ok)
        count = len(rows) if not len(bad) else int(bad[0])
        if not count:
            return 0
        bottleneck = np.full(count, -1, dtype=np.int64)
        at_limit = at_limit[seg[at_limit] < count]
        if len(at_limit):
            rows_at, where = np.unique(seg[at_limit], return_index=True)
            bottleneck[rows_at] = links[at_limit[where]]
        stop = int(starts[count]) if count < len(rows) else len(links)
        self._start_alone(rows[:count], rate[:count], bottleneck, links[:stop], now)
        return count

    def _start_alone(self, rows: np.ndarray, rate: np.ndarray, bottleneck: np.ndarray,
                     links: np.ndarray, now: float) -> None:
        """Rows that joined alone, in order (``links``: their routes' entries, in order)."""
        self.phase[rows] = _SHARING
        self.updated[rows] = now
        self.rate[rows] = rate
        self.bottleneck[rows] = bottleneck
        self.version[rows] += 1
        self._occupy(np.bincount(links, minlength=self.nl), now)
        np.add.at(self.load, links, np.repeat(rate, self.lengths[rows]))
        held = bottleneck[bottleneck >= 0]
        np.add.at(self.held, held, 1)
        finish = now + self.remaining[rows] / rate
        self.finish[rows] = finish
        self.sharing.alone += len(rows)
        # FlowSharing._arm after each: an alarm whenever the earliest finish drops below it
        shared = self.phase == _SHARING
        shared[rows] = False
        earliest = self.finish[shared].min() if shared.any() else math.inf
        running = np.minimum.accumulate(finish)
        before = np.concatenate(([earliest], np.minimum(running[:-1], earliest)))
        sharing = self.sharing
        running = np.minimum(running, earliest)
        for j in np.flatnonzero((running < before) & (running < sharing._alarm_at)).tolist():
            value = float(running[j])
            if value < sharing._alarm_at and value < math.inf:
                self._alarm(value, now)

    def _alarm(self, finish: float, now: float) -> None:
        sharing = self.sharing
        sharing._alarm_at = finish
        sharing._alarm_token += 1
        alarm = self.env.timeout(max(finish - now, 0.0), sharing._alarm_token)
        alarm.callbacks.append(sharing._ring)

    def arm(self) -> None:
        """``FlowSharing._arm``: one alarm at the earliest finish."""
        shared = self.phase == _SHARING
        if not shared.any():
            return
        finish = float(self.finish[shared].min())
        if finish < self.sharing._alarm_at and finish < math.inf:
            self._alarm(finish, self.env.now)

    def ring(self) -> None:
        """``FlowSharing._ring`` (its token checked): the flows due now leave."""
        sharing, now = self.sharing, self.env.now
        limit = now + _FINISH_TOLERANCE
        due = np.flatnonzero((self.phase == _SHARING) & (self.finish <= limit))
        due = due[np.lexsort((due, self.finish[due]))]
        self.phase[due] = _DONE
        alone = 0 if sharing._flush_scheduled else self._leave_alone_count(due)
        if alone:
            self._leave_alone(due[:alone], now)
        if alone < len(due):
            rest = due[alone:]
            self.pending[rest] = _LEAVE
            self.leaves = np.concatenate((self.leaves, rest))
            sharing._schedule_flush()
        self._deliver(due[:alone])
        if not sharing._flush_scheduled:
            self._rearm()

    def _leave_alone_count(self, due: np.ndarray) -> int:
        """How many leading rows of ``due`` pass ``_leave_alone`` one after another: no
        link of the route holds another flow (held counts fall as earlier rows leave)."""
        if not len(due):
            return 0
        ents = self._entries(due)
        pos = np.repeat(np.arange(len(due), dtype=np.int64), self.lengths[due])
        links = self.idx[ents]
        own = self.bottleneck[due]
        size = len(due)
        events = np.sort(own[own >= 0] * size + np.flatnonzero(own >= 0))
        before = (np.searchsorted(events, links * size + pos)
                  - np.searchsorted(events, links * size))
        held = self.held[links] - before
        ok = held <= (links == own[pos])
        bad = np.flatnonzero(~ok)
        return int(pos[bad[0]]) if len(bad) else size

    def _leave_alone(self, rows: np.ndarray, now: float) -> None:
        own = self.bottleneck[rows]
        has = own >= 0
        np.add.at(self.delay, own[has], now - self.updated[rows[has]])
        np.subtract.at(self.held, own[has], 1)
        ents = self._entries(rows)
        links = self.idx[ents]
        self._release(np.bincount(links, minlength=self.nl), now)
        np.subtract.at(self.load, links, self.rate[self.owner[ents]])
        self.sharing.alone += len(rows)

    def flush(self) -> None:
        """``FlowSharing._flush`` (its flag cleared): leaves, joins, refill, deliveries."""
        now = self.env.now
        leaves, self.leaves = self.leaves, _EMPTY
        joins, self.joins = self.joins, _EMPTY
        touched = np.zeros(self.nl, dtype=bool)
        if len(leaves):
            own = self.bottleneck[leaves]
            has = own >= 0
            np.add.at(self.delay, own[has], now - self.updated[leaves[has]])
            links = self.idx[self._entries(leaves)]
            self._release(np.bincount(links, minlength=self.nl), now)
            touched[links] = True
            self.pending[leaves] = _NONE
        if len(joins):
            joins = joins[self.phase[joins] == _LATENT]
            self.phase[joins] = _SHARING
            self.updated[joins] = now
            self.pending[joins] = _NONE
            links = self.idx[self._entries(joins)]
            self._occupy(np.bincount(links, minlength=self.nl), now)
            touched[links] = True
        if touched.any():
            self._refill(touched, now)
        self._deliver(leaves)
        self._rearm()

    def _rearm(self) -> None:
        """``_arm`` after a delivery pass, by the object path if a callback of that pass
        handed the batch over."""
        if self.objs is None:
            self.arm()
        else:
            self.sharing._arm()

    def _refill(self, touched: np.ndarray, now: float) -> None:
        """``FlowSharing._refill``: max-min rates for the components ``touched`` reaches,
        every component filled at once, one saturation per component per step."""
        n, nl, idx, owner = self.n, self.nl, self.idx, self.owner
        touched_links = np.flatnonzero(touched)
        if not self.active[touched_links].any():
            # no flow left on any touched link (only this batch's flows use its links): the
            # components are those links alone, with nothing to fill
            self.left[touched_links] = self.bw[touched_links]
            self.weights[touched_links] = 0.0
            self.unfixed[touched_links] = 0
            self.load[touched_links] = 0.0
            self.held[touched_links] = 0
            return
        shared = self.phase == _SHARING
        if shared.all():  # every flow of the batch in its bandwidth phase: the layout's graph
            labels = self.layout.components()
        else:
            on = shared[owner]
            graph = csr_array((np.ones(int(on.sum()), dtype=np.int8),
                               (owner[on], n + idx[on])), shape=(n + nl, n + nl))
            labels = connected_components(graph, directed=False)[1]
        reached = np.zeros(labels.max() + 1, dtype=bool)
        reached[labels[n + touched_links]] = True
        hit = reached[labels]
        rows = np.flatnonzero(hit[:n] & shared)
        links = np.flatnonzero(hit[n:])
        self.left[links] = self.bw[links]
        self.weights[links] = 0.0
        self.unfixed[links] = 0
        self.load[links] = 0.0
        self.held[links] = 0
        if not len(rows):
            return
        sharing = self.sharing
        sharing.refills += 1
        sharing.refilled_flows += len(rows)
        weight, bound, level = self.weight, self.bound, self.level
        inside = np.zeros(n, dtype=bool)
        inside[rows] = True
        ents = np.flatnonzero(inside[owner])  # the rows' entries, in row order
        ent_links, ent_rows = idx[ents], owner[ents]
        np.add.at(self.weights, ent_links, weight[ent_rows])
        np.add.at(self.unfixed, ent_links, 1)
        elapsed = now - self.updated[rows]
        moved = elapsed > 0
        if moved.any():
            past = rows[moved]
            self.remaining[past] -= self.rate[past] * elapsed[moved]
            own = self.bottleneck[past]
            has = own >= 0
            np.add.at(self.delay, own[has], elapsed[moved][has])
            self.updated[past] = now
        level[rows] = -1.0
        bounded = rows[bound[rows] < math.inf]
        link_label = labels[n:]
        left, weights, unfixed = self.left, self.weights, self.unfixed
        while True:
            cand = links[unfixed[links] > 0]
            flows = bounded[level[bounded] < 0]
            if not len(cand) and not len(flows):
                break
            lv = np.where(left[cand] > 0, left[cand], 0.0) / weights[cand]
            comp = np.concatenate((link_label[cand], labels[flows]))
            lev = np.concatenate((lv, bound[flows] / weight[flows]))
            kind = np.concatenate((np.ones(len(cand), dtype=np.int8),
                                   np.zeros(len(flows), dtype=np.int8)))
            key = np.concatenate((self.key[cand], self.fseq0 + flows))
            which = np.concatenate((cand, flows))
            order = np.lexsort((key, kind, lev, comp))
            sorted_comp = comp[order]
            pick = order[np.concatenate(([True], sorted_comp[1:] != sorted_comp[:-1]))]
            is_link = kind[pick] == 1
            popped, pop_level = which[pick[is_link]], lev[pick[is_link]]
            members = self.t_flows[_segments(self.t_indptr, popped)]
            member_of = np.repeat(np.arange(len(popped)), np.diff(self.t_indptr)[popped])
            keep = inside[members] & (level[members] < 0)
            members, member_of = members[keep], member_of[keep]
            single = which[pick[~is_link]]
            fixed = np.concatenate((members, single))
            fixed_level = np.concatenate((pop_level[member_of], lev[pick[~is_link]]))
            level[fixed] = fixed_level
            self.bottleneck[fixed] = np.concatenate(
                (popped[member_of], np.full(len(single), -1, dtype=np.int64)))
            fe = self._entries(fixed)
            fl = idx[fe]
            times = self.lengths[fixed]
            np.subtract.at(left, fl, np.repeat(weight[fixed] * fixed_level, times))
            np.subtract.at(unfixed, fl, 1)
            np.subtract.at(weights, fl, np.repeat(weight[fixed], times))
        rate = weight[rows] * level[rows]
        np.add.at(self.load, ent_links, (weight[ent_rows] * level[ent_rows]))
        own = self.bottleneck[rows]
        np.add.at(self.held, own[own >= 0], 1)
        changed = rate != self.rate[rows]
        moved = rows[changed]
        new = rate[changed]
        self.rate[moved] = new
        self.version[moved] += 1
        with np.errstate(divide="ignore", invalid="ignore"):
            finish = now + np.maximum(self.remaining[moved], 0.0) / new
        self.finish[moved] = np.where(new > 0, finish, math.inf)

    def _deliver(self, rows: np.ndarray) -> None:
        """``FlowSharing._deliver``: the finished rows arrive, in order, as one pass."""
        if not len(rows):
            return
        self.delivered[rows] = True
        self.left_count -= len(rows)
        if not self.left_count:  # the batch is over
            self.sharing.array = None
        self.network.arrived_many(self, rows)

    # -- back to the object path ------------------------------------------------------------------

    def hops(self, rows: np.ndarray) -> list[int]:
        """Route lengths of ``rows``."""
        return self.lengths[rows].tolist()

    def undelivered(self) -> np.ndarray:
        """Rows not yet delivered."""
        return np.flatnonzero(~self.delivered)

    def materialize(self) -> None:
        """Become the object path's flows, transits and heap entries, in the state the
        object path would hold now; the batch's events then run the object path."""
        import heapq

        from netfl.sim.network import Transit

        sharing, network = self.sharing, self.network
        sharing.array = None
        self.store.write()
        placement = network.placement
        objs: list[Flow] = []
        links = self.links
        rows = self.undelivered()
        for i in rows.tolist():
            msg, route = self.msgs.message(i), self.layout.route(i)
            transit = Transit(msg, placement[msg.src], placement[msg.dst], route, None,
                              self.seq0 + i, self.batch)
            transit.charged, transit.attempts = True, 1
            flow = Flow(transit, float(self.bound[i]), float(self.weight[i]), False,
                        self.fseq0 + i)
            transit.flow = flow
            flow.remaining = float(self.remaining[i])
            flow.rate = float(self.rate[i])
            flow.updated = float(self.updated[i])
            flow.version = int(self.version[i])
            own = int(self.bottleneck[i])
            flow.bottleneck = links[own] if own >= 0 else None
            phase = int(self.phase[i])
            flow.phase = phase
            for link in route:
                link.members.add(flow)
                if phase == _SHARING or self.pending[i] == _LEAVE:
                    link.flows.add(flow)
            if phase == _SHARING:
                sharing._heap.append((float(self.finish[i]), flow.seq, flow.version, flow))
            if phase != _DONE:
                sharing.live += 1
            network.adopt(transit)
            objs.append(flow)
        by_row = dict(zip(rows.tolist(), objs))
        sharing._joins.extend(by_row[i] for i in self.joins.tolist())
        sharing._leaves.extend(by_row[i] for i in self.leaves.tolist())
        heapq.heapify(sharing._heap)
        self.objs = by_row
        network.array_done(self)

    def rows(self, row: Any) -> list[tuple[int, dict[str, Any]]]:
        """(seq, record) of each message still in flight (``Network.undelivered_rows``)."""
        out = []
        for i in self.undelivered().tolist():
            msg = self.msgs.message(i)
            out.append((self.seq0 + i, row(msg, int(self.lengths[i]), 1, delivered=False)))
        return out

    def endpoints(self) -> set[Hashable]:
        msgs = self.msgs
        return {end for i in self.undelivered().tolist()
                for end in (msgs.srcs[i], msgs.dsts[i])}
