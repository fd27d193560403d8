"""Decentralized protocols (gossip, D-PSGD): neighbourhoods, mixing weights, whole runs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.observers import Tables
from netfl.protocols import PROTOCOLS
from netfl.protocols.decentralized import matching, metropolis_weights, mix
from netfl.protocols.neighbours import neighbour_matrix, neighbourhood
from netfl.scenario import ScenarioError
from netfl.sim import wire


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only cost time (much of it on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lists(nbrs):
    return [n.tolist() for n in nbrs]


def run(scenario, **kwargs):
    tables = Tables(learners=False)
    built = build(scenario, observers=[tables], **kwargs)
    built.simulation.run()
    return built.simulation, tables.rows.get("messages", [])


def model_message_size(sim) -> int:
    return wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params


# ----------------------------------------------------------------- neighbourhoods


def test_neighbourhood_ring_line_star_hops_and_colocated():
    ring = nx.cycle_graph(6)
    one = {i: i for i in range(6)}
    assert lists(neighbourhood(ring, one, 6)) == [[1, 5], [0, 2], [1, 3], [2, 4], [3, 5],
                                                  [0, 4]]
    assert lists(neighbourhood(ring, one, 6, hops=2))[0] == [1, 2, 4, 5]
    assert lists(neighbourhood(ring, one, 6, hops=3))[0] == [1, 2, 3, 4, 5]
    line = nx.path_graph(4)
    assert lists(neighbourhood(line, {i: i for i in range(4)}, 4)) == [[1], [0, 2], [1, 3], [2]]
    assert lists(neighbourhood(line, {i: i for i in range(4)}, 4, hops=2)) == [
        [1, 2], [0, 2, 3], [0, 1, 3], [1, 2]]
    # star: learners on the leaves reach each other only through the hub (2 hops); learners
    # 3 and 4 share leaf 4; the coordinator's entry is ignored
    star = nx.star_graph(4)
    place = {"coordinator": 0, 0: 1, 1: 2, 2: 3, 3: 4, 4: 4}
    assert lists(neighbourhood(star, place, 5)) == [[], [], [], [4], [3]]
    assert lists(neighbourhood(star, place, 5, hops=2)) == [
        [1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]]
    assert lists(neighbourhood(star, place, 5, hops=0)) == [[], [], [], [4], [3]]
    # a learner on the hub sees every leaf at one hop
    assert lists(neighbourhood(star, {0: 0, 1: 1, 2: 2}, 3)) == [[1, 2], [0], [0]]


def test_neighbour_matrix_matches_breadth_first_search_and_is_symmetric():
    rng = np.random.default_rng(0)
    graph = nx.connected_watts_strogatz_graph(30, 4, 0.3, seed=1)
    graph = nx.relabel_nodes(graph, {k: f"n{k}" for k in graph})  # any hashable node names
    m = 45
    place = {i: f"n{int(rng.integers(30))}" for i in range(m)}  # many shared nodes
    for hops in (1, 2, 3):
        adj = neighbour_matrix(graph, place, m, hops)
        assert (adj != adj.T).nnz == 0 and adj.diagonal().sum() == 0
        got = neighbourhood(graph, place, m, hops)
        for i in range(m):
            near = nx.single_source_shortest_path_length(graph, place[i], cutoff=hops)
            want = [j for j in range(m) if j != i and place[j] in near]
            assert got[i].tolist() == want


def test_neighbourhood_rejects_bad_input():
    with pytest.raises(ValueError, match="hops"):
        neighbourhood(nx.path_graph(3), {0: 0}, 1, hops=-1)
    with pytest.raises(ValueError, match="not placed"):
        neighbourhood(nx.path_graph(3), {0: 7}, 1)


# ----------------------------------------------------------------- mixing


def test_metropolis_weights_rows_sum_to_one_and_symmetric():
    line = neighbour_matrix(nx.path_graph(4), {i: i for i in range(4)}, 4)
    w = metropolis_weights(line).toarray()
    # degrees 1, 2, 2, 1: W_01 = 1/3, W_12 = 1/3, W_23 = 1/3
    expected = np.array([[2 / 3, 1 / 3, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0],
                         [0, 1 / 3, 1 / 3, 1 / 3], [0, 0, 1 / 3, 2 / 3]])
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    graph = nx.barabasi_albert_graph(40, 2, seed=3)
    w = metropolis_weights(neighbour_matrix(graph, {i: i for i in range(40)}, 40)).toarray()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(w, w.T, rtol=0, atol=0)
    assert (w >= 0).all()


def test_mix_is_the_weighted_mean_with_the_rest_on_the_own_model():
    own = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    models = torch.tensor([[2.0, 4.0], [6.0, 8.0], [1.0, 1.0]])
    out = mix(own, models, torch.tensor([0, 0, 1]), torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [5.5, 5.5]]))


def test_matching_is_a_seeded_maximal_matching_of_neighbours():
    nbrs = neighbourhood(nx.cycle_graph(9), {i: i for i in range(9)}, 9)
    draws = []
    for seed in range(20):
        partner = matching(nbrs, np.random.default_rng([5, seed]))
        paired = np.flatnonzero(partner >= 0)
        assert (partner[partner[paired]] == paired).all()  # symmetric
        assert all(partner[i] in nbrs[i] for i in paired)
        free = np.flatnonzero(partner < 0)
        assert not any(j in nbrs[i] for i in free for j in free)  # maximal
        assert len(free) % 2 == 1  # 9 learners
        draws.append(tuple(partner))
    assert len(set(draws)) > 5
    again = matching(nbrs, np.random.default_rng([5, 0]))
    assert tuple(again) == draws[0]


# ----------------------------------------------------------------- whole runs


def first_round_models(tiny, **changes):
    """Every learner's model after its first step and before any mixing (nosync)."""
    sim, _ = run(tiny(protocol={"name": "nosync"}, horizon={"rounds": 1}, **changes))
    return sim.bank.flat()


def test_dpsgd_on_a_complete_graph_mixes_to_the_mean(tiny):
    changes = {"network": {"topology": {"generator": "complete"}}, "learners": {"count": 5}}
    before = first_round_models(tiny, **changes)
    sim, _ = run(tiny(protocol={"name": "dpsgd"}, horizon={"rounds": 1}, **changes))
    after = sim.bank.flat()
    assert before.std(dim=0).max() > 1e-4  # the learners did differ
    torch.testing.assert_close(after, before.mean(dim=0).expand_as(after), atol=1e-6, rtol=0)
    assert sim.counters["exchanges"] == 5 and sim.counters["syncs"] == 1


def test_dpsgd_mixes_with_metropolis_weights_on_a_ring(tiny):
    changes = {"network": {"topology": {"generator": "ring"}}, "learners": {"count": 6}}
    before = first_round_models(tiny, **changes)
    sim, _ = run(tiny(protocol={"name": "dpsgd"}, horizon={"rounds": 1}, **changes))
    w = torch.as_tensor(metropolis_weights(sim.protocol.adjacency).toarray(),
                        dtype=torch.float32)
    # ring of 7 nodes, coordinator on node 0: the learners form a line 0 - 1 - ... - 5
    assert lists(sim.protocol.neighbours) == [[1], [0, 2], [1, 3], [2, 4], [3, 5], [4]]
    torch.testing.assert_close(sim.bank.flat(), w @ before, atol=1e-6, rtol=0)


def test_gossip_pair_holds_the_average_of_the_pair(tiny):
    changes = {"network": {"topology": {"generator": "complete"}}, "learners": {"count": 5}}
    before = first_round_models(tiny, **changes)
    sim, rows = run(tiny(protocol={"name": "gossip"}, horizon={"rounds": 1}, **changes))
    partner = [p.tolist() for p in sim.protocol.partners(1)]
    assert sorted(len(p) for p in partner) == [0, 1, 1, 1, 1]  # 5 learners: 2 pairs
    after = sim.bank.flat()
    for i, p in enumerate(partner):
        want = (before[i] + before[p[0]]) / 2 if p else before[i]
        torch.testing.assert_close(after[i], want, atol=1e-6, rtol=0)
    assert sorted((r["src"], r["dst"]) for r in rows) == sorted(
        (i, p[0]) for i, p in enumerate(partner) if p)
    assert sim.protocol.partners(1)[0].tolist() == partner[0]  # a schedule: same draw again


TOPOLOGIES = {
    "ring": {"network": {"topology": {"generator": "ring"}}},
    "hierarchy": {"network": {"topology": {"generator": "hierarchy"}}},  # learners on leaves
}


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("protocol", [{"name": "dpsgd", "b": 2},
                                      {"name": "gossip", "b": 2},
                                      {"name": "gossip", "mode": "neighbours", "b": 2}])
def test_runs_talk_only_to_peers(tiny, topology, protocol):
    hops = 2 if topology == "hierarchy" else 1  # leaf - switch - leaf
    scenario = tiny(protocol={**protocol, "hops": hops}, horizon={"rounds": 6},
                    learners={"count": 6}, **TOPOLOGIES[topology])
    sim, rows = run(scenario)
    net = sim.network
    assert (sim.rounds_done == 6).all() and sim.rows_emitted == 6
    assert net.bytes_up == 0 and net.bytes_down == 0
    assert net.bytes_peer > 0 and net.bytes_peer == net.bytes_total
    assert net.bytes_peer == sum(r["bytes"] for r in rows) == net.messages * \
        model_message_size(sim)
    kind = sim.protocol.kind
    assert net.bytes_by_kind == {kind: net.bytes_peer}
    assert sim.last_row[f"bytes_{kind}"] == net.bytes_peer
    assert sim.counters["syncs"] == 3  # rounds 2, 4, 6
    degree = sim.protocol.degree
    assert degree.min() > 0
    if protocol["name"] == "dpsgd" or protocol.get("mode") == "neighbours":
        assert net.messages == 3 * degree.sum()
        assert sim.counters["exchanges"] == 3 * 6
    else:
        pairs = sum(sum(len(p) for p in sim.protocol.partners(r)) for r in (2, 4, 6))
        assert net.messages == pairs == sim.counters["exchanges"]
    again, _ = run(scenario)
    assert again.last_row == sim.last_row
    assert torch.equal(again.bank.flat(), sim.bank.flat())


def test_star_leaves_are_isolated_at_one_hop(tiny):
    sim, _ = run(tiny(protocol={"name": "dpsgd"}, horizon={"rounds": 3}))
    assert sim.network.messages == 0
    assert sim.protocol.summary() == {"mean_neighbours": 0.0, "isolated_learners": 4}


def test_stragglers_without_waiting_finish_and_mix(tiny):
    scenario = tiny(protocol={"name": "gossip", "mode": "neighbours", "wait": False, "hops": 2},
                    learners={"count": 5, "compute_time": {"dist": "uniform", "low": "10 ms",
                                                           "high": "40 ms"}},
                    horizon={"rounds": 8})
    sim, _ = run(scenario)
    assert (sim.rounds_done == 8).all() and sim.rows_emitted == 8
    assert sim.counters["exchanges"] == 8 * 5 and not sim.protocol.rounds
    waiting, _ = run(tiny(protocol={"name": "gossip", "mode": "neighbours", "hops": 2},
                          learners=scenario.learners.model_dump(), horizon={"rounds": 8}))
    assert sim.env.now < waiting.env.now


def test_a_failed_link_costs_given_up_models_not_a_deadlock(tiny):
    # line of 5 nodes, coordinator on node 2: learners 0..3 on nodes 0, 1, 3, 4;
    # at one hop 0 - 1 and 2 - 3 are neighbours; link 0-1 fails for good at 20 ms
    scenario = tiny(
        protocol={"name": "dpsgd"}, horizon={"rounds": 4},
        network={"topology": {"generator": "line"}, "give_up": "1 s",
                 "failures": [{"link": [0, 1], "at": "20 ms"}]})
    sim, rows = run(scenario)
    assert (sim.rounds_done == 4).all()
    assert lists(sim.protocol.neighbours) == [[1], [0], [3], [2]]
    lost = [r for r in rows if r["delivered_s"] == ""]
    assert sim.network.messages_lost == len(lost) == 2 * 3  # rounds 2..4, both ways
    assert {(r["src"], r["dst"]) for r in lost} == {(0, 1), (1, 0)}
    assert sim.env.now > 3.0  # each of those rounds waited out the give-up
    assert sim.network.bytes_up == sim.network.bytes_down == 0
    assert sim.counters["exchanges"] == 2 * 4 + 2  # 2, 3 every round; 0, 1 only in round 1


def test_uplink_codec_applies_to_peer_messages(tiny):
    changes = {"network": {"topology": {"generator": "complete"}}, "learners": {"count": 4},
               "horizon": {"rounds": 1}}
    plain, _ = run(tiny(protocol={"name": "dpsgd"}, **changes))
    half, _ = run(tiny(protocol={"name": "dpsgd"}, compression={"uplink": {"name": "fp16"}},
                       **changes))
    assert half.network.messages == plain.network.messages == 12
    assert half.network.bytes_peer < 0.6 * plain.network.bytes_peer
    torch.testing.assert_close(half.bank.flat(), plain.bank.flat(), atol=1e-3, rtol=0)
    assert not torch.equal(half.bank.flat(), plain.bank.flat())


def test_registered_with_their_sections(tiny):
    assert PROTOCOLS["gossip"].name == "gossip" and PROTOCOLS["dpsgd"].name == "dpsgd"
    config = tiny(protocol={"name": "gossip"}).protocol
    assert (config.b, config.mode, config.hops, config.wait) == (1, "pair", 1, True)
    with pytest.raises(ScenarioError):
        tiny(protocol={"name": "gossip", "mode": "everyone"})
    with pytest.raises(ScenarioError):
        tiny(protocol={"name": "dpsgd", "hops": 0})
