"""An event that fires once every normal event of the current instant has run.

Transports collect what happens at one instant (many learners sending at
once) and act on all of it together from this event, so a broadcast to m
learners costs one rate recomputation or one sorted queue pass, not m.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy
from simpy.events import NORMAL, URGENT

AFTER_NORMAL = NORMAL + 1


class AfterNormal(simpy.Event):
    """Like ``env.timeout(0)`` but ordered after the instant's normal events."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.callbacks = []
        self._value = None
        self._ok = True
        env.schedule(self, AFTER_NORMAL)


def starting(env: simpy.Environment, callback: Callable[[simpy.Event], None]) -> None:
    """Call ``callback`` where a new SimPy process would first run (an urgent event now).
    Drivers written as event callbacks rather than generator processes start here, so they
    keep a process's place in the event order and can be pickled by a checkpoint."""
    event = simpy.Event(env)
    event._ok, event._value = True, None
    event.callbacks.append(callback)
    env.schedule(event, URGENT)
