"""When a probe fires: every k rounds, or at the protocol's synchronization rounds.

Probes are observers (``netfl.observers.Observer``): their ``on_round`` gets the metrics row
of round r (1-based), i.e. once every learner has finished round r. At a synchronization round of a
star protocol (periodic, continuous, fedavg) the uploads have only just been sent, so a
probe sees the local models *before* the average replaces them, which is the moment seed 000
measures "at each aggregation".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netfl.sim.engine import Simulation


class Schedule:
    """``every``: a positive number of rounds, or ``"sync"``.

    With ``"sync"``, a protocol that knows its synchronization rounds (``syncs_at``) is asked;
    one that does not (dynamic averaging, whose synchronizations depend on the data) is
    probed at the first row after its ``syncs`` counter grew. Stateful only for that counter,
    so use one Schedule per simulation.
    """

    def __init__(self, every: int | str) -> None:
        if every != "sync" and (isinstance(every, bool) or not isinstance(every, int)
                                or every < 1):
            raise ValueError(f"every: must be a positive integer or 'sync', got {every!r}")
        self.every = every
        self._syncs_seen = 0

    def due(self, sim: Simulation, rnd: int) -> bool:
        """Whether round ``rnd`` (1-based) is a probe round of ``sim``."""
        if self.every != "sync":
            return rnd % self.every == 0
        syncs_at = getattr(sim.protocol, "syncs_at", None)
        if syncs_at is not None:
            return bool(syncs_at(rnd))
        count = int(sim.counters.get("syncs", 0))
        grew = count > self._syncs_seen
        self._syncs_seen = count
        return grew
