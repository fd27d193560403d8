"""Network topologies: generate or load a graph, give its links parameters, place endpoints.

Plain functions on networkx graphs, in the order a run uses them::

    g = generate("hierarchy", 16, seed=0)            # or load_graph("topologies/star8.yaml")
    g = configure_links(g, bandwidth="100 Mbit/s", latency="5 ms")
    coordinator, learners = place(g, m=12)

Once configured every edge holds ``forward`` (a node), ``bandwidth`` (bit/s, the
direction that starts at ``forward``), ``reverse_bandwidth`` (bit/s, the other
direction), ``latency`` (seconds, both ways) and ``loss`` (a probability in [0, 1)),
plus ``tier`` ("access" or "core") where the topology gives one. Files may write
the values with units ("100 Mbit/s", "5 ms"). Generated and loaded graphs use int
node ids where the file's ids are all integers.
"""

from __future__ import annotations

import ast
import math
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml
from scipy.sparse.csgraph import shortest_path

from netfl import units
from netfl.sim.routing import node_key

LINK_ATTRS = ("bandwidth", "reverse_bandwidth", "latency", "loss")
TIERS = ("access", "core")
FILE_ATTRS = (*LINK_ATTRS, "tier")  # a file's link may carry these; anything else is refused
MAX_DRAWS = 100  # random graphs are redrawn until connected, at most this many times

_INT = re.compile(r"[-+]?\d+")


class TopologyError(ValueError):
    """A topology that cannot be built, read or placed on; the message names the culprit."""


# -- generators ---------------------------------------------------------------------------------


class _Params:
    """Keyword parameters of one generator, taken one by one so leftovers are reported."""

    def __init__(self, kind: str, params: Mapping[str, Any]):
        self.kind, self._left = kind, dict(params)

    def int(self, name: str, default: int | None, minimum: int) -> int | None:
        value = self._left.pop(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise TopologyError(
                f"{self.kind}: {name} must be an integer >= {minimum}, got {value!r}"
            )
        return int(value)

    def probability(self, name: str, default: float) -> float:
        value = self._left.pop(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise TopologyError(
                f"{self.kind}: {name} must be a probability in (0, 1], got {value!r}"
            )
        return float(value)

    def done(self) -> None:
        if self._left:
            names = ", ".join(sorted(self._left))
            raise TopologyError(f"{self.kind}: unknown parameter(s) {names}")


def _need_n(kind: str, n: int | None, minimum: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise TopologyError(
            f"{kind}: n (number of nodes) must be an integer >= {minimum}, got {n!r}"
        )
    return int(n)


def _star(n, p: _Params, rng) -> nx.Graph:
    """Hub 0 joined to leaves 1..n-1; every link is an access link."""
    p.done()
    g = nx.star_graph(_need_n("star", n, 2) - 1)
    nx.set_edge_attributes(g, "access", "tier")
    return g


def _ring(n, p: _Params, rng) -> nx.Graph:
    """Nodes 0..n-1 in a cycle."""
    p.done()
    return nx.cycle_graph(_need_n("ring", n, 3))


def _line(n, p: _Params, rng) -> nx.Graph:
    """Nodes 0..n-1 in a path."""
    p.done()
    return nx.path_graph(_need_n("line", n, 2))


def _complete(n, p: _Params, rng) -> nx.Graph:
    """Every pair of the n nodes linked."""
    p.done()
    return nx.complete_graph(_need_n("complete", n, 2))


def _tree(n, p: _Params, rng) -> nx.Graph:
    """Balanced r-ary tree rooted at 0, levels filled in breadth-first order.

    Params: ``branching`` r (default 2); ``height`` h (optional). With h the
    tree is full, 1 + r + ... + r^h nodes, and n may be None or must match.
    Links to leaves are tier ``access``, the others ``core``.
    """
    r = p.int("branching", 2, 1)
    h = p.int("height", None, 0)
    p.done()
    if h is not None:
        full = sum(r**level for level in range(h + 1))
        if n is None:
            n = full
        elif n != full:
            raise TopologyError(
                f"tree: height {h} with branching {r} gives {full} nodes, but n is {n!r}; "
                "give n or height, not both"
            )
    g = nx.full_rary_tree(r, _need_n("tree", n, 1))
    for u, v, data in g.edges(data=True):
        data["tier"] = "access" if g.degree(max(u, v)) == 1 else "core"  # max: the child
    return g


def _hierarchy(n, p: _Params, rng) -> nx.Graph:
    """Two tiers: root 0, switches 1..s, leaves s+1..n-1 spread round-robin over the switches.

    Leaf i (0-based) hangs off switch 1 + i % s. Params: ``switches`` s and
    ``leaves`` L, with n = 1 + s + L. Give n (s defaults to floor(sqrt(n - 1))),
    or L (n may be None; s defaults to floor(sqrt(L))), or both. Every switch
    serves at least one leaf. Nodes get a ``tier`` attribute (root, switch,
    leaf) and edges a ``tier`` attribute (core, access), handy for overrides.
    """
    s = p.int("switches", None, 1)
    leaves = p.int("leaves", None, 1)
    p.done()
    if n is None:
        if leaves is None:
            raise TopologyError("hierarchy: give n (total nodes) or leaves")
        s = s or max(1, math.isqrt(leaves))
    else:
        n = _need_n("hierarchy", n, 3)
        if s is None:
            s = n - 1 - leaves if leaves is not None else max(1, math.isqrt(n - 1))
        if leaves is None:
            leaves = n - 1 - s
        if 1 + s + leaves != n:
            raise TopologyError(
                f"hierarchy: n must be 1 + switches + leaves = {1 + s + leaves}, got {n}"
            )
    if s < 1 or leaves < s:
        raise TopologyError(
            f"hierarchy: leaves ({leaves}) must be at least switches ({s}), and switches >= 1"
        )
    g = nx.Graph()
    g.add_node(0, tier="root")
    g.add_nodes_from(range(1, s + 1), tier="switch")
    g.add_nodes_from(range(s + 1, s + 1 + leaves), tier="leaf")
    g.add_edges_from(((0, k) for k in range(1, s + 1)), tier="core")
    g.add_edges_from(((1 + i % s, s + 1 + i) for i in range(leaves)), tier="access")
    return g


def _random_regular(n, p: _Params, rng) -> nx.Graph:
    """Random d-regular graph (param ``d``, default 3), redrawn until connected."""
    d = p.int("d", 3, 1)
    p.done()
    n = _need_n("random_regular", n, 2)
    if d >= n or (n * d) % 2:
        raise TopologyError(f"random_regular: d must be < n and n * d even, got d={d}, n={n}")
    return _until_connected(
        "random_regular", lambda s: nx.random_regular_graph(d, n, seed=s), rng, f"d={d}"
    )


def _erdos_renyi(n, p: _Params, rng) -> nx.Graph:
    """G(n, p), redrawn until connected; ``p`` defaults to min(1, 2 ln(n) / n)."""
    n = _need_n("erdos_renyi", n, 2)
    prob = p.probability("p", min(1.0, 2 * math.log(n) / n))
    p.done()
    return _until_connected(
        "erdos_renyi", lambda s: nx.fast_gnp_random_graph(n, prob, seed=s), rng, f"p={prob:g}"
    )


def _barabasi_albert(n, p: _Params, rng) -> nx.Graph:
    """Preferential attachment, each new node bringing ``m_edges`` links (default 2)."""
    m_edges = p.int("m_edges", 2, 1)
    p.done()
    n = _need_n("barabasi_albert", n, 2)
    if m_edges >= n:
        raise TopologyError(f"barabasi_albert: m_edges must be < n, got m_edges={m_edges}, n={n}")
    return nx.barabasi_albert_graph(n, m_edges, seed=int(rng.integers(2**32)))


def _until_connected(
    kind: str, draw: Callable[[int], nx.Graph], rng: np.random.Generator, what: str
) -> nx.Graph:
    for _ in range(MAX_DRAWS):
        g = draw(int(rng.integers(2**32)))
        if nx.is_connected(g):
            return g
    raise TopologyError(
        f"{kind}: no connected graph in {MAX_DRAWS} draws with {what}; use a denser graph"
    )


GENERATORS: dict[str, Callable[..., nx.Graph]] = {
    "star": _star,
    "ring": _ring,
    "line": _line,
    "complete": _complete,
    "tree": _tree,
    "hierarchy": _hierarchy,
    "random_regular": _random_regular,
    "erdos_renyi": _erdos_renyi,
    "barabasi_albert": _barabasi_albert,
}


def generate(kind: str, n: int | None = None, *, seed: int, **params: Any) -> nx.Graph:
    """A connected graph with int nodes 0..n-1 (n = total number of nodes).

    Kinds and their params: ``star`` (hub 0), ``ring``, ``line``, ``complete``,
    ``tree`` (branching, height), ``hierarchy`` (switches, leaves),
    ``random_regular`` (d), ``erdos_renyi`` (p), ``barabasi_albert`` (m_edges).
    ``tree`` and ``hierarchy`` accept n=None when height / leaves fix the size.
    The same kind, n, params and seed give the same graph.

    Every edge gets ``forward`` = its smaller node id, which in the trees (star,
    tree, hierarchy: parents are numbered before children) is the parent, so
    ``bandwidth`` is the downlink and ``reverse_bandwidth`` the uplink; and a
    ``tier``: star all ``access``, tree and hierarchy ``access`` towards the
    leaves and ``core`` above, every other kind all ``core``.
    """
    if kind not in GENERATORS:
        raise TopologyError(
            f"unknown topology kind {kind!r}; expected one of {', '.join(GENERATORS)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TopologyError(f"{kind}: seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    g = GENERATORS[kind](n, _Params(kind, params), rng)
    for u, v, data in g.edges(data=True):
        data["forward"] = min(u, v)
        data.setdefault("tier", "core")
    return g


# -- loading ------------------------------------------------------------------------------------


def load_graph(path: str | Path) -> nx.Graph:
    """Read a graph from GraphML, an edge list or YAML, chosen by the file's suffix.

    - ``.graphml``: edges ``source`` -> ``target`` with data ``bandwidth``,
      ``reverse_bandwidth``, ``latency``, ``loss``, ``tier`` (an edge ``id`` is
      ignored); an optional graph attribute ``coordinator``.
    - ``.edgelist`` / ``.edges`` / ``.txt``: one link a line, ``u v`` then
      optional ``key=value`` pairs (quote values with spaces:
      ``bandwidth="100 Mbit/s"``) or a Python dict as networkx writes it;
      ``#`` starts a comment.
    - ``.yaml`` / ``.yml``: ``{nodes: [...] (optional), links: [{u, v, bandwidth,
      reverse_bandwidth, latency, loss, tier}, ...], coordinator: node (optional)}``.

    Each link is oriented as written: ``forward`` = its u (GraphML: its source),
    so ``bandwidth`` is u -> v and ``reverse_bandwidth`` v -> u. ``tier`` is
    "access" or "core". Any other link attribute is refused, so a misspelt
    ``bw`` cannot silently fall back to the default; node attributes are
    ignored. Unit strings are converted to SI floats; a link attribute left out
    is filled later by :func:`configure_links`. Raises TopologyError naming the file.
    """
    path = Path(path)
    readers = {
        ".graphml": _read_graphml,
        ".edgelist": _read_edgelist,
        ".edges": _read_edgelist,
        ".txt": _read_edgelist,
        ".yaml": _read_yaml,
        ".yml": _read_yaml,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise TopologyError(f"{path}: unknown topology format; use one of {', '.join(readers)}")
    if not path.is_file():
        raise TopologyError(f"{path}: no such file")
    try:
        try:
            g = reader(path)
        except (OSError, UnicodeDecodeError) as err:
            raise TopologyError(f"cannot read: {err}") from None
        loops = list(nx.selfloop_edges(g))
        if loops:
            raise TopologyError(f"link ({loops[0][0]}, {loops[0][1]}) is a self-loop")
        for u, v, data in g.edges(data=True):
            _convert_link_attrs(u, v, data)
            _check_link(u, v, data)  # here, so that the error names the file
            if "tier" in data and data["tier"] not in TIERS:
                raise TopologyError(
                    f"link ({u}, {v}): tier must be 'access' or 'core', got {data['tier']!r}"
                )
        coordinator = g.graph.get("coordinator")
        if coordinator is not None and coordinator not in g:
            raise TopologyError(f"coordinator {coordinator!r} is not a node")
    except TopologyError as err:
        raise TopologyError(f"{path}: {err}") from None
    return g


def _read_graphml(path: Path) -> nx.Graph:
    try:
        g = nx.read_graphml(path)
    except (ET.ParseError, nx.NetworkXError, ValueError, KeyError) as err:
        raise TopologyError(f"not valid GraphML: {err}") from None
    if g.is_directed() or g.is_multigraph():
        raise TopologyError(
            "links are bidirectional: use an undirected graph without parallel edges"
        )
    for key in ("node_default", "edge_default"):  # added by networkx' reader, not by the file
        g.graph.pop(key, None)
    # networkx forgets which end was the source of an undirected edge: read it from the XML.
    for element in ET.parse(path).getroot().iter():
        if element.tag.rpartition("}")[2] == "edge":
            source, target = element.get("source"), element.get("target")
            data = g.edges[source, target]
            data.pop("id", None)  # the edge's XML id, which networkx keeps as data
            _refuse_unknown(data, f"link ({source}, {target})")
            data["forward"] = source
    if all(isinstance(x, str) and _INT.fullmatch(x) for x in g):
        g = nx.relabel_nodes(g, {x: int(x) for x in g})
        for *_, data in g.edges(data=True):
            if "forward" in data:
                data["forward"] = int(data["forward"])
        if isinstance(g.graph.get("coordinator"), str) and _INT.fullmatch(g.graph["coordinator"]):
            g.graph["coordinator"] = int(g.graph["coordinator"])
    return nx.Graph(g)


def _read_edgelist(path: Path) -> nx.Graph:
    g = nx.Graph()
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            u, v, data = _parse_edge_line(line)
        except (ValueError, SyntaxError) as err:
            raise TopologyError(f"line {lineno}: {err}") from None
        _add_link(g, u, v, data, f"line {lineno}")
    return g


def _parse_edge_line(line: str) -> tuple[Hashable, Hashable, dict[str, Any]]:
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise ValueError(f"expected 'u v [key=value ...]', got {line!r}")
    rest = parts[2].strip() if len(parts) > 2 else ""
    if rest.startswith("{"):
        data = ast.literal_eval(rest)
        if not isinstance(data, dict):
            raise ValueError(f"expected a dict of link attributes, got {rest!r}")
    else:
        data = {}
        for token in shlex.split(rest, comments=True):
            key, eq, value = token.partition("=")
            if not eq or not key:
                raise ValueError(f"expected key=value, got {token!r}")
            data[key] = value
    return _node(parts[0]), _node(parts[1]), data


def _node(token: str) -> Hashable:
    return int(token) if _INT.fullmatch(token) else token


def _read_yaml(path: Path) -> nx.Graph:
    from netfl.scenario import LimitedLoader  # aliases expanded with a size limit

    try:
        doc = yaml.load(path.read_text(), Loader=LimitedLoader)  # noqa: S506  (a SafeLoader)
    except yaml.YAMLError as err:
        raise TopologyError(f"not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise TopologyError("expected a mapping with 'links' (and optional 'nodes', 'coordinator')")
    unknown = set(doc) - {"nodes", "links", "coordinator"}
    if unknown:
        raise TopologyError(f"unknown key(s) {', '.join(map(str, sorted(unknown, key=str)))}")
    g = nx.Graph()
    nodes = doc.get("nodes")
    if nodes is not None:
        if not isinstance(nodes, list):
            raise TopologyError(f"nodes: expected a list, got {nodes!r}")
        for i, node in enumerate(nodes):
            g.add_node(_check_node(node, f"nodes[{i}]"))
    links = doc.get("links", [])
    if not isinstance(links, list):
        raise TopologyError(f"links: expected a list, got {links!r}")
    for i, link in enumerate(links):
        where = f"links[{i}]"
        if not isinstance(link, dict) or "u" not in link or "v" not in link:
            raise TopologyError(
                f"{where}: expected a mapping with keys u, v and optional "
                f"{', '.join(FILE_ATTRS)}, got {link!r}"
            )
        u, v = _check_node(link["u"], f"{where}.u"), _check_node(link["v"], f"{where}.v")
        if nodes is not None and (u not in g or v not in g):
            raise TopologyError(f"{where}: node {u if u not in g else v!r} is not in nodes")
        attrs = {k: val for k, val in link.items() if k not in ("u", "v")}
        _add_link(g, u, v, attrs, where)
    if g.number_of_nodes() == 0:
        raise TopologyError("no nodes and no links")
    if "coordinator" in doc:
        g.graph["coordinator"] = _check_node(doc["coordinator"], "coordinator")
    return g


def _check_node(node: Any, where: str) -> Hashable:
    if isinstance(node, bool) or not isinstance(node, (int, str)):
        raise TopologyError(f"{where}: a node is an int or a string, got {node!r}")
    return node


def _add_link(g: nx.Graph, u: Hashable, v: Hashable, attrs: dict[str, Any], where: str) -> None:
    """Add u -- v as written: ``forward`` = u, so its ``bandwidth`` is u -> v."""
    if u == v:
        raise TopologyError(f"{where}: link ({u}, {v}) is a self-loop")
    if g.has_edge(u, v):
        raise TopologyError(f"{where}: link ({u}, {v}) is listed twice")
    _refuse_unknown(attrs, f"{where}: link ({u}, {v})")
    g.add_edge(u, v, **attrs, forward=u)


def _refuse_unknown(attrs: Mapping[Any, Any], where: str) -> None:
    bad = set(attrs) - set(FILE_ATTRS)
    if bad:
        raise TopologyError(
            f"{where}: unknown link attribute(s) {', '.join(sorted(map(str, bad)))}; "
            f"known: {', '.join(FILE_ATTRS)}"
        )


# -- link parameters ----------------------------------------------------------------------------


def _probability(value: Any) -> float:
    """A loss probability from a number or a numeric string such as '0.01'."""
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise units.UnitError(f"expected a probability such as '0.01', got {value!r}")


_CONVERT: dict[str, Callable[[Any], float]] = {
    "bandwidth": units.bitrate,
    "reverse_bandwidth": units.bitrate,
    "latency": units.duration,
    "loss": _probability,
}


def _convert_link_attrs(u: Hashable, v: Hashable, data: dict[str, Any]) -> None:
    """Turn the link attributes present in ``data`` into floats, in place."""
    for name in LINK_ATTRS:
        if name in data:
            try:
                data[name] = _CONVERT[name](data[name])
            except units.UnitError as err:
                raise TopologyError(f"link ({u}, {v}): {name}: {err}") from None


MIN_BANDWIDTH = 1.0  # bit/s: below, one model's transfer outlasts any simulated clock
MAX_LATENCY = 1e6  # s (11.6 days): keeps every event time within the engine's tick counter


def _check_link(u: Hashable, v: Hashable, data: Mapping[str, float]) -> None:
    """The link attributes present in ``data`` are finite and in range."""
    for name in ("bandwidth", "reverse_bandwidth"):
        rate = data.get(name, MIN_BANDWIDTH)
        if not rate > 0:
            raise TopologyError(f"link ({u}, {v}): {name} must be > 0, got {rate:g}")
        if not MIN_BANDWIDTH <= rate < math.inf:
            raise TopologyError(f"link ({u}, {v}): {name} must be > 0 and finite, at least "
                                f"{MIN_BANDWIDTH:g} bit/s, got {rate:g}")
    latency, loss = data.get("latency", 0.0), data.get("loss", 0.0)
    if not latency >= 0:
        raise TopologyError(f"link ({u}, {v}): latency must be >= 0, got {latency:g}")
    if not latency <= MAX_LATENCY:
        raise TopologyError(f"link ({u}, {v}): latency must be >= 0 and at most "
                            f"{MAX_LATENCY:g} s, got {latency:g}")
    if not 0 <= loss < 1:
        raise TopologyError(f"link ({u}, {v}): loss must be in [0, 1), got {loss:g}")


_SWAP = {"bandwidth": "reverse_bandwidth", "reverse_bandwidth": "bandwidth"}


def _oriented(level: Mapping[str, Any], flip: bool) -> dict[str, Any]:
    """What one level of settings gives a link, in the link's own orientation.

    A level that gives ``bandwidth`` but not ``reverse_bandwidth`` gives both
    directions ``bandwidth``; ``flip`` when the level wrote the link the other
    way round from its ``forward``.
    """
    out = {k: level[k] for k in ("latency", "loss") if k in level}
    if "bandwidth" in level:
        out["bandwidth"] = level["bandwidth"]
        out["reverse_bandwidth"] = level.get("reverse_bandwidth", level["bandwidth"])
    elif "reverse_bandwidth" in level:
        out["reverse_bandwidth"] = level["reverse_bandwidth"]
    return {_SWAP.get(k, k): val for k, val in out.items()} if flip else out


def configure_links(
    g: nx.Graph,
    *,
    bandwidth: float | str,
    latency: float | str,
    loss: float = 0.0,
    reverse_bandwidth: float | str | None = None,
    tiers: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Iterable[Mapping[str, Any]] = (),
    tiers_key: str = "tiers",
    overrides_key: str = "overrides",
) -> nx.Graph:
    """A copy of ``g`` whose every edge has ``forward`` and float ``bandwidth``,
    ``reverse_bandwidth``, ``latency`` and ``loss`` (see the module docstring).

    Every level of settings reads a link u -> v: ``bandwidth`` is u -> v and
    ``reverse_bandwidth`` v -> u. The defaults here, a tier and the edge's own
    attributes (from the file) take the edge's ``forward`` as u (an edge without
    one gets the smaller node id); an override ``{u, v, bandwidth?,
    reverse_bandwidth?, latency?, loss?}`` takes its own u, whichever way the
    graph stores the link. ``tiers`` maps a tier name to ``{bandwidth?,
    reverse_bandwidth?, latency?, loss?}`` for the edges whose ``tier`` it is.

    Precedence: override > the edge's own attribute > tier > default; a later
    override of the same link beats an earlier one. Each direction's bandwidth,
    the latency and the loss are resolved independently, from the most specific
    level that gives them, where a level that gives ``bandwidth`` without
    ``reverse_bandwidth`` gives both directions that bandwidth (so a file link
    ``bandwidth: 1 Gbit/s`` is symmetric even under an asymmetric tier). The
    file beats the tier because it names one link and the tier a class of them.
    A tier that matches no link, and a tier setting that the file or an
    override replaces on every link of its tier, are errors: they would
    silently do nothing.
    Errors name ``{tiers_key}.<name>`` and ``{overrides_key}[i]``. Units: bit/s,
    seconds, probability in [0, 1); unit strings such as "1 Gbit/s" work.
    """
    out = g.copy()
    defaults: dict[str, Any] = {"bandwidth": bandwidth, "latency": latency, "loss": loss}
    if reverse_bandwidth is not None:
        defaults["reverse_bandwidth"] = reverse_bandwidth
    tier_levels = {name: _read_tier(f"{tiers_key}.{name}", t) for name, t in (tiers or {}).items()}
    present = {data.get("tier") for *_, data in out.edges(data=True)}
    for name in tier_levels:
        if name not in present:
            raise TopologyError(f"{tiers_key}.{name}: no link of this topology has tier {name!r}")
    by_link: dict[frozenset, list[tuple[Hashable, dict[str, Any]]]] = {}
    for i, override in enumerate(overrides):
        u, v, attrs = _read_override(out, f"{overrides_key}[{i}]", override)
        by_link.setdefault(frozenset((u, v)), []).append((u, attrs))
    used: dict[str, set[str]] = {name: set() for name in tier_levels}
    for a, b, data in out.edges(data=True):
        forward = data.get("forward", min(a, b, key=node_key))
        if forward not in (a, b):
            raise TopologyError(f"link ({a}, {b}): forward {forward!r} is not one of its ends")
        tier = tier_levels.get(data.get("tier"), {})
        own = {k: data[k] for k in LINK_ATTRS if k in data}
        levels = [(forward, defaults), (forward, tier), (forward, own)]
        levels += by_link.get(frozenset((a, b)), [])
        source: dict[str, int] = {}  # attribute -> index of the level that gave it
        for index, (start, level) in enumerate(levels):
            for name, value in _oriented(level, start != forward).items():
                data[name], source[name] = value, index
        if tier:
            used[data["tier"]].update(k for k, index in source.items() if index == 1)
        data["forward"] = forward
        other = b if forward == a else a
        _convert_link_attrs(forward, other, data)
        _check_link(forward, other, data)
    for name, level in tier_levels.items():
        for attr in level:
            if attr not in used[name]:
                raise TopologyError(
                    f"{tiers_key}.{name}.{attr}: has no effect: every {name!r} link gets {attr} "
                    "from the topology file or an override (a link that gives bandwidth alone "
                    "is symmetric)"
                )
    return out


def _read_settings(where: str, settings: Mapping[str, Any], keys: tuple[str, ...]) -> dict:
    """The link attributes of a tier or an override, as floats; a None value is unset."""
    bad = set(settings) - set(keys)
    if bad:
        raise TopologyError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, bad)))}; known: {', '.join(keys)}"
        )
    attrs = {}
    for name in LINK_ATTRS:
        if settings.get(name) is not None:
            try:
                attrs[name] = _CONVERT[name](settings[name])
            except units.UnitError as err:
                raise TopologyError(f"{where}: {name}: {err}") from None
    return attrs


def _read_tier(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise TopologyError(f"{where}: expected a mapping of link settings, got {spec!r}")
    return _read_settings(where, spec, LINK_ATTRS)


def _read_override(
    g: nx.Graph, where: str, override: Mapping[str, Any]
) -> tuple[Hashable, Hashable, dict[str, Any]]:
    if not isinstance(override, Mapping) or "u" not in override or "v" not in override:
        raise TopologyError(f"{where}: expected a mapping with u and v, got {override!r}")
    u, v = override["u"], override["v"]
    where = f"{where}: link ({u}, {v})"
    attrs = _read_settings(where, override, ("u", "v", *LINK_ATTRS))
    for node in (u, v):
        if node not in g:
            raise TopologyError(f"{where}: unknown node {node!r}")
    if not g.has_edge(u, v):
        raise TopologyError(f"{where}: no such link in the topology")
    return u, v, attrs


# -- placement ----------------------------------------------------------------------------------


def place(
    g: nx.Graph,
    m: int,
    *,
    coordinator: Hashable | None = None,
    learners: list[Hashable] | None = None,
    coordinator_key: str = "coordinator",
    learners_key: str = "learners",
    graph_key: str | None = None,
) -> tuple[Hashable, list[Hashable]]:
    """The coordinator's node and the nodes of learners 0..m-1.

    Defaults: the coordinator goes to ``g.graph["coordinator"]`` if set, else to
    the node of highest closeness centrality (ties: smallest id) -- the hub of a
    star, the root of a hierarchy. Learners go round-robin over the leaves
    (non-coordinator nodes of degree 1) of a branching tree (star, tree,
    hierarchy), else over all non-coordinator nodes (a ring, a line, a random
    graph whose few degree-1 nodes would pile learners up); several learners
    may share a node. Explicit
    ``learners`` lists m nodes, or fewer that are cycled. Errors name ``coordinator_key``,
    ``learners_key`` and ``graph_key`` (the keys the user wrote, e.g. ``network.placement``).
    """
    head = f"{graph_key}: " if graph_key else ""
    if g.number_of_nodes() == 0:
        raise TopologyError(f"{head}network has no nodes")
    if not nx.is_connected(g):
        count = nx.number_connected_components(g)
        parts = sorted(nx.connected_components(g), key=len)
        example = sorted(parts[0], key=node_key)[:5]
        raise TopologyError(f"{head}network is disconnected: {count} components (e.g. nodes "
                            f"{', '.join(map(repr, example))} reach no other node); every "
                            "learner needs a route to the coordinator")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
        raise TopologyError(f"number of learners must be an integer >= 0, got {m!r}")
    if coordinator is None:
        coordinator = g.graph.get("coordinator")
    if coordinator is None:
        coordinator = most_central(g)
    elif coordinator not in g:
        raise TopologyError(f"{coordinator_key}: unknown node {coordinator!r}")
    if learners is None:
        pool = _default_learner_nodes(g, coordinator)
    else:
        pool = list(learners)
        for i, node in enumerate(pool):
            if node not in g:
                raise TopologyError(f"{learners_key}: unknown node {node!r} (entry {i})")
        if len(pool) > m or (m and not pool):
            raise TopologyError(f"{learners_key}: expected 1 to {m} nodes, got {len(pool)} "
                                "(one per learner, or fewer that are cycled)")
    return coordinator, [pool[i % len(pool)] for i in range(m)]


def most_central(g: nx.Graph, chunk: int = 256) -> Hashable:
    """The node of highest closeness centrality (hop counts) in a connected graph.

    Highest closeness is smallest total distance to the other nodes; ties go to
    the smallest node id. Trees (star, tree, hierarchy, line) take O(n); other
    graphs run a BFS from every node in scipy, ``chunk`` sources at a time
    (memory chunk * n), which takes seconds beyond a few thousand nodes --
    name the coordinator there.
    """
    nodes = sorted(g, key=node_key)
    if nx.is_tree(g):
        totals = _tree_distance_totals(g, nodes[0])
        return min(nodes, key=lambda x: totals[x])  # min keeps the first of equal totals
    adjacency = nx.to_scipy_sparse_array(g, nodelist=nodes, format="csr")
    sums = np.empty(len(nodes))
    for start in range(0, len(nodes), chunk):
        sources = np.arange(start, min(start + chunk, len(nodes)))
        dist = shortest_path(adjacency, directed=False, unweighted=True, indices=sources)
        sums[sources] = dist.sum(axis=1)
    return nodes[int(np.argmin(sums))]  # argmin keeps the first of equal totals


def _tree_distance_totals(g: nx.Graph, root: Hashable) -> dict[Hashable, int]:
    """Sum of hop distances from every node of a tree, by re-rooting from ``root``.

    Moving the root from a parent to its child brings the child's subtree one
    hop closer and the other nodes one hop further: S(c) = S(p) + n - 2 size(c).
    """
    parent, depth, order = {root: None}, {root: 0}, [root]
    for u, v in nx.bfs_edges(g, root):
        parent[v], depth[v] = u, depth[u] + 1
        order.append(v)
    size = dict.fromkeys(order, 1)
    for v in reversed(order[1:]):
        size[parent[v]] += size[v]
    n = len(order)
    totals = {root: sum(depth.values())}
    for v in order[1:]:
        totals[v] = totals[parent[v]] + n - 2 * size[v]
    return totals


def _default_learner_nodes(g: nx.Graph, coordinator: Hashable) -> list[Hashable]:
    others = sorted((x for x in g if x != coordinator), key=node_key)
    branching_tree = nx.is_tree(g) and max(d for _, d in g.degree()) > 2
    leaves = [x for x in others if g.degree(x) == 1] if branching_tree else []
    return leaves or others or [coordinator]
