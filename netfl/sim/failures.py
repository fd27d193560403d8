"""Links and nodes that go down and come back, on a schedule or at random.

Scheduled failures take a link (both directions) or a node (every link that
touches it) down at ``at`` for ``for`` seconds (for good without ``for``).
Random failures alternate exponential up times (mean ``mtbf``) and down times
(mean ``mttr``) for every element of a class independently, from the network's
own random stream, so the same seed gives the same outage history. One driver
per failure entry walks a heap of the next changes, not a process per link;
random outages stop once the run has nothing left to do, so a run with a round
horizon still ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

import networkx as nx
import numpy as np
import simpy

from netfl.sim.instant import starting
from netfl.sim.network import Network
from netfl.sim.routing import node_key

Element = tuple[str, Any]  # ("link", (u, v)) or ("node", x)


def elements(graph: nx.Graph, links: str | None, nodes: str | None) -> list[Element]:
    """The links of a tier (or all) or all nodes, in a fixed order."""
    if nodes is not None:
        return [("node", x) for x in sorted(graph, key=node_key)]
    chosen = [(u, v) for u, v, data in graph.edges(data=True)
              if links == "all" or data.get("tier") == links]
    if not chosen:
        raise ValueError(f"links: {links}: no link of this topology has tier {links!r}")
    return [("link", edge) for edge in sorted(chosen, key=lambda e: (node_key(e[0]),
                                                                     node_key(e[1])))]


class Failures:
    """Drives a network's failures; ``on_event`` receives one row per change (events.csv)."""

    def __init__(self, env: simpy.Environment, network: Network, rng: np.random.Generator,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.env, self.network, self.rng = env, network, rng
        self.on_event = on_event
        self.count = 0
        self.quiet: simpy.Event | None = None  # random outages stop when this fires

    def scheduled(self, element: Element, at: float, duration: float | None) -> None:
        self._check(element)
        self.network.failures_possible = True
        _Scheduled(self, element, at, duration).start()

    def random(self, chosen: Iterable[Element], mtbf: float, mttr: float) -> None:
        chosen = list(chosen)
        for element in chosen:
            self._check(element)
        self.network.failures_possible = True
        first = self.rng.exponential(mtbf, len(chosen))
        heap = [(float(t), i, False) for i, t in enumerate(first)]  # (when, which, goes up)
        heapq.heapify(heap)
        _Random(self, chosen, heap, mtbf, mttr).start()

    def _check(self, element: Element) -> None:
        kind, what = element
        if kind == "link" and not self.network.graph.has_edge(*what):
            raise ValueError(f"link {list(what)}: no such link in the topology")
        if kind == "node" and what not in self.network.graph:
            raise ValueError(f"node {what!r}: no such node in the topology")

    def _set(self, element: Element, up: bool) -> None:
        kind, what = element
        if kind == "link":
            self.network.set_link(*what, up=up)
            name = f"{what[0]}-{what[1]}"
        else:
            self.network.set_node(what, up=up)
            name = str(what)
        self.count += not up
        if self.on_event is not None:
            self.on_event({"sim_time_s": round(self.env.now, 9),
                           "event": f"{kind}_{'up' if up else 'down'}", "element": name})



class _Scheduled:
    """One scheduled failure: down at ``at``, up ``duration`` later (never without one).
    Event callbacks rather than a generator process, so that a checkpoint can pickle it."""

    def __init__(self, owner: Failures, element: Element, at: float,
                 duration: float | None) -> None:
        self.owner, self.element, self.at, self.duration = owner, element, at, duration

    def start(self) -> None:
        starting(self.owner.env, self._begin)

    def _begin(self, _event: simpy.Event) -> None:
        self.owner.env.timeout(self.at).callbacks.append(self._down)

    def _down(self, _event: simpy.Event) -> None:
        self.owner._set(self.element, up=False)
        if self.duration is not None:
            self.owner.env.timeout(self.duration).callbacks.append(self._up)

    def _up(self, _event: simpy.Event) -> None:
        self.owner._set(self.element, up=True)


class _Random:
    """Random outages of ``chosen``: a heap of each element's next change, walked in time
    order until the run is quiet (callbacks, as _Scheduled)."""

    def __init__(self, owner: Failures, chosen: list[Element],
                 heap: list[tuple[float, int, bool]], mtbf: float, mttr: float) -> None:
        self.owner, self.chosen, self.heap = owner, chosen, heap
        self.mtbf, self.mttr = mtbf, mttr
        self._due: tuple[float, int, bool] | None = None

    def start(self) -> None:
        starting(self.owner.env, self._next)

    def _next(self, _event: simpy.Event | None = None) -> None:
        owner, env = self.owner, self.owner.env
        if not self.heap:
            return
        self._due = heapq.heappop(self.heap)
        when = self._due[0]
        if when > env.now:
            wait = env.timeout(when - env.now)
            event = wait if owner.quiet is None else env.any_of([wait, owner.quiet])
            event.callbacks.append(self._change)
            return
        self._change(None)

    def _change(self, _event: simpy.Event | None) -> None:
        owner = self.owner
        if owner.quiet is not None and owner.quiet.triggered:
            return
        when, i, up = self._due
        owner._set(self.chosen[i], up=up)
        mean = self.mtbf if up else self.mttr
        heapq.heappush(self.heap, (when + float(owner.rng.exponential(mean)), i, not up))
        self._next()
