"""An event that fires once every normal event of the current instant has run.

Transports collect what happens at one instant (many learners sending at
once) and act on all of it together from this event, so a broadcast to m
learners costs one rate recomputation or one sorted queue pass, not m.
"""

from __future__ import annotations

import simpy
from simpy.events import NORMAL

AFTER_NORMAL = NORMAL + 1


class AfterNormal(simpy.Event):
    """Like ``env.timeout(0)`` but ordered after the instant's normal events."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.callbacks = []
        self._value = None
        self._ok = True
        env.schedule(self, AFTER_NORMAL)
