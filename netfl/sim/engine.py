"""The run loop: discrete ticks for compute, SimPy events for communication.

Every learner's step lasts a whole number of ticks; the engine jumps to the
next tick at which any learner finishes a step and trains all of those
learners in one batched call. A learner that waits for a model does not step;
when the model arrives it starts at the next tick boundary, which keeps
learners that were synchronized together in the same batch even though their
messages arrived at slightly different instants.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy
import torch

from netfl.observers import Observer, Observers
from netfl.sim import wire
from netfl.sim.channel import Channel
from netfl.sim.instant import AfterNormal
from netfl.sim.interface import COORDINATOR, ProtocolHooks
from netfl.sim.network import Message, Network

if TYPE_CHECKING:
    from netfl.compression import Codec
    from netfl.data.sources import BatchSource
    from netfl.learning.bank import LearnerBank

__all__ = ["COORDINATOR", "DeadlockError", "DivergedError", "Simulation"]
_EPS = 1e-9


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or parameters; the run stops before anything
    (a codec, a probe, a message) sees them. Built from (message, round) only, since SimPy
    re-raises a process's exception as ``type(exc)(*exc.args)``."""

    def __init__(self, message: str, round_: int):
        super().__init__(message, round_)
        self.round = round_

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def at(cls, round_: int, learners: np.ndarray) -> DivergedError:
        shown = ", ".join(str(i) for i in learners[:8]) + (", ..." if len(learners) > 8 else "")
        return cls(f"training diverged in round {round_}: non-finite loss or parameters for "
                   f"learner(s) {shown}; lower optimizer.lr", round_)


class DeadlockError(RuntimeError):
    """Every learner waits and no message is in flight: a protocol bug, never a user error."""


class RoundLog:
    """Per-round accumulators indexed by 0-based round, grown as later rounds are reached."""

    def __init__(self) -> None:
        self.loss = np.zeros(64)
        self.samples = np.zeros(64, dtype=np.int64)
        self.finished = np.zeros(64, dtype=np.int64)

    def ensure(self, rounds: int) -> None:
        size = len(self.loss)
        if rounds > size:
            grow = max(rounds, 2 * size) - size
            self.loss = np.concatenate([self.loss, np.zeros(grow)])
            self.samples = np.concatenate([self.samples, np.zeros(grow, dtype=np.int64)])
            self.finished = np.concatenate([self.finished, np.zeros(grow, dtype=np.int64)])

    def add(self, rounds: np.ndarray, loss: np.ndarray, samples: np.ndarray) -> None:
        self.ensure(int(rounds.max()) + 1)
        np.add.at(self.loss, rounds, loss)
        np.add.at(self.samples, rounds, samples)
        np.add.at(self.finished, rounds, 1)


class Simulation:
    """Learners, a coordinator and the network, advanced together in simulated time."""

    def __init__(
        self,
        *,
        env: simpy.Environment,
        network: Network,
        bank: LearnerBank,
        source: BatchSource,
        protocol_factory: Callable[[Simulation], ProtocolHooks],
        tick: float,
        durations: np.ndarray,
        horizon_rounds: int | None,
        horizon_time: float | None,
        eval_every: int,
        eval_local: bool,
        divergence_every: int = 1,
        observers: Iterable[Observer] = (),
        batches_per_step: int = 1,
        uplink: Codec | None = None,
        downlink: Codec | None = None,
    ) -> None:
        self.env = env
        self.network = network
        self.bank = bank
        self.source = source
        self.tick = tick
        self.m = bank.m
        self.batches_per_step = batches_per_step
        self.uplink, self.downlink = uplink, downlink
        self.durations = durations.astype(np.int64)
        self.horizon_rounds = horizon_rounds
        self.horizon_time = horizon_time
        self.horizon_ticks = (
            None if horizon_time is None else math.floor(horizon_time / tick + _EPS)
        )
        self.eval_every = eval_every
        self.eval_local = eval_local
        self.divergence_every = divergence_every  # eval.divergence_every: rows with the value
        self.observers = Observers(self, observers)  # read, never write (netfl.observers)
        self.events: list[dict[str, Any]] = []

        self.due = self.durations.copy()  # tick at which each learner's current step completes
        self.rounds_done = np.zeros(self.m, dtype=np.int64)
        self.blocked = np.zeros(self.m, dtype=bool)
        self.online = np.ones(self.m, dtype=bool)  # learners.availability turns learners off
        # learners.availability is on (set by the build, or by the first set_online): rows
        # then skip offline learners and say who is online
        self.availability = False
        self.dropouts = 0  # times a learner went offline
        self.finished = np.zeros(self.m, dtype=bool)
        self.log = RoundLog()
        self.rows_emitted = 0
        self.cumulative_loss = 0.0
        self.last_row: dict[str, Any] = {}
        self.counters: dict[str, int] = {"syncs": 0, "drifts": 0, "messages_late": 0}
        self._pending: dict[int, tuple[Any, list[int]]] = {}
        self._wake = env.event()
        self.quiet = env.event()  # fires when the run has nothing left to do
        network.on_lost = self.on_lost
        network.on_idle = self.check_quiet
        self._all_idx = torch.arange(self.m, device=bank.device)
        # serial: (round, x, y) of the last batch drawn, as the source gave it; the protocol
        # ships these samples instead of drawing them a second time
        self.drawn: tuple[int, torch.Tensor, torch.Tensor] | None = None
        # what a payload is charged on the wire; the parameter probe's one-bank replicas
        # (netfl.learning.replicas) charge one replica's share of their concatenated models
        self.message_size: Callable[[bytes | bytearray | memoryview], int] = wire.message_size
        self.protocol = protocol_factory(self)
        # output.checkpoint_every: an object with due(sim) and save(sim) (netfl.checkpoint)
        self.checkpoints: Any = None

    # ------------------------------------------------------------ protocol API

    def send(self, kind: str, src: Any, dst: Any, rnd: int, payload: bytes) -> simpy.Event:
        """Put a real payload on the network; the charged size is its header plus its length."""
        msg = Message(kind, src, dst, int(rnd), payload, self.message_size(payload))
        return self.network.send(msg)

    def send_many(self, kind: str, srcs: Any, dsts: Any, rnd: int, payloads: Any,
                  on_arrival: Callable[[list[Message]], None]) -> None:
        """Send one message per (src, dst) pair at once, as ``send`` would one by one; a
        scalar ``srcs`` or ``dsts`` is every message's, and one ``bytes`` payload is shared by
        all (one object, measured once). ``on_arrival`` gets each list of messages that
        arrive together (``Network.send_many``; from an array batch an ``Arrived``, a
        sequence of messages that also has their ``srcs``, ``dsts``, ``payloads``, ``round``)."""
        srcs = srcs.tolist() if isinstance(srcs, np.ndarray) else srcs
        dsts = dsts.tolist() if isinstance(dsts, np.ndarray) else dsts
        n = len(srcs) if isinstance(srcs, list) else len(dsts)
        if not isinstance(srcs, list):
            srcs = [srcs] * n
        if not isinstance(dsts, list):
            dsts = [dsts] * n
        rnd = int(rnd)
        # as columns: the network makes Message objects only where it needs them
        if isinstance(payloads, (bytes, bytearray, memoryview)):
            self.network.send_columns(kind, srcs, dsts, rnd, payloads, None,
                                      [self.message_size(payloads)] * n, on_arrival)
            return
        payloads = list(payloads)
        if len(payloads) != n:
            raise ValueError(f"send_many: {len(payloads)} payloads for {n} messages")
        self.network.send_columns(kind, srcs, dsts, rnd, None, payloads,
                                  list(map(self.message_size, payloads)), on_arrival)

    def make_channel(self, *, base: torch.Tensor | None = None, seed: int = 0) -> Channel:
        """A model channel with this run's codecs (full float32 models when none are set)."""
        return Channel(self.bank, uplink=self.uplink, downlink=self.downlink, base=base,
                       seed=seed, observers=self.observers)

    def deliver(self, learner: int, model: torch.Tensor) -> None:
        """Queue a received model; applied in one batched assign before the learner next steps."""
        key = id(model)
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = (model, [int(learner)])
        else:
            entry[1].append(int(learner))

    def deliver_many(self, learners: np.ndarray, model: torch.Tensor) -> None:
        """``deliver`` of one model to each of ``learners``, in order."""
        key = id(model)
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = (model, np.asarray(learners, dtype=np.int64).tolist())
        else:
            entry[1].extend(np.asarray(learners, dtype=np.int64).tolist())

    def block(self, learners: np.ndarray) -> None:
        self.blocked[learners] = True

    def unblock(self, learner: int) -> None:
        """Resume a learner at the next tick boundary after now."""
        start = math.ceil(self.env.now / self.tick - _EPS)
        self.blocked[learner] = False
        self.due[learner] = max(self.due[learner], start + self.durations[learner])
        if not self._wake.triggered:
            self._wake.succeed()

    def unblock_many(self, learners: np.ndarray) -> None:
        """``unblock`` of each of ``learners`` (distinct), in one vectorized update."""
        if not len(learners):
            return
        start = math.ceil(self.env.now / self.tick - _EPS)
        self.blocked[learners] = False
        self.due[learners] = np.maximum(self.due[learners], start + self.durations[learners])
        if not self._wake.triggered:
            self._wake.succeed()

    def set_online(self, learners: np.ndarray, online: bool) -> None:
        """Learners go offline (they stop training, their messages are lost and the
        protocol is told) or come back: at the next tick boundary, at the round the metrics
        have reached (rounds missed while away are skipped), with whatever the protocol's
        ``on_online`` sends them."""
        learners = np.asarray(learners, dtype=np.int64)
        learners = learners[self.online[learners] != online]
        if not len(learners):
            return
        self.availability = True
        self.online[learners] = online
        if not online:
            self.dropouts += len(learners)
            self.protocol.on_offline(learners)
            for learner in learners.tolist():
                self.network.set_endpoint(learner, False)
            self._emit_rows()  # rows waiting only for these learners are complete now
        else:
            for learner in learners.tolist():
                self.network.set_endpoint(learner, True)
            start = math.ceil(self.env.now / self.tick - _EPS)
            self.rounds_done[learners] = np.maximum(self.rounds_done[learners],
                                                    self.rows_emitted)
            self.blocked[learners] = False
            self.due[learners] = start + self.durations[learners]
            self.protocol.on_online(learners)
        if not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------- the loop

    def run(self, *, resumed: bool = False) -> None:
        """Run to the horizon: all rounds done and the network drained, or the time limit
        (then the run ends at that instant, whatever is still in flight). ``resumed``: the
        state came from a checkpoint (netfl.checkpoint), so observers and protocol have
        started already; the loop carries on from the step it was about to take."""
        if not resumed:
            self.observers.start()
            self.protocol.start()
        self.env.process(self._loop())
        # What exists now (the graph, links, data, the bank) lives the whole run: frozen, the
        # cyclic garbage collector stops rescanning it at every collection, which took about
        # a third of a communication-bound run's CPU. Unfrozen after, so it can be freed.
        gc.freeze()
        try:
            if self.horizon_time is not None:
                self.env.run(until=self.horizon_time)
            else:
                env, quiet, step = self.env, self.quiet, self.env.step
                while not quiet.triggered and env.peek() < math.inf:
                    step()
        finally:
            gc.unfreeze()
        self.apply_pending()
        if self.horizon_time is None and not self.finished.all():
            raise DeadlockError(self._deadlock_message())

    def check_quiet(self) -> None:
        """Once every learner is done and nothing is in flight (at the end of the instant, so
        replies sent from deliveries count), the run is over: stale timers never move the
        clock, and random outages stop."""
        if self.finished.all() and not self.network.in_flight and not self.quiet.triggered:
            AfterNormal(self.env).callbacks.append(self._quiet_now)

    def _quiet_now(self, _event: simpy.Event) -> None:
        if self.finished.all() and not self.network.in_flight and not self.quiet.triggered:
            self.quiet.succeed()

    def _deadlock_message(self) -> str:
        waiting = np.flatnonzero(self.blocked & ~self.finished)
        shown = ", ".join(str(i) for i in waiting[:8]) + (", ..." if len(waiting) > 8 else "")
        return (f"deadlock at t={self.env.now:.6g} s: protocol {self.protocol.name!r} keeps "
                f"{len(waiting)} learner(s) waiting ({shown}) and no message is in flight")

    def on_lost(self, msg: Message) -> None:
        """The network gave a message up: the protocol decides how to carry on."""
        self.protocol.on_lost(msg)
        if not self._wake.triggered:
            self._wake.succeed()

    def _loop(self):
        while True:
            self._retire()
            active = ~self.blocked & ~self.finished & self.online
            if not active.any():
                if self.finished.all():
                    self.check_quiet()
                    return
                if self.env.peek() == math.inf:
                    raise DeadlockError(self._deadlock_message())
                self._wake = self.env.event()
                yield self._wake
                continue
            tick = int(self.due[active].min())
            wait = tick * self.tick - self.env.now
            if wait > _EPS:
                self._wake = self.env.event()
                yield self.env.any_of([self.env.timeout(wait), self._wake])
                continue
            learners = np.flatnonzero(active & (self.due == tick))
            if self.checkpoints is not None and self.checkpoints.due(self):
                self.checkpoints.save(self)  # output.checkpoint_every: here, between steps
            self._step(learners, tick)

    def _retire(self) -> None:
        """Mark learners that reached the horizon; they take no further steps."""
        if self.horizon_rounds is not None:
            self.finished |= self.rounds_done >= self.horizon_rounds
            if self.availability and self.rows_emitted >= self.horizon_rounds:
                self.finished |= ~self.online  # every row is written: nothing to wait for
        if self.horizon_ticks is not None:
            self.finished |= ~self.blocked & (self.due > self.horizon_ticks)

    def _step(self, learners: np.ndarray, tick: int) -> None:
        self.apply_pending()
        rounds = self.rounds_done[learners]
        idx = self.index(learners)
        loss, samples, finite = self._train(learners, idx, rounds)
        self._check_finite(learners, idx, rounds, loss, finite)
        self.rounds_done[learners] += 1
        self.due[learners] = tick + self.durations[learners]
        self.log.add(rounds, loss, samples)
        self.observers.steps(tick, learners, loss)
        self.protocol.after_step(learners, self.rounds_done[learners])
        self._emit_rows()

    def _check_finite(self, learners: np.ndarray, idx: torch.Tensor, rounds: np.ndarray,
                      loss: np.ndarray, finite: torch.Tensor | None) -> None:
        """Stop at the first non-finite loss or parameter, before the protocol sends it
        (``finite``: the step's own check of the rows it updated, where it made one)."""
        bad = ~np.isfinite(loss)
        if not bad.any():
            bad = ~(self.bank.finite(idx) if finite is None else finite.cpu().numpy())
        if bad.any():
            rows = learners if len(bad) == len(learners) else learners[:1]
            raise DivergedError.at(int(rounds.min()) + 1, rows[bad[:len(rows)]])

    def _train(self, learners: np.ndarray, idx: torch.Tensor, rounds: np.ndarray):
        everyone = len(learners) == self.m and (rounds == rounds[0]).all()
        if self.batches_per_step == 1:
            if everyone:
                x, y = self.source.batch(None, int(rounds[0]))
            else:
                x, y = self.source.batch(learners, rounds)
            x, y = x.to(self.bank.device), y.to(self.bank.device)
            result = self.bank.step(idx, x, y)
            loss = result.loss_sum.detach().cpu().numpy().astype(np.float64)
            return loss, np.full(len(learners), y.shape[1], dtype=np.int64), result.finite
        # serial: one learner takes the batches of every source in turn
        x, y = self.source.batch(None, int(rounds[0]))
        self.drawn = (int(rounds[0]), x, y)
        x, y = x.to(self.bank.device), y.to(self.bank.device)
        total = torch.zeros((), device=self.bank.device)
        for j in range(x.shape[0]):
            total += self.bank.step(idx, x[j : j + 1], y[j : j + 1]).loss_sum.sum()
        return (np.array([float(total)]), np.array([y.shape[0] * y.shape[1]], dtype=np.int64),
                None)

    def apply_pending(self) -> None:
        """Assign every received model, one batched assign per distinct payload."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for model, learners in pending.values():
            self.bank.assign(self.index(np.asarray(learners)), self.bank.unflatten(model))

    def index(self, learners: np.ndarray) -> torch.Tensor:
        """Bank index for learner ids, reusing one tensor when it is everyone in order."""
        if len(learners) == self.m and (learners == np.arange(self.m)).all():
            return self._all_idx
        return torch.as_tensor(learners, dtype=torch.long, device=self.bank.device)

    # ------------------------------------------------------------- metrics

    def _emit_rows(self) -> None:
        """Write every round's row that all learners have finished; an offline learner
        that has not reached a round does not hold its row back."""
        finished = self.log.finished
        while self.rows_emitted < len(finished):
            done = finished[self.rows_emitted]
            if 0 < done < self.m and self.availability:
                done += int((~self.online & (self.rounds_done <= self.rows_emitted)).sum())
            if done < self.m:
                break
            self._emit(self.rows_emitted)
            self.rows_emitted += 1

    def _record_drifts(self, r: int) -> None:
        """Drifts whose first round is r+1 (0-based): they start as round r ends."""
        events = getattr(self.source, "events", None)
        if events is None:
            return
        for event in events(r + 1)[self.counters["drifts"]:]:
            row = {"round": event.round + 1, "sim_time_s": round(self.env.now, 9),
                   "event": "drift", "kind": event.kind, "concept_from": event.concept_from,
                   "concept_to": event.concept_to}
            self.counters["drifts"] += 1
            self.events.append(row)
            self.observers.event(row)

    def _emit(self, r: int) -> None:
        self._record_drifts(r)
        loss = float(self.log.loss[r])
        self.cumulative_loss += loss
        net = self.network
        row: dict[str, Any] = {
            "round": r + 1,
            "sim_time_s": round(self.env.now, 9),
            "loss": loss,
            "samples": int(self.log.samples[r]),
            "cumulative_loss": self.cumulative_loss,
            "bytes_up": net.bytes_up,
            "bytes_down": net.bytes_down,
            "bytes_total": net.bytes_total,
            "messages": net.messages,
            "bytes_peer": net.bytes_peer,
            "retransmissions": net.retransmissions,
            "messages_lost": net.messages_lost,
            **self._divergence_cell(r),
            **self.counters,
        }
        if self.availability:
            row["learners_online"] = int(self.online.sum())
            row["dropouts"] = self.dropouts
        for kind in self.protocol.message_kinds:
            row[f"bytes_{kind}"] = net.bytes_by_kind.get(kind, 0)
        if (r + 1) % self.eval_every == 0 or (r + 1) == self.horizon_rounds:
            row.update(self.evaluate())
        self.last_row = row
        self.observers.round(row)

    @property
    def extra_columns(self) -> list[str]:
        """Engine columns beyond the base ones: availability's, when it is on."""
        return ["learners_online", "dropouts"] if self.availability else []

    def _divergence_cell(self, r: int) -> dict[str, float]:
        """The divergence, exact, on every ``divergence_every``-th row and the last; other
        rows leave the cell empty (it reads all m x P parameters)."""
        if self.m == 1:
            return {"divergence": 0.0}
        if (r + 1) % self.divergence_every and (r + 1) != self.horizon_rounds:
            return {}
        return {"divergence": self.bank.divergence()}

    @property
    def eval_columns(self) -> list[str]:
        """What ``evaluate`` reports: accuracy, or mean squared error for regression."""
        metric = "mse" if self.bank.regression else "acc"
        return [f"{metric}_mean_model", f"{metric}_local_mean"]

    def evaluate(self) -> dict[str, float]:
        """The mean model's score and the local models' mean score on held-out data:
        accuracy for classification, mean squared error (per target) for regression."""
        x, y = self.source.eval_set(max(self.rows_emitted - 1, 0))
        x, y = x.to(self.bank.device), y.to(self.bank.device)
        n = len(y)
        mean_col, local_col = self.eval_columns
        loss, correct = self.bank.evaluate(self.bank.mean(), x, y)
        score = loss if self.bank.regression else correct
        out = {mean_col: float(score) / n}
        if self.eval_local:
            loss, local = self.bank.evaluate(self.bank.params, x, y)
            score = loss if self.bank.regression else local.float()
            out[local_col] = float(score.mean()) / n
        return out
