"""Asynchronous protocols: FedAsync (Xie et al. 2019) and FedBuff (Nguyen et al. 2022).

Learners never wait. Every ``b`` rounds a learner uploads (kind ``model_up``) and
goes on training; the coordinator keeps a global model ``x`` with a version
``v`` (the number of server updates so far) and answers with ``model_down``
payloads that replace the receiver's model before its next step.

FedAsync (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019).
A learner uploads its model ``x_new`` with the version ``tau`` of the global
model it last received. On each arrival the coordinator, at version ``t``, sets

    staleness = t - tau
    alpha_t   = alpha * s(staleness)
    x        <- (1 - alpha_t) x + alpha_t x_new,   v <- t + 1

and sends the new ``x`` (version ``t + 1``) back to that learner. Staleness
functions (the paper's Sec. 5.2, there written as s(t - tau)):

    constant:    s(d) = 1
    polynomial:  s(d) = (d + 1) ** -a                      (a > 0; paper: a = 0.5)
    hinge:       s(d) = 1 if d <= b_h else 1 / (a (d - b_h) + 1)   (paper: a = 10, b_h = 4)

FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS 2022, Algorithm 1). A learner uploads its update
``delta = x_local - x_base`` with the version of the global model it last
received. ``x_base`` is the global model it last received, or its own model at
its previous upload if that is later: each delta is the progress since the
learner's last upload or last received model, so no progress is sent twice (a
learner keeps training after uploading and may upload again before the buffer
it joined is applied). The coordinator buffers arrivals; at the K-th

    x <- x + server_lr * (1/K) sum_i s(staleness_i) delta_i,   v <- v + 1

with s(d) = 1 / sqrt(1 + d) (the paper's choice) when ``staleness_scaling``,
else 1, and sends the new ``x`` to every learner whose update was in the buffer
(once each). Learners not in the buffer keep training on their own models until
an update of theirs is applied.

Shared rules. The global model starts as the mean of the learners' initial
models (every learner's model when ``init_noise`` is 0), version 0. A download
older than the version its receiver already holds (overtaken on the network) is
ignored. An upload the network gives up is dropped; a download given up leaves
its learner on its local model and version. Both are counted in ``summary``.

Wire. Payloads are real: a little-endian uint32 version (the base version up,
the new version down) followed by a full float32 vector (``netfl.sim.wire``).
Compression codecs are refused: the codec channel (``netfl.sim.channel``)
assumes a learner's base stays known to the coordinator until every learner
has moved past it, which uploads in flight across several asynchronous
versions break.

Nothing here draws random numbers: the protocols are deterministic given the
simulation (``seed`` is kept for the seam).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import Field, model_validator

from netfl.protocols.base import Protocol
from netfl.schema import Section
from netfl.sim import wire
from netfl.sim.interface import COORDINATOR, SimulationAPI

KINDS = ("model_up", "model_down")
COUNTERS = ("server_updates",)
_VERSION = struct.Struct("<I")

StalenessKind = Literal["constant", "polynomial", "hinge"]
DEFAULT_A = {"constant": None, "polynomial": 0.5, "hinge": 10.0}


# --------------------------------------------------------------------- formulas


def staleness_weight(kind: str, staleness: int | float, a: float | None = None,
                     hinge_b: float = 4.0) -> float:
    """FedAsync's s(staleness): constant 1, polynomial (d+1)^-a, hinge 1 / (a (d - b) + 1)."""
    d = float(staleness)
    if d < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if a is None:
        a = DEFAULT_A[kind]
    if kind == "polynomial":
        return (d + 1.0) ** (-a)
    if kind == "hinge":
        return 1.0 if d <= hinge_b else 1.0 / (a * (d - hinge_b) + 1.0)
    raise ValueError(f"unknown staleness function {kind!r}")


def fedbuff_weight(staleness: int | float) -> float:
    """FedBuff's staleness scaling s(d) = 1 / sqrt(1 + d)."""
    return 1.0 / math.sqrt(1.0 + float(staleness))


def fedasync_mix(x: torch.Tensor, x_new: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """The FedAsync server update: (1 - alpha_t) x + alpha_t x_new."""
    return (1.0 - alpha_t) * x + alpha_t * x_new


def fedbuff_apply(x: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor | np.ndarray,
                  server_lr: float) -> torch.Tensor:
    """The FedBuff server update: x + server_lr * mean_i(w_i delta_i) over the K buffered rows."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=deltas.device)
    return x + server_lr * (w[:, None] * deltas).sum(dim=0) / deltas.shape[0]


def encode(version: int, vectors: torch.Tensor) -> list[bytes]:
    """Payloads: uint32 version + float32 vector, one per row of ``vectors`` [k, P]."""
    head = _VERSION.pack(int(version))
    return [head + body for body in wire.encode_vectors(vectors)]


def decode(payload: bytes, device: torch.device | str) -> tuple[int, torch.Tensor]:
    (version,) = _VERSION.unpack_from(payload)
    return version, wire.decode_vector(payload[_VERSION.size:], device)


# ------------------------------------------------------------------------ configs


class FedAsyncConfig(Section):
    """FedAsync: every b rounds a learner's model is mixed into the global model it gets back."""

    name: Literal["fedasync"]
    b: int = Field(default=5, ge=1, description="local rounds between uploads")
    alpha: float = Field(default=0.6, gt=0, le=1, description="mixing weight before staleness")
    staleness: StalenessKind = Field(
        default="polynomial", description="s(d): constant 1, polynomial (d+1)^-a, "
        "hinge 1 if d <= hinge_b else 1/(a (d - hinge_b) + 1)")
    a: float | None = Field(
        default=None, gt=0, description="polynomial exponent or hinge slope "
        "(default 0.5 polynomial, 10 hinge)")
    hinge_b: float = Field(default=4.0, ge=0, description="hinge: staleness without discount")

    @model_validator(mode="after")
    def _default_a(self) -> FedAsyncConfig:
        if self.a is None and self.staleness != "constant":
            self.a = DEFAULT_A[self.staleness]
        return self


class FedBuffConfig(Section):
    """FedBuff: learners send updates; every K arrivals their (scaled) mean is applied."""

    name: Literal["fedbuff"]
    b: int = Field(default=5, ge=1, description="local rounds between uploads")
    K: int = Field(default=3, ge=1, description="updates buffered per server update")
    server_lr: float = Field(default=1.0, gt=0, description="server learning rate")
    staleness_scaling: bool = Field(
        default=True, description="scale each update by 1/sqrt(1 + staleness)")


# ---------------------------------------------------------------------- protocols


class Asynchronous(Protocol):
    """What FedAsync and FedBuff share: the global model, versions, staleness books, wire."""

    synchronizes = True
    counters = COUNTERS
    message_kinds = KINDS

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        channel = sim.make_channel(seed=self.channel_seed())
        if channel.uplink is not None or channel.downlink is not None:
            from netfl.scenario import ScenarioError  # lazy: netfl.scenario imports protocols

            raise ScenarioError(f"compression: the {self.name} protocol sends full float32 "
                                "models; codecs are not supported with it")
        self.device = sim.bank.device
        initial = sim.bank.flat()
        self.x = initial.mean(dim=0)  # the global model
        self.version = 0
        self.learner_version = np.zeros(sim.m, dtype=np.int64)  # version each learner holds
        self.staleness: list[int] = []  # one entry per upload that arrived
        self.uploads_lost = 0
        self.downloads_lost = 0
        self.downloads_stale = 0
        for name in COUNTERS:
            sim.counters[name] = 0

    # ---------------------------------------------------------------- learners

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        sim = self.sim
        due = learners[rounds % self.config.b == 0]
        if not len(due):
            return
        models = sim.bank.flat(sim.index(due))
        for learner, vector in zip(due, self.upload_vectors(due, models)):
            learner = int(learner)
            (payload,) = encode(int(self.learner_version[learner]), vector[None])
            event = sim.send("model_up", learner, COORDINATOR, int(sim.rounds_done[learner]),
                             payload)
            event.callbacks.append(self._on_upload)

    def upload_vectors(self, learners: np.ndarray, models: torch.Tensor) -> torch.Tensor:
        """What the learners send: their models (FedAsync) or their updates (FedBuff)."""
        return models

    def _on_download(self, event: simpy.Event) -> None:
        msg = event.value
        version, model = decode(msg.payload, self.device)
        learner = int(msg.dst)
        if version < self.learner_version[learner]:
            self.downloads_stale += 1  # overtaken by a newer model on the network
            return
        self.learner_version[learner] = version
        self.received(learner, model)
        self.sim.deliver(learner, model)

    def received(self, learner: int, model: torch.Tensor) -> None:
        """A learner got a new global model (FedBuff: its new base)."""

    # ------------------------------------------------------------- coordinator

    def _on_upload(self, event: simpy.Event) -> None:
        msg = event.value
        base, vector = decode(msg.payload, self.device)
        staleness = self.version - base
        self.staleness.append(staleness)
        self.arrive(int(msg.src), msg.round, staleness, vector)

    def arrive(self, learner: int, rnd: int, staleness: int, vector: torch.Tensor) -> None:
        raise NotImplementedError

    def send_global(self, learners: list[int], rnd: int) -> None:
        (payload,) = encode(self.version, self.x[None])
        for learner in learners:
            event = self.sim.send("model_down", COORDINATOR, int(learner), rnd, payload)
            event.callbacks.append(self._on_download)

    def update(self, x: torch.Tensor) -> None:
        self.x = x
        self.version += 1
        self.sim.counters["server_updates"] += 1
        self.sim.counters["syncs"] += 1  # what probes' every: sync and summary's syncs count

    def on_online(self, learners: np.ndarray) -> None:
        """A learner that comes back downloads the current global model if it holds an older
        one (it does not wait for it: nobody waits in these protocols)."""
        behind = learners[self.learner_version[learners] < self.version]
        if len(behind):
            self.send_global(behind.tolist(), int(self.sim.rounds_done[behind].max()))

    def on_lost(self, msg: Any) -> None:
        """Nobody waits: a lost upload is dropped, a lost download leaves its learner as it is."""
        if msg.kind == "model_up":
            self.uploads_lost += 1
        elif msg.kind == "model_down":
            self.downloads_lost += 1
        else:
            super().on_lost(msg)

    # ---------------------------------------------------------------- results

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(np.asarray(self.staleness, dtype=np.int64)) if self.staleness \
            else np.zeros(0, dtype=np.int64)
        out: dict[str, Any] = {
            "server_updates": int(self.sim.counters["server_updates"]),
            "arrivals": len(self.staleness),
            "staleness_mean": float(np.mean(self.staleness)) if self.staleness else None,
            "staleness_max": int(max(self.staleness)) if self.staleness else None,
            "staleness_histogram": {str(s): int(c) for s, c in enumerate(counts) if c},
            "uploads_lost": self.uploads_lost,
            "downloads_lost": self.downloads_lost,
            "downloads_stale": self.downloads_stale,
        }
        out.update(self.evaluate_global())
        return out

    def evaluate_global(self) -> dict[str, float]:
        """The coordinator's global model on held-out data (the engine scores the learners'
        mean model, which is not the model an asynchronous server serves)."""
        bank = self.sim.bank
        x, y = self.sim.source.eval_set(max(int(self.sim.rounds_done.max()) - 1, 0))
        x, y = x.to(bank.device), y.to(bank.device)
        loss, correct = bank.evaluate(bank.unflatten(self.x), x, y)
        if bank.regression:
            return {"global_mse": float(loss) / len(y)}
        return {"global_accuracy": float(correct) / len(y)}


class FedAsync(Asynchronous):
    name = "fedasync"
    Config = FedAsyncConfig

    def alpha_t(self, staleness: int) -> float:
        c = self.config
        return c.alpha * staleness_weight(c.staleness, staleness, c.a, c.hinge_b)

    def arrive(self, learner: int, rnd: int, staleness: int, vector: torch.Tensor) -> None:
        self.update(fedasync_mix(self.x, vector, self.alpha_t(staleness)))
        self.send_global([learner], rnd)


class FedBuff(Asynchronous):
    name = "fedbuff"
    Config = FedBuffConfig

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        self.base = sim.bank.flat().clone()  # [m, P]: what each learner's next delta is from
        self.buffer: list[tuple[int, torch.Tensor, float]] = []  # learner, delta, weight

    def upload_vectors(self, learners: np.ndarray, models: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(learners, dtype=torch.long, device=self.base.device)
        deltas = models - self.base[idx]
        self.base[idx] = models  # the next delta starts here (unless a new model arrives)
        return deltas

    def received(self, learner: int, model: torch.Tensor) -> None:
        self.base[learner] = model

    def arrive(self, learner: int, rnd: int, staleness: int, vector: torch.Tensor) -> None:
        weight = fedbuff_weight(staleness) if self.config.staleness_scaling else 1.0
        self.buffer.append((learner, vector, weight))
        if len(self.buffer) < self.config.K:
            return
        buffer, self.buffer = self.buffer, []
        deltas = torch.stack([delta for _, delta, _ in buffer])
        weights = np.array([w for _, _, w in buffer])
        self.update(fedbuff_apply(self.x, deltas, weights, self.config.server_lr))
        self.send_global(sorted({i for i, _, _ in buffer}), rnd)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "buffered_at_end": len(self.buffer)}
