"""Asymmetric and tiered links, link orientation, and strict topology-file attributes."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from netfl.build import build_graph
from netfl.scenario import from_dict
from netfl.sim.topology import TopologyError, configure_links, generate, load_graph

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"
BASE = {"bandwidth": 1e6, "latency": 0.01}


def rates(g: nx.Graph, u, v) -> tuple[float, float]:
    """(u -> v, v -> u) bandwidths of edge u -- v, read through its ``forward``."""
    data = g.edges[u, v]
    assert data["forward"] in (u, v)
    if data["forward"] == u:
        return data["bandwidth"], data["reverse_bandwidth"]
    return data["reverse_bandwidth"], data["bandwidth"]


# -- orientation and asymmetry --------------------------------------------------------------------


def test_every_configured_edge_carries_the_contract():
    out = configure_links(generate("erdos_renyi", 20, seed=3), **BASE)
    for u, v, data in out.edges(data=True):
        assert data["forward"] == min(u, v)
        for name in ("bandwidth", "reverse_bandwidth", "latency", "loss"):
            assert isinstance(data[name], float)
        assert data["bandwidth"] == data["reverse_bandwidth"] == 1e6


@pytest.mark.parametrize(
    ("kind", "n", "params"),
    [("star", 6, {}), ("tree", 15, {"branching": 2}), ("tree", 13, {"branching": 3}),
     ("hierarchy", 16, {}), ("line", 5, {})],
)
def test_generated_trees_point_forward_from_the_parent(kind, n, params):
    g = generate(kind, n, seed=0, **params)
    parent = dict(nx.bfs_predecessors(g, 0))
    for u, v, data in g.edges(data=True):
        child = u if parent.get(u) == v else v
        assert data["forward"] == parent[child]


def test_network_reverse_bandwidth_is_the_uplink_of_a_generated_star():
    out = configure_links(generate("star", 4, seed=0), **BASE, reverse_bandwidth="100 kbit/s")
    for leaf in (1, 2, 3):
        assert rates(out, 0, leaf) == (1e6, 1e5)  # hub -> leaf downlink, leaf -> hub uplink


@pytest.mark.parametrize(("u", "v"), [(1, 2), (2, 1)])
def test_asymmetric_override_follows_the_users_u_v_in_both_orientations(u, v):
    g = generate("line", 4, seed=0)  # the edge 1 -- 2 is stored with forward 1
    override = {"u": u, "v": v, "bandwidth": "8 Mbit/s", "reverse_bandwidth": "2 Mbit/s"}
    out = configure_links(g, **BASE, overrides=[override])
    assert rates(out, u, v) == (8e6, 2e6)
    assert out.edges[1, 2]["forward"] == 1
    assert rates(out, 0, 1) == (1e6, 1e6) and rates(out, 2, 3) == (1e6, 1e6)


def test_override_reverse_only_keeps_the_lower_levels_forward_bandwidth():
    g = generate("line", 3, seed=0)
    out = configure_links(
        g, **BASE, reverse_bandwidth=3e6,
        overrides=[{"u": 2, "v": 1, "reverse_bandwidth": 5e6},  # 1 -> 2
                   {"u": 1, "v": 0, "bandwidth": 7e6}],  # bandwidth alone: symmetric
    )
    assert rates(out, 1, 2) == (5e6, 3e6)
    assert rates(out, 0, 1) == (7e6, 7e6)


def test_configured_graph_reads_as_the_network_expects():
    links = pytest.importorskip("netfl.sim.links")
    g = generate("line", 3, seed=0)
    out = configure_links(g, **BASE, overrides=[{"u": 2, "v": 1, "bandwidth": 4e6,
                                                 "reverse_bandwidth": 9e6}])
    read = links.read_links(out)
    assert read[2, 1].bandwidth == 4e6 and read[1, 2].bandwidth == 9e6
    assert read[0, 1].bandwidth == read[1, 0].bandwidth == 1e6


# -- tiers ----------------------------------------------------------------------------------------


def tier_of(g: nx.Graph) -> dict[tuple, str]:
    return {(min(u, v), max(u, v)): d["tier"] for u, v, d in g.edges(data=True)}


def test_generators_label_tiers():
    assert set(tier_of(generate("star", 5, seed=0)).values()) == {"access"}
    tree = tier_of(generate("tree", 7, branching=2, seed=0))  # 0 -> 1, 2; 1 -> 3, 4; 2 -> 5, 6
    assert tree == {(0, 1): "core", (0, 2): "core", (1, 3): "access", (1, 4): "access",
                    (2, 5): "access", (2, 6): "access"}
    uneven = tier_of(generate("tree", 5, branching=2, seed=0))  # node 2 is a leaf
    assert uneven == {(0, 1): "core", (0, 2): "access", (1, 3): "access", (1, 4): "access"}
    hier = tier_of(generate("hierarchy", 7, switches=2, seed=0))
    assert hier == {(0, 1): "core", (0, 2): "core", (1, 3): "access", (2, 4): "access",
                    (1, 5): "access", (2, 6): "access"}
    for kind in ("ring", "line", "complete", "erdos_renyi"):
        assert set(tier_of(generate(kind, 6, seed=0)).values()) == {"core"}


ACCESS_CORE = {
    "access": {"bandwidth": "50 Mbit/s", "reverse_bandwidth": "5 Mbit/s", "latency": "4 ms"},
    "core": {"bandwidth": "1 Gbit/s", "loss": 0.001},
}


def test_tier_settings_on_a_hierarchy():
    out = configure_links(generate("hierarchy", 16, seed=0), **BASE, tiers=ACCESS_CORE)
    for u, v, data in out.edges(data=True):
        if data["tier"] == "access":
            assert rates(out, min(u, v), max(u, v)) == (5e7, 5e6)  # switch -> leaf, leaf -> switch
            assert (data["latency"], data["loss"]) == (0.004, 0.0)
        else:
            assert rates(out, 0, max(u, v)) == (1e9, 1e9)
            assert (data["latency"], data["loss"]) == (0.01, 0.001)


def test_tier_settings_on_a_tree_and_a_star():
    tree = configure_links(generate("tree", 7, branching=2, seed=0), **BASE, tiers=ACCESS_CORE)
    assert rates(tree, 1, 3) == (5e7, 5e6) and rates(tree, 2, 6) == (5e7, 5e6)
    assert rates(tree, 0, 1) == (1e9, 1e9) and tree.edges[0, 2]["loss"] == 0.001
    star = configure_links(generate("star", 4, seed=0), **BASE,
                           tiers={"access": ACCESS_CORE["access"]})
    assert all(rates(star, 0, leaf) == (5e7, 5e6) for leaf in (1, 2, 3))


def test_core_tier_applies_to_a_ring():
    out = configure_links(generate("ring", 5, seed=0), **BASE, tiers={"core": {"latency": 0.5}})
    assert {d["latency"] for *_, d in out.edges(data=True)} == {0.5}


def test_tier_that_matches_no_link_is_named():
    with pytest.raises(TopologyError, match="tiers.access: no link of this topology has tier"):
        configure_links(generate("ring", 5, seed=0), **BASE, tiers={"access": {"latency": 1}})
    with pytest.raises(TopologyError, match="^net.tiers.core: no link .* tier 'core'"):
        configure_links(generate("star", 3, seed=0), **BASE, tiers={"core": {}},
                        tiers_key="net.tiers")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [({"speed": 1}, r"tiers.access: unknown key\(s\) speed; known: bandwidth"),
     ({"latency": "soon"}, "tiers.access: latency: expected a duration"),
     ({"bandwidth": 0}, r"link \(0, 1\): bandwidth must be > 0")],
)
def test_bad_tier_settings(spec, pattern):
    with pytest.raises(TopologyError, match=pattern):
        configure_links(generate("star", 3, seed=0), **BASE, tiers={"access": spec})


# -- precedence: override > file attribute > tier > network default --------------------------------


def test_precedence_per_attribute_and_per_direction():
    g = nx.Graph()
    g.add_edge(0, 1, tier="access", forward=0)  # tier and default only
    g.add_edge(0, 2, tier="access", forward=0, bandwidth=2e7)  # file bandwidth alone: symmetric
    g.add_edge(0, 3, tier="access", forward=3, latency=0.3)  # file written 3 -> 0
    g.add_edge(0, 4, tier="access", forward=0, bandwidth=2e7, reverse_bandwidth=1e7)
    tiers = {"access": {"bandwidth": 5e7, "reverse_bandwidth": 5e6, "loss": 0.02}}
    out = configure_links(
        g, bandwidth=1e6, reverse_bandwidth=1e5, latency=0.01, loss=0.0, tiers=tiers,
        overrides=[{"u": 4, "v": 0, "bandwidth": 3e6}, {"u": 0, "v": 4, "latency": 0.7}],
    )
    assert rates(out, 0, 1) == (5e7, 5e6) and out.edges[0, 1]["latency"] == 0.01
    assert rates(out, 0, 2) == (2e7, 2e7) and out.edges[0, 2]["loss"] == 0.02
    assert out.edges[0, 3]["forward"] == 3 and rates(out, 3, 0) == (5e7, 5e6)
    assert out.edges[0, 3]["latency"] == 0.3
    assert rates(out, 0, 4) == (3e6, 3e6)  # the override's bandwidth alone is symmetric
    assert out.edges[0, 4]["latency"] == 0.7 and out.edges[0, 4]["loss"] == 0.02


def test_network_default_fills_what_nothing_else_gives():
    g = nx.Graph()
    g.add_edge("b", "a")  # no forward: the smaller id
    out = configure_links(g, bandwidth="2 Mbit/s", reverse_bandwidth="1 Mbit/s", latency="1 ms")
    assert out.edges["a", "b"] == {"forward": "a", "bandwidth": 2e6, "reverse_bandwidth": 1e6,
                                   "latency": 0.001, "loss": 0.0}


def test_tier_setting_that_every_link_replaces_is_an_error():
    g = nx.Graph()
    g.add_edge(0, 1, tier="access", bandwidth=1e7)
    g.add_edge(0, 2, tier="access", bandwidth=1e7)
    with pytest.raises(TopologyError, match="tiers.access.reverse_bandwidth: has no effect"):
        configure_links(g, **BASE, tiers={"access": {"reverse_bandwidth": 1e6}})
    g.edges[0, 2].pop("bandwidth")  # one link left that takes the tier's value
    out = configure_links(g, **BASE, tiers={"access": {"reverse_bandwidth": 2e5}})
    assert rates(out, 0, 2) == (1e6, 2e5)  # default bandwidth, the tier's reverse_bandwidth
    assert out.edges[0, 1]["reverse_bandwidth"] == 1e7


# -- topology files -------------------------------------------------------------------------------


def test_yaml_links_keep_their_orientation_reverse_bandwidth_and_tier(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "links:\n"
        "  - {u: 1, v: 0, bandwidth: 10 Mbit/s, reverse_bandwidth: 1 Mbit/s, tier: access}\n"
        "  - {u: 1, v: 2, tier: core}\n"
    )
    g = load_graph(path)
    assert g.edges[0, 1] == {"forward": 1, "bandwidth": 1e7, "reverse_bandwidth": 1e6,
                             "tier": "access"}
    out = configure_links(g, **BASE, tiers={"core": {"reverse_bandwidth": 4e5}})
    assert rates(out, 1, 0) == (1e7, 1e6)
    assert rates(out, 1, 2) == (1e6, 4e5)


def test_edgelist_reverse_bandwidth_and_tier(tmp_path):
    path = tmp_path / "t.edgelist"
    path.write_text(
        '5 3 bandwidth="20 Mbit/s" reverse_bandwidth=2Mbit/s tier=access\n'
        "3 4 {'reverse_bandwidth': 3e6, 'tier': 'core'}\n"
    )
    g = load_graph(path)
    assert g.edges[3, 5] == {"forward": 5, "bandwidth": 2e7, "reverse_bandwidth": 2e6,
                             "tier": "access"}
    out = configure_links(g, **BASE)
    assert rates(out, 5, 3) == (2e7, 2e6)
    assert rates(out, 3, 4) == (1e6, 3e6) and out.edges[3, 4]["tier"] == "core"


GRAPHML = """<?xml version="1.0" encoding="UTF-8"?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="k0" for="edge" attr.name="bandwidth" attr.type="string"/>
  <key id="k1" for="edge" attr.name="reverse_bandwidth" attr.type="double"/>
  <key id="k2" for="edge" attr.name="tier" attr.type="string"/>
  <key id="n0" for="node" attr.name="label" attr.type="string"/>
  {extra_keys}
  <graph edgedefault="undirected">
    <node id="0"><data key="n0">root</data></node>
    <node id="1"/>
    <node id="2"/>
    <edge id="e0" source="1" target="0">
      <data key="k0">10 Mbit/s</data><data key="k1">1e6</data><data key="k2">access</data>
      {extra_data}
    </edge>
    <edge source="0" target="2"><data key="k2">core</data></edge>
  </graph>
</graphml>
"""


def test_graphml_source_is_forward_and_node_attributes_are_ignored(tmp_path):
    path = tmp_path / "t.graphml"
    path.write_text(GRAPHML.format(extra_keys="", extra_data=""))
    g = load_graph(path)
    assert g.edges[0, 1] == {"forward": 1, "bandwidth": 1e7, "reverse_bandwidth": 1e6,
                             "tier": "access"}  # the edge id is dropped
    assert g.edges[0, 2] == {"forward": 0, "tier": "core"}
    out = configure_links(g, **BASE)
    assert rates(out, 1, 0) == (1e7, 1e6) and rates(out, 0, 2) == (1e6, 1e6)


def test_unknown_graphml_edge_attributes_are_refused(tmp_path):
    path = tmp_path / "t.graphml"
    path.write_text(GRAPHML.format(
        extra_keys='<key id="k3" for="edge" attr.name="bw" attr.type="double"/>'
                   '<key id="k4" for="edge" attr.name="delay" attr.type="double"/>',
        extra_data='<data key="k3">5</data><data key="k4">0.1</data>',
    ))
    with pytest.raises(TopologyError) as err:
        load_graph(path)
    assert str(err.value) == (
        f"{path}: link (1, 0): unknown link attribute(s) bw, delay; "
        "known: bandwidth, reverse_bandwidth, latency, loss, tier"
    )  # the link named as the file writes it, source first


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [("a.yaml", "links: [{u: 0, v: 1, bw: 5, delay: 1 ms}]", r"links\[0\]: link \(0, 1\)"),
     ("b.edgelist", "0 1 latency=1ms\n1 2 bw=5 delay=3\n", r"line 2: link \(1, 2\)"),
     ("c.txt", "0 1 {'bw': 5, 'delay': 1}\n", r"line 1: link \(0, 1\)")],
)
def test_unknown_file_link_attributes_are_refused(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    pattern = (rf"^{path}: {where}: unknown link attribute\(s\) bw, delay; "
               "known: bandwidth, reverse_bandwidth, latency, loss, tier$")
    with pytest.raises(TopologyError, match=pattern):
        load_graph(path)


def test_file_tier_must_be_access_or_core(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("links: [{u: 0, v: 1, tier: metro}]")
    with pytest.raises(TopologyError, match=r"link \(0, 1\): tier must be 'access' or 'core'"):
        load_graph(path)


def test_shipped_tiered_hierarchy_matches_the_generator():
    g = load_graph(TOPOLOGIES / "hierarchy_tiers.yaml")
    generated = generate("hierarchy", 16, seed=0)
    assert tier_of(g) == tier_of(generated)
    assert all(d["forward"] == generated.edges[u, v]["forward"] for u, v, d in g.edges(data=True))


# -- scenario wiring ------------------------------------------------------------------------------


def test_build_graph_passes_reverse_bandwidth_tiers_and_overrides():
    scenario = from_dict({"learners": {"count": 4}, "network": {
        "topology": {"generator": "hierarchy", "params": {"switches": 2}},
        "bandwidth": "100 Mbit/s", "reverse_bandwidth": "20 Mbit/s",
        "tiers": {"access": {"bandwidth": "50 Mbit/s", "reverse_bandwidth": "5 Mbit/s"}},
        "links": [{"u": 3, "v": 1, "bandwidth": "7 Mbit/s", "reverse_bandwidth": "70 Mbit/s"}],
    }})
    graph, coordinator, nodes = build_graph(scenario, 4, seed=0)
    assert coordinator == 0 and nodes == [3, 4, 5, 6]
    assert rates(graph, 0, 1) == (1e8, 2e7)  # core: network defaults
    assert rates(graph, 2, 4) == (5e7, 5e6)  # access tier
    assert rates(graph, 3, 1) == (7e6, 7e7)  # the override, as the user wrote it


@pytest.mark.parametrize(
    ("network", "pattern"),
    [({"links": [{"u": 0, "v": 9, "bandwidth": 1}]}, r"^network.links\[0\]: link \(0, 9\)"),
     ({"topology": {"generator": "ring"}, "tiers": {"access": {"latency": "1 ms"}}},
      "^network.tiers.access: no link of this topology has tier 'access'")],
)
def test_build_graph_errors_name_the_scenario_keys(network, pattern):
    scenario = from_dict({"learners": {"count": 3}, "network": network})
    with pytest.raises(TopologyError, match=pattern):
        build_graph(scenario, 3, seed=0)
