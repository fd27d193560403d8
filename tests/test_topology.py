"""Topologies: generators, file formats, link configuration and placement."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from netfl.sim.topology import (
    GENERATORS,
    TopologyError,
    configure_links,
    generate,
    load_graph,
    most_central,
    place,
)

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"

CASES = [
    ("star", 9, {}),
    ("ring", 8, {}),
    ("line", 5, {}),
    ("complete", 6, {}),
    ("tree", 10, {"branching": 3}),
    ("hierarchy", 16, {}),
    ("random_regular", 12, {"d": 3}),
    ("erdos_renyi", 30, {"p": 0.2}),
    ("erdos_renyi", 50, {}),
    ("barabasi_albert", 40, {"m_edges": 2}),
]


def edges(g: nx.Graph) -> list[tuple]:
    return sorted(tuple(sorted(e)) for e in g.edges())


# -- generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "n", "params"), CASES)
def test_generators_make_connected_graphs_with_n_int_nodes(kind, n, params):
    g = generate(kind, n, seed=1, **params)
    assert sorted(g.nodes) == list(range(n))
    assert nx.is_connected(g)
    assert edges(generate(kind, n, seed=1, **params)) == edges(g)


def test_every_kind_is_covered():
    assert {kind for kind, _, _ in CASES} == set(GENERATORS)


@pytest.mark.parametrize("kind", ["random_regular", "erdos_renyi", "barabasi_albert"])
def test_random_kinds_depend_on_seed(kind):
    assert edges(generate(kind, 30, seed=1)) != edges(generate(kind, 30, seed=2))


def test_shapes_of_structured_kinds():
    star = generate("star", 9, seed=0)
    assert star.degree(0) == 8 and star.number_of_edges() == 8
    assert generate("ring", 8, seed=0).number_of_edges() == 8
    assert all(d == 3 for _, d in generate("random_regular", 12, d=3, seed=0).degree)
    tree = generate("tree", None, branching=2, height=3, seed=0)
    assert tree.number_of_nodes() == 15 and nx.is_tree(tree) and tree.degree(0) == 2
    assert nx.eccentricity(tree, 0) == 3


def test_hierarchy_spreads_leaves_round_robin():
    g = generate("hierarchy", 16, seed=0)
    assert sorted(g[0]) == [1, 2, 3]
    assert [next(iter(set(g[leaf]) - {0})) for leaf in range(4, 16)] == [1, 2, 3] * 4
    assert g.nodes[0]["tier"] == "root" and g.nodes[2]["tier"] == "switch"
    assert g.nodes[9]["tier"] == "leaf"
    assert g.edges[0, 1]["tier"] == "core" and g.edges[1, 4]["tier"] == "access"
    by_leaves = generate("hierarchy", None, leaves=12, seed=0)
    assert edges(by_leaves) == edges(g)
    assert generate("hierarchy", 11, switches=2, seed=0).degree(1) == 1 + 4


@pytest.mark.parametrize(
    ("kind", "n", "params", "pattern"),
    [
        ("mesh", 4, {}, "unknown topology kind 'mesh'"),
        ("star", 4, {"hubs": 2}, "star: unknown parameter.*hubs"),
        ("star", 1, {}, "star: n .* >= 2, got 1"),
        ("ring", "8", {}, "ring: n"),
        ("tree", 10, {"branching": 0}, "tree: branching"),
        ("tree", 10, {"height": 3}, "tree: height 3"),
        ("hierarchy", 10, {"switches": 6}, r"hierarchy: leaves \(3\) must be at least switches"),
        ("hierarchy", 10, {"switches": 2, "leaves": 3}, "hierarchy: n must be"),
        ("random_regular", 9, {"d": 3}, "random_regular: d must be < n and n . d even"),
        ("erdos_renyi", 10, {"p": 1.5}, "erdos_renyi: p must be a probability"),
        ("erdos_renyi", 200, {"p": 0.001}, "erdos_renyi: no connected graph in 100 draws"),
        ("barabasi_albert", 5, {"m_edges": 5}, "barabasi_albert: m_edges must be < n"),
    ],
)
def test_generator_errors_name_the_parameter(kind, n, params, pattern):
    with pytest.raises(TopologyError, match=pattern):
        generate(kind, n, seed=0, **params)


# -- load_graph -----------------------------------------------------------------------------------


def test_load_yaml_with_units_and_coordinator(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "coordinator: 2\n"
        "nodes: [0, 1, 2]\n"
        "links:\n"
        "  - {u: 0, v: 2, bandwidth: 100 Mbit/s, latency: 5 ms, loss: 0.01}\n"
        "  - {u: 1, v: 2}\n"
    )
    g = load_graph(path)
    assert g.graph["coordinator"] == 2
    assert g.edges[0, 2] == {"bandwidth": 1e8, "latency": 0.005, "loss": 0.01, "forward": 0}
    assert g.edges[1, 2] == {"forward": 1}


def test_load_graphml_relabels_int_nodes_and_reads_units(tmp_path):
    g = nx.Graph(coordinator="1")
    g.add_edge("0", "1", bandwidth="1 Gbit/s", latency="2 ms")
    g.add_edge("1", "2", bandwidth=5e7, latency=0.004, loss=0.1)
    path = tmp_path / "t.graphml"
    nx.write_graphml(g, path)
    loaded = load_graph(path)
    assert sorted(loaded.nodes) == [0, 1, 2]
    assert loaded.graph == {"coordinator": 1}
    assert loaded.edges[0, 1] == {"bandwidth": 1e9, "latency": 0.002, "forward": 0}
    assert loaded.edges[1, 2] == {"bandwidth": 5e7, "latency": 0.004, "loss": 0.1, "forward": 1}


def test_load_edgelist_key_values_and_networkx_dicts(tmp_path):
    path = tmp_path / "t.edgelist"
    path.write_text(
        "# links of a small graph\n"
        '0 1 bandwidth="10 Mbit/s" latency=20ms  # a slow link\n'
        "1 2\n"
        "\n"
        "2 a {'bandwidth': 1e9, 'loss': '0.5'}\n"
    )
    g = load_graph(path)
    assert set(g.nodes) == {0, 1, 2, "a"}
    assert g.edges[0, 1] == {"bandwidth": 1e7, "latency": 0.02, "forward": 0}
    assert g.edges[1, 2] == {"forward": 1}
    assert g.edges[2, "a"] == {"bandwidth": 1e9, "loss": 0.5, "forward": 2}


def test_load_networkx_written_edgelist(tmp_path):
    g = nx.cycle_graph(5)  # not generate(): its forward attribute is no file attribute
    nx.set_edge_attributes(g, 1e6, "bandwidth")
    path = tmp_path / "ring.edges"
    nx.write_edgelist(g, path)
    assert edges(load_graph(path)) == edges(g)
    loaded = load_graph(path)
    assert {(d["forward"], u + v - d["forward"]) for u, v, d in loaded.edges(data=True)} == set(
        g.edges
    )  # each link oriented as the file wrote it
    assert all(d.keys() == {"bandwidth", "forward"} and d["bandwidth"] == 1e6
               for *_, d in loaded.edges(data=True))


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("a.yaml", "links: [{u: 0, v: 1, bw: 5}]", r"links\[0\]: link \(0, 1\): unknown link attr"),
        ("b.yaml", "links: [{u: 0, v: 1}]\nextra: 1", "unknown key.*extra"),
        ("c.yaml", "links: [{u: 0, v: 1, latency: fast}]", r"link \(0, 1\): latency: expected"),
        ("d.yaml", "links: [{u: 0, v: 1}\n", "not valid YAML"),
        ("e.yaml", "nodes: [0]\nlinks: [{u: 0, v: 1}]", r"links\[0\]: node 1 is not in nodes"),
        ("f.yaml", "coordinator: 9\nlinks: [{u: 0, v: 1}]", "coordinator 9 is not a node"),
        ("g.yaml", "links: [{u: 0, v: 1}, {u: 1, v: 0}]", "listed twice"),
        ("h.graphml", "<graphml><graph", "not valid GraphML"),
        ("i.txt", "0 1 bandwidth\n", "line 1: expected key=value"),
        ("j.txt", "0 1 bandwidth=1Mbit/s\n1 2 bandwidth=lots\n", r"link \(1, 2\): bandwidth"),
        ("k.gml", "", "unknown topology format"),
    ],
)
def test_malformed_files_raise_naming_the_file(tmp_path, name, text, pattern):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TopologyError, match=pattern) as err:
        load_graph(path)
    assert str(err.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="nope.yaml: no such file"):
        load_graph(tmp_path / "nope.yaml")


def test_shipped_topologies_load_and_place():
    star = configure_links(load_graph(TOPOLOGIES / "star8.yaml"), bandwidth=1, latency=1)
    assert star.number_of_nodes() == 9 and star.degree(0) == 8
    assert {d["bandwidth"] for *_, d in star.edges(data=True)} == {1e8}
    assert place(star, 8) == (0, [1, 2, 3, 4, 5, 6, 7, 8])

    hier = configure_links(load_graph(TOPOLOGIES / "hierarchy.yaml"), bandwidth=1, latency=1)
    assert hier.number_of_nodes() == 16 and sorted(hier[0]) == [1, 2, 3]
    assert hier.edges[0, 1]["bandwidth"] == 1e9 and hier.edges[0, 1]["latency"] == 0.001
    assert hier.edges[1, 4]["bandwidth"] == 1e8 and hier.edges[1, 4]["latency"] == 0.005
    assert edges(hier) == edges(generate("hierarchy", 16, seed=0))
    coordinator, learners = place(hier, 24)
    assert coordinator == 0 and learners == list(range(4, 16)) * 2

    ring = load_graph(TOPOLOGIES / "ring8.graphml")
    assert sorted(ring.nodes) == list(range(8)) and nx.is_isomorphic(ring, nx.cycle_graph(8))
    source = {frozenset((i, (i + 1) % 8)): i for i in range(8)}  # the file's source -> target
    assert all(
        d == {"bandwidth": 5e7, "latency": 0.002, "loss": 0.0, "forward": source[frozenset((u, v))]}
        for u, v, d in ring.edges(data=True)
    )


# -- configure_links ------------------------------------------------------------------------------


def test_configure_links_precedence_override_file_default():
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth="1 Gbit/s")
    g.add_edge(1, 2, latency=0.5)
    g.add_edge(2, 3)
    out = configure_links(
        g,
        bandwidth="10 Mbit/s",
        latency="20 ms",
        loss=0.01,
        overrides=[{"u": 1, "v": 0, "latency": "1 ms"}, {"u": 2, "v": 3, "bandwidth": 5}],
    )
    symmetric = {"forward": 0, "reverse_bandwidth": 1e9}
    assert out.edges[0, 1] == {"bandwidth": 1e9, "latency": 0.001, "loss": 0.01, **symmetric}
    assert out.edges[1, 2] == {"bandwidth": 1e7, "latency": 0.5, "loss": 0.01,
                               "forward": 1, "reverse_bandwidth": 1e7}
    assert out.edges[2, 3] == {"bandwidth": 5.0, "latency": 0.02, "loss": 0.01,
                               "forward": 2, "reverse_bandwidth": 5.0}
    assert g.edges[2, 3] == {} and g.edges[0, 1] == {"bandwidth": "1 Gbit/s"}  # input untouched


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"overrides": [{"u": 3, "v": 4, "bandwidth": 0}]},
            r"link \(3, 4\): bandwidth must be > 0, got 0",
        ),
        ({"overrides": [{"u": 0, "v": 4}]}, r"overrides\[0\]: link \(0, 4\): no such link"),
        ({"overrides": [{"u": 0, "v": 9}]}, r"link \(0, 9\): unknown node 9"),
        ({"overrides": [{"u": 0, "v": 1, "speed": 3}]}, r"link \(0, 1\): unknown key.*speed"),
        ({"overrides": [{"u": 0}]}, r"overrides\[0\]: expected a mapping with u and v"),
        ({"latency": -1}, r"link \(0, 1\): latency must be >= 0, got -1"),
        ({"loss": 1.0}, r"link \(0, 1\): loss must be in \[0, 1\), got 1"),
        ({"bandwidth": "fast"}, r"link \(0, 1\): bandwidth: expected a bit rate"),
    ],
)
def test_configure_links_errors_name_link_and_attribute(kwargs, pattern):
    g = generate("line", 5, seed=0)
    args = {"bandwidth": 1e6, "latency": 0.01, **kwargs}
    with pytest.raises(TopologyError, match=pattern):
        configure_links(g, **args)


# -- place ----------------------------------------------------------------------------------------


def test_place_star_defaults_to_hub_and_leaves_round_robin():
    g = generate("star", 5, seed=0)
    assert place(g, 6) == (0, [1, 2, 3, 4, 1, 2])
    assert place(g, 0) == (0, [])


def test_place_hierarchy_defaults_to_root_and_leaves():
    g = generate("hierarchy", 16, seed=0)
    coordinator, learners = place(g, 12)
    assert coordinator == 0 and learners == list(range(4, 16))


def test_place_without_leaves_uses_all_other_nodes():
    assert place(generate("ring", 5, seed=0), 5) == (0, [1, 2, 3, 4, 1])
    assert place(generate("line", 5, seed=0), 4) == (2, [0, 1, 3, 4])  # centre; every other node
    assert place(_single_node(), 2) == (7, [7, 7])


def test_place_on_a_random_graph_ignores_its_few_leaves():
    g = nx.cycle_graph(6)
    g.add_edge(0, 6)  # one degree-1 node: learners must not all pile up on it
    coordinator, learners = place(g, 4)
    assert len(set(learners)) == 4 and coordinator not in learners


def _single_node() -> nx.Graph:
    g = nx.Graph()
    g.add_node(7)
    return g


@pytest.mark.parametrize(
    ("kind", "n", "params"),
    [
        ("tree", 40, {"branching": 3}),
        ("line", 8, {}),
        ("barabasi_albert", 60, {"m_edges": 1}),
        ("erdos_renyi", 60, {}),
        ("barabasi_albert", 60, {}),
        ("ring", 7, {}),
    ],
)
def test_most_central_matches_networkx_closeness(kind, n, params):
    g = generate(kind, n, seed=5, **params)
    closeness = nx.closeness_centrality(g)
    assert most_central(g) == min(g, key=lambda x: (-closeness[x], x))


def test_place_honours_graph_attribute_and_explicit_choices():
    g = generate("star", 5, seed=0)
    g.graph["coordinator"] = 3
    assert place(g, 3) == (3, [1, 2, 4])
    assert place(g, 4, coordinator=1, learners=[0, 2]) == (1, [0, 2, 0, 2])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"coordinator": 9}, "coordinator: unknown node 9"),
        ({"learners": [1, 99]}, "learners: unknown node 99"),
        ({"learners": [1, 2, 3, 4]}, "learners: expected 1 to 3 nodes, got 4"),
        ({"learners": []}, "learners: expected 1 to 3 nodes, got 0"),
    ],
)
def test_place_errors(kwargs, pattern):
    with pytest.raises(TopologyError, match=pattern):
        place(generate("star", 5, seed=0), 3, **kwargs)


def test_place_refuses_disconnected_network():
    g = nx.Graph([(0, 1), (2, 3), (4, 5)])
    with pytest.raises(TopologyError, match="network is disconnected: 3 components"):
        place(g, 2)
