"""`netfl topo`: what a network looks like before a run is spent on it.

Reads a topology file or a scenario, places the coordinator and learners as a
run would, and reports size, diameters and the bottleneck bandwidth of every
learner's route to the coordinator (both directions, since links may be
asymmetric), then draws the graph with links coloured by bandwidth.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import networkx as nx
import numpy as np
import yaml
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

from netfl import scenario as scenario_mod
from netfl import units
from netfl.results import OutputError
from netfl.sim import topology
from netfl.sim.links import read_links
from netfl.sim.routing import Router, node_key
from netfl.sim.topology import TopologyError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

ALL_PAIRS_LIMIT = 2000  # more nodes (not a tree): diameters from the coordinator only
SPRING_LIMIT = 500  # networkx' spring layout takes seconds per hundred nodes beyond this
TOPOLOGY_SUFFIXES = (".graphml", ".edgelist", ".edges", ".txt")
PNG_MAGIC = b"\x89PNG"


@dataclass
class Network:
    """A configured graph with the coordinator's node and the learners' nodes."""

    graph: nx.Graph
    coordinator: Hashable
    learners: list[Hashable]
    from_scenario: bool  # False: a bare topology file, learners at the default sites


@dataclass
class Diameters:
    hops: int
    latency: float
    exact: bool  # False: eccentricities of the coordinator only (a large non-tree graph)


# -- loading ------------------------------------------------------------------------------------


def is_topology_file(path: Path) -> bool:
    """A graph file, or a YAML mapping with `links` and none of a scenario's sections."""
    if path.suffix.lower() in TOPOLOGY_SUFFIXES:
        return True
    if path.suffix.lower() not in (".yaml", ".yml"):
        return False
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return False  # the scenario loader reports it with line and column
    sections = set(scenario_mod.Scenario.model_fields)
    return isinstance(doc, dict) and "links" in doc and not sections & set(doc)


def load_network(path: str | Path, overrides: Sequence[str] = ()) -> Network:
    """The graph a run would build, with its placement; user errors raise Topology/ScenarioError."""
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"{path}: no such topology or scenario file")
    if is_topology_file(path):
        if overrides:
            raise scenario_mod.ScenarioError(f"{path}: --set applies to scenario files, "
                                             "not to a topology file")
        defaults = scenario_mod.NetworkConfig()
        graph = topology.configure_links(topology.load_graph(path), bandwidth=defaults.bandwidth,
                                         latency=defaults.latency, loss=defaults.loss)
        coordinator, _ = topology.place(graph, 0)
        sites = topology.place(graph, max(graph.number_of_nodes() - 1, 0))[1]
        return Network(graph, coordinator, list(dict.fromkeys(sites)), from_scenario=False)
    from netfl.build import build_graph, seeds  # imports torch: only for scenarios

    scenario = scenario_mod.load(path, list(overrides))
    m = scenario.learners.count
    graph, coordinator, nodes = build_graph(scenario, m, seeds(scenario.seed)["network"])
    return Network(graph, coordinator, list(nodes), from_scenario=True)


# -- links and routes ---------------------------------------------------------------------------


def _forward_node(u: Hashable, v: Hashable, data: dict[str, Any]) -> Hashable | None:
    """The node `bandwidth` starts at, matching a file's string ids to int nodes."""
    forward = data.get("forward")
    if forward is None or forward in (u, v):
        return forward
    return next((x for x in (u, v) if str(x) == str(forward)), None)


def direction_bandwidth(data: dict[str, Any], a: Hashable, b: Hashable) -> float:
    """Bit/s from a to b: `bandwidth` leaves node `forward`, `reverse_bandwidth` the other way."""
    bandwidth = units.bitrate(data["bandwidth"])
    reverse = data.get("reverse_bandwidth")
    forward = _forward_node(a, b, data)
    if reverse is None or forward is None or forward == a:
        return bandwidth
    return units.bitrate(reverse)


def bottlenecks(g: nx.Graph, coordinator: Hashable,
                nodes: Sequence[Hashable]) -> tuple[list[float], list[float]]:
    """Per learner node, the slowest link of its route (up: to the coordinator; down: from it).

    Routes and link directions are the network's own (netfl.sim.routing, read_links), so
    the report shows the paths a run's messages take. A learner on the coordinator's node
    crosses no link and gets inf."""
    router = Router(read_links(g), g.nodes, hubs={coordinator})
    up, down = [], []
    for node in nodes:
        up.append(min((link.bandwidth for link in router.route(node, coordinator)),
                      default=float("inf")))
        down.append(min((link.bandwidth for link in router.route(coordinator, node)),
                        default=float("inf")))
    return up, down


# -- diameters ----------------------------------------------------------------------------------


def _tree_diameter(g: nx.Graph, weight: str | None) -> float:
    """Two sweeps: the farthest node from any node is one end of a longest path in a tree."""
    start = next(iter(g))
    far = nx.single_source_dijkstra_path_length(g, start, weight=weight or (lambda *_: 1))
    end = max(far, key=far.get)
    far = nx.single_source_dijkstra_path_length(g, end, weight=weight or (lambda *_: 1))
    return max(far.values())


def diameters(g: nx.Graph, coordinator: Hashable, limit: int = ALL_PAIRS_LIMIT) -> Diameters:
    """Hop and latency diameters; all pairs up to `limit` nodes (any size for trees)."""
    if g.number_of_nodes() == 1:
        return Diameters(0, 0.0, True)
    if nx.is_tree(g):
        return Diameters(int(_tree_diameter(g, None)), float(_tree_diameter(g, "latency")), True)
    nodes = list(g)
    index = {node: i for i, node in enumerate(nodes)}
    rows, cols, latency = [], [], []
    for u, v, data in g.edges(data=True):
        rows += [index[u], index[v]]
        cols += [index[v], index[u]]
        latency += [float(data["latency"])] * 2
    n = len(nodes)
    weights = csr_array((np.array(latency), (np.array(rows), np.array(cols))), shape=(n, n))
    exact = n <= limit
    sources = None if exact else index[coordinator]
    hops = dijkstra(weights, directed=True, unweighted=True, indices=sources)
    lat = dijkstra(weights, directed=True, indices=sources)
    return Diameters(int(np.max(hops)), float(np.max(lat)), exact)


# -- text ---------------------------------------------------------------------------------------


def rate(bps: float) -> str:
    """'100 Mbit/s', '1.5 Gbit/s', ..."""
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.4g} bit/s"


def seconds(value: float) -> str:
    return f"{value * 1e3:.4g} ms" if value < 1 else f"{value:.4g} s"


def summarize_nodes(nodes: Sequence[Hashable], limit: int = 12) -> str:
    """Distinct nodes in order, runs of consecutive ints as ranges: '4-15', '1, 3, a, ...'."""
    distinct = sorted(dict.fromkeys(nodes), key=node_key)
    parts: list[str] = []
    i = 0
    while i < len(distinct):
        j = i
        while (j + 1 < len(distinct) and node_key(distinct[j])[0] == ""
               and node_key(distinct[j + 1]) == ("", int(distinct[j]) + 1)):
            j += 1
        parts.append(f"{distinct[i]}-{distinct[j]}" if j > i + 1 else
                     ", ".join(str(x) for x in distinct[i:j + 1]))
        i = j + 1
    text = ", ".join(parts)
    items = text.split(", ")
    if len(items) > limit:
        text = ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"
    return text


def _spread(values: list[float]) -> str:
    return (f"min {rate(min(values))}, median {rate(statistics.median(values))}, "
            f"max {rate(max(values))}")


def report(net: Network, source: str) -> str:
    """The lines `netfl topo` prints."""
    g = net.graph
    d = diameters(g, net.coordinator)
    how = "" if d.exact else (f" (from the coordinator only: more than {ALL_PAIRS_LIMIT} "
                              "nodes, not a tree)")
    where = summarize_nodes(net.learners)
    distinct = len(set(net.learners))
    if net.from_scenario:
        who = "learners"
        lines_learners = [f"learners: {len(net.learners)} on {distinct} node"
                          f"{'s' if distinct != 1 else ''}: {where or '-'}"]
    else:
        who = "learner sites"
        lines_learners = [f"learners: none (a topology file); default learner sites: "
                          f"{distinct}: {where or '-'}"]
    lines = [
        f"network: {source}",
        f"nodes: {g.number_of_nodes()}",
        f"links: {g.number_of_edges()}",
        f"diameter: {d.hops} hops{how}",
        f"latency diameter: {seconds(d.latency)}{how}",
        f"coordinator: node {net.coordinator}",
        *lines_learners,
    ]
    up, down = bottlenecks(g, net.coordinator, net.learners)
    remote = [i for i, b in enumerate(up) if b != float("inf")]
    if len(remote) < len(up):
        lines.append(f"on the coordinator's node (no links): {len(up) - len(remote)} {who}")
    if remote:
        lines.append(f"bottleneck up (learner -> coordinator) over {len(remote)} {who}: "
                     f"{_spread([up[i] for i in remote])}")
        lines.append(f"bottleneck down (coordinator -> learner) over {len(remote)} {who}: "
                     f"{_spread([down[i] for i in remote])}")
    return "\n".join(lines)


# -- figure -------------------------------------------------------------------------------------


def tree_layout(g: nx.Graph, root: Hashable) -> dict[Hashable, tuple[float, float]]:
    """Root on top, one row per depth, each row in BFS order so that no two links cross."""
    rows: dict[int, list[Hashable]] = {0: [root]}
    depth = {root: 0}
    for u, v in nx.bfs_edges(g, root, sort_neighbors=lambda ns: sorted(ns, key=node_key)):
        depth[v] = depth[u] + 1
        rows.setdefault(depth[v], []).append(v)
    pos = {}
    for level, nodes in rows.items():
        for i, node in enumerate(nodes):
            pos[node] = ((i + 0.5) / len(nodes), -float(level))
    return pos


def output_path(source: Path, out: str | Path | None) -> Path:
    """`<stem>_topology.png` beside the file, or --out; never overwrites anything but a PNG."""
    path = Path(out) if out else source.with_name(f"{source.stem}_topology.png")
    if path.suffix.lower() != ".png":
        raise OutputError(f"{path}: the figure is a PNG; give a path ending in .png")
    if path.exists():
        if not path.is_file() or path.read_bytes()[:4] != PNG_MAGIC:
            raise OutputError(f"{path}: already exists and is not a PNG; choose another --out")
    return path


def draw(net: Network, out: Path, title: str) -> Path:
    g = net.graph
    if nx.is_tree(g):
        pos = tree_layout(g, net.coordinator)
    elif len(g) < SPRING_LIMIT:
        pos = nx.spring_layout(g, seed=0)
    else:
        pos = nx.spectral_layout(g)
    fig, ax = plt.subplots(figsize=(9, 7))
    edges = list(g.edges(data=True))
    if edges:
        mbit = np.array([min(direction_bandwidth(d, u, v), direction_bandwidth(d, v, u)) / 1e6
                         for u, v, d in edges])
        low, high = float(mbit.min()), float(mbit.max())
        if low == high:
            low, high = low / 1.5, high * 1.5  # one bandwidth: still a readable colour bar
        lines = LineCollection([(pos[u], pos[v]) for u, v, _ in edges], cmap="viridis",
                               norm=LogNorm(low, high), linewidths=1.8, zorder=1)
        lines.set_array(mbit)
        ax.add_collection(lines)
        fig.colorbar(lines, ax=ax, label="link bandwidth (Mbit/s, slower direction)")
    size = 30 if len(g) <= 200 else 6
    learners = set(net.learners) - {net.coordinator}
    others = [x for x in g if x not in learners and x != net.coordinator]
    for nodes, style in ((others, {"c": "lightgray", "s": size, "label": "node"}),
                         (sorted(learners, key=node_key),
                          {"c": "tab:orange", "s": size * 1.6,
                           "label": "learner" if net.from_scenario else "learner site"})):
        if nodes:
            ax.scatter([pos[x][0] for x in nodes], [pos[x][1] for x in nodes], zorder=2,
                       edgecolors="k", linewidths=0.3, **style)
    ax.scatter([pos[net.coordinator][0]], [pos[net.coordinator][1]], marker="*", s=size * 10,
               c="tab:red", edgecolors="k", zorder=3, label="coordinator")
    if len(g) <= 40:
        for node, (x, y) in pos.items():
            ax.annotate(str(node), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    ax.set_axis_off()
    ax.autoscale_view()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def topo(path: str | Path, out: str | Path | None = None,
         overrides: Sequence[str] = ()) -> tuple[str, Path]:
    """The report text and the PNG written for one topology or scenario file."""
    path = Path(path)
    target = output_path(path, out)
    net = load_network(path, overrides)
    text = report(net, str(path))
    g = net.graph
    draw(net, target, f"{path.name}: {g.number_of_nodes()} nodes, {g.number_of_edges()} links")
    return text, target
