"""`netfl topo` numbers checked by hand, sweep tables that tell runs apart, plot helpers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import networkx as nx
import pytest
import yaml

from netfl import sweep
from netfl.cli import main
from netfl.plots import PlotError, labels, load_run, pareto_front, plot_runs, totals
from netfl.topo_report import bottlenecks, direction_bandwidth, summarize_nodes

from .conftest import BASE, merge

PNG = b"\x89PNG"


def topo(capsys, *args: str) -> dict[str, str]:
    """Run `netfl topo` and return its printed lines as {label: value}."""
    assert main(["topo", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split(": ", 1) for line in lines)


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------- netfl topo


def test_topo_of_a_small_yaml_topology(tmp_path, capsys):
    # 0 -- 1 -- {2, 3}, 0 -- 4: a branching tree, so the learner sites are the leaves 2, 3, 4.
    path = write_yaml(tmp_path / "small.yaml", {"coordinator": 0, "links": [
        {"u": 0, "v": 1, "bandwidth": "100 Mbit/s", "latency": "1 ms"},
        {"u": 1, "v": 2, "bandwidth": "10 Mbit/s", "latency": "1 ms"},
        {"u": 1, "v": 3, "bandwidth": "50 Mbit/s", "latency": "2 ms"},
        {"u": 0, "v": 4, "latency": "5 ms"},  # netfl's default bandwidth, 100 Mbit/s
    ]})
    out = topo(capsys, str(path))
    assert out["nodes"] == "5" and out["links"] == "4"
    assert out["diameter"] == "3 hops"  # 2 -> 1 -> 0 -> 4
    assert out["latency diameter"] == "8 ms"  # 3 -> 1 -> 0 -> 4: 2 + 1 + 5 ms
    assert out["coordinator"] == "node 0"
    assert out["learners"].endswith("default learner sites: 3: 2-4")
    # routes 2: 100, 10; 3: 100, 50; 4: 100 -> bottlenecks 10, 50, 100
    spread = "min 10 Mbit/s, median 50 Mbit/s, max 100 Mbit/s"
    assert out["bottleneck up (learner -> coordinator) over 3 learner sites"] == spread
    assert out["bottleneck down (coordinator -> learner) over 3 learner sites"] == spread
    figure = tmp_path / "small_topology.png"
    assert out["figure"] == str(figure) and figure.read_bytes()[:4] == PNG


def test_topo_reads_each_direction_of_asymmetric_links(tmp_path, capsys):
    # A line 2 - 1 - 0 - 3; bandwidth is u -> v as written, reverse_bandwidth v -> u.
    path = write_yaml(tmp_path / "asym.yaml", {"coordinator": 0, "links": [
        {"u": 0, "v": 1, "bandwidth": "100 Mbit/s", "reverse_bandwidth": "20 Mbit/s",
         "latency": "1 ms"},
        {"u": 2, "v": 1, "bandwidth": "5 Mbit/s", "reverse_bandwidth": "40 Mbit/s",
         "latency": "1 ms"},
        {"u": 0, "v": 3, "bandwidth": "30 Mbit/s", "latency": "1 ms"},
    ]})
    out = topo(capsys, str(path), "--out", str(tmp_path / "fig" / "asym.png"))
    assert out["diameter"] == "3 hops" and out["latency diameter"] == "3 ms"
    # up:   1 -> 0: 20;  2 -> 1 -> 0: min(5, 20) = 5;    3 -> 0: 30
    # down: 0 -> 1: 100; 0 -> 1 -> 2: min(100, 40) = 40; 0 -> 3: 30
    assert out["bottleneck up (learner -> coordinator) over 3 learner sites"] == \
        "min 5 Mbit/s, median 20 Mbit/s, max 30 Mbit/s"
    assert out["bottleneck down (coordinator -> learner) over 3 learner sites"] == \
        "min 30 Mbit/s, median 40 Mbit/s, max 100 Mbit/s"
    assert (tmp_path / "fig" / "asym.png").read_bytes()[:4] == PNG
    assert not (tmp_path / "asym_topology.png").exists()


def test_topo_of_a_hierarchy_scenario(tmp_path, capsys):
    # 6 leaves -> 2 switches (1, 2) under root 0; leaf 3 + i hangs off switch 1 + i % 2.
    scenario = merge(BASE, {"learners": {"count": 6}, "network": {
        "topology": {"generator": "hierarchy"}, "bandwidth": "10 Mbit/s", "latency": "5 ms",
        "links": [{"u": 1, "v": 3, "bandwidth": "1 Mbit/s"},
                  {"u": 0, "v": 2, "bandwidth": "4 Mbit/s"}]}})
    path = write_yaml(tmp_path / "h.yaml", scenario)
    out = topo(capsys, str(path))
    assert out["nodes"] == "9" and out["links"] == "8"
    assert out["diameter"] == "4 hops" and out["latency diameter"] == "20 ms"
    assert out["coordinator"] == "node 0"
    assert out["learners"] == "6 on 6 nodes: 3-8"
    # leaf 3: 1; leaves 4, 6, 8 (switch 2): 4; leaves 5, 7: 10 -> median of 1,4,4,4,10,10 is 4
    spread = "min 1 Mbit/s, median 4 Mbit/s, max 10 Mbit/s"
    assert out["bottleneck up (learner -> coordinator) over 6 learners"] == spread
    assert out["bottleneck down (coordinator -> learner) over 6 learners"] == spread
    assert (tmp_path / "h_topology.png").read_bytes()[:4] == PNG
    out = topo(capsys, str(path), "--set", "learners.count=4")  # overwriting its own PNG is fine
    assert out["learners"] == "4 on 4 nodes: 3-6"


@pytest.mark.parametrize("content, args, needle", [
    (None, [], "no such topology or scenario file"),
    ({"links": [{"u": 0, "v": 1}, {"u": 2, "v": 3}]}, [], "disconnected"),
    ({"links": [{"u": 0, "v": 1}]}, ["--set", "seed=1"], "--set applies to scenario files"),
    ({"links": [{"u": 0, "v": 1}]}, ["--out", "{tmp}/notes.txt"], "ending in .png"),
    ({"links": [{"u": 0, "v": 1}]}, ["--out", "{tmp}/keep.png"], "is not a PNG"),
    ({"network": {"topology": {"generator": "ring", "n": 2}}}, [], "ring"),
])
def test_topo_user_errors_exit_2(tmp_path, capsys, content, args, needle):
    path = tmp_path / "t.yaml"
    if content is not None:
        write_yaml(path, content)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "keep.png").write_text("not an image")
    assert main(["topo", str(path), *(a.format(tmp=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "keep.png").read_text() == "not an image"


def test_routes_take_lowest_latency_then_fewest_hops():
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=100e6, latency=0.001)
    g.add_edge(1, 2, bandwidth=100e6, latency=0.001)
    g.add_edge(0, 2, bandwidth=5e6, latency=0.002)  # as fast as 0-1-2, one hop fewer
    g.add_edge(2, 3, bandwidth=50e6, latency=0.001)
    g.add_edge(0, 3, bandwidth=1e6, latency=0.01)  # slow: 3 goes through 2
    up, down = bottlenecks(g, 0, [1, 2, 3, 0])
    assert up == down == [100e6, 5e6, 5e6, float("inf")]


def test_direction_bandwidth():
    data = {"bandwidth": 10e6, "reverse_bandwidth": 2e6, "forward": "b"}
    assert direction_bandwidth(data, "b", "a") == 10e6
    assert direction_bandwidth(data, "a", "b") == 2e6
    assert direction_bandwidth({"bandwidth": 10e6, "reverse_bandwidth": 2e6}, "a", "b") == 10e6
    assert direction_bandwidth({"bandwidth": 10e6, "forward": "a"}, "b", "a") == 10e6


def test_summarize_nodes():
    assert summarize_nodes([3, 4, 5, 6, 9, 9, "x"]) == "3-6, 9, x"
    assert summarize_nodes([1, 2]) == "1, 2"
    assert summarize_nodes(list(range(0, 40, 2)), limit=3) == "0, 2, 4, ... (17 more)"


# ------------------------------------------------------------------------------ sweeps


def tiny_base(**changes):
    return merge(BASE, {"learners": {"count": 2}, "horizon": {"rounds": 2},
                        "model": {"kind": "linear", "hidden": []},
                        "eval": {"every": 1}, **changes})


def test_topology_sweep_table_has_a_column_per_swept_key(tmp_path, capsys):
    spec = {"name": "topo", "base": tiny_base(),
            "grid": {"network.topology.generator": ["star", "ring"]}}
    path = write_yaml(tmp_path / "topo.sweep.yaml", spec)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "generator" in table[0] and "sim time s" in table[0] and "t to acc s" in table[0]
    assert len(set(table[2:4])) == 2  # the two rows read apart
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["run", "protocol", "setting", "network.topology.generator"]
    assert [r["network.topology.generator"] for r in rows] == ["star", "ring"]
    assert {"sim_time_s", "time_to_accuracy_s", "cumulative_loss"} <= set(rows[0])
    assert all(float(r["sim_time_s"]) > 0 and float(r["cumulative_loss"]) > 0 for r in rows)

    runs = [str(out / r["run"]) for r in rows]
    written = plot_runs(runs, str(tmp_path / "fig"))
    assert [p.name for p in written[-2:]] == ["tradeoff.png", "time_accuracy.png"]
    assert all(p.read_bytes()[:4] == PNG for p in written)
    names = labels([load_run(r) for r in runs])
    assert names[0] != names[1] and names[0].endswith("topology=star")


def test_swept_keys_and_compact_values():
    spec = {"name": "s", "base": tiny_base(),
            "grid": {"network.topology": [{"generator": "hierarchy"},
                                          {"generator": "ring", "n": 9}]},
            "runs": [{"protocol": {"name": "periodic", "b": 2}, "learners": {"count": 2}},
                     {"protocol": {"name": "nosync"}, "learners": {"count": 3}}]}
    scenarios = sweep.expand(spec)
    assert sweep.swept_keys(scenarios) == ["network.topology", "learners.count"]
    rows = [sweep.table_row(s, {"cumulative_loss": 1.0, "bytes_total": 2}, ["network.topology",
                                                                         "learners.count"])
            for s in scenarios]
    assert [r["network.topology"] for r in rows] == ["hierarchy", "generator=ring n=9"] * 2
    assert [r["learners.count"] for r in rows] == ["2", "2", "3", "3"]
    assert len({line for line in sweep.format_table(rows).splitlines()[2:]}) == 4
    # several scenario files (no sweep file): the keys whose values differ
    assert sweep.swept_keys(list(scenarios[:2])) == ["network.topology.generator",
                                                      "network.topology.n"]


# ------------------------------------------------------------------------------- plots


def test_pareto_front_on_hand_made_points():
    points = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 1), (0.5, 9), (4, 2)]
    # (3, 4) is beaten by (2, 3); (5, 1) and (4, 2) by (4, 1); equal points both stay
    assert pareto_front(points) == [6, 0, 1, 4, 3]
    assert pareto_front([]) == [] and pareto_front([(1, 1)]) == [0]


def fake_run(tmp_path: Path, name: str, topology: str, seed: int = 0) -> dict:
    scenario = {"name": "x", "seed": seed, "protocol": {"name": "periodic", "b": 5, "wait": True},
                "network": {"topology": {"generator": topology, "n": None}},
                "output": {"dir": None}}
    return {"dir": tmp_path / name, "scenario": scenario, "summary": {}, "rows": []}


def test_labels_are_distinct(tmp_path):
    runs = [fake_run(tmp_path, "r1", "star"), fake_run(tmp_path, "r2", "star"),
            fake_run(tmp_path, "r3", "ring"), fake_run(tmp_path / "elsewhere", "r3", "ring")]
    runs[1]["scenario"]["protocol"]["b"] = 4
    assert labels(runs) == [
        "periodic b=5, topology=star",
        "periodic b=4",
        "periodic b=5, topology=ring, " + str(tmp_path / "r3"),
        "periodic b=5, topology=ring, " + str(tmp_path / "elsewhere" / "r3"),
    ]
    assert labels([fake_run(tmp_path, "a", "star"), fake_run(tmp_path, "b", "star", seed=1)]) \
        == ["periodic b=5, seed=0", "periodic b=5, seed=1"]
    assert labels([fake_run(tmp_path, "a", "star"), fake_run(tmp_path, "b", "star")]) \
        == ["periodic b=5, a", "periodic b=5, b"]


def write_run(path: Path, summary_text: str | None) -> Path:
    path.mkdir()
    (path / "metrics.csv").write_text(
        "round,sim_time_s,cumulative_loss,bytes_total,acc_mean_model\n"
        "1,0.5,5.0,100,0.5\n"
        "2,1.0,7.5,200,0.75\n"
        "3,1.5,9")  # a last row cut short by a crash
    if summary_text is not None:
        (path / "summary.json").write_text(summary_text)
    return path


def test_totals_come_from_the_summary(tmp_path, capsys):
    run = load_run(write_run(tmp_path / "a", json.dumps({"bytes_total": 260,
                                                         "cumulative_loss": 7.5})))
    assert len(run["rows"]) == 2
    assert totals(run) == (260.0, 7.5)  # the final average's 60 bytes came after round 2
    assert totals(load_run(write_run(tmp_path / "b", None))) == (200.0, 7.5)
    broken = write_run(tmp_path / "c", '{"status": "compl')
    with pytest.raises(PlotError, match=r"summary.json: not valid JSON"):
        load_run(broken)
    assert main(["plot", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and "Traceback" not in err
