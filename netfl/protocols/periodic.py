"""Periodic averaging (seed 004 sec. 4): every b rounds all learners are replaced by their mean."""

from __future__ import annotations

from netfl.protocols.base import StarAveraging


class Periodic(StarAveraging):
    name = "periodic"

    def syncs_at(self, rnd: int) -> bool:
        return rnd % self.config.b == 0


class Continuous(StarAveraging):
    """Periodic with b = 1: equals serial mini-batch SGD with batch mB (seed 004 Prop. 3)."""

    name = "continuous"

    def syncs_at(self, rnd: int) -> bool:
        return True
