"""Hierarchical averaging (HierFAVG, Liu et al. 2020): edge aggregators between learners and root.

Schedule. Every ``b`` rounds (HierFAVG's kappa1 local steps) each learner sends its
model to its edge aggregator (``edge_model``); the aggregator averages its group
(plain mean) and sends the average back (``edge_avg``). Every ``b_global`` edge
aggregations (kappa2), i.e. at rounds that are multiples of ``b * b_global``, the
edge step is replaced by a cloud step: each aggregator sends its group mean and the
number of models in it to the coordinator (``cloud_model``), the coordinator takes
the count-weighted mean, which is the mean of every model that reached an
aggregator, sends it to the aggregators (``cloud_avg``), and they forward those same
bytes to their learners (``edge_avg``). With ``b_global = 1`` every aggregation is
global and the models equal periodic averaging's with the same ``b`` (up to float
rounding: the mean is taken in two stages).

Groups. An edge aggregator is an endpoint ``"edge:<node>"`` placed on a graph node.
By default a learner's aggregator sits on the node one hop from the learner's node
towards the coordinator's (on a hierarchy: its switch); a learner on the
coordinator's node, or one hop from it, belongs to the coordinator's own group,
aggregated by an endpoint co-located with the coordinator. With ``edges`` given,
a learner's aggregator is the first node on its route to the coordinator (its own
node included) that is listed, else the coordinator's node. Routes and groups are
fixed when the run is built, on the network with every link up.

The engine's network only routes placed endpoints, so the protocol places its
aggregator endpoints with ``Network.add_endpoint`` when it is built (routes are
found lazily per endpoint pair). Messages between two
endpoints on one node (the coordinator's own aggregator) take no link and are
delivered at once, but are charged like every message, as the network does for
any endpoints sharing a node. Bytes: ``cloud_model`` counts as ``bytes_up``,
``cloud_avg`` as ``bytes_down``, learner <-> aggregator traffic as ``bytes_peer``.

Payloads are full float32 models (netfl.sim.wire); ``cloud_model`` carries a uint32
model count before the vector. Compression codecs are refused for now.

Losses (``network.give_up``): an upload the network gives up is no longer expected,
and its receiver averages the rest; an aggregator that receives nothing sends
nothing and its waiting learners carry on with their own models; the coordinator
likewise, and then every waiting learner of the round carries on. Aggregates are
sent to every learner of the group (to every aggregator that sent, at the root),
also to those whose upload was lost; a lost ``cloud_avg`` or ``edge_avg`` lets its
waiting learners carry on.

Counters: ``edge_syncs`` counts group averages sent back by aggregators at edge-only
rounds (one per aggregator and round), ``cloud_syncs`` (and ``syncs``) the global
averages the coordinator computed (one per cloud round).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import Field

from netfl.protocols.base import Protocol
from netfl.schema import Node, Section
from netfl.sim import wire
from netfl.sim.interface import COORDINATOR, SimulationAPI
from netfl.sim.routing import node_key

_COUNT = struct.Struct("<I")  # models averaged into a cloud_model, before its vector
KINDS = ("edge_model", "edge_avg", "cloud_model", "cloud_avg")


class HierarchicalConfig(Section):
    name: Literal["hierarchical"]
    b: int = Field(default=5, ge=1, description="rounds between edge aggregations "
                   "(HierFAVG's kappa1)")
    b_global: int = Field(default=2, ge=1, description="edge aggregations per cloud "
                          "aggregation (kappa2): the coordinator averages every b * b_global "
                          "rounds")
    edges: list[Node] | None = Field(
        default=None, description="nodes of the edge aggregators; a learner uses the first "
        "on its route to the coordinator, else the coordinator's own group (default: the "
        "node one hop from each learner towards the coordinator)")
    wait: bool = True


def _user_error(message: str) -> Exception:
    from netfl.scenario import ScenarioError  # lazy: netfl.scenario imports the registry

    return ScenarioError(message)


def endpoint(node: Hashable) -> str:
    """The endpoint id of the edge aggregator on ``node``."""
    return f"edge:{node}"


class Hierarchical(Protocol):
    name = "hierarchical"
    Config = HierarchicalConfig
    synchronizes = True
    counters = ("edge_syncs", "cloud_syncs")
    message_kinds = KINDS

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        channel = sim.make_channel(seed=self.channel_seed())
        if channel.uplink is not None or channel.downlink is not None:
            raise _user_error("compression: the hierarchical protocol sends full float32 "
                              "models; codecs are not supported for it yet")
        self.b = int(config.b)
        self.period = self.b * int(config.b_global)  # rounds between cloud aggregations
        self.wait: bool = config.wait
        net = sim.network
        self.nodes, self.group_of = assign_groups(net, sim.m, config.edges)
        self.endpoints = [endpoint(node) for node in self.nodes]
        self.index = {ep: k for k, ep in enumerate(self.endpoints)}
        for ep, node in zip(self.endpoints, self.nodes):
            net.add_endpoint(ep, node)
        self.groups = [np.flatnonzero(self.group_of == k) for k in range(len(self.nodes))]
        self.received = np.zeros(sim.m, dtype=np.int64)  # latest round whose average arrived
        self.edge_inbox: dict[tuple[int, int], list[bytes]] = {}
        self.edge_pending: dict[tuple[int, int], set[int]] = {}  # members yet to upload
        self.edge_closed: set[tuple[int, int]] = set()
        self.cloud_inbox: dict[int, list[bytes]] = {}
        self.cloud_waiting: dict[int, set[int]] = {}  # aggregators a cloud_model may come from
        self.cloud_closed: set[int] = set()
        self.cloud_sent: dict[int, list[int]] = {}  # aggregators that sent a cloud_model
        self.last_down: list[tuple[bytes, int] | None] = [None] * len(self.nodes)
        self._down: dict[int, list[Any]] = {}  # id(payload) -> [payload, model, receivers left]
        for name in self.counters:
            sim.counters[name] = 0

    def syncs_at(self, rnd: int) -> bool:
        return rnd % self.b == 0

    def cloud_at(self, rnd: int) -> bool:
        return rnd % self.period == 0

    def summary(self) -> dict[str, Any]:
        return {"edge_aggregators": {str(node): len(group)
                                     for node, group in zip(self.nodes, self.groups)},
                "edge_syncs": self.sim.counters["edge_syncs"],
                "cloud_syncs": self.sim.counters["cloud_syncs"]}

    # ----------------------------------------------------------------- learners

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        sim = self.sim
        for rnd in np.unique(rounds):
            rnd = int(rnd)
            if not self.syncs_at(rnd):
                continue
            senders = learners[rounds == rnd]
            if self.wait:
                sim.block(senders)
            payloads = wire.encode_vectors(*self._models_to_send(senders))
            for learner, payload in zip(senders, payloads):
                agg = int(self.group_of[learner])
                self._edge_open((agg, rnd))
                event = sim.send("edge_model", int(learner), self.endpoints[agg], rnd, payload)
                event.callbacks.append(self._on_edge_model)

    def _edge_open(self, key: tuple[int, int]) -> None:
        """Expect round ``rnd``'s models from the group's members that are online."""
        if key in self.edge_pending or key in self.edge_closed:
            return
        members = self.groups[key[0]]
        self.edge_pending[key] = set(members[self.sim.online[members]].tolist())

    def _cloud_open(self, rnd: int) -> None:
        """Expect a cloud_model of round ``rnd`` from every aggregator with a member online
        or one whose round is already open."""
        if rnd in self.cloud_waiting or rnd in self.cloud_closed:
            return
        online = self.sim.online
        self.cloud_waiting[rnd] = {k for k, members in enumerate(self.groups)
                                   if online[members].any() or (k, rnd) in self.edge_pending}

    def _on_edge_avg(self, event: simpy.Event) -> None:
        msg = event.value
        model = self._take_down(msg.payload)
        learner = msg.dst
        if msg.round >= self.received[learner]:  # never step back to an older average
            self.received[learner] = msg.round
            self.sim.deliver(learner, model)
        self._resume(learner, msg.round)

    def _resume(self, learner: int, rnd: int) -> None:
        """The learner waiting for round ``rnd``'s average carries on."""
        sim = self.sim
        if self.wait and sim.blocked[learner] and sim.rounds_done[learner] <= rnd:
            sim.unblock(int(learner))

    def _release(self, agg: int, rnd: int) -> None:
        """No average of round ``rnd`` will reach group ``agg``: its learners carry on."""
        for learner in self.groups[agg]:
            self._resume(int(learner), rnd)

    # ---------------------------------------------------------------- edge tier

    def _on_edge_model(self, event: simpy.Event) -> None:
        msg = event.value
        key = (self.index[msg.dst], msg.round)
        if key in self.edge_closed:  # a member that came back after its group averaged
            self.sim.counters["messages_late"] += 1
            self._resume(msg.src, msg.round)
            return
        self.edge_inbox.setdefault(key, []).append(msg.payload)
        self.edge_pending[key].discard(msg.src)
        self._edge_check(key)

    def _edge_check(self, key: tuple[int, int]) -> None:
        if self.edge_pending[key]:
            return
        del self.edge_pending[key]
        self.edge_closed.add(key)
        box = self.edge_inbox.pop(key, [])
        agg, rnd = key
        if not box:  # every upload was given up: no group average this round
            self._release(agg, rnd)
            if self.cloud_at(rnd):
                self._cloud_open(rnd)
                self._cloud_drop(rnd, agg)
            return
        mean = wire.decode_vectors(box, self.sim.bank.device, in_place=True).mean(dim=0)
        if not self.cloud_at(rnd):
            self.sim.counters["edge_syncs"] += 1
            self._send_down(agg, rnd, wire.encode_vector(mean))
            return
        self._cloud_open(rnd)
        if rnd not in self.cloud_closed:
            self.cloud_waiting[rnd].add(agg)
        self.cloud_sent.setdefault(rnd, []).append(agg)
        payload = _COUNT.pack(len(box)) + wire.encode_vector(mean)
        event = self.sim.send("cloud_model", self.endpoints[agg], COORDINATOR, rnd, payload)
        event.callbacks.append(self._on_cloud_model)

    def _send_down(self, agg: int, rnd: int, payload: bytes,
                   learners: np.ndarray | None = None) -> None:
        """The round's average to every learner of the group (one decode for all of them)."""
        if learners is None:
            learners = self.groups[agg]
            self.last_down[agg] = (payload, rnd)
        entry = self._down.setdefault(id(payload), [payload, None, 0])
        entry[2] += len(learners)
        for learner in learners:
            event = self.sim.send("edge_avg", self.endpoints[agg], int(learner), rnd, payload)
            event.callbacks.append(self._on_edge_avg)

    def _take_down(self, payload: bytes) -> torch.Tensor | None:
        """The model in an edge_avg payload, decoded once however many learners receive it."""
        entry = self._down[id(payload)]
        if entry[1] is None:
            entry[1] = wire.decode_vector(payload, self.sim.bank.device)
        entry[2] -= 1
        if entry[2] <= 0:
            del self._down[id(payload)]
        return entry[1]

    def _on_cloud_avg(self, event: simpy.Event) -> None:
        msg = event.value
        self._send_down(self.index[msg.dst], msg.round, msg.payload)  # forward the same bytes

    # ---------------------------------------------------------------- the root

    def _on_cloud_model(self, event: simpy.Event) -> None:
        msg = event.value
        agg = self.index[msg.src]
        if msg.round in self.cloud_closed:  # its group came back after the root averaged
            self.sim.counters["messages_late"] += 1
            self._release(agg, msg.round)
            return
        self.cloud_inbox.setdefault(msg.round, []).append(msg.payload)
        self._cloud_drop(msg.round, agg)

    def _cloud_drop(self, rnd: int, agg: int) -> None:
        """No (further) cloud_model of round ``rnd`` will come from ``agg``."""
        if rnd in self.cloud_closed:
            return
        self.cloud_waiting[rnd].discard(agg)
        self._cloud_check(rnd)

    def _cloud_check(self, rnd: int) -> None:
        if self.cloud_waiting[rnd]:
            return
        del self.cloud_waiting[rnd]
        self.cloud_closed.add(rnd)
        box = self.cloud_inbox.pop(rnd, [])
        senders = sorted(self.cloud_sent.pop(rnd, []))
        if not box:  # nothing reached the coordinator: every waiting learner carries on
            for agg in senders:
                self._release(agg, rnd)
            return
        counts = torch.tensor([_COUNT.unpack_from(p)[0] for p in box], dtype=torch.float64)
        means = wire.decode_vectors([p[_COUNT.size:] for p in box], self.sim.bank.device)
        weights = (counts / counts.sum()).to(means.device)
        mean = (weights[:, None] * means.double()).sum(dim=0).to(torch.float32)
        self.sim.counters["syncs"] += 1
        self.sim.counters["cloud_syncs"] += 1
        payload = wire.encode_vector(mean)
        for agg in senders:
            event = self.sim.send("cloud_avg", COORDINATOR, self.endpoints[agg], rnd, payload)
            event.callbacks.append(self._on_cloud_avg)

    # ------------------------------------------------------------------ losses

    def on_lost(self, msg: Any) -> None:
        if msg.kind == "edge_model":
            key = (self.index[msg.dst], msg.round)
            if key in self.edge_pending:
                self.edge_pending[key].discard(msg.src)
                self._edge_check(key)
        elif msg.kind == "edge_avg":
            self._take_down(msg.payload)
            self._resume(msg.dst, msg.round)
        elif msg.kind == "cloud_model":
            self._cloud_drop(msg.round, self.index[msg.src])
        elif msg.kind == "cloud_avg":
            self._release(self.index[msg.dst], msg.round)

    def on_offline(self, learners: np.ndarray) -> None:
        """Members that went offline are no longer expected by their aggregator; an
        aggregator left with no member online is no longer expected by the root."""
        gone = set(learners.tolist())
        for key in [k for k, pending in self.edge_pending.items() if pending & gone]:
            self.edge_pending[key] -= gone
            self._edge_check(key)
        online = self.sim.online
        for rnd in list(self.cloud_waiting):
            for agg in list(self.cloud_waiting.get(rnd, ())):
                if (agg, rnd) not in self.edge_pending and (agg, rnd) not in self.edge_closed \
                        and not online[self.groups[agg]].any():
                    self._cloud_drop(rnd, agg)

    def on_online(self, learners: np.ndarray) -> None:
        """A member that comes back downloads its aggregator's last average first."""
        for learner in learners.tolist():
            agg = int(self.group_of[learner])
            last = self.last_down[agg]
            if last is None:
                continue
            if self.wait:
                self.sim.block(np.array([learner]))
            self._send_down(agg, last[1], last[0], np.array([learner]))


def assign_groups(network: Any, m: int, edges: list[Hashable] | None
                  ) -> tuple[list[Hashable], np.ndarray]:
    """The aggregators' nodes (sorted) and each learner's aggregator index (see the module)."""
    hub = network.node_of(COORDINATOR)
    listed = None
    if edges is not None:
        for node in edges:
            if node not in network.graph:
                raise _user_error(f"protocol.edges: node {node!r} is not in the network")
        listed = set(edges)
    by_node: dict[Hashable, Hashable] = {}  # learner node -> aggregator node
    chosen = []
    for learner in range(m):
        node = network.node_of(learner)
        if node not in by_node:
            path = network.path(node, hub)
            if listed is None:
                by_node[node] = path[1] if len(path) > 1 else path[0]
            else:
                by_node[node] = next(x for x in path if x in listed or x == hub)
        chosen.append(by_node[node])
    nodes = sorted(set(chosen), key=node_key)
    position = {node: k for k, node in enumerate(nodes)}
    return nodes, np.array([position[node] for node in chosen], dtype=np.int64)
