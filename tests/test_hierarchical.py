"""Hierarchical averaging (HierFAVG): groups, the two-tier schedule, bytes per tier, losses."""

from __future__ import annotations

import json

import pytest
import torch

from netfl.build import build
from netfl.observers import Observer
from netfl.run import run
from netfl.scenario import ScenarioError
from netfl.sim import wire


def hierarchy(switches: int) -> dict:
    return {"topology": {"generator": "hierarchy", "params": {"switches": switches}}}


def hier(tiny, *, m=4, switches=3, b=2, b_global=2, rounds=8, network=None, **protocol):
    return tiny(learners={"count": m}, network={**hierarchy(switches), **(network or {})},
                protocol={"name": "hierarchical", "b": b, "b_global": b_global, **protocol},
                horizon={"rounds": rounds})


def run_sim(scenario, capture=()):
    """Run; returns the simulation, its metrics rows and the models just before the
    synchronizations of the rounds in ``capture``."""
    rows: list[dict] = []
    before: dict[int, torch.Tensor] = {}

    class Capture(Observer):
        def on_round(self, s, row):
            rows.append(row)
            if row["round"] in capture:
                before[row["round"]] = s.bank.flat().clone()

    sim = build(scenario, observers=[Capture()]).simulation
    sim.run()
    return sim, rows, before


def model_size(sim) -> int:
    return wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params


def test_default_aggregators_are_the_switches_of_a_hierarchy(tiny):
    # 3 switches (nodes 1-3), leaves 4-7: leaf 4 + i hangs off switch 1 + i % 3
    sim = build(hier(tiny)).simulation
    assert sim.protocol.nodes == [1, 2, 3]
    assert sim.protocol.group_of.tolist() == [0, 1, 2, 0]
    assert [g.tolist() for g in sim.protocol.groups] == [[0, 3], [1], [2]]
    assert {k: v for k, v in sim.network.placement.items() if isinstance(k, str)} == {
        "coordinator": 0, "edge:1": 1, "edge:2": 2, "edge:3": 3}


def test_on_a_star_every_learner_is_in_the_coordinators_own_group(tiny):
    sim = build(tiny(protocol={"name": "hierarchical"})).simulation
    assert sim.protocol.nodes == [0] and sim.protocol.group_of.tolist() == [0, 0, 0, 0]


def test_explicit_edges_first_listed_node_on_the_route_else_the_coordinator(tiny):
    sim = build(hier(tiny, edges=[1, 5])).simulation
    # learner 0 (leaf 4) -> switch 1; learner 1 sits on node 5 itself; learner 2 (leaf 6,
    # switch 3 unlisted) -> the coordinator's node 0; learner 3 (leaf 7) -> switch 1
    assert sim.protocol.nodes == [0, 1, 5]
    assert sim.protocol.group_of.tolist() == [1, 2, 0, 1]


@pytest.mark.parametrize("changes, needle", [
    ({"edges": [1, 99]}, "protocol.edges: node 99"),
    ({"b_global": 0}, "b_global"),
])
def test_bad_settings_are_user_errors(tiny, changes, needle):
    with pytest.raises(ScenarioError, match=needle):
        build(hier(tiny, **changes))


def test_codecs_are_refused(tiny):
    s = tiny(protocol={"name": "hierarchical"},
             compression={"uplink": {"name": "randk", "k": 8}})
    with pytest.raises(ScenarioError, match="compression: the hierarchical protocol"):
        build(s)


def test_an_edge_round_averages_each_group_and_a_cloud_round_everyone(tiny):
    # 5 learners, 2 switches: groups {0, 2, 4} and {1, 3} (unequal sizes)
    edge, _, before = run_sim(hier(tiny, m=5, switches=2, rounds=2), capture=(2,))
    models = edge.bank.flat()
    for group in ([0, 2, 4], [1, 3]):
        mean = before[2][group].mean(dim=0)
        for learner in group:
            torch.testing.assert_close(models[learner], mean, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(models[0], models[1])
    assert (edge.counters["edge_syncs"], edge.counters["cloud_syncs"]) == (2, 0)

    cloud, _, before = run_sim(hier(tiny, m=5, switches=2, rounds=4), capture=(4,))
    mean = before[4].mean(dim=0)  # the weighted mean of group means is everyone's mean
    for model in cloud.bank.flat():
        torch.testing.assert_close(model, mean, rtol=1e-5, atol=1e-6)
    assert cloud.bank.divergence() == pytest.approx(0.0, abs=1e-12)
    assert cloud.counters["syncs"] == cloud.counters["cloud_syncs"] == 1


def test_only_cloud_rounds_is_periodic_averaging(tiny):
    s = hier(tiny, m=5, switches=2, b=2, b_global=1, rounds=8)
    hsim, hrows, _ = run_sim(s)
    periodic = tiny(learners={"count": 5}, network=hierarchy(2),
                    protocol={"name": "periodic", "b": 2}, horizon={"rounds": 8})
    psim, prows, _ = run_sim(periodic)
    assert len(hrows) == len(prows) == 8
    for h, p in zip(hrows, prows):
        assert h["loss"] == pytest.approx(p["loss"], rel=1e-5)
    assert h["acc_mean_model"] == pytest.approx(p["acc_mean_model"], abs=1e-12)
    torch.testing.assert_close(hsim.bank.flat(), psim.bank.flat(), rtol=1e-4, atol=1e-5)
    assert hsim.counters["syncs"] == psim.counters["syncs"] == 4
    assert hsim.counters["edge_syncs"] == 0


def test_messages_and_bytes_per_kind_and_tier(tiny):
    # rounds 2, 6: edge syncs; 4, 8: cloud syncs; 5 learners in 2 groups
    sim, rows, _ = run_sim(hier(tiny, m=5, switches=2, rounds=8))
    size = model_size(sim)
    net = sim.network
    assert net.messages_by_kind == {"edge_model": 4 * 5, "edge_avg": 4 * 5,
                                    "cloud_model": 2 * 2, "cloud_avg": 2 * 2}
    assert net.bytes_by_kind == {"edge_model": 20 * size, "edge_avg": 20 * size,
                                 "cloud_model": 4 * (size + 4), "cloud_avg": 4 * size}
    assert net.bytes_up == net.bytes_by_kind["cloud_model"]  # only aggregators reach the root
    assert net.bytes_down == net.bytes_by_kind["cloud_avg"]
    assert net.bytes_peer == 40 * size
    counters = ("edge_syncs", "cloud_syncs", "syncs")
    assert [sim.counters[k] for k in counters] == [4, 2, 2]
    last = rows[-1]  # written as round 8 ends: its uploads are sent, its cloud sync not yet
    assert [last[k] for k in counters] == [4, 1, 1]
    assert last["bytes_edge_model"] == 20 * size and last["bytes_edge_avg"] == 15 * size
    assert last["bytes_cloud_model"] == 2 * (size + 4) and last["bytes_cloud_avg"] == 2 * size


def test_the_coordinators_own_aggregator_is_charged_but_takes_no_time(tiny):
    # a star: one aggregator on the hub; learner <-> aggregator is one hop, cloud zero hops
    sim, _, _ = run_sim(tiny(protocol={"name": "hierarchical", "b": 5, "b_global": 2},
                             horizon={"rounds": 10}))
    size = model_size(sim)
    assert sim.network.messages_by_kind == {"edge_model": 8, "edge_avg": 8,
                                            "cloud_model": 1, "cloud_avg": 1}
    assert sim.network.bytes_up == size + 4 and sim.network.bytes_down == size
    periodic, _, _ = run_sim(tiny(protocol={"name": "periodic", "b": 5}, horizon={"rounds": 10}))
    assert sim.env.now == pytest.approx(periodic.env.now, rel=1e-12)  # two hops per sync
    assert sim.network.bytes_peer == periodic.network.bytes_total


def test_runs_are_deterministic(tiny):
    first, rows_a, _ = run_sim(hier(tiny, rounds=8))
    second, rows_b, _ = run_sim(hier(tiny, rounds=8))
    assert rows_a == rows_b
    assert torch.equal(first.bank.flat(), second.bank.flat())


@pytest.mark.parametrize("link, lost, edge_syncs, cut", [
    ([4, 1], 8, 6, [0]),      # learner 0's access link: its uploads and averages are lost
    ([5, 2], 4, 4, [1]),      # the only learner of switch 2: that aggregator gets nothing
    ([0, 1], 4, 6, [0, 3]),   # switch 1's core link: its cloud model and cloud average lost
], ids=["access", "lonely-group", "core"])
def test_a_link_failed_for_good_is_given_up_and_the_run_completes(tiny, link, lost, edge_syncs,
                                                                  cut):
    s = hier(tiny, network={"failures": [{"link": link, "at": "0.015 s"}], "give_up": "1 s"})
    sim, rows, _ = run_sim(s)
    assert (sim.rounds_done == 8).all() and len(rows) == 8
    assert sim.network.messages_lost == lost
    assert sim.counters["edge_syncs"] == edge_syncs and sim.counters["cloud_syncs"] == 2
    models = sim.bank.flat()
    reached = [i for i in range(4) if i not in cut]
    for i in reached[1:]:  # the last cloud average reached everyone else
        torch.testing.assert_close(models[i], models[reached[0]], rtol=0, atol=0)
    for i in cut:
        assert not torch.allclose(models[i], models[reached[0]])


def test_a_run_writes_the_tier_columns_and_groups(tmp_path, tiny):
    summary = run(hier(tiny, rounds=8), str(tmp_path / "run"), progress=False)
    assert summary["status"] == "completed" and summary["syncs"] == 2
    assert summary["edge_aggregators"] == {"1": 2, "2": 1, "3": 1}
    assert (summary["edge_syncs"], summary["cloud_syncs"]) == (6, 2)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cloud_syncs"] == 2
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"edge_syncs", "cloud_syncs", "bytes_edge_model", "bytes_edge_avg",
            "bytes_cloud_model", "bytes_cloud_avg"} <= set(header)
