"""Flow-level transport: every message is a flow; flows share links by max-min fairness.

This is SimGrid's CM02 model (the analytic max-min fluid solution). A message
first spends its route's latency (summed once, not per hop) and then becomes
a flow over every link of its route at once (pipelined, no per-hop store).
All flows in that phase share each link direction's capacity by (weighted)
max-min fairness, computed by progressive filling: raise every rate together
until a link saturates, fix the rates of the flows through it, repeat. A flow's
rate is thus its bottleneck share over the whole path, optionally capped by a
TCP window, ``rate <= window / RTT`` with RTT twice the route latency (as SimGrid
applies it). Rates are recomputed whenever a flow starts or ends.

Weights (``sharing``): ``rtt`` (default) is CM02 exactly: a flow's share of a
link is proportional to 1 / its route latency (TCP's RTT unfairness; SimGrid's
sharing penalty is the route latency, and 1 s for a route without latency).
``fair`` gives every flow the same weight (plain max-min). Both are the same
whenever the flows sharing a link have equal route latencies.

Cost: a start or an end changes rates only inside its connected component of
the flow-link graph (flows linked through shared links), so only that component
is refilled, O(F h log L) for its F flows of h hops. Everything that happens at
one instant (a broadcast, m uploads arriving together) is collected and refilled
once. Completions sit in one heap keyed by finish time, with lazy invalidation
when a rate changes, behind a single SimPy alarm.

Written by hand: no maintained Python library does incremental max-min sharing
on an event clock (SimGrid's LMM solver is C++ and runs its own engine).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING

import simpy

from netfl.sim.instant import AfterNormal

if TYPE_CHECKING:
    from netfl.sim.links import Link
    from netfl.sim.network import Network, Transit

SHARING = ("rtt", "fair")
_LATENT, _SHARING, _DONE = 0, 1, 2
_FINISH_TOLERANCE = 1e-9  # seconds: flows finishing this close together complete together


class Flow:
    """One attempt at moving a message: its route, progress and current rate."""

    __slots__ = ("transit", "links", "remaining", "rate", "updated", "version", "bound",
                 "weight", "bottleneck", "phase", "doomed", "seq")

    def __init__(self, transit: Transit, bound: float, weight: float, doomed: bool,
                 seq: int) -> None:
        self.transit = transit
        self.links: tuple[Link, ...] = transit.route
        self.remaining = transit.msg.size * 8.0  # bits still to move
        self.rate = 0.0
        self.updated = 0.0
        self.version = 0
        self.bound = bound
        self.weight = weight  # share of a link relative to the other flows on it
        self.bottleneck: Link | None = None
        self.phase = _LATENT
        self.doomed = doomed  # lost on the way: its bytes move, then the sender times out
        self.seq = seq

    def __lt__(self, other: Flow) -> bool:  # heap ties
        return self.seq < other.seq


class FlowSharing:
    """Moves transits as max-min fair flows; calls ``network.arrived`` or ``network.lost``."""

    def __init__(self, network: Network, tcp_window: float | None = None,
                 sharing: str = "rtt") -> None:
        if tcp_window is not None and not (tcp_window > 0 and math.isfinite(tcp_window)):
            raise ValueError(f"tcp_window must be > 0 bytes, got {tcp_window}")
        if sharing not in SHARING:
            raise ValueError(f"unknown sharing {sharing!r}; expected one of {SHARING}")
        self.sharing = sharing
        self.network = network
        self.env: simpy.Environment = network.env
        self.window_bits = None if tcp_window is None else float(tcp_window) * 8
        self._joins: list[Flow] = []
        self._leaves: list[Flow] = []
        self._touched: set[Link] = set()
        self._flush_scheduled = False
        self._heap: list[tuple[float, int, int, Flow]] = []  # finish, seq, version, flow
        self._alarm_at = math.inf
        self._alarm_token = 0
        self._seq = itertools.count()
        self.refills = 0  # component recomputations, for benchmarks
        self.refilled_flows = 0

    # -- life of a flow ---------------------------------------------------------------------------

    def start(self, transit: Transit, doomed: bool = False) -> None:
        latency = 0.0
        for link in transit.route:
            latency += link.latency
        bound = math.inf
        if self.window_bits is not None and latency > 0:
            bound = self.window_bits / (2 * latency)
        weight = 1.0
        if self.sharing == "rtt":  # SimGrid CM02: penalty = route latency (1 s when none)
            weight = 1.0 / latency if latency > 0 else 1.0
        flow = Flow(transit, bound, weight, doomed, next(self._seq))
        transit.flow = flow
        size = transit.msg.size
        for link in flow.links:
            link.members.add(flow)
            link.bytes += size
        if latency > 0:
            self.env.timeout(latency, flow).callbacks.append(self._activate)
        else:
            self._join(flow)

    def _activate(self, event: simpy.Event) -> None:
        flow: Flow = event.value
        if flow.phase == _LATENT:
            self._join(flow)

    def _join(self, flow: Flow) -> None:
        for link in flow.links:
            link.delay += link.latency
        self._joins.append(flow)
        self._schedule_flush()

    def abort(self, link: Link) -> None:
        """``link`` failed: every flow routed over it is lost (its sender resends later)."""
        now = self.env.now
        for flow in sorted(link.members):
            if flow.phase == _DONE:
                continue
            if flow.phase == _SHARING and flow in flow.links[0].flows:
                moved = flow.rate * (now - flow.updated)
                if flow.bottleneck is not None:
                    flow.bottleneck.delay += now - flow.updated
                untransferred = max(flow.remaining - moved, 0.0) / 8
                for other in flow.links:
                    other.flows.discard(flow)
                    other.release(now)
                    self._touched.add(other)
            else:
                untransferred = flow.transit.msg.size
            for other in flow.links:
                other.members.discard(flow)
                other.bytes -= round(untransferred)
            flow.phase = _DONE
            flow.version += 1
            self.network.lost(flow.transit)
        self._schedule_flush()

    # -- one instant at a time --------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            AfterNormal(self.env).callbacks.append(self._flush)

    def _flush(self, _event: simpy.Event) -> None:
        """Apply this instant's ends and starts, refill what they touched, deliver."""
        self._flush_scheduled = False
        now = self.env.now
        leaves, self._leaves = self._leaves, []
        joins, self._joins = self._joins, []
        touched, self._touched = self._touched, set()
        for flow in leaves:
            if flow.bottleneck is not None:
                flow.bottleneck.delay += now - flow.updated
            for link in flow.links:
                link.flows.discard(flow)
                link.members.discard(flow)
                link.release(now)
                touched.add(link)
        for flow in joins:
            if flow.phase != _LATENT:
                continue  # aborted during its latency
            flow.phase = _SHARING
            flow.updated = now
            for link in flow.links:
                link.flows.add(flow)
                link.occupy(now)
                touched.add(link)
        if touched:
            self._refill(touched, now)
        for flow in leaves:
            if flow.doomed:
                self.network.lost(flow.transit)
            else:
                self.network.arrived(flow.transit)
        self._arm()

    def _refill(self, touched: set[Link], now: float) -> None:
        """Max-min rates (progressive filling) for the flows that ``touched`` links reach."""
        flows: list[Flow] = []
        seen_links = set(touched)
        stack = list(touched)
        seen_flows: set[Flow] = set()
        while stack:
            for flow in stack.pop().flows:
                if flow not in seen_flows:
                    seen_flows.add(flow)
                    flows.append(flow)
                    for link in flow.links:
                        if link not in seen_links:
                            seen_links.add(link)
                            stack.append(link)
        if not flows:
            return
        self.refills += 1
        self.refilled_flows += len(flows)
        for flow in flows:  # progress at the old rates up to now
            elapsed = now - flow.updated
            if elapsed > 0:
                flow.remaining -= flow.rate * elapsed
                if flow.bottleneck is not None:
                    flow.bottleneck.delay += elapsed
                flow.updated = now
        # weighted progressive filling: raise a level x; a flow's rate is weight * x; a link
        # saturates at x = capacity / (sum of its unfixed weights), a bound at bound / weight
        capacity = {link: link.bandwidth for link in seen_links}
        weights = {link: 0.0 for link in seen_links}
        unfixed = dict.fromkeys(seen_links, 0)
        for flow in flows:
            for link in flow.links:
                weights[link] += flow.weight
                unfixed[link] += 1
        heap: list[tuple[float, int, int, object]] = [
            (link.bandwidth / weights[link], 1, link.key, link)
            for link, count in unfixed.items() if count
        ]
        heap.extend((flow.bound / flow.weight, 0, flow.seq, flow)
                    for flow in flows if flow.bound < math.inf)
        heapq.heapify(heap)
        rates: dict[Flow, float] = {}
        while heap:
            level, kind, _, item = heapq.heappop(heap)
            if kind == 0:
                members = () if item in rates else (item,)
                bottleneck = None
            else:
                if not unfixed[item] or level != _level(capacity[item], weights[item]):
                    continue  # stale entry
                members = [flow for flow in item.flows if flow not in rates]
                bottleneck = item
            for flow in members:
                rate = flow.weight * level
                rates[flow] = rate
                flow.bottleneck = bottleneck
                for link in flow.links:
                    capacity[link] -= rate
                    unfixed[link] -= 1
                    weights[link] -= flow.weight
                    if unfixed[link] and link is not bottleneck:
                        heapq.heappush(
                            heap, (_level(capacity[link], weights[link]), 1, link.key, link))
        heap_push = heapq.heappush
        for flow in flows:
            rate = rates[flow]
            if rate != flow.rate:
                flow.rate = rate
                flow.version += 1
                finish = now + max(flow.remaining, 0.0) / rate if rate > 0 else math.inf
                heap_push(self._heap, (finish, flow.seq, flow.version, flow))

    # -- completions ------------------------------------------------------------------------------

    def _arm(self) -> None:
        """One alarm at the earliest current finish time."""
        heap = self._heap
        while heap and (heap[0][3].phase != _SHARING or heap[0][2] != heap[0][3].version):
            heapq.heappop(heap)
        if not heap:
            return
        finish = heap[0][0]
        if finish < self._alarm_at and finish < math.inf:
            self._alarm_at = finish
            self._alarm_token += 1
            alarm = self.env.timeout(max(finish - self.env.now, 0.0), self._alarm_token)
            alarm.callbacks.append(self._ring)

    def _ring(self, event: simpy.Event) -> None:
        if event.value != self._alarm_token:
            return  # superseded by an earlier alarm
        self._alarm_at = math.inf
        limit = self.env.now + _FINISH_TOLERANCE
        heap = self._heap
        while heap and heap[0][0] <= limit:
            _, _, version, flow = heapq.heappop(heap)
            if flow.phase == _SHARING and version == flow.version:
                flow.phase = _DONE
                self._leaves.append(flow)
        if self._leaves:
            self._schedule_flush()
        else:
            self._arm()


def _level(capacity: float, weight: float) -> float:
    """Fill level at which a link saturates (rounding can leave a tiny negative capacity)."""
    return max(capacity, 0.0) / weight if weight > 0 else math.inf
