"""One direction of a link: its parameters, its up/down state and what it carried.

Both transport models (flow sharing and store-and-forward) keep their per-link
state here, so the network reports every link the same way in links.csv.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import networkx as nx

# What a link direction reports, in links.csv order after src_node, dst_node.
STAT_COLUMNS = ("bytes", "busy_s", "utilisation", "peak_flows", "delay_share", "bandwidth",
                "latency")


class Link:
    """A directed link u -> v with its own capacity; ``up`` is False while it is failed."""

    __slots__ = ("u", "v", "key", "bandwidth", "latency", "loss", "up", "bytes", "busy",
                 "busy_since", "active", "peak", "delay", "flows", "members", "free_at", "ends",
                 "load", "held", "left", "weights", "unfixed")

    def __init__(self, u: Hashable, v: Hashable, bandwidth: float, latency: float, loss: float,
                 key: int = 0):
        self.u, self.v, self.key = u, v, key  # key: a fixed order for ties
        self.bandwidth, self.latency, self.loss = bandwidth, latency, loss
        self.up = True
        self.flows: set = set()  # flow model: flows in their bandwidth phase
        self.members: set = set()  # flow model: every flow routed over this link
        self.load = 0.0  # flow model: sum of the rates of its flows
        self.held = 0  # flow model: flows whose rate this link fixes (their bottleneck)
        self.left, self.weights, self.unfixed = 0.0, 0.0, 0  # flow model: refill scratch
        self.free_at = 0.0  # store-and-forward: when the queue empties
        self.ends: list[float] = []  # store-and-forward: end instants of queued messages
        self.reset()

    def reset(self) -> None:
        """Zero the statistics (not the state of what is in flight)."""
        self.bytes = 0  # every attempt, counted when it starts (aborted parts taken back)
        self.busy = 0.0  # seconds with at least one message on the link
        self.busy_since = math.nan  # start of the current busy period (nan: idle)
        self.active = 0  # messages on the link now
        self.peak = 0  # most messages on the link at once
        self.delay = 0.0  # seconds of message delay this link accounts for

    def occupy(self, now: float, count: int = 1) -> None:
        """``count`` more messages on the link from ``now`` (busy time, peak)."""
        if self.active == 0:
            self.busy_since = now
        self.active += count
        if self.active > self.peak:
            self.peak = self.active

    def release(self, now: float, count: int = 1) -> None:
        self.active -= count
        if self.active == 0:
            self.busy += now - self.busy_since
            self.busy_since = math.nan

    def busy_until(self, now: float) -> float:
        """Busy seconds so far, the current busy period included."""
        return self.busy + (now - self.busy_since if self.active else 0.0)

    def stats(self, now: float, total_delay: float) -> dict[str, Any]:
        busy = self.busy_until(now)
        return {
            "src_node": self.u, "dst_node": self.v, "bytes": self.bytes, "busy_s": busy,
            "utilisation": min(busy / now, 1.0) if now > 0 else 0.0, "peak_flows": self.peak,
            "delay_share": self.delay / total_delay if total_delay > 0 else 0.0,
            "bandwidth": self.bandwidth, "latency": self.latency,
        }


def read_links(graph: nx.Graph) -> dict[tuple[Hashable, Hashable], Link]:
    """Both directions of every edge, validated; errors name the link and attribute.

    ``bandwidth`` is the direction that starts at the edge's ``forward`` node (default:
    the edge's first end as networkx lists it) and ``reverse_bandwidth`` (default:
    ``bandwidth``) the other one; latency and loss are the same both ways.
    """
    if graph.is_directed() or graph.is_multigraph():
        raise ValueError("the network graph must be an undirected simple graph (nx.Graph)")
    links: dict[tuple[Hashable, Hashable], Link] = {}
    for a, b, data in graph.edges(data=True):
        if a == b:
            raise ValueError(f"link ({a!r}, {b!r}): self-loops are not links")
        for name in ("bandwidth", "latency"):
            if name not in data:
                raise ValueError(
                    f"link ({a!r}, {b!r}): missing {name!r}; "
                    "set it with netfl.sim.topology.configure_links"
                )
        u = data.get("forward", a)
        if u not in (a, b):
            raise ValueError(f"link ({a!r}, {b!r}): forward {u!r} is not one of its ends")
        v = b if u == a else a
        bandwidth, latency = float(data["bandwidth"]), float(data["latency"])
        reverse = float(data.get("reverse_bandwidth", bandwidth))
        loss = float(data.get("loss", 0.0))
        for name, value in (("bandwidth", bandwidth), ("reverse_bandwidth", reverse)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"link ({u!r}, {v!r}): {name} must be > 0, got {value:g}")
        if not (latency >= 0 and math.isfinite(latency)):
            raise ValueError(f"link ({u!r}, {v!r}): latency must be >= 0, got {latency:g}")
        if not 0 <= loss < 1:
            raise ValueError(f"link ({u!r}, {v!r}): loss must be in [0, 1), got {loss:g}")
        links[u, v] = Link(u, v, bandwidth, latency, loss, key=len(links))
        links[v, u] = Link(v, u, reverse, latency, loss, key=len(links))
    return links
