"""SCAFFOLD (Karimireddy et al. 2020): star averaging with control variates against client drift.

The coordinator keeps the global model ``x`` and a server control ``c``; learner i keeps
a client control ``c_i`` (all zero at the start). Between synchronizations every local
step uses the corrected gradient ``g_i(y_i) - c_i + c`` (a per-row correction in the
LearnerBank, ``bank.set_correction``, so steps stay one batched call), with ``c`` the
server control the learner last received. Every ``b`` rounds the (seeded, FedAvg-like)
fraction ``S`` of learners uploads, with ``K_i`` its local steps since it received
``x`` (``b`` when it waits) and ``eta`` the optimizer's learning rate (option II)::

    c_i+ = c_i - c + (x - y_i) / (K_i * eta)
    upload (dy_i, dc_i) = (y_i - x, c_i+ - c_i);  c_i <- c_i+

and the coordinator, with N learners::

    x <- x + lr_global * mean_S(dy_i)        (or protocol.server_optimizer on that Delta)
    c <- c + |S|/N * mean_S(dc_i)

then sends ``(x, c)`` to every learner, who continues from ``x`` with correction
``c - c_i``. Both directions carry two vectors and are charged as such: an upload is
``dy`` (full float32, or coded by the uplink codec as the model update it is) followed
by ``dc`` as a float32 vector; a broadcast is ``x`` (through the channel as every star
protocol's, so downlink codecs apply) followed by ``c`` as a float32 vector. Controls
always travel uncompressed. ``eta`` assumes plain SGD locally (momentum or Adam make
option II an approximation).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from netfl.protocols.base import StarAveraging, StarConfig
from netfl.sim import wire
from netfl.sim.channel import unframe
from netfl.sim.interface import SimulationAPI


class ScaffoldConfig(StarConfig):
    name: Literal["scaffold"]
    b: int = Field(default=10, ge=1, description="rounds (local steps) between synchronizations")
    lr_global: float = Field(default=1.0, gt=0, description="server step size eta_g on mean(dy)")
    fraction: float = Field(default=1.0, gt=0, le=1,
                            description="share of learners that upload each synchronization")

    @model_validator(mode="after")
    def _one_server_step(self) -> ScaffoldConfig:
        if self.server_optimizer is not None and self.lr_global != 1.0:
            raise ValueError("lr_global: set either lr_global or server_optimizer.lr, not both")
        return self


class Scaffold(StarAveraging):
    name = "scaffold"
    Config = ScaffoldConfig

    def __init__(self, sim: SimulationAPI, config: Any, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        bank = sim.bank
        self.count = max(1, round(config.fraction * sim.m))
        self.chosen = min(sim.m, math.ceil(self.count * self.overcommit - 1e-9))
        self.eta = float(bank.optimizer.lr)
        if self.eta <= 0:
            raise ValueError("scaffold: needs an optimizer learning rate > 0 (option II)")
        self.vector_bytes = 4 + 4 * bank.num_params  # one float32 vector payload
        self.c = torch.zeros(bank.num_params, device=bank.device, dtype=bank.dtype)
        self.ci = torch.zeros(sim.m, bank.num_params, device=bank.device, dtype=bank.dtype)
        self.controls: dict[int, torch.Tensor] = {0: self.c}  # c sent with each base version
        self.start_round = np.zeros(sim.m, dtype=np.int64)  # rounds done when x was received
        self._last: tuple[bytes, torch.Tensor, torch.Tensor] | None = None  # decoded broadcast
        bank.set_correction(torch.zeros(bank.num_params, device=bank.device))

    def syncs_at(self, rnd: int) -> bool:
        return rnd % self.config.b == 0

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few recent rounds, freed with the protocol
    def uploaders(self, rnd: int) -> np.ndarray:
        if self.chosen == self.sim.m:
            return np.arange(self.sim.m)
        rng = np.random.default_rng([self.seed, rnd])
        return np.sort(rng.choice(self.sim.m, size=self.chosen, replace=False))

    def selection(self, rnd: int) -> tuple[np.ndarray, int]:
        return self.uploaders(rnd), self.count

    # ------------------------------------------------------------- learners

    def _held(self, senders: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The global model and server control each sender last received, ``[k, P]`` each
        (gathered from the few distinct versions, no loop over learners)."""
        versions = self.channel.learner_version[senders]
        distinct, inverse = np.unique(versions, return_inverse=True)
        rows = torch.as_tensor(inverse, device=self.sim.bank.device)
        x = torch.stack([self.channel.bases[int(v)] for v in distinct]).index_select(0, rows)
        c = torch.stack([self.controls[int(v)] for v in distinct]).index_select(0, rows)
        return x, c

    def _uploads(self, senders: np.ndarray, rnd: int) -> list[bytes]:
        bank = self.sim.bank
        idx = self.sim.index(senders)
        y = bank.flat(idx)
        x, c = self._held(senders)
        steps = np.maximum(self.sim.rounds_done[senders] - self.start_round[senders], 1)
        scale = torch.as_tensor(1.0 / (steps * self.eta), device=y.device, dtype=y.dtype)
        ci = self.ci.index_select(0, idx)
        ci_plus = ci - c + (x - y) * scale.unsqueeze(1)  # option II
        dc = ci_plus - ci
        self.ci.index_copy_(0, idx, ci_plus)
        bank.set_correction(c - ci_plus, idx)
        if self.channel.uplink is None:
            updates = wire.encode_vectors(y - x)
        else:  # the uplink codec codes y - (the base the learner holds) = dy
            updates = self.channel.encode_up(senders, y)
        controls = wire.encode_vectors(dc)
        return [u + v for u, v in zip(updates, controls, strict=True)]

    def _received(self, learner: int, payload: bytes, version: int) -> None:
        if self._last is None or self._last[0] is not payload:
            model = self.channel.decode_down(payload[: -self.vector_bytes])
            c = wire.decode_vector(payload[-self.vector_bytes :], self.sim.bank.device)
            self._last = (payload, model, c)
        _, model, c = self._last
        self.sim.deliver(learner, model)  # one tensor for every receiver: one batched assign
        self.start_round[learner] = self.sim.rounds_done[learner]
        self.sim.bank.set_correction(c - self.ci[learner], learner)

    def _received_many(self, learners: np.ndarray, payload: bytes, version: int) -> None:
        """``_received`` for each of ``learners`` at once: one decode, one deliver, one
        correction update of their rows."""
        self._received(int(learners[0]), payload, version)
        if len(learners) == 1:
            return
        _, model, c = self._last
        rest = learners[1:]
        self.sim.deliver_many(rest, model)
        self.start_round[rest] = self.sim.rounds_done[rest]
        idx = self.sim.index(rest)
        self.sim.bank.set_correction(c - self.ci.index_select(0, idx), idx)

    # ---------------------------------------------------------- coordinator

    def _server_step(self, delta: torch.Tensor) -> torch.Tensor:
        if self.server_optimizer is None:
            return self.global_model + self.config.lr_global * delta
        return self.server_optimizer.step(self.global_model, delta)

    def _decode_updates(self, parts: list[bytes]) -> torch.Tensor:
        device = self.sim.bank.device
        if self.channel.uplink is None:
            return wire.decode_vectors(parts, device)
        rows = []
        for part in parts:
            _, blobs = unframe(part)
            layers = self.channel.uplink.decode_update(blobs)
            rows.append(torch.cat([t.reshape(-1) for t in layers]).to(device))
        return torch.stack(rows)

    def _average(self, payloads: list[bytes]) -> tuple[bytes, int]:
        cut = self.vector_bytes
        dy = self._decode_updates([p[:-cut] for p in payloads])
        dc = wire.decode_vectors([p[-cut:] for p in payloads], self.sim.bank.device)
        self.c = self.c + dc.sum(dim=0) / self.sim.m  # |S|/N * mean_S(dc)
        model_payload, version = self._send_global(self._server_step(dy.mean(dim=0)))
        self.controls[version] = self.c
        oldest = int(self.channel.learner_version.min())
        for v in [v for v in self.controls if v < oldest and v < version - 1]:
            del self.controls[v]
        return model_payload + wire.encode_vector(self.c), version

    def summary(self) -> dict[str, Any]:
        return {"scaffold_control_norm": float(torch.linalg.vector_norm(self.c))}
