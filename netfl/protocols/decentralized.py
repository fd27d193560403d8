"""Decentralized averaging: learners mix models with their topology neighbours, no coordinator.

Every b rounds, as a learner finishes round r (r % b == 0), it sends its model to
the learners it mixes with at r and, once their round-r models are in, replaces
its model by a weighted mean of its own model as it was when it sent and theirs:

    x_i <- (1 - sum_j w_ij) x_i + sum_j w_ij x_j      (j over the models that arrived)

- ``gossip``, ``mode: pair`` (randomized pairwise gossip, Boyd et al. 2006): a
  random matching of neighbours, drawn from (seed, r) alone (a schedule every
  learner knows, independent of timing): learners in a seeded random order each
  pick a neighbour uniformly among those not yet paired, so nobody is in two
  exchanges; a pair swaps models (push-pull) and both take x_i <- (x_i + x_j) / 2.
  A learner whose neighbours are all taken sits the round out.
- ``gossip``, ``mode: neighbours``: every learner sends to all its neighbours and
  takes the uniform mean of itself and the models received (w_ij = 1 / (1 + count));
  mean-preserving only on regular neighbourhoods.
- ``dpsgd`` (Lian et al. 2017): every learner sends to all its neighbours and takes
  sum_j W_ij x_j with Metropolis-Hastings weights W_ij = 1 / (1 + max(d_i, d_j)),
  W_ii = 1 - sum_j W_ij (d: neighbourhood sizes), a symmetric doubly stochastic W.

Ordering: D-PSGD's iterate is x_i <- sum_j W_ij x_j - lr grad f_i(x_i), both from the
same x. Here the bank takes the gradient step in round r and the models sent after
it are mixed before round r + 1 (the engine assigns a delivered model before the
learner's next step): x <- W (x - lr G(x)), the adapt-then-combine order. With
b > 1 learners take b local steps between mixings (local decentralized SGD).

Neighbours are the learners within ``hops`` hops (netfl.protocols.neighbours). With
``wait: true`` a learner blocks until the models it expects for the round arrived;
with ``wait: false`` it keeps training and the mixed model (computed from its model
at send time) replaces its model when the last one arrives. A model the network
gives up is no longer expected: the learner mixes what arrived (pair: keeps its
own; dpsgd: the missing weight goes to W_ii). Nothing goes to the coordinator.

Codec: peer messages use the scenario's uplink codec through a Channel of this
protocol: the sender codes its model's difference from the shared initial model
(the channel's base version 0, known to every learner) once per round with its own
codec state, and sends the same payload to all its receivers; each receiver decodes
it (once per sender and round) from the bytes alone. A learner mixes its own exact
model with the decoded ones. The downlink codec is unused (there is no downlink).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import simpy
import torch
from pydantic import Field

from netfl.protocols.base import Protocol
from netfl.protocols.neighbours import neighbour_matrix
from netfl.schema import Section
from netfl.sim.interface import SimulationAPI


class GossipConfig(Section):
    name: Literal["gossip"]
    b: int = Field(default=1, ge=1, description="rounds between gossip exchanges")
    mode: Literal["pair", "neighbours"] = Field(
        default="pair", description="pair: a seeded random matching of neighbours swaps and "
        "averages models; neighbours: everyone averages itself and all its neighbours")
    hops: int = Field(default=1, ge=1, description="neighbours: learners within this many "
                      "hops in the topology (same node included)")
    wait: bool = True


class DPSGDConfig(Section):
    name: Literal["dpsgd"]
    b: int = Field(default=1, ge=1, description="rounds between mixings")
    hops: int = Field(default=1, ge=1, description="neighbours: learners within this many "
                      "hops in the topology (same node included)")
    wait: bool = True


def metropolis_weights(adjacency: sp.sparray) -> sp.csr_array:
    """Metropolis-Hastings mixing matrix of a symmetric 0/1 adjacency [m, m] (no diagonal):
    W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij."""
    adj = sp.coo_array(adjacency)
    m = adj.shape[0]
    degree = np.asarray(sp.csr_array(adjacency).sum(axis=1)).reshape(-1)
    w = 1.0 / (1.0 + np.maximum(degree[adj.row], degree[adj.col]))
    off = sp.csr_array((w, (adj.row, adj.col)), shape=(m, m))
    diag = 1.0 - np.asarray(off.sum(axis=1)).reshape(-1)
    return sp.csr_array(off + sp.diags_array(diag, format="csr"))


def mix(own: torch.Tensor, models: torch.Tensor, receiver: torch.Tensor,
        weight: torch.Tensor) -> torch.Tensor:
    """Mixed models [k, P]: row s is (1 - sum_e w_e) own[s] + sum_e w_e models[e] over the
    entries e with receiver[e] == s (models [E, P], receiver [E] in 0..k-1, weight [E])."""
    total = torch.zeros(own.shape[0], dtype=weight.dtype, device=own.device)
    total.index_add_(0, receiver, weight)
    out = own * (1.0 - total).to(own.dtype).unsqueeze(1)
    out.index_add_(0, receiver, models * weight.to(models.dtype).unsqueeze(1))
    return out


class _Round:
    """What one mixing round holds until every learner has mixed it."""

    __slots__ = ("partners", "degree", "expected", "arrived", "sent", "mixed", "own", "got",
                 "open")

    def __init__(self, partners: list[np.ndarray]) -> None:
        m = len(partners)
        self.partners = partners  # whom each learner sends to (and hears from) this round
        self.degree = np.array([len(p) for p in partners], dtype=np.int64)
        self.expected = self.degree.copy()  # models still to come or arrived: degree - lost
        self.arrived: list[list[int]] = [[] for _ in range(m)]  # senders heard, per receiver
        self.sent = np.zeros(m, dtype=bool)  # reached the round (and sent)
        self.mixed = np.zeros(m, dtype=bool)
        self.own: dict[int, torch.Tensor] = {}  # learner -> its model when it sent
        self.got: dict[int, torch.Tensor] = {}  # sender -> its decoded model
        self.open = m  # learners yet to mix


class PeerMixing(Protocol):
    """The decentralized pattern; subclasses choose partners and weights."""

    synchronizes = True
    counters = ("exchanges",)  # learners that mixed in at least one received model

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        self.wait: bool = config.wait
        self.kind = self.message_kinds[0]
        self.adjacency = neighbour_matrix(sim.network.graph, sim.network.placement, sim.m,
                                          config.hops)
        ptr, idx = self.adjacency.indptr, self.adjacency.indices.astype(np.int64)
        self.neighbours = [idx[ptr[i]:ptr[i + 1]] for i in range(sim.m)]
        self.degree = np.diff(ptr).astype(np.int64)
        self.channel = sim.make_channel(seed=self.channel_seed())
        self.rounds: dict[int, _Round] = {}
        sim.counters["exchanges"] = 0

    def syncs_at(self, rnd: int) -> bool:
        return rnd % self.config.b == 0

    def partners(self, rnd: int) -> list[np.ndarray]:
        """Learners each learner exchanges with at mixing round ``rnd`` (symmetric)."""
        return self.neighbours

    def weights(self, receivers: np.ndarray, senders: np.ndarray,
                counts: np.ndarray) -> np.ndarray:
        """w_ij per arrived (receiver, sender) entry; ``counts``: models each receiver got."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {"mean_neighbours": float(self.degree.mean()) if len(self.degree) else 0.0,
                "isolated_learners": int((self.degree == 0).sum())}

    # ------------------------------------------------------------------ sending

    def _round(self, rnd: int) -> _Round:
        state = self.rounds.get(rnd)
        if state is None:
            state = self.rounds[rnd] = _Round(self.partners(rnd))
            offline = np.flatnonzero(~self.sim.online)
            if len(offline):
                self._drop(rnd, state, offline)
        return state

    def on_offline(self, learners: np.ndarray) -> None:
        """Offline learners leave every open round: they mix nothing, and partners stop
        waiting for models they had not sent (a model on the wire is lost: ``on_lost``)."""
        for rnd, state in list(self.rounds.items()):
            self._drop(rnd, state, learners)

    def _drop(self, rnd: int, state: _Round, learners: np.ndarray) -> None:
        learners = learners[~state.mixed[learners]]
        if not len(learners):
            return
        state.mixed[learners] = True
        state.open -= len(learners)
        waiting = []
        for learner in learners.tolist():
            state.own.pop(learner, None)
            if not state.sent[learner]:
                for peer in state.partners[learner].tolist():
                    state.expected[peer] -= 1
                    waiting.append(peer)
        ready = self._ready(state, np.unique(np.asarray(waiting, dtype=np.int64)))
        if len(ready):
            self._mix(rnd, state, ready)
        elif state.open == 0:
            del self.rounds[rnd]
            self.sim.counters["syncs"] += 1

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        due = rounds % self.config.b == 0
        for rnd in np.unique(rounds[due]):
            rnd = int(rnd)
            at_round = learners[rounds == rnd]
            state = self._round(rnd)
            state.sent[at_round] = True
            senders = at_round[state.degree[at_round] > 0]  # lost replies change no send
            if len(senders):
                models = self.sim.bank.flat(self.sim.index(senders))
                payloads = self.channel.encode_up(senders, models)
                for row, (learner, payload) in enumerate(zip(senders, payloads)):
                    learner = int(learner)
                    state.own[learner] = models[row]
                    for peer in state.partners[learner]:
                        event = self.sim.send(self.kind, learner, int(peer), rnd, payload)
                        event.callbacks.append(self._on_model)
            ready = self._ready(state, at_round)
            if len(ready):
                self._mix(rnd, state, ready)
            if self.wait:
                self.sim.block(at_round[~state.mixed[at_round]])

    @staticmethod
    def _ready(state: _Round, learners: np.ndarray) -> np.ndarray:
        count = np.array([len(state.arrived[i]) for i in learners], dtype=np.int64)
        ok = state.sent[learners] & ~state.mixed[learners] & (count >= state.expected[learners])
        return learners[ok]

    # ---------------------------------------------------------------- receiving

    def _on_model(self, event: simpy.Event) -> None:
        msg = event.value
        state = self.rounds.get(msg.round)
        if state is None or state.mixed[msg.dst]:  # cannot happen: mixing waits for it
            self.sim.counters["messages_late"] += 1
            return
        if msg.src not in state.got:  # decoded once per sender and round
            state.got[msg.src] = self.channel.decode_up([msg.payload])[0]
        state.arrived[msg.dst].append(msg.src)
        self._try(msg.round, state, msg.dst)

    def on_lost(self, msg: Any) -> None:
        """A model given up is no longer expected: its receiver mixes what did arrive."""
        if msg.kind != self.kind:
            super().on_lost(msg)
            return
        state = self.rounds.get(msg.round)
        if state is None or state.mixed[msg.dst]:
            return
        state.expected[msg.dst] -= 1
        self._try(msg.round, state, msg.dst)

    def _try(self, rnd: int, state: _Round, learner: int) -> None:
        ready = self._ready(state, np.array([learner]))
        if len(ready):
            self._mix(rnd, state, ready)

    # ------------------------------------------------------------------- mixing

    def _mix(self, rnd: int, state: _Round, learners: np.ndarray) -> None:
        """Mix ``learners`` (all ready) in one batched operation, deliver, release them."""
        sim = self.sim
        state.mixed[learners] = True
        state.open -= len(learners)
        heard = [i for i in learners.tolist() if state.arrived[i]]
        if heard:
            counts = np.array([len(state.arrived[i]) for i in heard], dtype=np.int64)
            receiver = np.repeat(np.arange(len(heard)), counts)
            senders = np.concatenate([state.arrived[i] for i in heard]).astype(np.int64)
            weight = self.weights(np.asarray(heard)[receiver], senders, counts[receiver])
            device = sim.bank.device
            out = mix(torch.stack([state.own[i] for i in heard]),
                      torch.stack([state.got[j] for j in senders.tolist()]),
                      torch.as_tensor(receiver, device=device),
                      torch.as_tensor(weight, dtype=torch.float32, device=device))
            for row, learner in enumerate(heard):
                sim.deliver(learner, out[row])
            sim.counters["exchanges"] += len(heard)
        for learner in learners.tolist():
            state.own.pop(learner, None)
            if self.wait and sim.blocked[learner]:
                sim.unblock(learner)
        if state.open == 0:
            del self.rounds[rnd]
            sim.counters["syncs"] += 1  # one mixing round completed by every learner


class Gossip(PeerMixing):
    name = "gossip"
    Config = GossipConfig
    message_kinds = ("gossip",)

    def partners(self, rnd: int) -> list[np.ndarray]:
        if self.config.mode == "neighbours":
            return self.neighbours
        match = matching(self.neighbours, np.random.default_rng([self.seed, rnd]))
        none = np.zeros(0, dtype=np.int64)
        return [none if j < 0 else np.array([j]) for j in match.tolist()]

    def weights(self, receivers: np.ndarray, senders: np.ndarray,
                counts: np.ndarray) -> np.ndarray:
        if self.config.mode == "pair":
            return np.full(len(senders), 0.5)
        return 1.0 / (1.0 + counts)


class DPSGD(PeerMixing):
    name = "dpsgd"
    Config = DPSGDConfig
    message_kinds = ("mix",)

    def weights(self, receivers: np.ndarray, senders: np.ndarray,
                counts: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.maximum(self.degree[receivers], self.degree[senders]))


def matching(neighbours: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A random matching: partner of each learner, -1 for none. Learners in random order
    each pick a neighbour uniformly among those still unpaired (none left: no partner)."""
    m = len(neighbours)
    partner = np.full(m, -1, dtype=np.int64)
    for i in rng.permutation(m).tolist():
        if partner[i] >= 0:
            continue
        free = neighbours[i][partner[neighbours[i]] < 0]
        if len(free):
            j = int(free[rng.integers(len(free))])
            partner[i], partner[j] = j, i
    return partner
