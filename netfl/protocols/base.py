"""What every synchronization protocol shares: hooks the engine calls, and the star pattern.

A protocol decides who sends what to whom and what learners do while they
wait. It moves models only through `Simulation.send`, never around the network.
It talks to the engine only through netfl.sim.interface: its configuration
section (``Config``), what it needs from the build (``needs``), and the hooks.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, Literal

import numpy as np
import simpy
import torch
from pydantic import Field

from netfl.protocols.server_opt import ServerOptimizer, ServerOptimizerConfig
from netfl.schema import PositiveSeconds, Section
from netfl.sim.interface import COORDINATOR, Needs, SimulationAPI

_CHANNEL = 1  # child of the protocol's seed that seeds its codec channel


class NoSyncConfig(Section):
    name: Literal["nosync"]


class Protocol:
    """No synchronization at all: the `nosync` baseline and the base of the others."""

    name = "nosync"
    Config: ClassVar[type[Section]] = NoSyncConfig
    synchronizes: ClassVar[bool] = False  # does it ever average (probes' every: sync)
    counters: tuple[str, ...] = ()  # extra per-round counters the protocol keeps in sim.counters
    message_kinds: tuple[str, ...] = ()  # kinds it sends; metrics get a bytes_<kind> column each

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        self.sim = sim
        self.config = config
        self.seed = seed  # the protocol's own stream, split from the root seed

    @classmethod
    def needs(cls, config: Any, m: int) -> Needs:
        """What the build must provide; the default is one bank row per learner."""
        return Needs(bank_size=m)

    def channel_seed(self) -> int:
        """Seed of this protocol's codec channel: a child of its own seed, so codec draws
        change with the scenario's seed and never with a protocol parameter."""
        return int(np.random.SeedSequence([self.seed, _CHANNEL]).generate_state(1)[0])

    def start(self) -> None:
        """Called once before the first step (start coordinator processes here)."""

    def summary(self) -> dict[str, Any]:
        """Protocol-specific totals for summary.json (e.g. staleness); none by default."""
        return {}

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        """Called after `learners` completed their round `rounds` (1-based) in one batch."""

    def _models_to_send(self, senders: np.ndarray) -> tuple[torch.Tensor, Any]:
        """The models ``senders`` send, for an encoder, and the bank's lender: the bank's
        own rows when everyone sends (read in place, lent: no [m, P] copy unless they are
        still alive when the bank next writes, ``LearnerBank.lend``), else a gather."""
        bank = self.sim.bank
        read = getattr(bank, "rows", bank.flat)
        return read(self.sim.index(senders)), getattr(bank, "lend", None)

    def on_lost(self, msg: Any) -> None:
        """The network gave ``msg`` up (no route within ``network.give_up``). Default rule: a
        learner that waited for it carries on with its own model."""
        dst = msg.dst
        if dst != COORDINATOR and self.sim.blocked[dst]:
            self.sim.unblock(dst)

    def on_offline(self, learners: np.ndarray) -> None:
        """``learners`` went offline (learners.availability): their messages in flight are
        lost (``on_lost`` follows for each). Default: nothing more to do."""

    def on_online(self, learners: np.ndarray) -> None:
        """``learners`` came back. Default: they carry on with the model they had."""


class StarConfig(Section):
    """Settings every star averaging protocol has."""

    wait: bool = True
    deadline: PositiveSeconds | None = Field(
        default=None, description="seconds after a round's first model at which the "
        "coordinator averages what arrived; later models are late")
    overcommit: float = Field(
        default=1.0, ge=1, le=10, description="select this many times the learners needed "
        "and average the first to arrive (FedScale, Bonawitz et al.: 1.3); 1: no over-commit")
    mu: float = Field(
        default=0.0, ge=0, description="FedProx: learners minimise f_i(w) + mu/2 ||w - w_g||^2, "
        "w_g the global model they last received (0: off)")
    server_optimizer: ServerOptimizerConfig | None = Field(
        default=None, description="FedAvgM/FedOpt: the coordinator steps its global model "
        "along Delta = mean(uploaded) - previous global (null: plain averaging)")


class StarAveraging(Protocol):
    """Learners upload models to the coordinator, which averages and sends the result back.

    Subclasses say which rounds synchronize, who uploads and who receives the average.
    The coordinator averages a round when every expected model is in, or, with a
    ``deadline``, that many seconds after the round's first model arrived, whatever
    arrived by then; models of a round already averaged are late (counted, dropped).
    An upload the network gives up is no longer expected; if none of a round's models
    arrive there is no average and its waiting learners carry on with their own models.
    With ``overcommit`` c > 1 the round closes at the first ceil(selected / c) models
    (FedAvg selects c times its C*m learners and keeps the first C*m, as FedScale and
    Google's production system do); the rest arrive late. A selected learner that is
    offline when the round opens, or goes offline before its model arrives, is dropped
    (no longer expected); one that comes back downloads the last global model first.
    Counters (cumulative): ``selected``, ``completed`` (models averaged), ``dropped``
    (offline or lost) and the engine's ``messages_late``.

    ``mu > 0`` adds FedProx's proximal term to every learner's local steps, anchored at
    the global model it last received. A ``server_optimizer`` replaces the average by a
    step of the coordinator's global model ``x`` along ``Delta = average - x``
    (netfl.protocols.server_opt); ``x`` starts as the initial model and is, after each
    round, the new global model as learners reconstruct it (the channel's newest base,
    so lossy downlinks stay consistent). Subclasses change what travels through
    ``_uploads`` (learner -> coordinator), ``_average`` (coordinator) and ``_received``
    (coordinator -> learner).
    """

    message_kinds = ("model", "broadcast")
    synchronizes = True
    counters = ("selected", "completed", "dropped")  # cumulative learners per round's upload
    # uploads and broadcasts of one instant go in one Simulation.send_many each and their
    # arrivals are handled a list at a time (False: one send and callback per message; the
    # results are identical, tests compare both)
    batch_messages: ClassVar[bool] = True

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        self.wait: bool = getattr(config, "wait", True)
        self.deadline: float | None = getattr(config, "deadline", None)
        self.overcommit: float = float(getattr(config, "overcommit", 1.0))
        self.inbox: dict[int, list[bytes]] = {}
        self.pending: dict[int, set[int]] = {}  # selected uploaders not yet in, per open round
        self.needed: dict[int, int] = {}  # models that close an open round
        self.closed: set[int] = set()  # rounds averaged or abandoned
        self.received = np.zeros(sim.m, dtype=np.int64)  # latest round whose average arrived
        self.channel = sim.make_channel(seed=self.channel_seed())
        self.mu: float = float(getattr(config, "mu", 0.0) or 0.0)
        if self.mu > 0:
            sim.bank.set_proximal(self.mu)  # anchors: the current models, then each received one
        opt = getattr(config, "server_optimizer", None)
        self.server_optimizer = None if opt is None else ServerOptimizer(opt)
        self.global_model: torch.Tensor = self.channel.bases[0]  # x: the last global model
        self.last_broadcast: tuple[bytes, int, int] | None = None  # payload, version, round
        for name in self.counters:
            sim.counters[name] = 0

    def syncs_at(self, rnd: int) -> bool:
        raise NotImplementedError

    def uploaders(self, rnd: int) -> np.ndarray:
        """Learners whose models are averaged at a synchronization round (default: all)."""
        return np.arange(self.sim.m)

    def selection(self, rnd: int) -> tuple[np.ndarray, int]:
        """The learners asked to upload at round ``rnd`` and how many models close it: with
        ``overcommit`` c the first ceil(selected / c) to arrive (everyone when c = 1)."""
        chosen = self.uploaders(rnd)
        return chosen, max(1, math.ceil(len(chosen) / self.overcommit - 1e-9))

    def receivers(self, rnd: int) -> np.ndarray:
        return np.arange(self.sim.m)

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        due = np.array([self.syncs_at(int(r)) for r in np.unique(rounds)])
        if not due.any():
            return
        for rnd in np.unique(rounds)[due]:
            at_round = learners[rounds == rnd]
            rnd = int(rnd)
            if self.wait and rnd not in self.closed:
                waiting = np.intersect1d(at_round, self.receivers(rnd))
                self.sim.block(waiting[self.received[waiting] < rnd])
            self._open(rnd)
            senders = np.intersect1d(at_round, self.uploaders(rnd))
            if not len(senders):
                continue
            payloads = self._uploads(senders, rnd)
            if self.batch_messages:
                self.sim.send_many("model", senders, COORDINATOR, rnd, payloads,
                                   self._on_models)
                continue
            for learner, payload in zip(senders, payloads):
                event = self.sim.send("model", int(learner), COORDINATOR, rnd, payload)
                event.callbacks.append(self._on_model)

    def _open(self, rnd: int) -> None:
        """Start expecting round ``rnd``'s uploads from its selected learners that are online."""
        if rnd in self.pending or rnd in self.closed:
            return
        chosen, needed = self.selection(rnd)
        online = chosen[self.sim.online[chosen]]
        self.pending[rnd] = set(online.tolist())
        self.needed[rnd] = needed
        self.sim.counters["selected"] += len(chosen)
        self.sim.counters["dropped"] += len(chosen) - len(online)

    def _uploads(self, senders: np.ndarray, rnd: int) -> list[bytes]:
        """The payloads ``senders`` upload at round ``rnd``: their models, through the channel
        (read in place when everyone uploads: ``_models_to_send``)."""
        return self.channel.encode_up(senders, *self._models_to_send(senders))

    def _on_model(self, event: simpy.Event) -> None:
        msg = event.value
        if msg.round in self.closed:
            self.sim.counters["messages_late"] += 1
            return
        box = self.inbox.setdefault(msg.round, [])
        box.append(msg.payload)
        self.pending[msg.round].discard(msg.src)
        if len(box) == 1 and self.deadline is not None:
            timer = self.sim.env.timeout(self.deadline, msg.round)
            timer.callbacks.append(self._on_deadline)
        self._check(msg.round)

    def _on_models(self, msgs: list[Any]) -> None:
        """Uploads that arrived together, as ``_on_model`` one after another: the round
        takes them up to the one that closes it, the rest are late. An array batch's
        arrivals (``Arrived``) of one round go whole, read as columns."""
        rnd = getattr(msgs, "round", None)
        if rnd is not None:
            self._take(rnd, msgs)
            return
        start, n = 0, len(msgs)
        while start < n:  # runs of one round (a batch is one round's uploads)
            rnd = msgs[start].round
            end = start + 1
            while end < n and msgs[end].round == rnd:
                end += 1
            self._take(rnd, msgs[start:end])
            start = end

    def _take(self, rnd: int, msgs: list[Any]) -> None:
        if rnd in self.closed:
            self.sim.counters["messages_late"] += len(msgs)
            return
        box = self.inbox.setdefault(rnd, [])
        pending = self.pending[rnd]
        srcs = getattr(msgs, "srcs", None)
        if srcs is None:
            srcs = [msg.src for msg in msgs]
        # the message after which _check closes the round: the needed-th model, or the one
        # that empties pending (pending is never empty while the round is open)
        close = self.needed[rnd] - len(box) - 1
        if pending.issubset(srcs):
            first = dict(zip(reversed(srcs), range(len(srcs) - 1, -1, -1)))
            close = min(close, max(map(first.__getitem__, pending), default=0))
        first = not box
        taken = msgs[: close + 1]
        payloads = getattr(taken, "payloads", None)
        box.extend((msg.payload for msg in taken) if payloads is None else payloads)
        pending.difference_update(srcs[: close + 1])
        if first and self.deadline is not None:
            timer = self.sim.env.timeout(self.deadline, rnd)
            timer.callbacks.append(self._on_deadline)
        if close < len(msgs):
            self._check(rnd)  # closes it
            self.sim.counters["messages_late"] += len(msgs) - len(taken)

    def _check(self, rnd: int) -> None:
        """Close an open round once it has the models it needs or expects no more."""
        box = self.inbox.get(rnd, [])
        if len(box) >= self.needed[rnd] or not self.pending[rnd]:
            if box:
                self._aggregate(rnd)
            else:
                self._abandon(rnd)

    def _on_deadline(self, event: simpy.Event) -> None:
        if event.value not in self.closed:
            self._aggregate(event.value)

    def on_lost(self, msg: Any) -> None:
        if msg.kind != "model":
            super().on_lost(msg)
            return
        rnd = msg.round
        if rnd in self.closed or msg.src not in self.pending[rnd]:
            return
        self.pending[rnd].discard(msg.src)
        self.sim.counters["dropped"] += 1
        self._check(rnd)

    def on_offline(self, learners: np.ndarray) -> None:
        """Selected learners that went offline before their upload arrived are dropped."""
        gone = set(learners.tolist())
        for rnd in list(self.pending):
            lost = self.pending[rnd] & gone
            if lost:
                self.pending[rnd] -= lost
                self.sim.counters["dropped"] += len(lost)
                self._check(rnd)

    def on_online(self, learners: np.ndarray) -> None:
        """A learner that comes back downloads the newest global model before it trains on
        (the last broadcast, resent to it and charged as one)."""
        if self.last_broadcast is None:
            return
        payload, version, rnd = self.last_broadcast
        if self.wait:
            self.sim.block(learners)
        if self.batch_messages:
            self.sim.send_many("broadcast", COORDINATOR, learners, rnd, payload,
                               functools.partial(self._on_averages, version=version))
            return
        for learner in learners.tolist():
            event = self.sim.send("broadcast", COORDINATOR, learner, rnd, payload)
            event.callbacks.append(lambda ev, v=version: self._on_average(ev, v))

    def _abandon(self, rnd: int) -> None:
        """Nothing will arrive: no average this round; its waiting learners carry on."""
        self.closed.add(rnd)
        del self.pending[rnd], self.needed[rnd]
        self.inbox.pop(rnd, None)
        for learner in self.receivers(rnd):
            if self.sim.blocked[learner] and self.received[learner] < rnd:
                self.sim.unblock(int(learner))

    def _aggregate(self, rnd: int) -> None:
        self.closed.add(rnd)
        payloads = self.inbox.pop(rnd)
        del self.pending[rnd], self.needed[rnd]
        payload, version = self._average(payloads)
        self.sim.counters["syncs"] += 1
        self.sim.counters["completed"] += len(payloads)
        self.last_broadcast = (payload, version, rnd)
        if self.batch_messages:
            self.sim.send_many("broadcast", COORDINATOR, self.receivers(rnd), rnd, payload,
                               functools.partial(self._on_averages, version=version))
            return
        for learner in self.receivers(rnd):
            event = self.sim.send("broadcast", COORDINATOR, int(learner), rnd, payload)
            event.callbacks.append(lambda ev, v=version: self._on_average(ev, v))

    def _average(self, payloads: list[bytes]) -> tuple[bytes, int]:
        """The new global model from a round's uploads, as a payload and its base version."""
        mean = self.channel.decode_up(payloads, in_place=True).mean(dim=0)
        if self.server_optimizer is None:  # plain averaging, bit for bit as ever
            return self._send_global(mean)
        return self._send_global(self._server_step(mean - self.global_model))

    def _server_step(self, delta: torch.Tensor) -> torch.Tensor:
        """The server optimizer's step from ``global_model`` along pseudo-gradient ``delta``
        (without one: ``global_model + delta``)."""
        if self.server_optimizer is None:
            return self.global_model + delta
        return self.server_optimizer.step(self.global_model, delta)

    def _send_global(self, model: torch.Tensor) -> tuple[bytes, int]:
        """Encode the new global model down (as ever) and keep what learners reconstruct."""
        payload, version = self.channel.encode_down(model)
        self.global_model = self.channel.bases[version]
        return payload, version

    def _on_average(self, event: simpy.Event, version: int) -> None:
        msg = event.value
        self.received[msg.dst] = max(self.received[msg.dst], msg.round)
        self.channel.received(msg.dst, version)
        self._received(msg.dst, msg.payload, version)
        if self.wait and self.sim.blocked[msg.dst]:
            self.sim.unblock(msg.dst)

    def _on_averages(self, msgs: list[Any], version: int) -> None:
        """Broadcasts of one payload that arrived together, as ``_on_average`` one after
        another (each touches only its own receiver's state)."""
        columns = getattr(msgs, "dsts", None)  # an array batch's arrivals: as columns
        if columns is not None:
            dsts = np.array(columns, dtype=np.int64)
        else:
            dsts = np.fromiter((msg.dst for msg in msgs), dtype=np.int64, count=len(msgs))
        rounds: Any = getattr(msgs, "round", None)
        if rounds is None:
            rounds = np.fromiter((msg.round for msg in msgs), dtype=np.int64, count=len(msgs))
        np.maximum.at(self.received, dsts, rounds)
        self.channel.received_many(dsts, version)
        self._received_many(dsts, msgs[0].payload, version)
        if self.wait:
            dsts = dsts[self.sim.blocked[dsts]]
            if len(dsts):
                self.sim.unblock_many(np.unique(dsts) if len(dsts) > 1 else dsts)

    def _received(self, learner: int, payload: bytes, version: int) -> None:
        """A learner received the global model: it takes it before its next step."""
        self.sim.deliver(learner, self.channel.decode_down(payload))

    def _received_many(self, learners: np.ndarray, payload: bytes, version: int) -> None:
        """``_received`` for each of ``learners`` (one payload): one decode, one deliver. A
        subclass that overrides ``_received`` alone is called once per learner."""
        if type(self)._received is not StarAveraging._received:
            for learner in learners.tolist():
                self._received(learner, payload, version)
            return
        self.sim.deliver_many(learners, self.channel.decode_down(payload))

