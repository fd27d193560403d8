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

Every float sum of a refill (link weights, the capacity left as flows are fixed, link
loads, delay shares) runs in flow start order (``seq``), never in the order of a set,
so a run is reproducible to the last bit, and netfl.sim.flow_batch (a batch of messages
as arrays, with the same steps in the same order) gives the very same numbers. While
such a batch is in flight it is the flow model's ``array``: the flush and the alarm
hand over to it, and anything else that starts a flow first turns it into flows here.

Written by hand: no maintained Python library does incremental max-min sharing
on an event clock (SimGrid's LMM solver is C++ and runs its own engine).
"""

from __future__ import annotations

import heapq
import math
from operator import attrgetter
from typing import TYPE_CHECKING

import simpy

from netfl.sim.instant import AfterNormal

if TYPE_CHECKING:
    from netfl.sim.links import Link
    from netfl.sim.network import Network, Transit

SHARING = ("rtt", "fair")
_LATENT, _SHARING, _DONE = 0, 1, 2
_FINISH_TOLERANCE = 1e-9  # seconds: flows finishing this close together complete together
_TINY = 1e-9  # bit/s: spare capacity below this is none
_BY_SEQ = attrgetter("seq")


class Flow:
    """One attempt at moving a message: its route, progress and current rate."""

    __slots__ = ("transit", "links", "remaining", "rate", "updated", "version", "bound",
                 "weight", "bottleneck", "phase", "doomed", "seq", "stamp", "level")

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
        self.stamp = 0  # refill scratch: the refill that last reached this flow
        self.level = -1.0  # refill scratch: fill level at which it was fixed

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
        self.next_seq = 0  # seq of the next flow (a FlowBatch takes a range of them)
        self.live = 0  # flows of this object path not yet done
        self.array = None  # the FlowBatch moving flows as arrays, or None (netfl.sim.flow_batch)
        self.refills = 0  # component recomputations, for benchmarks
        self.refilled_flows = 0
        self.alone = 0  # starts and ends that needed no refill
        self._stamp = 0
        # inside Network.send_many: latency timers by the instant they fire, each with the
        # flows it activates in start order (None outside a batch: one timer per flow)
        self._latent: dict[float, list[Flow]] | None = None
        self._params: dict[tuple[Link, ...], tuple[float, float, float]] = {}  # per route

    # -- life of a flow ---------------------------------------------------------------------------

    def idle(self) -> bool:
        """No flow in flight, no array batch, nothing due at the end of this instant."""
        return not self.live and self.array is None and not self._flush_scheduled

    def materialize(self) -> None:
        """Turn the array batch in flight (if any) into flows of the object path."""
        if self.array is not None:
            self.array.materialize()

    def start(self, transit: Transit, doomed: bool = False) -> None:
        self.network._unstore()  # an array batch in flight becomes flows; links up to date
        try:
            latency, bound, weight = self._params[transit.route]
        except KeyError:
            latency, bound, weight = self._params_of(transit.route)
        flow = Flow(transit, bound, weight, doomed, self.next_seq)
        self.next_seq += 1
        self.live += 1
        transit.flow = flow
        size = transit.msg.size
        for link in flow.links:
            link.members.add(flow)
            link.bytes += size
        if latency > 0:
            latent = self._latent
            if latent is None:
                self.env.timeout(latency, flow).callbacks.append(self._activate)
                return
            at = self.env.now + latency
            flows = latent.get(at)
            if flows is None:
                latent[at] = flows = [flow]
                self.env.timeout(latency, flows).callbacks.append(self._activate_many)
            else:
                flows.append(flow)
        else:
            self._join(flow)

    def _params_of(self, route: tuple[Link, ...]) -> tuple[float, float, float]:
        """Route latency, rate bound and sharing weight of a flow along ``route`` (cached)."""
        latency = 0.0
        for link in route:
            latency += link.latency
        bound = math.inf
        if self.window_bits is not None and latency > 0:
            bound = self.window_bits / (2 * latency)
        weight = 1.0
        if self.sharing == "rtt":  # SimGrid CM02: penalty = route latency (1 s when none)
            weight = 1.0 / latency if latency > 0 else 1.0
        params = self._params[route] = (latency, bound, weight)
        return params

    def open_batch(self) -> None:
        """Flows started from now until ``close_batch`` that enter their bandwidth phase at
        the same instant share one timer (they were started one after another, with nothing
        scheduled in between, so their order is the same)."""
        self._latent = {}

    def close_batch(self) -> None:
        self._latent = None

    def barrier(self) -> None:
        """Something else is scheduled now: later flows of the batch get timers of their own."""
        if self._latent:
            self._latent = {}

    def _activate(self, event: simpy.Event) -> None:
        flow: Flow = event.value
        if flow.phase == _LATENT:
            self._join(flow)

    def _activate_many(self, event: simpy.Event) -> None:
        join = self._join
        for flow in event.value:
            if flow.phase == _LATENT:
                join(flow)

    def _join(self, flow: Flow) -> None:
        for link in flow.links:
            link.delay += link.latency
        if self._flush_scheduled or not self._join_alone(flow):
            self._joins.append(flow)
            self._schedule_flush()

    def _join_alone(self, flow: Flow) -> bool:
        """Start ``flow`` without a refill when that leaves every other rate as it is.

        With r = min(bound, spare capacity on its route), the allocation stays max-min
        iff on each link that r saturates no flow has a higher level (rate / weight) than
        the new flow: then the new flow is the largest at its bottleneck and every other
        flow keeps its own. Otherwise the component is refilled.
        """
        links = flow.links
        rate = flow.bound
        for link in links:
            spare = link.bandwidth - link.load
            if spare < rate:
                rate = spare
        if not rate > _TINY * flow.weight:
            return False
        level = rate / flow.weight
        bottleneck = None
        if rate < flow.bound:
            limit = rate * (1 + 1e-12) + _TINY
            for link in links:
                if link.bandwidth - link.load <= limit:
                    for other in link.flows:
                        if other.rate > level * other.weight * (1 + 1e-12):
                            return False
                    if bottleneck is None:
                        bottleneck = link
        now = self.env.now
        flow.phase = _SHARING
        flow.updated = now
        flow.rate = rate
        flow.bottleneck = bottleneck
        flow.version += 1
        for link in links:
            link.flows.add(flow)
            link.occupy(now)
            link.load += rate
        if bottleneck is not None:
            bottleneck.held += 1
        heapq.heappush(self._heap, (now + flow.remaining / rate, flow.seq, flow.version, flow))
        self.alone += 1
        self._arm()
        return True

    def _leave_alone(self, flow: Flow) -> bool:
        """End ``flow`` without a refill when no other flow is held by a link of its route:
        every other flow through those links is limited elsewhere, so none speeds up."""
        own = flow.bottleneck
        for link in flow.links:
            if link.held > (1 if link is own else 0):
                return False
        now = self.env.now
        if own is not None:
            own.delay += now - flow.updated
            own.held -= 1
        for link in flow.links:
            link.flows.discard(flow)
            link.members.discard(flow)
            link.release(now)
            link.load -= flow.rate
        self.alone += 1
        return True

    def abort(self, link: Link) -> None:
        """``link`` failed: every flow routed over it is lost (its sender resends later)."""
        for flow in sorted(link.members):
            if flow.phase != _DONE:
                self._stop(flow)
                self.network.lost(flow.transit)
        self._schedule_flush()

    def cancel(self, transit: Transit) -> None:
        """Stop ``transit``'s flow for good (an endpoint went offline): no resend follows.
        Links keep the bytes that moved before now, as when a link fails."""
        flow = transit.flow
        if flow is not None and flow.phase != _DONE:
            self._stop(flow)
            self._schedule_flush()

    def _stop(self, flow: Flow) -> None:
        """End ``flow`` now; each of its links is charged only the bytes that moved."""
        now = self.env.now
        if flow.phase == _SHARING:
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
        if flow.phase != _DONE:
            self.live -= 1
        flow.phase = _DONE
        flow.version += 1

    # -- one instant at a time --------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            AfterNormal(self.env).callbacks.append(self._flush)

    def _flush(self, _event: simpy.Event) -> None:
        """Apply this instant's ends and starts, refill what they touched, deliver."""
        self._flush_scheduled = False
        if self.array is not None:
            self.array.flush()
            return
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
        self._deliver(leaves)
        self._arm()

    def _refill(self, touched: set[Link], now: float) -> None:
        """Max-min rates (progressive filling) for the flows that ``touched`` links reach.

        Per-refill scratch values live on the links (``left``, ``weights``, ``unfixed``)
        and flows (``level``), set while the component is found, so the fill touches no
        dictionary. Link loads and held counts are recomputed for the component.
        """
        flows: list[Flow] = []
        seen_links = set(touched)
        stack = list(touched)
        for link in stack:
            link.left, link.weights, link.unfixed, link.load, link.held = (
                link.bandwidth, 0.0, 0, 0.0, 0)
        stamp = self._stamp = self._stamp + 1
        while stack:
            for flow in stack.pop().flows:
                if flow.stamp != stamp:
                    flow.stamp = stamp
                    flows.append(flow)
                    for link in flow.links:
                        if link not in seen_links:
                            seen_links.add(link)
                            stack.append(link)
                            link.left, link.weights, link.unfixed, link.load, link.held = (
                                link.bandwidth, 0.0, 0, 0.0, 0)
        if not flows:
            return
        # every float sum below runs in flow start order, never in set order, so the
        # result is reproducible (and the same as netfl.sim.flow_batch's)
        flows.sort(key=_BY_SEQ)
        for flow in flows:
            weight = flow.weight
            for link in flow.links:
                link.weights += weight
                link.unfixed += 1
        self.refills += 1
        self.refilled_flows += len(flows)
        bounded = []
        for flow in flows:  # progress at the old rates up to now
            elapsed = now - flow.updated
            if elapsed > 0:
                flow.remaining -= flow.rate * elapsed
                if flow.bottleneck is not None:
                    flow.bottleneck.delay += elapsed
                flow.updated = now
            flow.level = -1.0
            if flow.bound < math.inf:
                bounded.append((flow.bound / flow.weight, 0, flow.seq, flow))
        # weighted progressive filling: raise a level x; a flow's rate is weight * x; a link
        # saturates at x = capacity / (sum of its unfixed weights), a bound at bound / weight
        heap: list[tuple[float, int, int, object]] = [
            (link.bandwidth / link.weights, 1, link.key, link)
            for link in seen_links if link.unfixed
        ]
        heap += bounded
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            level, kind, _, item = pop(heap)
            if kind == 0:
                if item.level >= 0:
                    continue
                members = (item,)
                bottleneck = None
            else:
                if not item.unfixed:
                    continue
                left = item.left
                if level != (left if left > 0 else 0.0) / item.weights:
                    continue  # stale entry
                members = [flow for flow in item.flows if flow.level < 0]
                if len(members) > 1:
                    members.sort(key=_BY_SEQ)
                bottleneck = item
            for flow in members:
                flow.level = level
                rate = flow.weight * level
                flow.bottleneck = bottleneck
                for link in flow.links:
                    link.left -= rate
                    link.unfixed -= 1
                    link.weights -= flow.weight
                    if link.unfixed and link is not bottleneck:
                        left = link.left
                        push(heap, ((left if left > 0 else 0.0) / link.weights, 1, link.key,
                                    link))
        finishes = self._heap
        for flow in flows:
            rate = flow.weight * flow.level
            for link in flow.links:
                link.load += rate
            if flow.bottleneck is not None:
                flow.bottleneck.held += 1
            if rate != flow.rate:
                flow.rate = rate
                flow.version += 1
                finish = now + max(flow.remaining, 0.0) / rate if rate > 0 else math.inf
                push(finishes, (finish, flow.seq, flow.version, flow))

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
        if self.array is not None:
            self.array.ring()
            return
        limit = self.env.now + _FINISH_TOLERANCE
        heap = self._heap
        delivered = []
        while heap and heap[0][0] <= limit:
            _, _, version, flow = heapq.heappop(heap)
            if flow.phase == _SHARING and version == flow.version:
                flow.phase = _DONE
                self.live -= 1
                if not self._flush_scheduled and self._leave_alone(flow):
                    delivered.append(flow)
                else:
                    self._leaves.append(flow)
                    self._schedule_flush()
        self._deliver(delivered)
        if not self._flush_scheduled:
            self._arm()

    def _deliver(self, flows: list[Flow]) -> None:
        """Hand finished flows to the network, in order, as one delivery pass."""
        if not flows:
            return
        network = self.network
        network.end_pass()
        arrived, lost = network.arrived, network.lost
        for flow in flows:
            if flow.doomed:
                lost(flow.transit)
            else:
                arrived(flow.transit)
        network.end_pass()


def _level(capacity: float, weight: float) -> float:
    """Fill level at which a link saturates (rounding can leave a tiny negative capacity)."""
    return max(capacity, 0.0) / weight if weight > 0 else math.inf
