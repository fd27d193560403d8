"""Store-and-forward transport: whole messages per hop, one FIFO queue per link direction.

At each hop a message waits for the link, occupies it for ``size * 8 /
bandwidth`` seconds, then arrives at the next node ``latency`` seconds later
(propagation does not occupy the link). A lost transmission is retried by the
sending hop ``retransmit_timeout`` seconds after it ended, resent bytes charged.
This is netfl's first model, kept as ``network.model: store_and_forward``: it
overstates multi-hop delay (no pipelining) and serves messages one after
another instead of sharing a link.

No SimPy process per message: the queue of a link is virtual (a ``free_at``
instant), so each hop costs one ``env.timeout`` whose callback moves the
message on. Arrivals at one instant are served in send order by one
low-priority flush, which keeps FIFO order exact.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import simpy

from netfl.sim.instant import AfterNormal

if TYPE_CHECKING:
    from netfl.sim.network import Network, Transit


class StoreAndForward:
    """Moves transits hop by hop; calls ``network.arrived(transit)`` at the last hop."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.env = network.env
        self._pending: list[Transit] = []
        self._flush_scheduled = False

    def start(self, transit: Transit) -> None:
        transit.hop = 0
        transit.hop_since = self.env.now
        self._enqueue(transit)

    def _enqueue(self, transit: Transit) -> None:
        """The message is at the head of its next link now; it is served at the flush."""
        self._pending.append(transit)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            AfterNormal(self.env).callbacks.append(self._flush)

    def _requeue(self, event: simpy.Event) -> None:
        """Retransmission timeout expired: queue the message on the same link again."""
        self._enqueue(event.value)

    def _flush(self, _event: simpy.Event) -> None:
        """Serve this instant's arrivals in send order, so link FIFO order is exact."""
        pending, self._pending = self._pending, []
        self._flush_scheduled = False
        if len(pending) > 1:
            pending.sort(key=_seq_of)
        for transit in pending:
            if not transit.cancelled:  # an endpoint went offline: the message is gone
                self._transmit(transit)

    def _transmit(self, transit: Transit) -> None:
        """Put the message on its current link behind what is already queued there."""
        link, msg, now = transit.route[transit.hop], transit.msg, self.env.now
        size = msg.size
        if transit.resend:
            transit.resend = False
            self.network.charge_resend(transit)
        link.bytes += size
        end = max(now, link.free_at) + size * 8 / link.bandwidth
        link.free_at = end
        ends = link.ends
        del ends[:bisect.bisect_right(ends, now)]
        ends.append(end)
        link.peak = max(link.peak, len(ends))
        link.busy += size * 8 / link.bandwidth
        if link.loss and self.network.rng.random() < link.loss:
            transit.resend = True
            wake = self.env.timeout(end + self.network.retransmit_timeout - now, transit)
            wake.callbacks.append(self._requeue)
        else:
            hop = self.env.timeout(end + link.latency - now, transit)
            hop.callbacks.append(self._arrive)

    def _arrive(self, event: simpy.Event) -> None:
        """The message reached the far end of a link: deliver it or forward it."""
        transit: Transit = event.value
        if transit.cancelled:
            return
        now = self.env.now
        transit.route[transit.hop].delay += now - transit.hop_since
        transit.hop += 1
        transit.hop_since = now
        if transit.hop == len(transit.route):
            self.network.arrived(transit)
            self.network.end_pass()
        else:
            self._enqueue(transit)


def _seq_of(transit: Transit) -> int:
    return transit.seq
