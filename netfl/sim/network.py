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

Array batches: in the flow model a batch moves as numpy arrays (netfl.sim.flow_batch),
with no Transit or Flow object per message, when nothing else is in flight in the flow
model and every message has a route that is up, non-empty, lossless and with latency,
and both ends online. Its layout (routes as link keys, rate bounds, weights) is built
once per sequence of endpoint pairs; uploads to and broadcasts from the coordinator find
all their routes at once in the coordinator's shortest-path tree. While it runs, and
until the object path next needs them, link statistics live in arrays
(``flow_batch.LinkArrays``); ``link_stats`` and the counters read them through. Another
message sent while the batch is in flight, a link failure, an endpoint going offline or
a counter reset first hands the batch to the object path in the exact state it would
have there. Any other batch (loss, a busy network, an empty route, store-and-forward)
takes the object path. Results are bit for bit the same either way (tests/test_flow_batch.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import simpy

from netfl.sim.flow import FlowSharing
from netfl.sim.flow_batch import FlowBatch, Layout, LinkArrays
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


class Columns:
    """The messages of one batch as columns: Message objects are made only when asked for
    (``message``), once each, so an array batch that nobody inspects message by message
    makes none. ``kind`` and ``round`` are the batch's (None: they differ, see ``kinds``
    and ``rounds``); ``payload`` is the one payload every message shares, else ``payloads``
    holds one each."""

    __slots__ = ("n", "kind", "kinds", "srcs", "dsts", "round", "rounds", "payload",
                 "payloads", "sizes", "sent_at", "delivered_at", "objs")

    def __init__(self, kind: str | None, srcs: list, dsts: list, rnd: int | None,
                 payload: Any, payloads: list | None, sizes: np.ndarray,
                 objs: list[Message | None] | None = None, kinds: list[str] | None = None,
                 rounds: list[int] | None = None) -> None:
        self.n = len(srcs)
        self.kind, self.kinds, self.srcs, self.dsts = kind, kinds, srcs, dsts
        self.round, self.rounds, self.payload, self.payloads = rnd, rounds, payload, payloads
        self.sizes = sizes
        self.sent_at = 0.0
        self.delivered_at = np.zeros(self.n)
        self.objs: list[Message | None] = [None] * self.n if objs is None else objs

    @classmethod
    def of(cls, msgs: list[Message]) -> Columns:
        """Columns of existing messages (which stay the batch's messages)."""
        kinds = [msg.kind for msg in msgs]
        rounds = [msg.round for msg in msgs]
        kind = kinds[0] if kinds.count(kinds[0]) == len(kinds) else None
        rnd = rounds[0] if rounds.count(rounds[0]) == len(rounds) else None
        sizes = np.array([msg.size for msg in msgs], dtype=np.int64)
        return cls(kind, [msg.src for msg in msgs], [msg.dst for msg in msgs], rnd, None,
                   [msg.payload for msg in msgs], sizes, list(msgs), kinds, rounds)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> Message:
        return self.message(row)

    def message(self, row: int) -> Message:
        """Message ``row`` (made on first use, with its send and delivery times)."""
        msg = self.objs[row]
        if msg is None:
            msg = self.objs[row] = Message(
                self.kind if self.kinds is None else self.kinds[row], self.srcs[row],
                self.dsts[row], self.round if self.rounds is None else self.rounds[row],
                self.payload if self.payloads is None else self.payloads[row],
                int(self.sizes[row]), self.sent_at, float(self.delivered_at[row]))
        return msg

    def messages(self) -> list[Message]:
        return [self.message(row) for row in range(self.n)]


class Arrived(Sequence):
    """Messages of an array batch that arrived together: a read-only list of Message
    objects (made when read), plus their columns (``srcs``, ``dsts``, ``payloads``,
    ``round``) for callbacks that take a batch at once."""

    __slots__ = ("columns", "rows")

    def __init__(self, columns: Columns, rows: list[int]) -> None:
        self.columns, self.rows = columns, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return Arrived(self.columns, self.rows[key])
        return self.columns.message(self.rows[key])

    def __iter__(self) -> Iterator[Message]:
        message = self.columns.message
        return (message(row) for row in self.rows)

    @property
    def round(self) -> int | None:
        """The round of every message here (None: they differ)."""
        columns = self.columns
        if columns.rounds is None:
            return columns.round
        rounds = [columns.rounds[row] for row in self.rows]
        return rounds[0] if rounds and rounds.count(rounds[0]) == len(rounds) else None

    @property
    def srcs(self) -> list:
        srcs = self.columns.srcs
        return [srcs[row] for row in self.rows]

    @property
    def dsts(self) -> list:
        dsts = self.columns.dsts
        return [dsts[row] for row in self.rows]

    @property
    def payloads(self) -> list:
        columns = self.columns
        if columns.payloads is None:
            return [columns.payload] * len(self.rows)
        return [columns.payloads[row] for row in self.rows]


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
        self._next_seq = 0  # seq of the next transit (an array batch takes a range)
        self._array: FlowBatch | None = None  # the batch moving as arrays (netfl.sim.flow_batch)
        self._array_live = 0  # its messages not yet delivered
        self.array_batches = 0  # batches that took the array path (for benchmarks)
        # per endpoint pair: route, its links' keys, latency, rate bound, sharing weight,
        # whether lossy, direction (0 up, 1 down, 2 peer); dropped when routes change
        self._pair_info: dict[tuple[Hashable, Hashable], tuple[Any, ...]] = {}
        self._store: LinkArrays | None = None  # link state as arrays (flow_batch.LinkArrays)
        self._layouts: dict[tuple[tuple, tuple], Layout | None] = {}  # by endpoint pairs
        self._by_key: list[Link] | None = None  # links by key
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
        self._unstore()
        for link in self._links.values():
            link.reset()

    @property
    def link_bytes(self) -> dict[tuple[Hashable, Hashable], int]:
        """Bytes put on each directed link ``(u, v)`` that carried any (a fresh dict)."""
        self._sync()
        return {(link.u, link.v): link.bytes for link in self._links.values() if link.bytes}

    @property
    def bytes_total(self) -> int:
        """All bytes put on the wire by senders: up + down + peer."""
        return self.bytes_up + self.bytes_down + self.bytes_peer

    @property
    def in_flight(self) -> int:
        """Messages sent and neither delivered nor dropped."""
        return len(self._in_flight) + self._array_live

    def _sync(self) -> None:
        """Bring the links' attributes up to date (array batches keep them in arrays)."""
        if self._store is not None:
            self._store.write(keep=self._array is not None)

    def _unstore(self) -> None:
        """The object path needs the links: an array batch in flight becomes the object
        path's flows and the links get their values back from the arrays."""
        if self._array is not None:
            self.transport.materialize()
        if self._store is not None:
            self._store.write()

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

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
        self._sync()
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
        if self.model == "flow" and len(msgs) > 1 and self.transport.idle() and (
                self._send_array(Columns.of(msgs), batch)):
            return
        self._send_objects(msgs, batch)

    def send_columns(self, kind: str, srcs: list, dsts: list, rnd: int, payload: Any,
                     payloads: list | None, sizes: list[int],
                     on_arrival: Callable[[Sequence[Message]], None]) -> None:
        """``send_many`` of one message per (srcs[i], dsts[i]) of ``kind`` and round
        ``rnd``, carrying ``payload`` (one shared object) or ``payloads[i]``, of
        ``sizes[i]`` bytes; Message objects are made only where needed (``Columns``), and
        ``on_arrival`` may get an ``Arrived`` (a sequence of messages with columns)."""
        if not srcs:
            return
        batch = Batch(on_arrival)
        self._tail = None
        columns = Columns(kind, srcs, dsts, rnd, payload, payloads,
                          np.array(sizes, dtype=np.int64))
        if self.model == "flow" and len(srcs) > 1 and self.transport.idle() and (
                self._send_array(columns, batch)):
            return
        self._send_objects(columns.messages(), batch)

    def _send_objects(self, msgs: list[Message], batch: Batch) -> None:
        """The object path of a batch: one Transit (and Flow) per message."""
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

    def _pair_info_of(self, src: Hashable, dst: Hashable) -> tuple[Any, ...]:
        """What an array batch needs of the route between two endpoints (cached)."""
        try:
            route = self._endpoint_routes[src, dst]
        except (KeyError, TypeError):
            route = self._endpoint_route(src, dst)
        if not route:
            info: tuple[Any, ...] = (route, (), 0.0, math.inf, 1.0, True, 0)
        else:
            latency, bound, weight = self.transport._params_of(route)
            direction = 0 if dst == COORDINATOR else 1 if src == COORDINATOR else 2
            info = (route, tuple(link.key for link in route), latency, bound, weight,
                    any(link.loss for link in route), direction)
        self._pair_info[src, dst] = info
        return info

    def _layout(self, msgs: Columns) -> Layout | None:
        """The batch layout of ``msgs``' endpoint pairs (cached per sequence of pairs), or
        None when some route is missing, empty, lossy or without latency."""
        try:
            key = (tuple(msgs.srcs), tuple(msgs.dsts))
            return self._layouts[key]
        except KeyError:
            pass
        except TypeError:  # an endpoint id that cannot be hashed: the object path
            return None
        if self._by_key is None:
            self._by_key = sorted(self._links.values(), key=lambda link: link.key)
        layout = self._star_layout(*key)
        if layout is False:
            pair_info, info_of = self._pair_info, self._pair_info_of
            infos = [pair_info.get(pair) or info_of(*pair) for pair in zip(*key)]
            layout = None
            if all(not info[5] and info[2] > 0 for info in infos):
                n = len(infos)
                keys: list[int] = []
                for info in infos:
                    keys.extend(info[1])
                layout = Layout(
                    keys, np.fromiter((len(info[1]) for info in infos), dtype=np.int64, count=n),
                    np.fromiter((info[3] for info in infos), dtype=np.float64, count=n),
                    np.fromiter((info[4] for info in infos), dtype=np.float64, count=n),
                    np.fromiter((info[2] for info in infos), dtype=np.float64, count=n),
                    np.fromiter((info[6] for info in infos), dtype=np.int8, count=n),
                    self._by_key)
        if len(self._layouts) >= 8:
            del self._layouts[next(iter(self._layouts))]
        self._layouts[key] = layout
        return layout

    def _star_layout(self, srcs: tuple, dsts: tuple) -> Layout | None | bool:
        """The layout of uploads to, or a broadcast from, the coordinator, found for all
        endpoints at once in the coordinator's shortest-path tree (``Router.tree_routes``):
        the same routes, latencies (summed hop by hop), bounds and weights as per pair.
        False when the batch is not one of those (the caller goes pair by pair)."""
        up = dsts[0] == COORDINATOR and dsts.count(COORDINATOR) == len(dsts)
        if up:
            others = srcs
        elif srcs[0] == COORDINATOR and srcs.count(COORDINATOR) == len(srcs):
            others = dsts
        else:
            return False
        placement = self.placement
        try:
            if COORDINATOR in others:
                return False
            targets = [placement[end] for end in others]
        except (KeyError, TypeError):
            return False
        found = self.router.tree_routes(placement[COORDINATOR], targets, outward=not up)
        if found is None:
            return False
        hops, keys = found
        store = self._store
        if store is None:
            store = self._store = LinkArrays(self._by_key)
        n = len(hops)
        latency = np.zeros(n)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(hops, out=indptr[1:])
        for k in range(int(hops.max())):  # latency += link.latency, hop by hop, as _params_of
            rows = np.flatnonzero(hops > k)
            latency[rows] += store.lat[keys[indptr[rows] + k]]
        if not (latency > 0).all() or store.loss[keys].any():
            return None
        transport = self.transport  # as FlowSharing._params_of, route by route
        window = transport.window_bits
        bound = np.full(n, math.inf) if window is None else window / (2 * latency)
        weight = 1.0 / latency if transport.sharing == "rtt" else np.ones(n)
        return Layout(keys, hops, bound, weight, latency,
                      np.full(n, 0 if up else 1, dtype=np.int8), self._by_key)

    def _send_array(self, msgs: Columns, batch: Batch) -> bool:
        """Send ``msgs`` as one array batch (netfl.sim.flow_batch) when that is exactly the
        object path: nothing else in flight in the flow model, every route up, non-empty,
        lossless and of latency > 0, no endpoint offline, no negative size.
        Returns False (nothing done) otherwise."""
        layout = self._layout(msgs)
        if layout is None:
            return False
        n, sizes = msgs.n, msgs.sizes
        if sizes.min() < 0:
            return False
        offline = self._offline
        if offline and any(end in offline for ends in (msgs.srcs, msgs.dsts) for end in ends):
            return False
        per_direction = np.bincount(layout.directions, weights=sizes, minlength=3)
        if per_direction.max() >= 2**53:
            return False  # float sums no longer exact: the object path's int sums
        now = self.env.now
        self.messages += n
        self.bytes_up += int(per_direction[0])
        self.bytes_down += int(per_direction[1])
        self.bytes_peer += int(per_direction[2])
        by_kind, bytes_kind = self.messages_by_kind, self.bytes_by_kind
        if msgs.kind is not None:
            by_kind[msgs.kind] = by_kind.get(msgs.kind, 0) + n
            bytes_kind[msgs.kind] = bytes_kind.get(msgs.kind, 0) + int(sizes.sum())
        else:
            for kind, size in zip(msgs.kinds, sizes.tolist()):
                by_kind[kind] = by_kind.get(kind, 0) + 1
                bytes_kind[kind] = bytes_kind.get(kind, 0) + size
        msgs.sent_at = now
        for msg in msgs.objs:
            if msg is not None:
                msg.sent_at = now
        if self._store is None:
            self._store = LinkArrays(self._by_key)
        seq0 = self._next_seq
        self._next_seq += n
        self._array_live = n
        self.array_batches += 1
        self._array = FlowBatch(self.transport, self._store, batch, msgs, sizes, layout, seq0)
        return True

    def arrived_many(self, array: FlowBatch, rows: np.ndarray) -> None:
        """``arrived`` for rows of an array batch that finished together, in order, as one
        transport delivery pass."""
        self._tail = None
        now, msgs = self.env.now, array.msgs
        order = rows.tolist()
        msgs.delivered_at[rows] = now
        objs = msgs.objs
        for row in order:
            msg = objs[row]
            if msg is not None:
                msg.delivered_at = now
        on_message = self.on_message
        if on_message is None:
            # one addition per message in order, as the object path sums (accumulate is
            # sequential, not pairwise: the same float bits)
            steps = np.full(len(order) + 1, now - msgs.sent_at)
            steps[0] = self.total_delay
            self.total_delay = float(np.add.accumulate(steps)[-1])
            self.delivered += len(order)
            self._array_live -= len(order)
        else:
            for row, hop in zip(order, array.hops(rows)):
                msg = msgs.message(row)
                self._array_live -= 1
                self.delivered += 1
                self.total_delay += now - msg.sent_at
                on_message(self._row(msg, hop, 1))
        if not self._array_live:
            self._array = None
        event = self.env.event()
        event.callbacks.append(array.batch)
        event.succeed(Arrived(msgs, order))
        if not self._in_flight and not self._array_live and self.on_idle is not None:
            self.on_idle()
        self._tail = None

    def adopt(self, transit: Transit) -> None:
        """A message of an array batch becomes an object-path transit (materialize)."""
        self._in_flight[transit.seq] = transit
        if self._by_endpoint is not None:
            self._index(transit)

    def array_done(self, array: FlowBatch) -> None:
        """The array batch was handed to the object path."""
        self._array_live = 0
        self._array = None

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
            transit = Transit(msg, None, None, (), done, self._take_seq(), batch)
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
                          done, self._take_seq(), batch)
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
        rows = [(t.seq, self._row(t.msg, len(t.route), t.attempts, delivered=False))
                for t in self._in_flight.values()]
        if self._array is not None:
            rows += self._array.rows(self._row)
        rows.sort(key=lambda pair: pair[0])  # send order, as the object path keeps them
        return [row for _, row in rows]

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
        if not online and endpoint not in self._offline:
            self._unstore()
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
        self._unstore()
        self.router.changed()
        self._endpoint_routes.clear()
        self._pair_info.clear()
        self._layouts.clear()
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
