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


class Transit:
    """A message on its way: route, attempts, and the event to fire on arrival."""

    __slots__ = ("msg", "src_node", "dst_node", "route", "done", "seq", "attempts", "hop",
                 "hop_since", "resend", "flow", "stranded", "charged", "cancelled")

    def __init__(self, msg: Message, src_node: Hashable, dst_node: Hashable,
                 route: tuple[Link, ...], done: simpy.Event, seq: int):
        self.msg, self.src_node, self.dst_node = msg, src_node, dst_node
        self.route, self.done, self.seq = route, done, seq
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
        try:
            route = self._endpoint_routes[msg.src, msg.dst]
        except (KeyError, TypeError):
            route = self._endpoint_route(msg.src, msg.dst)
        if msg.size < 0:
            raise ValueError(f"message size must be >= 0 bytes, got {msg.size}")
        msg.sent_at = self.env.now
        self.messages += 1
        self.messages_by_kind[msg.kind] = self.messages_by_kind.get(msg.kind, 0) + 1
        done = self.env.event()
        if self._offline and (msg.src in self._offline or msg.dst in self._offline):
            transit = Transit(msg, None, None, (), done, next(self._seq))
            self._in_flight[transit.seq] = transit
            self._index(transit)
            self.env.timeout(0, transit).callbacks.append(self._drop_now)
            return done
        if route is not None and not route:
            self._charge(msg, msg.size)
            msg.delivered_at = self.env.now
            self.delivered += 1
            if self.on_message is not None:
                self.on_message(self._row(msg, 0, 1))
            return done.succeed(msg)
        transit = Transit(msg, self.placement[msg.src], self.placement[msg.dst], route or (),
                          done, next(self._seq))
        self._in_flight[transit.seq] = transit
        if self._by_endpoint is not None:
            self._index(transit)
        if route is None:
            self._strand(transit)
        else:
            self._go(transit, route)
        return done

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
            doomed = False
            if any(link.loss for link in transit.route):
                keep = 1.0
                for link in transit.route:
                    keep *= 1.0 - link.loss
                doomed = self.rng.random() >= keep
            self.transport.start(transit, doomed)
        else:
            self.transport.start(transit)

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
        transit.done.succeed(msg)
        if not self._in_flight and self.on_idle is not None:
            self.on_idle()

    def lost(self, transit: Transit) -> None:
        """The transport lost a transfer: the sender resends after its timeout."""
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
        msg = transit.msg
        self.messages_lost += 1
        del self._in_flight[transit.seq]
        if self._by_endpoint is not None:
            self._unindex(transit)
        if self.on_message is not None:
            self.on_message(self._row(msg, len(transit.route), transit.attempts, delivered=False))
        if self.on_lost is not None:
            self.on_lost(msg)
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
