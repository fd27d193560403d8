"""FedAvg (McMahan et al.) in seed 004's streaming form.

Every b rounds the coordinator averages a seeded random fraction C of the
learners (round(C*m), at least one) and sends the average to every learner,
who all continue from the global model. The selection for round t is drawn
from (seed, t) alone, a schedule every learner knows, so it costs no message.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
from pydantic import Field

from netfl.protocols.base import StarAveraging, StarConfig


class FedAvgConfig(StarConfig):
    name: Literal["fedavg"]
    b: int = Field(default=10, ge=1)
    fraction: float = Field(default=0.3, gt=0, le=1, description="C, share of learners averaged")


class FedAvg(StarAveraging):
    name = "fedavg"
    Config = FedAvgConfig

    def __init__(self, sim, config, *, seed: int = 0) -> None:
        super().__init__(sim, config, seed=seed)
        self.count = max(1, round(config.fraction * sim.m))  # models averaged per round
        self.chosen = min(sim.m, math.ceil(self.count * self.overcommit - 1e-9))  # selected

    def syncs_at(self, rnd: int) -> bool:
        return rnd % self.config.b == 0

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few recent rounds, freed with the protocol
    def uploaders(self, rnd: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, rnd])
        return np.sort(rng.choice(self.sim.m, size=self.chosen, replace=False))

    def selection(self, rnd: int) -> tuple[np.ndarray, int]:
        """``overcommit`` times C*m learners are asked; the first C*m models close the round."""
        return self.uploaders(rnd), self.count
