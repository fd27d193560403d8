"""Who a learner talks to in decentralized protocols: the learners near it in the topology.

Learner i's neighbours are the other learners whose nodes lie within ``hops`` hops of
i's node in the (static) topology graph, learners placed on i's own node included.
Hops count links, whatever their latency or bandwidth, and failures are ignored:
the neighbourhood is what a learner is configured with, and a neighbour it cannot
reach at some moment is handled by the network's give-up (``on_lost``).

Computed without a loop over graph nodes: with R the [u, n] indicator of the u
nodes that hold learners and A the adjacency matrix, the nodes within h hops are
the non-zeros of R (I + A)^h (h sparse products), and a product with the [n, m]
node -> learner indicator turns them into learners. The relation is symmetric
(the graph is undirected), so j is i's neighbour exactly when i is j's.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import networkx as nx
import numpy as np
import scipy.sparse as sp


def neighbour_matrix(graph: nx.Graph, placement: Mapping[Hashable, Hashable], m: int,
                     hops: int = 1) -> sp.csr_array:
    """The [m, m] 0/1 adjacency of learners (int32, sorted indices, zero diagonal).

    ``placement`` maps learner ids 0..m-1 (other endpoints, e.g. the coordinator, are
    ignored) to graph nodes; ``hops`` >= 0 (0: only learners on the same node).
    """
    if isinstance(hops, bool) or not isinstance(hops, (int, np.integer)) or hops < 0:
        raise ValueError(f"hops must be an integer >= 0, got {hops!r}")
    nodes = list(graph.nodes)
    index = {node: k for k, node in enumerate(nodes)}
    n = len(nodes)
    try:
        where = np.array([index[placement[i]] for i in range(m)], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"learner or node {exc.args[0]!r} is not placed on the graph") from None
    if m == 0:
        return sp.csr_array((0, 0), dtype=np.int32)
    used, inverse = np.unique(where, return_inverse=True)
    step = (nx.to_scipy_sparse_array(graph, nodelist=nodes, weight=None, format="csr")
            + sp.eye_array(n, format="csr")).astype(bool).astype(np.int32)
    reach = sp.csr_array((np.ones(len(used), dtype=np.int32), (np.arange(len(used)), used)),
                         shape=(len(used), n))
    for _ in range(int(hops)):
        reach = (reach @ step).astype(bool).astype(np.int32)  # back to 0/1: entries <= n
    learners_on = sp.csr_array((np.ones(m, dtype=np.int32), (where, np.arange(m))), shape=(n, m))
    near = (reach @ learners_on).astype(bool).astype(np.int32)  # [u, m]: node -> learners
    rows = near[inverse].tocoo()  # each learner gets its node's row
    keep = rows.row != rows.col  # not itself
    out = sp.csr_array((rows.data[keep], (rows.row[keep], rows.col[keep])), shape=(m, m))
    out.sort_indices()
    return out


def neighbourhood(graph: nx.Graph, placement: Mapping[Hashable, Hashable], m: int,
                  hops: int = 1) -> list[np.ndarray]:
    """Learner i's neighbours (sorted int64 learner ids, i excluded), for i = 0..m-1."""
    adj = neighbour_matrix(graph, placement, m, hops)
    return [adj.indices[adj.indptr[i]:adj.indptr[i + 1]].astype(np.int64) for i in range(m)]
