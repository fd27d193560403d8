"""The centralized baseline: one learner at the coordinator trains on every learner's batches.

Each round every source ships its B fresh samples to the coordinator (charged
as real float32/int64 encodings); the serial learner takes one step per batch,
in learner order, so it is the serial online algorithm on all m*T batches.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from netfl.protocols.base import Protocol
from netfl.schema import Section
from netfl.sim import wire
from netfl.sim.interface import COORDINATOR, Needs


class SerialConfig(Section):
    """One learner at the coordinator sees every learner's batches, one step per batch."""

    name: Literal["serial"]


class Serial(Protocol):
    name = "serial"
    Config = SerialConfig
    message_kinds = ("samples",)

    @classmethod
    def needs(cls, config: Any, m: int) -> Needs:
        """One central model that takes every learner's batch in turn, on one machine."""
        return Needs(bank_size=1, batches_per_step=m, one_machine=True, local_models=False,
                     models_on_wire=False)

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        """Ship the batches the step just trained on: the engine's draw, not a second one."""
        sim = self.sim
        rnd = int(rounds[0])
        if sim.drawn is None or sim.drawn[0] != rnd - 1:
            raise RuntimeError(f"serial: the engine kept no batch of round {rnd}")
        _, x, y = sim.drawn
        for source in range(x.shape[0]):
            sim.send("samples", source, COORDINATOR, rnd, wire.encode_samples(x[source], y[source]))
