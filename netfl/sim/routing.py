"""Routes between graph nodes: lowest total latency, then fewest hops, around failed links.

Routes are symmetric (a reply retraces its request) and cached per node pair.
Routes from a hub (the coordinator's node) come from one shortest-path tree
computed in scipy, so thousands of learners cost one Dijkstra. When a link or
node goes down or comes back, every cache is dropped and routes are found
again on the links that are up; flows already under way keep their route
(the network aborts those that crossed the failed link).

``tree_routes`` gives the routes between a hub and many nodes at once, as link keys
(the same links as ``route``), for batches of messages held as arrays.

Written by hand because networkx's shortest paths are per pair in Python (far
too slow for 10,000 learners) and scipy's Dijkstra does not break latency ties
by hop count; the tie rule keeps routes deterministic on graphs with equal
latencies everywhere.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, dijkstra

from netfl.sim.links import Link

# Shortest-path trees kept for sources other than a hub, in node entries.
_TREE_ENTRIES = 1 << 24


class Router:
    """Lowest-(latency, hops) routes over the links that are up, cached until a change."""

    def __init__(self, links: dict[tuple[Hashable, Hashable], Link], nodes: Iterable[Hashable],
                 hubs: Iterable[Hashable] = ()) -> None:
        self.links = links
        self.nodes = sorted(nodes, key=node_key)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self.hubs = set(hubs)
        self._adjacency: dict[Hashable, list[tuple[Hashable, Link]]] = {u: [] for u in self.nodes}
        for (u, v), link in sorted(links.items(), key=lambda kv: (node_key(kv[0][0]),
                                                                  node_key(kv[0][1]))):
            self._adjacency[u].append((v, link))
        self.changed()

    def changed(self) -> None:
        """Links went down or came back: forget every route."""
        self._routes: dict[tuple[Hashable, Hashable], tuple[Link, ...] | None] = {}
        self._trees: dict[Hashable, np.ndarray] = {}
        self._tree_links: dict[Hashable, tuple[np.ndarray, np.ndarray]] = {}
        self._latency = _latency_matrix(
            [link for link in self.links.values() if link.up], self.index)

    def route(self, a: Hashable, b: Hashable) -> tuple[Link, ...] | None:
        """Links from node a to node b, or None when no route is up."""
        try:
            return self._routes[a, b]
        except KeyError:
            return self._find(a, b)

    def path(self, a: Hashable, b: Hashable) -> list[Hashable] | None:
        route = self.route(a, b)
        return None if route is None else [a] + [link.v for link in route]

    def _find(self, a: Hashable, b: Hashable) -> tuple[Link, ...] | None:
        """Route a <-> b, cached both ways so that a reply retraces the request.

        Routes touching a hub come from one tree grown from it (m learners cost
        one tree, not m). Between neighbours a local search bounded by the direct
        link's latency suffices (gossip). Other routes come from a tree grown from
        the endpoint that sorts first, so a route never depends on which
        direction was asked first.
        """
        for node in (a, b):
            if node not in self.index:
                raise ValueError(f"unknown node {node!r}")
        if b in self.hubs and a not in self.hubs:
            source, other = b, a
        elif a in self.hubs or node_key(a) <= node_key(b):
            source, other = a, b
        else:
            source, other = b, a
        direct = self.links.get((source, other))
        if source not in self.hubs and direct is not None and direct.up:
            nodes = self._local_path(source, other)
        else:
            nodes = self._tree_path(source, other)
        if nodes is None:
            self._routes[a, b] = self._routes[b, a] = None
            return None
        if source != a:
            nodes.reverse()
        forward = tuple(self.links[u, v] for u, v in itertools.pairwise(nodes))
        backward = tuple(self.links[v, u] for u, v in reversed(list(itertools.pairwise(nodes))))
        self._routes[a, b], self._routes[b, a] = forward, backward
        return forward

    def _tree_path(self, source: Hashable, target: Hashable) -> list[Hashable] | None:
        """Nodes from ``source`` to ``target`` in the (cached) tree grown from ``source``."""
        parents = self._trees.get(source)
        if parents is None:
            parents = _shortest_path_tree(self._latency, self.index[source])
            others = [node for node in self._trees if node not in self.hubs]
            if len(others) >= max(1, _TREE_ENTRIES // len(self.nodes)):
                del self._trees[others[0]]
            self._trees[source] = parents
        i, stop = self.index[target], self.index[source]
        nodes = [target]
        while i != stop:
            i = int(parents[i])
            if i < 0:
                return None
            nodes.append(self.nodes[i])
        nodes.reverse()
        return nodes

    def tree_routes(self, hub: Hashable, targets: list[Hashable], outward: bool
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Routes between hub node ``hub`` and each of ``targets`` (from the hub when
        ``outward``, else to it) as link keys in CSR form: (hop counts, keys in route
        order), the very links ``route`` gives, found for all targets at once in the hub's
        tree. None when a target is the hub or out of reach (``route`` handles those)."""
        if hub not in self.hubs:
            return None
        parents = self._trees.get(hub)
        if parents is None:
            parents = self._trees[hub] = _shortest_path_tree(self._latency, self.index[hub])
        index = self.index
        try:
            cur = np.array([index[node] for node in targets], dtype=np.int64)
        except (KeyError, TypeError):
            return None
        stop = index[hub]
        chain = [cur]
        while True:
            more = cur != stop
            if not more.any():
                break
            cur = np.where(more, parents[cur], cur)
            if (cur < 0).any():
                return None
            chain.append(cur)
        nodes = np.stack(chain, axis=1)  # target, its parent, ..., the hub (then the hub)
        hops = (nodes != stop).sum(axis=1)
        if not hops.all():
            return None
        up, down = self._tree_link_keys(hub, parents)
        depth = nodes.shape[1] - 1
        k = np.arange(depth)
        valid = k[None, :] < hops[:, None]
        if outward:  # hop k of the route enters the node hops - 1 - k steps above the target
            col = np.where(valid, hops[:, None] - 1 - k[None, :], 0)
            keys = down[np.take_along_axis(nodes, col, axis=1)]
        else:
            keys = up[nodes[:, :depth]]
        return hops, keys[valid]

    def _tree_link_keys(self, hub: Hashable, parents: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Per node of the hub's tree, the key of its link to its parent and from it."""
        cached = self._tree_links.get(hub)
        if cached is not None:
            return cached
        up = np.full(len(self.nodes), -1, dtype=np.int64)
        down = np.full(len(self.nodes), -1, dtype=np.int64)
        nodes, links = self.nodes, self.links
        for i in np.flatnonzero(parents >= 0).tolist():
            u, p = nodes[i], nodes[int(parents[i])]
            up[i] = links[u, p].key
            down[i] = links[p, u].key
        self._tree_links[hub] = (up, down)
        return up, down

    def _local_path(self, source: Hashable, target: Hashable) -> list[Hashable]:
        """Lowest (latency, hops) path to a neighbour: Dijkstra that stops at ``target``.

        Only nodes closer than the direct link are explored, so it costs little
        on any graph size. Neighbours are visited in sorted order and the first
        of equal paths is kept.
        """
        parents: dict[Hashable, Hashable] = {}
        best: dict[Hashable, tuple[float, int]] = {source: (0.0, 0)}
        order = itertools.count(1)
        heap: list[tuple[float, int, int, Hashable, Hashable]] = [(0.0, 0, 0, source, None)]
        while heap:
            latency, hops, _, node, parent = heapq.heappop(heap)
            if node in parents:
                continue
            parents[node] = parent
            if node == target:
                break
            for nbr, link in self._adjacency[node]:
                if not link.up:
                    continue
                cost = (latency + link.latency, hops + 1)
                if nbr not in parents and (nbr not in best or cost < best[nbr]):
                    best[nbr] = cost
                    heapq.heappush(heap, (*cost, next(order), nbr, node))
        nodes = [target]
        while nodes[-1] != source:
            nodes.append(parents[nodes[-1]])
        nodes.reverse()
        return nodes


def _latency_matrix(links: list[Link], index: dict[Hashable, int]) -> csr_array:
    """Directed link latencies as a sparse matrix over node indices (zeros are links too)."""
    rows = np.array([index[link.u] for link in links], dtype=np.int64)
    cols = np.array([index[link.v] for link in links], dtype=np.int64)
    data = np.array([link.latency for link in links], dtype=float)
    n = len(index)
    return csr_array((data, (rows, cols)), shape=(n, n))


def _shortest_path_tree(latency: csr_array, source: int, limit: float = np.inf) -> np.ndarray:
    """Predecessor of each node on its lowest (latency, hops) path from ``source``.

    Dijkstra (in scipy) gives each node's lowest total latency; the links on
    some lowest-latency path (``dist[u] + latency == dist[v]``, exactly as
    Dijkstra added them) form a subgraph in which a breadth-first search finds
    the fewest hops, ties going to the first node in sorted order. Negative
    entries mark the source and nodes that are unreachable or beyond ``limit``.
    """
    dist = dijkstra(latency, directed=True, indices=source, limit=limit)
    n = latency.shape[0]
    rows = np.repeat(np.arange(n), np.diff(latency.indptr))
    tight = dist[rows] + latency.data == dist[latency.indices]  # inf == inf: both out of reach
    tight &= np.isfinite(dist[rows])
    indptr = np.zeros(n + 1, dtype=latency.indptr.dtype)
    np.cumsum(np.bincount(rows[tight], minlength=n), out=indptr[1:])
    indices = latency.indices[tight]
    on_path = csr_array((np.ones(len(indices)), indices, indptr), shape=(n, n))
    _, parents = breadth_first_order(on_path, source, directed=True, return_predecessors=True)
    return parents


def node_key(node: Hashable) -> tuple[str, Any]:
    """Sort key that orders ints numerically and never compares unlike types."""
    if isinstance(node, (int, float, np.integer)) and not isinstance(node, bool):
        return ("", node)
    return (type(node).__name__, str(node))
