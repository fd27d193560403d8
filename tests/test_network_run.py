"""The network through whole runs: time horizon, failures, protocols that cope, outputs."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from netfl.build import build
from netfl.cli import main
from netfl.run import RunError, run
from netfl.scenario import ScenarioError, from_dict

from .conftest import BASE, merge


def rows(path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def scenario(**changes):
    return from_dict(merge(BASE, changes))


def test_time_horizon_ends_the_run_at_that_instant_whatever_is_in_flight(tmp_path):
    # the case, scaled down: a slow ring whose syncs outlast the horizon
    s = scenario(learners={"count": 10}, network={"topology": {"generator": "ring"},
                                                 "bandwidth": "100 kbit/s"},
                 horizon={"sim_time": "3 s"}, output={"messages": True})
    summary = run(s, str(tmp_path / "run"), progress=False)
    assert summary["status"] == "completed"
    assert summary["sim_time_s"] == pytest.approx(3.0)
    messages = rows(tmp_path / "run" / "messages.csv")
    assert len(messages) == summary["messages"]
    undelivered = [m for m in messages if m["delivered_s"] == ""]
    assert undelivered  # cut by the horizon, still recorded
    assert all(float(m["delivered_s"]) <= 3.0 for m in messages if m["delivered_s"])


def test_messages_csv_has_one_row_per_message_with_times_and_hops(tmp_path):
    s = scenario(output={"messages": True})
    summary = run(s, str(tmp_path / "run"), progress=False)
    messages = rows(tmp_path / "run" / "messages.csv")
    assert list(messages[0]) == ["kind", "src", "dst", "round", "bytes", "sent_s",
                                 "delivered_s", "hops", "attempts"]
    assert len(messages) == summary["messages"] == 32  # 4 syncs x (4 up + 4 down)
    assert sum(int(m["bytes"]) for m in messages) == summary["bytes_total"]
    assert {m["hops"] for m in messages} == {"1"}  # a star: leaf to hub
    up = [m for m in messages if m["dst"] == "coordinator"]
    # four 10 Mbit/s access links into the hub, one flow each: latency + size / bandwidth
    size = int(up[0]["bytes"])
    delay = float(up[0]["delivered_s"]) - float(up[0]["sent_s"])
    assert delay == pytest.approx(0.005 + size * 8 / 1e7, rel=1e-6)


def test_links_csv_and_the_most_loaded_link(tmp_path):
    s = scenario(network={"tiers": {"access": {"reverse_bandwidth": "1 Mbit/s"}}})
    summary = run(s, str(tmp_path / "run"), progress=False)
    links = rows(tmp_path / "run" / "links.csv")
    assert list(links[0])[:7] == ["src_node", "dst_node", "bytes", "busy_s", "utilisation",
                                  "peak_flows", "delay_share"]
    assert len(links) == 2 * 4  # both directions of the four access links
    uplinks = [row for row in links if row["dst_node"] == "0"]
    assert {float(row["bandwidth"]) for row in uplinks} == {1e6}
    top = summary["most_loaded_link"]
    assert top["link"].endswith("->0")  # the slow uplinks are the busiest
    assert sum(float(row["delay_share"]) for row in links) == pytest.approx(1.0)


def test_time_to_accuracy_is_the_first_evaluation_reaching_the_target(tmp_path):
    s = scenario(horizon={"rounds": 40}, eval={"every": 10, "target_accuracy": 0.3})
    summary = run(s, str(tmp_path / "run"), progress=False)
    evaluated = [r for r in rows(tmp_path / "run" / "metrics.csv") if r["acc_mean_model"]]
    reached = [float(r["sim_time_s"]) for r in evaluated if float(r["acc_mean_model"]) >= 0.3]
    assert reached, "the tiny scenario should reach 30% accuracy"
    assert summary["time_to_accuracy_s"] == pytest.approx(reached[0])
    never = scenario(eval={"every": 10, "target_accuracy": 1.0})
    assert run(never, str(tmp_path / "never"), progress=False)["time_to_accuracy_s"] is None


def test_scheduled_link_failure_is_written_to_events_and_the_run_carries_on(tmp_path):
    s = scenario(network={"failures": [{"link": [0, 1], "at": "0.03 s", "for": "0.5 s"}]})
    summary = run(s, str(tmp_path / "run"), progress=False)
    assert summary["status"] == "completed" and summary["rounds"] == 20
    events = rows(tmp_path / "run" / "events.csv")
    assert [(e["event"], e["element"]) for e in events] == [("link_down", "0-1"),
                                                            ("link_up", "0-1")]
    assert float(events[1]["sim_time_s"]) == pytest.approx(0.53)


PROTOCOLS = [
    {"name": "periodic", "b": 5}, {"name": "continuous"}, {"name": "fedavg", "b": 5},
    {"name": "dynamic", "delta": 0.1}, {"name": "nosync"}, {"name": "serial"},
]


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p["name"])
def test_every_protocol_finishes_when_a_learner_is_cut_off_for_good(tmp_path, protocol):
    # learner 0's access link fails at 20 ms and never returns: its messages are given up
    s = scenario(protocol=protocol, network={
        "failures": [{"link": [0, 1], "at": "0.02 s"}], "give_up": "1 s"})
    summary = run(s, str(tmp_path / "run"), progress=False)
    assert summary["status"] == "completed" and summary["rounds"] == 20
    if protocol["name"] != "nosync":
        assert summary["messages_lost"] > 0


@pytest.mark.parametrize("protocol", PROTOCOLS[:4], ids=lambda p: p["name"])
def test_random_failures_are_seeded_and_never_deadlock(tmp_path, protocol):
    changes = dict(protocol=protocol, network={
        "failures": [{"links": "all", "mtbf": "0.2 s", "mttr": "0.05 s"}], "give_up": "0.5 s"})
    first = run(scenario(**changes), str(tmp_path / "a"), progress=False)
    run(scenario(**changes), str(tmp_path / "b"), progress=False)
    assert first["status"] == "completed" and first["rounds"] == 20
    downs = [e for e in rows(tmp_path / "a" / "events.csv") if e["event"] == "link_down"]
    assert downs
    assert rows(tmp_path / "a" / "events.csv") == rows(tmp_path / "b" / "events.csv")
    assert rows(tmp_path / "a" / "metrics.csv") == rows(tmp_path / "b" / "metrics.csv")


def test_deadline_averages_what_arrived_and_counts_late_models(tmp_path):
    # learner 0 sits behind a 50 kbit/s link: with a 50 ms deadline its model is always late
    s = scenario(protocol={"name": "periodic", "b": 5, "deadline": "50 ms", "wait": False},
                 network={"links": [{"u": 0, "v": 1, "bandwidth": "50 kbit/s"}]})
    summary = run(s, str(tmp_path / "run"), progress=False)
    assert summary["syncs"] == 4 and summary["messages_late"] == 4


def test_a_protocol_waiting_forever_is_an_error_with_a_message_and_a_summary(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"network": {
        "failures": [{"link": [0, 1], "at": "0.02 s"}], "give_up": None}})))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "deadlock" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "deadlock" in summary["error"]
    with pytest.raises(RunError):
        run(from_dict(yaml.safe_load(path.read_text())), str(tmp_path / "again"),
            progress=False)


@pytest.mark.parametrize("failure, needle", [
    ({"link": [0, 7], "at": 1}, "network.failures[0]: link [0, 7]: no such link"),
    ({"node": 42, "at": 1}, "network.failures[0]: node 42"),
    ({"links": "core", "mtbf": 1, "mttr": 1}, "no link of this topology has tier 'core'"),
])
def test_failures_naming_what_is_not_there_are_user_errors(failure, needle):
    with pytest.raises(ScenarioError) as info:
        build(scenario(network={"failures": [failure]}))
    assert needle in str(info.value)


@pytest.mark.parametrize("network, needle", [
    ({"failures": [{"link": [0, 1]}]}, "needs at:"),
    ({"failures": [{"links": "all", "mtbf": 1}]}, "need mtbf and mttr"),
    ({"failures": [{"link": [0, 1], "node": 1, "at": 1}]}, "exactly one of"),
    ({"model": "store_and_forward", "failures": [{"link": [0, 1], "at": 1}]}, "model: flow"),
    ({"model": "store_and_forward", "tcp_window": "64 KiB"}, "model: flow"),
    ({"model": "packets"}, "network.model"),
])
def test_network_schema_errors_name_the_key(network, needle):
    with pytest.raises(ScenarioError) as info:
        scenario(network=network)
    assert needle in str(info.value) and "network" in str(info.value)


def test_store_and_forward_stays_available_and_differs_from_flow(tmp_path):
    line = {"topology": {"generator": "line"}}
    flow = run(scenario(network=line), str(tmp_path / "flow"), progress=False)
    saf = run(scenario(network={**line, "model": "store_and_forward"}), str(tmp_path / "saf"),
              progress=False)
    assert flow["bytes_total"] == saf["bytes_total"]
    assert saf["sim_time_s"] > flow["sim_time_s"]  # multi-hop: no pipelining per hop


def test_validate_checks_the_network_and_its_failures(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"network": {
        "failures": [{"link": [2, 3], "at": 1}]}})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "network.failures[0]: link [2, 3]: no such link" in err and "Traceback" not in err
