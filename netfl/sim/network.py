"""Messages moving over a simulated network of links with bandwidth, latency and loss.

Every edge of the graph is a bidirectional link; each direction ``u -> v`` is
its own FIFO server. A message is forwarded store-and-forward along the
lowest-latency route: at each hop it waits for the link, occupies it for
``size * 8 / bandwidth`` seconds (serialization), then arrives at the next node
``latency`` seconds later (propagation does not occupy the link). A lost
transmission is retried by the sending hop ``retransmit_timeout`` seconds after
it ended, and the resent bytes are charged.

The implementation never starts a SimPy process per message: the queue of a
link is virtual (a ``free_at`` instant), so each hop costs one ``env.timeout``
whose callback moves the message on, and delivery triggers the plain event
that :meth:`Network.send` returned. Arrivals that happen at the same instant
are collected and served in send order by one low-priority flush event, which
keeps FIFO order exact without a process per link.

Routes minimise total latency, then hops; they are symmetric (a reply retraces
its request) and cached per node pair. Routes from the coordinator's node come
from one shortest-path tree computed in scipy, so thousands of learners cost
one Dijkstra.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import simpy
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, dijkstra
from simpy.events import NORMAL

COORDINATOR = "coordinator"

# Same-instant arrivals are flushed after every normal event of that instant.
_AFTER_NORMAL = NORMAL + 1
# Shortest-path trees kept for sources other than the coordinator's node, in node entries.
_TREE_ENTRIES = 1 << 24


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


class _Link:
    """One direction of an edge: its parameters and the instant it becomes free."""

    __slots__ = ("u", "v", "bandwidth", "latency", "loss", "free_at", "bytes")

    def __init__(self, u: Hashable, v: Hashable, bandwidth: float, latency: float, loss: float):
        self.u, self.v = u, v
        self.bandwidth, self.latency, self.loss = bandwidth, latency, loss
        self.free_at = 0.0
        self.bytes = 0  # every attempt over this direction, counted when it starts


class _Transit:
    """A message on its way: the route, the hop it is at, and the event to fire on arrival."""

    __slots__ = ("msg", "route", "hop", "done", "seq", "resend")

    def __init__(self, msg: Message, route: tuple[_Link, ...], done: simpy.Event, seq: int):
        self.msg, self.route, self.done, self.seq = msg, route, done, seq
        self.hop = 0
        self.resend = False


class _Flush(simpy.Event):
    """Fires once all normal events of the current instant ran (like simpy's Timeout, delay 0)."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.callbacks = []
        self._value = None
        self._ok = True
        env.schedule(self, _AFTER_NORMAL)


class Network:
    """Links, routing and byte accounting for messages between placed endpoints.

    Args:
        env: the SimPy environment whose clock the network uses.
        graph: an undirected graph whose edges carry ``bandwidth`` (bit/s),
            ``latency`` (s) and optionally ``loss`` (probability); see
            ``netfl.sim.topology.configure_links``. The attributes are read once,
            here; later changes to the graph are not seen.
        placement: endpoint id (learner index or ``"coordinator"``) -> graph node.
        rng: the network's random stream (used for loss draws only).
        retransmit_timeout: seconds a hop waits after a lost transmission
            ended before it queues the message again.

    Counters (end to end, counted when a message is sent): ``messages``,
    ``messages_by_kind``; bytes put on the wire, resends included:
    ``bytes_up`` (to the coordinator), ``bytes_down`` (from it), ``bytes_peer``,
    ``bytes_total``, ``bytes_by_kind``; network load: ``link_bytes[(u, v)]`` per
    directed link, every hop and every attempt; ``retransmissions``,
    ``bytes_resent``.
    """

    def __init__(
        self,
        env: simpy.Environment,
        graph: nx.Graph,
        placement: dict[Hashable, Hashable],
        *,
        rng: np.random.Generator,
        retransmit_timeout: float = 0.2,
    ):
        if not (retransmit_timeout >= 0 and math.isfinite(retransmit_timeout)):
            raise ValueError(f"retransmit_timeout must be >= 0 seconds, got {retransmit_timeout}")
        self.env = env
        self.graph = graph
        self.rng = rng
        self.retransmit_timeout = float(retransmit_timeout)
        self._links = _read_links(graph)
        self._nodes = sorted(graph, key=_node_key)
        self._index = {node: i for i, node in enumerate(self._nodes)}
        self._latency = _latency_matrix(self._links, self._index)
        self._adjacency = {
            u: [(v, self._links[u, v]) for v in sorted(graph[u], key=_node_key)] for u in graph
        }
        self.placement = dict(placement)
        for endpoint, node in self.placement.items():
            if node not in graph:
                raise ValueError(f"endpoint {endpoint!r} is placed on unknown node {node!r}")
        self._routes: dict[tuple[Hashable, Hashable], tuple[_Link, ...]] = {}
        self._trees: dict[Hashable, np.ndarray] = {}
        self._endpoint_routes: dict[tuple[Hashable, Hashable], tuple[_Link, ...]] = {}
        self._hubs = {self.placement[COORDINATOR]} if COORDINATOR in self.placement else set()
        self._pending: list[_Transit] = []
        self._flush_scheduled = False
        self._seq = itertools.count()
        self.reset_counters()

    # -- counters -------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero every counter (link queues and routes are kept)."""
        self.messages = 0
        self.messages_by_kind: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_peer = 0
        self.bytes_by_kind: dict[str, int] = {}
        self.retransmissions = 0
        self.bytes_resent = 0
        for link in self._links.values():
            link.bytes = 0

    @property
    def link_bytes(self) -> dict[tuple[Hashable, Hashable], int]:
        """Bytes put on each directed link ``(u, v)`` that carried any (a fresh dict)."""
        return {(link.u, link.v): link.bytes for link in self._links.values() if link.bytes}

    @property
    def bytes_total(self) -> int:
        """All bytes put on the wire by senders: up + down + peer."""
        return self.bytes_up + self.bytes_down + self.bytes_peer

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
            "messages_by_kind": dict(self.messages_by_kind),
            "bytes_by_kind": dict(self.bytes_by_kind),
            "link_bytes": dict(self.link_bytes),
        }

    def _charge(self, msg: Message, size: int) -> None:
        """Charge ``size`` bytes put on the wire to the message's direction and kind."""
        if msg.dst == COORDINATOR:
            self.bytes_up += size
        elif msg.src == COORDINATOR:
            self.bytes_down += size
        else:
            self.bytes_peer += size
        self.bytes_by_kind[msg.kind] = self.bytes_by_kind.get(msg.kind, 0) + size

    # -- sending --------------------------------------------------------------------------------

    def node_of(self, endpoint: Hashable) -> Hashable:
        """The graph node an endpoint is placed on."""
        try:
            return self.placement[endpoint]
        except (KeyError, TypeError):
            raise ValueError(f"unknown endpoint {endpoint!r}: not in the placement") from None

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
        self._charge(msg, msg.size)
        done = self.env.event()
        if not route:
            msg.delivered_at = self.env.now
            return done.succeed(msg)
        self._enqueue(_Transit(msg, route, done, next(self._seq)))
        return done

    def _endpoint_route(self, src: Hashable, dst: Hashable) -> tuple[_Link, ...]:
        """Route between two endpoints' nodes, cached by endpoint pair for ``send``."""
        route = self._route(self.node_of(src), self.node_of(dst))
        self._endpoint_routes[src, dst] = route
        return route

    def _enqueue(self, transit: _Transit) -> None:
        """The message is at the head of its next link now; it is served at the flush."""
        self._pending.append(transit)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            _Flush(self.env).callbacks.append(self._flush)

    def _requeue(self, event: simpy.Event) -> None:
        """Retransmission timeout expired: queue the message on the same link again."""
        self._enqueue(event.value)

    def _flush(self, _event: simpy.Event) -> None:
        """Serve this instant's arrivals in send order, so link FIFO order is exact."""
        pending, self._pending = self._pending, []
        self._flush_scheduled = False
        if len(pending) > 1:
            pending.sort(key=_seq_of)
        for transit in pending:
            self._transmit(transit)

    def _transmit(self, transit: _Transit) -> None:
        """Put the message on its current link behind what is already queued there."""
        link, msg, now = transit.route[transit.hop], transit.msg, self.env.now
        size = msg.size
        if transit.resend:
            transit.resend = False
            self.retransmissions += 1
            self.bytes_resent += size
            self._charge(msg, size)
        link.bytes += size
        end = max(now, link.free_at) + size * 8 / link.bandwidth
        link.free_at = end
        if link.loss and self.rng.random() < link.loss:
            transit.resend = True
            wake = self.env.timeout(end + self.retransmit_timeout - now, transit)
            wake.callbacks.append(self._requeue)
        else:
            hop = self.env.timeout(end + link.latency - now, transit)
            hop.callbacks.append(self._arrive)

    def _arrive(self, event: simpy.Event) -> None:
        """The message reached the far end of a link: deliver it or forward it."""
        transit: _Transit = event.value
        transit.hop += 1
        if transit.hop == len(transit.route):
            transit.msg.delivered_at = self.env.now
            transit.done.succeed(transit.msg)
        else:
            self._enqueue(transit)

    # -- routing --------------------------------------------------------------------------------

    def path(self, src_node: Hashable, dst_node: Hashable) -> list[Hashable]:
        """Nodes of the lowest-latency route (ties: fewer hops, then a fixed node order)."""
        route = self._route(src_node, dst_node)
        return [src_node] + [link.v for link in route]

    def ideal_delivery_time(self, size: int, src_node: Hashable, dst_node: Hashable) -> float:
        """Seconds to deliver ``size`` bytes on an idle lossless network."""
        return sum(
            size * 8 / link.bandwidth + link.latency for link in self._route(src_node, dst_node)
        )

    def _route(self, src_node: Hashable, dst_node: Hashable) -> tuple[_Link, ...]:
        """Cached links along the route between two nodes."""
        try:
            return self._routes[src_node, dst_node]
        except KeyError:
            return self._find_route(src_node, dst_node)
        except TypeError:
            raise ValueError(f"unknown node {src_node!r} or {dst_node!r}") from None

    def _find_route(self, a: Hashable, b: Hashable) -> tuple[_Link, ...]:
        """Route a <-> b, cached both ways so that a reply retraces the request.

        Routes touching the coordinator's node come from one shortest-path tree
        grown from it (m learners cost one tree, not m). Between neighbours a
        local search bounded by the direct link's latency suffices (gossip).
        Other routes come from a tree grown from the endpoint that sorts first,
        so that a route never depends on which direction was asked first.
        """
        for node in (a, b):
            if node not in self._index:
                raise ValueError(f"unknown node {node!r}")
        if b in self._hubs and a not in self._hubs:
            source, other = b, a
        elif a in self._hubs or _node_key(a) <= _node_key(b):
            source, other = a, b
        else:
            source, other = b, a
        if source not in self._hubs and (source, other) in self._links:
            nodes = self._local_path(source, other)
        else:
            nodes = self._tree_path(source, other)
        if nodes is None:
            raise ValueError(f"no route between nodes {a!r} and {b!r}: the network is disconnected")
        if source != a:
            nodes.reverse()
        forward = tuple(self._links[u, v] for u, v in itertools.pairwise(nodes))
        backward = tuple(self._links[v, u] for u, v in reversed(list(itertools.pairwise(nodes))))
        self._routes[a, b], self._routes[b, a] = forward, backward
        return forward

    def _tree_path(self, source: Hashable, target: Hashable) -> list[Hashable] | None:
        """Nodes from ``source`` to ``target`` in the (cached) tree grown from ``source``."""
        parents = self._trees.get(source)
        if parents is None:
            parents = _shortest_path_tree(self._latency, self._index[source])
            others = [node for node in self._trees if node not in self._hubs]
            if len(others) >= max(1, _TREE_ENTRIES // len(self._nodes)):
                del self._trees[others[0]]
            self._trees[source] = parents
        i, stop = self._index[target], self._index[source]
        nodes = [target]
        while i != stop:
            i = int(parents[i])
            if i < 0:
                return None
            nodes.append(self._nodes[i])
        nodes.reverse()
        return nodes

    def _local_path(self, source: Hashable, target: Hashable) -> list[Hashable]:
        """Lowest (latency, hops) path to a neighbour: Dijkstra that stops at ``target``.

        Only nodes closer than the direct link are explored, so it costs little
        on any graph size. Neighbours are visited in sorted order and the first
        of equal paths is kept.
        """
        parents: dict[Hashable, Hashable] = {}
        best: dict[Hashable, tuple[float, int]] = {source: (0.0, 0)}
        order = itertools.count(1)
        heap: list[tuple[float, int, int, Hashable, Hashable]] = [(0.0, 0, 0, source, None)]
        while heap:
            latency, hops, _, node, parent = heapq.heappop(heap)
            if node in parents:
                continue
            parents[node] = parent
            if node == target:
                break
            for nbr, link in self._adjacency[node]:
                cost = (latency + link.latency, hops + 1)
                if nbr not in parents and (nbr not in best or cost < best[nbr]):
                    best[nbr] = cost
                    heapq.heappush(heap, (*cost, next(order), nbr, node))
        nodes = [target]
        while nodes[-1] != source:
            nodes.append(parents[nodes[-1]])
        nodes.reverse()
        return nodes


def _latency_matrix(
    links: dict[tuple[Hashable, Hashable], _Link], index: dict[Hashable, int]
) -> csr_array:
    """Directed link latencies as a sparse matrix over node indices (zeros are links too)."""
    rows = np.array([index[u] for u, _ in links], dtype=np.int64)
    cols = np.array([index[v] for _, v in links], dtype=np.int64)
    data = np.array([link.latency for link in links.values()], dtype=float)
    n = len(index)
    return csr_array((data, (rows, cols)), shape=(n, n))


def _shortest_path_tree(latency: csr_array, source: int, limit: float = np.inf) -> np.ndarray:
    """Predecessor of each node on its lowest (latency, hops) path from ``source``.

    Dijkstra (in scipy) gives each node's lowest total latency; the links on
    some lowest-latency path (``dist[u] + latency == dist[v]``, exactly as
    Dijkstra added them) form a subgraph in which a breadth-first search finds
    the fewest hops, ties going to the first node in sorted order. Negative
    entries mark the source and nodes that are unreachable or beyond ``limit``.
    """
    dist = dijkstra(latency, directed=True, indices=source, limit=limit)
    n = latency.shape[0]
    rows = np.repeat(np.arange(n), np.diff(latency.indptr))
    tight = dist[rows] + latency.data == dist[latency.indices]  # inf == inf: both out of reach
    indptr = np.zeros(n + 1, dtype=latency.indptr.dtype)
    np.cumsum(np.bincount(rows[tight], minlength=n), out=indptr[1:])
    indices = latency.indices[tight]
    on_path = csr_array((np.ones(len(indices)), indices, indptr), shape=(n, n))
    _, parents = breadth_first_order(on_path, source, directed=True, return_predecessors=True)
    return parents


def _seq_of(transit: _Transit) -> int:
    return transit.seq


def _node_key(node: Hashable) -> tuple[str, Any]:
    """Sort key that orders ints numerically and never compares unlike types."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return ("", node)
    return (type(node).__name__, str(node))


def _read_links(graph: nx.Graph) -> dict[tuple[Hashable, Hashable], _Link]:
    """Both directions of every edge, validated; errors name the link and attribute."""
    if graph.is_directed() or graph.is_multigraph():
        raise ValueError("the network graph must be an undirected simple graph (nx.Graph)")
    links: dict[tuple[Hashable, Hashable], _Link] = {}
    for u, v, data in graph.edges(data=True):
        if u == v:
            raise ValueError(f"link ({u!r}, {v!r}): self-loops are not links")
        for name in ("bandwidth", "latency"):
            if name not in data:
                raise ValueError(
                    f"link ({u!r}, {v!r}): missing {name!r}; "
                    "set it with netfl.sim.topology.configure_links"
                )
        bandwidth, latency = float(data["bandwidth"]), float(data["latency"])
        loss = float(data.get("loss", 0.0))
        if not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise ValueError(f"link ({u!r}, {v!r}): bandwidth must be > 0, got {bandwidth:g}")
        if not (latency >= 0 and math.isfinite(latency)):
            raise ValueError(f"link ({u!r}, {v!r}): latency must be >= 0, got {latency:g}")
        if not 0 <= loss < 1:
            raise ValueError(f"link ({u!r}, {v!r}): loss must be in [0, 1), got {loss:g}")
        links[u, v] = _Link(u, v, bandwidth, latency, loss)
        links[v, u] = _Link(v, u, bandwidth, latency, loss)
    return links
