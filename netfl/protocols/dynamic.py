"""Dynamic averaging (seed 004, Definition 2 and Algorithm 1).

Learners share a reference model r. Every b rounds each learner checks its
local condition ||f_i - r||^2 <= delta and, on a violation, sends its model
to the coordinator and waits. The coordinator, for each set B of violators:

    v <- v + |B|
    if v >= m: B <- [m]                       (full synchronization)
    while B != [m] and ||mean(B) - r||^2 > delta:
        augment B (random doubling, or all at once)
        query the added learners for their models (request + model, both charged)
    send mean(B) to every learner in B
    if B = [m]: r <- mean(B), v <- 0

Two choices the seed leaves open, made here and tested:
- v is reset on every full synchronization, also one reached by augmentation
  (afterwards every learner equals r, so no earlier violation is pending);
  Algorithm 1 writes the reset only in the v = m branch.
- Learners learn r for free: it is the model a full synchronization sends them.
Violations that arrive while the coordinator balances (it waits for queried
models over the network, which Algorithm 1's instantaneous coordinator never
does) join the current B and add to v, and the test v = m is made again before
every further augmentation, so no partial balancing is ever sent with v >= m.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import Field

from netfl.protocols.base import Protocol
from netfl.schema import PositiveSeconds, Section
from netfl.sim import wire
from netfl.sim.instant import starting as _starting
from netfl.sim.interface import COORDINATOR, SimulationAPI

COUNTERS = ("violations", "balancings", "augmentations", "full_syncs", "reference_updates")
KINDS = ("violation", "request", "model", "balance", "sync")


def average_into(models: torch.Tensor, members: np.ndarray) -> torch.Tensor:
    """The balancing operator: members take their mean, the others stay (mean of all unchanged)."""
    out = models.clone()
    out[torch.as_tensor(members)] = models[torch.as_tensor(members)].mean(dim=0)
    return out


def augment(members: set[int], m: int, strategy: str, rng: np.random.Generator) -> list[int]:
    """Learners to add to B: as many again as B holds (random doubling), or all the rest."""
    rest = np.array(sorted(set(range(m)) - members))
    if strategy == "all" or len(rest) <= len(members):
        return rest.tolist()
    return np.sort(rng.choice(rest, size=len(members), replace=False)).tolist()


@dataclass
class _Balancing:
    """The coordinator's balancing in progress: B's models, the reference it started from,
    whether every learner was asked, and |B| before the last query."""

    models: dict[int, torch.Tensor]
    reference: torch.Tensor
    complete: bool = False
    before: int = 0


class DynamicConfig(Section):
    """Dynamic averaging (seed 004 Algorithm 1)."""

    name: Literal["dynamic"]
    delta: float = Field(default=0.5, gt=0, description="divergence threshold")
    b: int = Field(default=1, ge=1, description="rounds between local condition checks")
    augmentation: Literal["double", "all"] = "double"
    deadline: PositiveSeconds | None = Field(
        default=None, description="seconds the coordinator waits for queried models before "
        "it balances those that arrived; later replies are late (their learners carry on)")


class Dynamic(Protocol):
    name = "dynamic"
    Config = DynamicConfig
    synchronizes = True
    counters = COUNTERS
    message_kinds = KINDS

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        self.delta = float(config.delta)
        self.rng = np.random.default_rng(seed)
        self.channel = sim.make_channel(seed=self.channel_seed())  # base: the reference r
        self.violation_counter = 0
        self.partial_at_full_count = 0  # balancings sent although v >= m (must stay 0)
        self.inbox: simpy.Store = simpy.Store(sim.env)
        self.replies: dict[int, simpy.Event] = {}
        self.late: set[int] = set()  # queried learners whose reply missed the deadline
        self.last_model_sent = np.full(sim.m, -np.inf)
        self._balancing: _Balancing | None = None  # the set B being balanced, if any
        for name in COUNTERS:
            sim.counters[name] = 0

    @property
    def reference(self) -> torch.Tensor:
        """The coordinator's reference model r (learners hold it once a sync reaches them)."""
        return self.channel.bases[self.channel.version]

    def start(self) -> None:
        _starting(self.sim.env, self._wait_violation)

    # ---------------------------------------------------------------- learners

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        sim = self.sim
        check = learners[(rounds % self.config.b == 0) & ~sim.blocked[learners]]
        if not len(check):
            return
        flat = sim.bank.flat(sim.index(check))
        versions = self.channel.learner_version[check]
        if (versions == versions[0]).all():
            references = self.channel.bases[int(versions[0])]
        else:
            references = torch.stack([self.channel.bases[int(v)] for v in versions])
        distance = ((flat - references) ** 2).sum(dim=1).cpu().numpy()
        violating = distance > self.delta
        violators = check[violating]
        if not len(violators):
            return
        sim.block(violators)
        sim.counters["violations"] += len(violators)
        payloads = self.channel.encode_up(violators, flat[torch.as_tensor(violating)])
        for learner, payload in zip(violators, payloads):
            rnd = int(sim.rounds_done[learner])
            event = sim.send("violation", int(learner), COORDINATOR, rnd, payload)
            event.callbacks.append(lambda ev: self.inbox.put(ev.value))

    def on_lost(self, msg: Any) -> None:
        """A violation the network gave up frees its learner; a request or reply given up
        counts as no answer (that learner stays out of B)."""
        if msg.kind == "violation":
            if self.sim.blocked[msg.src]:
                self.sim.unblock(msg.src)
        elif msg.kind in ("request", "model"):
            learner = msg.dst if msg.kind == "request" else msg.src
            reply = self.replies.get(learner)
            if reply is not None and not reply.triggered:
                reply.succeed(None)
            if msg.kind == "model" and self.sim.blocked[learner]:
                self.sim.unblock(learner)
        else:
            super().on_lost(msg)

    def on_online(self, learners: np.ndarray) -> None:
        """A learner that comes back downloads the current reference r (full float32, as
        ``sync``) and waits for it, so its local condition is checked against r."""
        version = self.channel.version
        if not version:
            return
        payload = wire.encode_vector(self.reference)
        self.sim.block(learners)
        for learner in learners.tolist():
            event = self.sim.send("sync", COORDINATOR, learner,
                                  int(self.sim.rounds_done[learner]), payload)
            event.callbacks.append(lambda ev, v=version: self._on_rejoin(ev, v))

    def _on_rejoin(self, event: simpy.Event, version: int) -> None:
        msg = event.value
        self.channel.received(msg.dst, version)
        self.sim.deliver(msg.dst, wire.decode_vector(msg.payload, self.sim.bank.device))
        if self.sim.blocked[msg.dst]:
            self.sim.unblock(msg.dst)

    def _on_request(self, event: simpy.Event) -> None:
        """A queried learner stops and answers with its current model."""
        msg = event.value
        learner = msg.dst
        self.sim.apply_pending()
        self.sim.block(np.array([learner]))
        model = self.sim.bank.flat(self.sim.index(np.array([learner])))
        (payload,) = self.channel.encode_up(np.array([learner]), model)
        reply = self.sim.send("model", learner, COORDINATOR, msg.round, payload)
        reply.callbacks.append(self._on_reply)

    def _on_reply(self, event: simpy.Event) -> None:
        learner = event.value.src
        if learner in self.late:  # after the deadline: not in B; it carries on as it is
            self.late.discard(learner)
            self.sim.counters["messages_late"] += 1
            if self.sim.blocked[learner]:
                self.sim.unblock(learner)
            return
        waiting = self.replies.get(learner)
        if waiting is not None and not waiting.triggered:
            waiting.succeed(event.value)

    def _on_model(self, event: simpy.Event, version: int) -> None:
        msg = event.value
        if msg.kind == "sync":
            self.channel.received(msg.dst, version)
        self.sim.deliver(msg.dst, self.channel.decode_down(msg.payload))
        if self.sim.blocked[msg.dst]:
            self.sim.unblock(msg.dst)

    # ------------------------------------------------------------- coordinator

    # A state machine driven by event callbacks, not a generator process, so that a
    # checkpoint can pickle it (netfl.checkpoint); it waits on the same events in the same
    # order a process would: the inbox's next violation, then each query's replies.

    def _wait_violation(self, _event: simpy.Event | None = None) -> None:
        self.inbox.get().callbacks.append(self._on_violation)

    def _on_violation(self, event: simpy.Event) -> None:
        models = self._collect([event.value])
        if not models:
            self._wait_violation()
            return
        self.violation_counter += len(models)
        self._balancing = _Balancing(models, self.reference.clone())
        self._balance()

    def _balance(self) -> None:
        """Grow B until its mean is close enough to r (or B is everyone), then send it."""
        sim, state = self.sim, self._balancing
        models = state.models
        while len(models) < sim.m:
            # v counts every violation, also those that arrived during a query, so the
            # full-synchronization test v = m is made again after each one
            if self.violation_counter >= sim.m:
                added = [i for i in range(sim.m) if i not in models]
                state.complete = True
            elif self._too_far(models, state.reference):
                added = augment(set(models), sim.m, self.config.augmentation, self.rng)
                sim.counters["augmentations"] += 1
            else:
                break
            state.before = len(models)
            if added:
                self._query(added)
                return  # _queried carries on once the replies are in
            break  # nobody to ask (len(models) == before)
        self._finish()

    def _finish(self) -> None:
        state, self._balancing = self._balancing, None
        self._send_average(state.models, full=state.complete or len(state.models) == self.sim.m)
        self._wait_violation()

    def _query(self, added: list[int]) -> None:
        """Request the models of ``added``; ``_queried`` runs once every reply is in (or at
        the deadline)."""
        sim = self.sim
        self.replies = {i: sim.env.event() for i in added}
        for learner in added:
            request = sim.send("request", COORDINATOR, learner, 0, b"")
            request.callbacks.append(self._on_request)
        everyone = sim.env.all_of(list(self.replies.values()))
        if self.config.deadline is not None:
            everyone = everyone | sim.env.timeout(self.config.deadline)
        everyone.callbacks.append(self._queried)

    def _queried(self, _event: simpy.Event) -> None:
        """The replies are in: late violations join B too, then B grows on or is sent."""
        state = self._balancing
        models = state.models
        self.late.update(i for i, ev in self.replies.items() if not ev.triggered)
        messages = [ev.value for ev in self.replies.values() if ev.triggered]
        messages = [msg for msg in messages if msg is not None]  # None: given up
        if messages:
            vectors = self.channel.decode_up([msg.payload for msg in messages])
            models.update({msg.src: vec for msg, vec in zip(messages, vectors)})
        late = self._collect([])
        self.violation_counter += len(late)
        models.update(late)
        if state.complete or len(models) == state.before:
            self._finish()  # the rest were unreachable (offline, lost): balance what answered
        else:
            self._balance()

    def _collect(self, messages: list) -> dict[int, torch.Tensor]:
        """Violation models that are not stale (sent before the learner got a newer model)."""
        messages = messages + list(self.inbox.items)
        self.inbox.items.clear()
        fresh = [msg for msg in messages if msg.sent_at > self.last_model_sent[msg.src]]
        if not fresh:
            return {}
        vectors = self.channel.decode_up([msg.payload for msg in fresh])
        return {msg.src: vec for msg, vec in zip(fresh, vectors)}

    def _too_far(self, models: dict[int, torch.Tensor], reference: torch.Tensor) -> bool:
        mean = torch.stack(list(models.values())).mean(dim=0)
        return float(((mean - reference) ** 2).sum()) > self.delta

    def _send_average(self, models: dict[int, torch.Tensor], full: bool) -> None:
        """Send mean(B) to B; ``full``: B is every learner that could answer (all m, or all
        that answered when every learner was asked), so the mean becomes the reference."""
        sim = self.sim
        members = sorted(models)
        mean = torch.stack([models[i] for i in members]).mean(dim=0)
        if not full and self.violation_counter >= sim.m:
            self.partial_at_full_count += 1  # Algorithm 1 forbids this (v = m forces B = [m])
        payload, version = self.channel.encode_down(mean, new_base=full)
        if full:
            self.violation_counter = 0
            sim.counters["full_syncs"] += 1
            sim.counters["reference_updates"] += 1
        else:
            sim.counters["balancings"] += 1
        sim.counters["syncs"] += 1
        kind = "sync" if full else "balance"
        for learner in members:
            self.last_model_sent[learner] = sim.env.now
            event = sim.send(kind, COORDINATOR, learner, int(sim.rounds_done[learner]), payload)
            event.callbacks.append(partial(self._on_model, version=version))
