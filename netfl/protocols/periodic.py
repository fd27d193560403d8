"""Periodic averaging (seed 004 sec. 4): every b rounds all learners are replaced by their mean."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from netfl.protocols.base import StarAveraging, StarConfig


class PeriodicConfig(StarConfig):
    name: Literal["periodic"]
    b: int = Field(default=10, ge=1, description="rounds between synchronizations")


class ContinuousConfig(StarConfig):
    name: Literal["continuous"]


class Periodic(StarAveraging):
    name = "periodic"
    Config = PeriodicConfig

    def syncs_at(self, rnd: int) -> bool:
        return rnd % self.config.b == 0


class Continuous(StarAveraging):
    """Periodic with b = 1: equals serial mini-batch SGD with batch mB (seed 004 Prop. 3)."""

    name = "continuous"
    Config = ContinuousConfig

    def syncs_at(self, rnd: int) -> bool:
        return True
