"""Messages between placed endpoints over a network of links that may fail.

The network routes each message (netfl.sim.routing), hands it to a transport
model that decides when it arrives, and keeps the books: bytes charged per
direction, kind and link, resends, messages lost for good, and per-message
records. Two transports:

- ``flow`` (default): max-min fair sharing of every link by all flows at once,
  route latency added once (SimGrid's CM02 model; netfl.sim.flow);
- ``store_and_forward``: whole messages hop by hop, FIFO per link direction
  (netfl.sim.store_forward).

Loss: in the flow model a transfer is lost with probability 1 - prod(1 - loss)
over its route; its bytes still move (and are charged), then the sender resends
it whole ``retransmit_timeout`` seconds after the loss, along the route of the
moment, charged again. A link that fails aborts the flows routed over it, which
are resent the same way. A sender with no route to its destination keeps the
message until a route comes back; ``give_up`` seconds after the first send an
undelivered message is dropped and the protocol is told (``on_lost``).

Endpoints can go offline (``set_endpoint``: a phone that stops being available).
Messages to or from an offline endpoint are lost at once: one on the wire is cut
(its links keep the bytes moved so far, as when a link fails; the sender's
counters keep what it put on the wire, as for every attempt), one waiting for a
route or a resend is dropped, and one sent while an end is offline never leaves
(no bytes: the connection cannot open). Each is counted in ``messages_lost`` and
reported through ``on_lost`` after the current instant's callbacks.

Batches (``send_many``): what a protocol sends to many endpoints at one instant (m
uploads, a broadcast of one payload) goes in one call with one arrival callback, which
is handed a list of the messages that arrived together: consecutive deliveries of one
batch within one transport pass share one event, and flows that start their bandwidth
phase at the same instant share one latency timer. Everything else (loss draws, resends,
routes, offline endpoints, records) is per message exactly as with ``send``, and the
order in which the callbacks see messages is the per-message order, so a batch gives
results identical to sending its messages one by one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import simpy

from netfl.sim.flow import FlowSharing
from netfl.sim.interface import COORDINATOR
from netfl.sim.links import STAT_COLUMNS, Link, read_links
from netfl.sim.routing import Router, node_key
from netfl.sim.store_forward import StoreAndForward

MODELS = ("flow", "store_and_forward")
MESSAGE_COLUMNS = ["kind", "src", "dst", "round", "bytes", "sent_s", "delivered_s", "hops",
                   "attempts"]
LINK_COLUMNS = ["src_node", "dst_node", *STAT_COLUMNS]


@dataclass(slots=True)
class Message:
    """One message between two endpoints; ``size`` is what the sender's codec measured."""

    kind: str  # "model", "update", "broadcast", "violation", "request", "samples", ...
    src: Hashable  # endpoint id: an int learner index or the string "coordinator"
    dst: Hashable
    round: int
    payload: Any
    size: int  # bytes charged: encoded payload + header, computed by the sender
    sent_at: float = 0.0  # set by Network.send
    delivered_at: float = 0.0  # set on delivery


class Batch:
    """The arrival callback of the messages of one ``send_many`` call: called with the list
    of messages that arrived together (as an event callback: ``event.value`` is that list)."""

    __slots__ = ("on_arrival",)

    def __init__(self, on_arrival: Callable[[list[Message]], None]) -> None:
        self.on_arrival = on_arrival

    def __call__(self, event: simpy.Event) -> None:
        self.on_arrival(event.value)


class Transit:
    """A message on its way: route, attempts, and the event to fire on arrival (or the batch
    whose callback it joins)."""

    __slots__ = ("msg", "src_node", "dst_node", "route", "done", "seq", "attempts", "hop",
                 "hop_since", "resend", "flow", "stranded", "charged", "cancelled", "batch")

    def __init__(self, msg: Message, src_node: Hashable, dst_node: Hashable,
                 route: tuple[Link, ...], done: simpy.Event | None, seq: int,
                 batch: Batch | None = None):
        self.msg, self.src_node, self.dst_node = msg, src_node, dst_node
        self.route, self.done, self.seq, self.batch = route, done, seq, batch
        self.attempts = 0  # times put on the wire
        self.charged = False
        self.hop = 0
        self.hop_since = 0.0
        self.resend = False
        self.flow = None
        self.stranded = False
        self.cancelled = False  # dropped while on the wire (an endpoint went offline)


class Network:
    """Links, routing, failures and byte accounting for messages between placed endpoints.

    Args:
        env: the SimPy environment whose clock the network uses.
        graph: an undirected graph whose edges carry ``bandwidth`` (bit/s, from the
            edge's ``forward`` node; ``reverse_bandwidth`` the other way), ``latency``
            (s) and optionally ``loss``; see ``netfl.sim.topology.configure_links``.
            Read once, here.
        placement: endpoint id (learner index or ``"coordinator"``) -> graph node.
        rng: the network's random stream (loss draws only).
        model: ``"flow"`` or ``"store_and_forward"``.
        retransmit_timeout: seconds a sender waits after a loss before resending.
        tcp_window: flow model only: bytes in flight per flow (rate <= window / RTT).
        sharing: flow model only: ``"rtt"`` (SimGrid CM02: shares proportional to
            1 / route latency) or ``"fair"`` (equal shares).
        give_up: seconds after the first send at which an undelivered message is
            dropped (None: never).
        on_lost: called with a message that was dropped.
        on_message: called with a row (MESSAGE_COLUMNS) per delivered or dropped message.

    Counters (end to end, counted when a message is sent): ``messages``,
    ``messages_by_kind``; bytes put on the wire, resends included: ``bytes_up``
    (to the coordinator), ``bytes_down`` (from it), ``bytes_peer``, ``bytes_total``,
    ``bytes_by_kind``; ``retransmissions``, ``bytes_resent``, ``messages_lost``.
    """

    def __init__(
        self,
        env: simpy.Environment,
        graph: nx.Graph,
        placement: dict[Hashable, Hashable],
        *,
        rng: np.random.Generator,
        model: str = "flow",
        retransmit_timeout: float = 0.2,
        tcp_window: float | None = None,
        sharing: str = "rtt",
        give_up: float | None = None,
        on_lost: Callable[[Message], None] | None = None,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ):
        if not (retransmit_timeout >= 0 and math.isfinite(retransmit_timeout)):
            raise ValueError(f"retransmit_timeout must be >= 0 seconds, got {retransmit_timeout}")
        if give_up is not None and not give_up > 0:
            raise ValueError(f"give_up must be > 0 seconds, got {give_up}")
        if model not in MODELS:
            raise ValueError(f"unknown network model {model!r}; expected one of {MODELS}")
        if model == "store_and_forward" and tcp_window is not None:
            raise ValueError("tcp_window needs the flow model")
        self.env = env
        self.graph = graph
        self.rng = rng
        self.model = model
        self.retransmit_timeout = float(retransmit_timeout)
        self.give_up = give_up
        self.on_lost = on_lost
        self.on_message = on_message
        self.on_idle: Callable[[], None] | None = None  # called when nothing is in flight
        self._links = read_links(graph)
        self._link_order: list[Link] | None = None
        self.placement = dict(placement)
        for endpoint, node in self.placement.items():
            if node not in graph:
                raise ValueError(f"endpoint {endpoint!r} is placed on unknown node {node!r}")
        hubs = {self.placement[COORDINATOR]} if COORDINATOR in self.placement else set()
        self.router = Router(self._links, graph.nodes, hubs)
        self._endpoint_routes: dict[tuple[Hashable, Hashable], tuple[Link, ...] | None] = {}
        self._keep: dict[tuple[Link, ...], float | None] = {}  # per route: see _keep_of
        self.transport = (FlowSharing(self, tcp_window, sharing) if model == "flow"
                          else StoreAndForward(self))
        self._edge_down: dict[frozenset, int] = {}
        self._node_down: dict[Hashable, int] = {}
        self.failures_possible = False
        self._stranded: list[Transit] = []
        self._in_flight: dict[int, Transit] = {}
        self._offline: set[Hashable] = set()
        # endpoint -> seqs of its messages in flight; kept from the first offline event on,
        # so taking an endpoint offline reads its own messages, not every message in flight
        self._by_endpoint: dict[Hashable, set[int]] | None = None
        self._seq = itertools.count()
        # (batch, messages) of the last batch delivery event of the current pass: the next
        # arrival of the same batch joins it while nothing else was scheduled in between
        self._tail: tuple[Batch, list[Message]] | None = None
        self.reset_counters()

    # -- counters -------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero every counter and link statistic (what is in flight is kept)."""
        self.messages = 0
        self.messages_by_kind: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_peer = 0
        self.bytes_by_kind: dict[str, int] = {}
        self.retransmissions = 0
        self.bytes_resent = 0
        self.messages_lost = 0
        self.delivered = 0
        self.total_delay = 0.0  # seconds from send to delivery, summed over delivered messages
        for link in self._links.values():
            link.reset()

    @property
    def link_bytes(self) -> dict[tuple[Hashable, Hashable], int]:
        """Bytes put on each directed link ``(u, v)`` that carried any (a fresh dict)."""
        return {(link.u, link.v): link.bytes for link in self._links.values() if link.bytes}

    @property
    def bytes_total(self) -> int:
        """All bytes put on the wire by senders: up + down + peer."""
        return self.bytes_up + self.bytes_down + self.bytes_peer

    @property
    def in_flight(self) -> int:
        """Messages sent and neither delivered nor dropped."""
        return len(self._in_flight)

    def counters(self) -> dict[str, Any]:
        """A snapshot of the counters (copies), e.g. for a metrics row."""
        return {
            "messages": self.messages,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_peer": self.bytes_peer,
            "bytes_total": self.bytes_total,
            "retransmissions": self.retransmissions,
            "bytes_resent": self.bytes_resent,
            "messages_lost": self.messages_lost,
            "messages_by_kind": dict(self.messages_by_kind),
            "bytes_by_kind": dict(self.bytes_by_kind),
            "link_bytes": dict(self.link_bytes),
        }

    def link_stats(self) -> list[dict[str, Any]]:
        """One row per link direction (LINK_COLUMNS), in a fixed order."""
        now = self.env.now
        if self._link_order is None:  # links never change: sort them once
            self._link_order = sorted(self._links.values(),
                                      key=lambda link: (node_key(link.u), node_key(link.v)))
        return [link.stats(now, self.total_delay) for link in self._link_order]

    def most_loaded_link(self) -> dict[str, Any] | None:
        """The link direction with the highest utilisation (ties: most bytes)."""
        rows = [row for row in self.link_stats() if row["bytes"]]
        if not rows:
            return None
        top = max(rows, key=lambda row: (row["utilisation"], row["bytes"]))
        return {"link": f"{top['src_node']}->{top['dst_node']}",
                "utilisation": top["utilisation"], "bytes": top["bytes"],
                "delay_share": top["delay_share"]}

    def _charge(self, msg: Message, size: int) -> None:
        """Charge ``size`` bytes put on the wire to the message's direction and kind."""
        if msg.dst == COORDINATOR:
            self.bytes_up += size
        elif msg.src == COORDINATOR:
            self.bytes_down += size
        else:
            self.bytes_peer += size
        self.bytes_by_kind[msg.kind] = self.bytes_by_kind.get(msg.kind, 0) + size

    def charge_resend(self, transit: Transit) -> None:
        """The transport puts a lost message on the wire again."""
        size = transit.msg.size
        transit.attempts += 1
        self.retransmissions += 1
        self.bytes_resent += size
        self._charge(transit.msg, size)

    # -- sending --------------------------------------------------------------------------------

    def node_of(self, endpoint: Hashable) -> Hashable:
        """The graph node an endpoint is placed on."""
        try:
            return self.placement[endpoint]
        except (KeyError, TypeError):
            raise ValueError(f"unknown endpoint {endpoint!r}: not in the placement") from None

    def add_endpoint(self, endpoint: Hashable, node: Hashable) -> None:
        """Place one more endpoint (a protocol's own, such as an edge aggregator) on ``node``."""
        if node not in self.graph:
            raise ValueError(f"endpoint {endpoint!r} is placed on unknown node {node!r}")
        if endpoint in self.placement and self.placement[endpoint] != node:
            raise ValueError(f"endpoint {endpoint!r} is already placed on "
                             f"{self.placement[endpoint]!r}")
        self.placement[endpoint] = node

    def send(self, msg: Message) -> simpy.Event:
        """Send ``msg`` now; the returned event fires on delivery with ``msg`` as its value."""
        done = self.env.event()
        self._tail = None
        self._send(msg, done, None)
        return done

    def send_many(self, msgs: list[Message], on_arrival: Callable[[list[Message]], None]
                  ) -> None:
        """Send ``msgs`` now, as ``send`` would one after another; ``on_arrival`` is called with
        each list of them that arrives together, in arrival order (see the module docstring).
        It must be picklable state (a bound method, a ``functools.partial``), not a lambda."""
        if not msgs:
            return
        batch = Batch(on_arrival)
        self._tail = None
        transport = self.transport
        if self.model == "flow":
            transport.open_batch()
        try:
            send = self._send
            for msg in msgs:
                send(msg, None, batch)
        finally:
            if self.model == "flow":
                transport.close_batch()
            self._tail = None

    def _send(self, msg: Message, done: simpy.Event | None, batch: Batch | None) -> None:
        try:
            route = self._endpoint_routes[msg.src, msg.dst]
        except (KeyError, TypeError):
            route = self._endpoint_route(msg.src, msg.dst)
        if msg.size < 0:
            raise ValueError(f"message size must be >= 0 bytes, got {msg.size}")
        msg.sent_at = self.env.now
        self.messages += 1
        self.messages_by_kind[msg.kind] = self.messages_by_kind.get(msg.kind, 0) + 1
        if self._offline and (msg.src in self._offline or msg.dst in self._offline):
            transit = Transit(msg, None, None, (), done, next(self._seq), batch)
            self._in_flight[transit.seq] = transit
            self._index(transit)
            self._barrier()
            self.env.timeout(0, transit).callbacks.append(self._drop_now)
            return
        if route is not None and not route:
            self._charge(msg, msg.size)
            msg.delivered_at = self.env.now
            self.delivered += 1
            if self.on_message is not None:
                self.on_message(self._row(msg, 0, 1))
            if batch is None:
                done.succeed(msg)
            else:
                self._join_tail(batch, msg)
            return
        transit = Transit(msg, self.placement[msg.src], self.placement[msg.dst], route or (),
                          done, next(self._seq), batch)
        self._in_flight[transit.seq] = transit
        if self._by_endpoint is not None:
            self._index(transit)
        if route is None:
            self._strand(transit)
        else:
            self._go(transit, route)

    def _join_tail(self, batch: Batch, msg: Message) -> None:
        """Deliver ``msg`` of ``batch``: with the batch's previous arrival when nothing else
        was scheduled since (one event, one callback), else in a new event."""
        tail = self._tail
        if tail is not None and tail[0] is batch:
            tail[1].append(msg)
            return
        arrived = [msg]
        event = self.env.event()
        event.callbacks.append(batch)
        event.succeed(arrived)
        self._tail = (batch, arrived)

    def _barrier(self) -> None:
        """An event is about to be scheduled: later arrivals must not join earlier events,
        nor later flows an earlier latency timer."""
        self._tail = None
        if self.model == "flow":
            self.transport.barrier()

    def end_pass(self) -> None:
        """The transport finished a delivery pass (one event's callback)."""
        self._tail = None

    def _go(self, transit: Transit, route: tuple[Link, ...]) -> None:
        """Put the message on the wire along ``route``: its first attempt or a resend."""
        transit.route = route
        if transit.charged:
            self.charge_resend(transit)
        else:
            transit.charged = True
            transit.attempts = 1
            self._charge(transit.msg, transit.msg.size)
        self._start(transit)

    def _endpoint_route(self, src: Hashable, dst: Hashable) -> tuple[Link, ...] | None:
        """Route between two endpoints' nodes, cached by endpoint pair for ``send``."""
        a, b = self.node_of(src), self.node_of(dst)
        route = self.router.route(a, b)
        if route is None and not self.failures_possible:
            raise ValueError(f"no route between nodes {a!r} and {b!r}: the network is "
                             "disconnected")
        self._endpoint_routes[src, dst] = route
        return route

    def _start(self, transit: Transit) -> None:
        if self.model == "flow":
            route = transit.route
            try:
                keep = self._keep[route]
            except KeyError:
                keep = self._keep_of(route)
            doomed = keep is not None and self.rng.random() >= keep
            self.transport.start(transit, doomed)
        else:
            self.transport.start(transit)

    def _keep_of(self, route: tuple[Link, ...]) -> float | None:
        """Probability that a transfer along ``route`` is not lost (None: no lossy link, no
        draw), cached per route."""
        keep = None
        if any(link.loss for link in route):
            keep = 1.0
            for link in route:
                keep *= 1.0 - link.loss
        self._keep[route] = keep
        return keep

    def arrived(self, transit: Transit) -> None:
        """The transport delivered a message."""
        msg, now = transit.msg, self.env.now
        msg.delivered_at = now
        del self._in_flight[transit.seq]
        if self._by_endpoint is not None:
            self._unindex(transit)
        self.delivered += 1
        self.total_delay += now - msg.sent_at
        if self.on_message is not None:
            self.on_message(self._row(msg, len(transit.route), transit.attempts))
        if transit.batch is None:
            self._tail = None
            transit.done.succeed(msg)
        else:
            self._join_tail(transit.batch, msg)
        if not self._in_flight and self.on_idle is not None:
            self.on_idle()

    def lost(self, transit: Transit) -> None:
        """The transport lost a transfer: the sender resends after its timeout."""
        self._barrier()
        wake = self.env.timeout(self.retransmit_timeout, transit)
        wake.callbacks.append(self._resend)

    def _resend(self, event: simpy.Event) -> None:
        transit: Transit = event.value
        if transit.cancelled:
            return
        if self._expired(transit):
            self._drop(transit)
            return
        route = self.router.route(transit.src_node, transit.dst_node)
        if route is None:
            self._strand(transit)
            return
        self._go(transit, route)

    def _expired(self, transit: Transit) -> bool:
        return self.give_up is not None and self.env.now - transit.msg.sent_at >= (
            self.give_up - 1e-12)

    def _strand(self, transit: Transit) -> None:
        """No route now: keep the message until a route comes back or it is given up."""
        transit.stranded = True
        self._stranded.append(transit)
        if self.give_up is not None:
            self._barrier()
            left = max(transit.msg.sent_at + self.give_up - self.env.now, 0.0)
            self.env.timeout(left, transit).callbacks.append(self._give_up_stranded)

    def _give_up_stranded(self, event: simpy.Event) -> None:
        transit: Transit = event.value
        if transit.stranded:
            transit.stranded = False
            self._stranded.remove(transit)
            self._drop(transit)

    def _drop_now(self, event: simpy.Event) -> None:
        self._drop(event.value)

    def _drop(self, transit: Transit) -> None:
        self._tail = None
        msg = transit.msg
        self.messages_lost += 1
        del self._in_flight[transit.seq]
        if self._by_endpoint is not None:
            self._unindex(transit)
        if self.on_message is not None:
            self.on_message(self._row(msg, len(transit.route), transit.attempts, delivered=False))
        if self.on_lost is not None:
            self.on_lost(msg)
        self._tail = None
        if not self._in_flight and self.on_idle is not None:
            self.on_idle()

    def _row(self, msg: Message, hops: int, attempts: int, delivered: bool = True
             ) -> dict[str, Any]:
        return {"kind": msg.kind, "src": msg.src, "dst": msg.dst, "round": msg.round,
                "bytes": msg.size, "sent_s": msg.sent_at,
                "delivered_s": msg.delivered_at if delivered else "", "hops": hops,
                "attempts": attempts}

    def undelivered_rows(self) -> list[dict[str, Any]]:
        """Rows for the messages still in flight (a run cut by its time horizon)."""
        return [self._row(t.msg, len(t.route), t.attempts, delivered=False)
                for t in self._in_flight.values()]

    # -- failures -------------------------------------------------------------------------------

    def set_link(self, u: Hashable, v: Hashable, up: bool) -> None:
        """Fail (``up=False``) or repair the link u-v, both directions."""
        if (u, v) not in self._links:
            raise ValueError(f"no link ({u!r}, {v!r}) in the network")
        key = frozenset((u, v))
        self._edge_down[key] = self._edge_down.get(key, 0) + (-1 if up else 1)
        self._update_links([(u, v)])

    def set_node(self, node: Hashable, up: bool) -> None:
        """Fail or repair a node: every link that touches it."""
        if node not in self.router.index:
            raise ValueError(f"no node {node!r} in the network")
        self._node_down[node] = self._node_down.get(node, 0) + (-1 if up else 1)
        self._update_links([(node, other) for other in self.graph[node]])

    def set_endpoint(self, endpoint: Hashable, online: bool) -> None:
        """Take an endpoint offline (its messages are lost, see the module docstring) or
        bring it back (new messages go as usual)."""
        self.node_of(endpoint)
        if online:
            self._offline.discard(endpoint)
            return
        if endpoint in self._offline:
            return
        self._offline.add(endpoint)
        if self._by_endpoint is None:  # the first offline event: index what is in flight
            self._by_endpoint = {}
            for transit in self._in_flight.values():
                self._index(transit)
        seqs = sorted(self._by_endpoint.get(endpoint, ()))
        cut = [self._in_flight[q] for q in seqs if not self._in_flight[q].cancelled]
        for transit in cut:
            transit.cancelled = True
            if transit.stranded:
                transit.stranded = False
                self._stranded.remove(transit)
            elif self.model == "flow":
                self.transport.cancel(transit)
            self.env.timeout(0, transit).callbacks.append(self._drop_now)

    def _index(self, transit: Transit) -> None:
        if self._by_endpoint is None:
            return
        for end in (transit.msg.src, transit.msg.dst):
            self._by_endpoint.setdefault(end, set()).add(transit.seq)

    def _unindex(self, transit: Transit) -> None:
        for end in (transit.msg.src, transit.msg.dst):
            seqs = self._by_endpoint.get(end)
            if seqs is not None:
                seqs.discard(transit.seq)

    def is_online(self, endpoint: Hashable) -> bool:
        return endpoint not in self._offline

    def _update_links(self, edges: list[tuple[Hashable, Hashable]]) -> None:
        self.failures_possible = True
        changed, went_down = False, []
        for u, v in edges:
            up = (self._edge_down.get(frozenset((u, v)), 0) <= 0
                  and self._node_down.get(u, 0) <= 0 and self._node_down.get(v, 0) <= 0)
            for link in (self._links[u, v], self._links[v, u]):
                if link.up != up:
                    link.up = up
                    changed = True
                    if not up:
                        went_down.append(link)
        if not changed:
            return
        self.router.changed()
        self._endpoint_routes.clear()
        for link in went_down:
            if self.model == "flow":
                self.transport.abort(link)
        if self._stranded:
            self._retry_stranded()

    def _retry_stranded(self) -> None:
        """Links came back (or changed): stranded messages with a route go now."""
        stranded, self._stranded = self._stranded, []
        for transit in stranded:
            route = self.router.route(transit.src_node, transit.dst_node)
            if route is None:
                self._stranded.append(transit)
                continue
            transit.stranded = False
            self._go(transit, route)

    # -- routing --------------------------------------------------------------------------------

    def path(self, src_node: Hashable, dst_node: Hashable) -> list[Hashable]:
        """Nodes of the lowest-latency route (ties: fewer hops, then a fixed node order)."""
        nodes = self.router.path(src_node, dst_node)
        if nodes is None:
            raise ValueError(f"no route between nodes {src_node!r} and {dst_node!r}: the "
                             "network is disconnected")
        return nodes

    def ideal_delivery_time(self, size: int, src_node: Hashable, dst_node: Hashable) -> float:
        """Seconds to deliver ``size`` bytes on an idle lossless network, in this model."""
        route = self.router.route(src_node, dst_node) or ()
        if self.model == "flow":
            if not route:
                return 0.0
            rate = min(link.bandwidth for link in route)
            latency = sum(link.latency for link in route)
            window = getattr(self.transport, "window_bits", None)
            if window is not None and latency > 0:
                rate = min(rate, window / (2 * latency))
            return size * 8 / rate + latency
        return sum(size * 8 / link.bandwidth + link.latency for link in route)
