"""The centralized baseline: one learner at the coordinator trains on every learner's batches.

Each round every source ships its B fresh samples to the coordinator (charged
as real float32/int64 encodings); the serial learner takes one step per batch,
in learner order, so it is the serial online algorithm on all m*T batches.
"""

from __future__ import annotations

import numpy as np

from netfl.protocols.base import Protocol
from netfl.sim import wire
from netfl.sim.engine import COORDINATOR


class Serial(Protocol):
    name = "serial"
    message_kinds = ("samples",)

    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None:
        sim = self.sim
        rnd = int(rounds[0])
        x, y = sim.source.batch(None, rnd - 1)
        for source in range(x.shape[0]):
            sim.send("samples", source, COORDINATOR, rnd, wire.encode_samples(x[source], y[source]))
