"""Unreliable clients: availability models, offline endpoints, protocols that cope, devices."""

from __future__ import annotations

import math
import pickle

import networkx as nx
import numpy as np
import pytest
import simpy

from netfl.build import build
from netfl.scenario import ScenarioError
from netfl.sim import availability as av
from netfl.sim.devices import DeviceTraceError, assign, read_devices
from netfl.sim.network import COORDINATOR, Message, Network
from tools import convert_fedscale_trace as fedscale

C = COORDINATOR


# -- intervals and traces -------------------------------------------------------------------------


def test_intervals_wrap_with_their_period():
    iv = av.Intervals(np.array([1.0, 5.0]), np.array([3.0, 10.0]), period=10.0)
    assert [iv.state_at(t) for t in (0, 1, 2.9, 3, 5, 9.9, 10, 11)] == [
        False, True, True, False, True, True, False, True]
    assert [iv.next_change(t) for t in (0, 1, 3, 5, 9.5)] == [1.0, 3.0, 5.0, 10.0, 10.0]
    assert iv.next_change(10.0) == 11.0
    always = av.Intervals(np.array([0.0]), np.array([10.0]), period=10.0)
    assert always.next_change(3.0) == math.inf  # online across the wrap: never changes
    once = av.Intervals(np.array([2.0]), np.array([4.0]), period=None)
    assert once.next_change(3.0) == 4.0 and once.next_change(4.0) == math.inf


def test_read_trace_merges_overlaps_and_names_bad_lines(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("learner,start_s,end_s,period_s\n0,0,5,20\n0,4,8,20\n1,10,12,20\n")
    trace = av.read_trace(path)
    starts, ends = av.merge(trace[0][0])
    assert starts.tolist() == [0.0] and ends.tolist() == [8.0] and trace[0][1] == 20.0
    ivs = av.trace_intervals(trace, 3, wrap=True, assign="id", rng=np.random.default_rng(0))
    assert [iv.period for iv in ivs] == [20.0, 20.0, 20.0]
    assert ivs[2].starts.tolist() == [0.0]  # learner 2 cycles back to client 0
    bad = tmp_path / "bad.csv"
    bad.write_text("learner,start_s,end_s\n0,5,3\n")
    with pytest.raises(av.TraceError, match=r"bad.csv, line 2: need 0 <= start_s < end_s"):
        av.read_trace(bad)
    with pytest.raises(av.TraceError, match="no such availability trace"):
        av.read_trace(tmp_path / "missing.csv")


def test_markov_chain_spends_the_offline_fraction_offline():
    """Time-averaged offline share of a two-state chain -> mean_off / (mean_on + mean_off)."""
    m, mean_on, mean_off = 400, 7.0, 3.0
    env = simpy.Environment()
    initial, step = av.markov(mean_on, mean_off, m, np.random.default_rng(1))
    offline_time = np.zeros(m)
    since = np.zeros(m)
    state = initial.copy()

    def setter(learners, online):
        now = env.now
        if online:
            offline_time[learners] += now - since[learners]
        else:
            since[learners] = now
        state[learners] = online

    proc = av.Availability(env, m, initial, step, setter)
    proc.start()
    horizon = 400.0
    env.run(until=horizon)
    offline_time[~state] += horizon - since[~state]
    share = offline_time.sum() / (m * horizon)
    assert share == pytest.approx(mean_off / (mean_on + mean_off), abs=0.01)
    assert proc.changes > 0.9 * m * horizon / (mean_on + mean_off) * 2 * 0.9


# -- the network: offline endpoints ------------------------------------------------------------


def _net(model: str = "flow"):
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=8e6, latency=0.0)  # 1 MB/s
    env = simpy.Environment()
    lost: list[Message] = []
    net = Network(env, g, {0: 0, C: 1}, rng=np.random.default_rng(0), model=model,
                  on_lost=lost.append)
    return env, net, lost


@pytest.mark.parametrize("model", ["flow", "store_and_forward"])
def test_going_offline_cuts_a_transfer_and_loses_it(model):
    env, net, lost = _net(model)
    msg = Message("model", 0, C, 1, None, 1_000_000)  # 1 s on the link
    done = net.send(msg)
    env.timeout(0.25).callbacks.append(lambda _: net.set_endpoint(0, False))
    env.run()
    assert not done.triggered and lost == [msg]
    assert net.messages_lost == 1 and net.in_flight == 0
    assert net.bytes_up == 1_000_000  # the sender's counters keep the attempt
    link_bytes = net.link_bytes.get((0, 1), 0)
    if model == "flow":
        assert link_bytes == 250_000  # the link kept the quarter that moved
    else:
        assert link_bytes == 1_000_000  # whole messages per hop


def test_messages_to_an_offline_endpoint_never_leave_and_are_counted():
    env, net, lost = _net()
    net.set_endpoint(0, False)
    msg = Message("broadcast", C, 0, 1, None, 500)
    net.send(msg)
    env.run()
    assert lost == [msg] and net.messages_lost == 1 and net.messages == 1
    assert net.bytes_total == 0  # the connection never opened
    net.set_endpoint(0, True)
    again = Message("broadcast", C, 0, 2, None, 500)
    done = net.send(again)
    env.run()
    assert done.triggered and net.bytes_down == 500


# -- the engine and protocols ---------------------------------------------------------------------

UNRELIABLE = {"kind": "markov", "mean_offline": 0.06, "offline_fraction": 0.3}
FAILING = [{"links": "all", "mtbf": 2.0, "mttr": 0.2}]
PROTOCOLS = [
    ({"name": "periodic", "b": 2}, "star"),
    ({"name": "continuous"}, "star"),
    ({"name": "fedavg", "b": 2, "fraction": 0.5, "overcommit": 1.3}, "star"),
    ({"name": "scaffold", "b": 2, "fraction": 0.5}, "star"),
    ({"name": "dynamic", "delta": 0.05}, "star"),
    ({"name": "nosync"}, "star"),
    ({"name": "fedasync", "b": 2}, "star"),
    ({"name": "fedbuff", "b": 2, "K": 3}, "star"),
    ({"name": "gossip"}, "ring"),
    ({"name": "dpsgd"}, "ring"),
    ({"name": "hierarchical", "b": 2}, "hierarchy"),
]


@pytest.mark.parametrize(("protocol", "topology"), PROTOCOLS,
                         ids=[p["name"] for p, _ in PROTOCOLS])
def test_every_protocol_finishes_its_horizon_with_30_percent_offline_and_failing_links(
        tiny, protocol, topology):
    sc = tiny(learners={"count": 8, "compute_time": "20 ms", "availability": UNRELIABLE},
              protocol=protocol, horizon={"rounds": 12},
              network={"topology": {"generator": topology}, "failures": FAILING,
                       "give_up": 1.0})
    sim = build(sc).simulation
    sim.run()
    assert sim.rows_emitted == 12
    assert sim.finished.all()
    assert sim.dropouts >= 8  # learners went offline, again and again


def test_offline_learners_do_not_train_and_rejoin_with_the_global_model(tiny):
    """Learner 0 is offline for a window: it takes no step there, its round's upload is
    dropped, and on return it downloads the last average (one more broadcast)."""
    window = {"kind": "schedule", "offline": [{"learners": [0], "at": 0.055, "for": 0.1}]}
    sc = tiny(learners={"count": 4, "compute_time": "10 ms", "availability": window},
              protocol={"name": "periodic", "b": 2}, horizon={"rounds": 30})
    sim = build(sc).simulation
    steps_while_away = []

    def watch():
        yield sim.env.timeout(0.06)
        before = int(sim.rounds_done[0])
        yield sim.env.timeout(0.08)
        steps_while_away.append(int(sim.rounds_done[0]) - before)

    sim.env.process(watch())
    sim.run()
    assert steps_while_away == [0]
    c = sim.counters
    assert c["selected"] == 4 * 15 and c["dropped"] >= 1
    assert c["completed"] + c["dropped"] + c["messages_late"] >= c["selected"] - 4
    protocol = sim.protocol
    # every sync broadcasts to 4 learners; the rejoin adds one download
    assert sim.network.messages_by_kind["broadcast"] == 4 * c["syncs"] + 1
    assert protocol.received[0] == protocol.last_broadcast[2]


def test_overcommit_averages_the_first_models_and_counts_the_rest_late(tiny):
    sc = tiny(learners={"count": 10, "compute_time": {"dist": "uniform", "low": 0.01,
                                                      "high": 0.05}},
              protocol={"name": "fedavg", "b": 2, "fraction": 0.4, "overcommit": 1.5},
              horizon={"rounds": 10})
    sim = build(sc).simulation
    sim.run()
    c = sim.counters
    assert sim.protocol.count == 4 and sim.protocol.chosen == 6
    assert c["selected"] == 6 * 5 and c["syncs"] == 5
    assert c["completed"] == 4 * 5  # the first C*m models close each round
    assert c["messages_late"] == 2 * 5  # the over-committed rest arrive late


def test_a_deadline_closes_rounds_that_wait_for_a_straggler(tiny):
    sc = tiny(learners={"count": 4, "compute_time": {"dist": "uniform", "low": 0.01,
                                                     "high": 0.2}},
              protocol={"name": "periodic", "b": 2, "deadline": 0.02, "wait": False},
              horizon={"rounds": 10})
    sim = build(sc).simulation
    sim.run()
    c = sim.counters
    assert c["completed"] < c["selected"] and c["messages_late"] > 0


def test_serial_refuses_availability(tiny):
    sc = tiny(learners={"availability": UNRELIABLE}, protocol={"name": "serial"})
    with pytest.raises(ScenarioError, match="learners.availability: the serial protocol"):
        build(sc)


def test_schedule_naming_a_missing_learner_is_refused(tiny):
    with pytest.raises(ScenarioError, match=r"availability.offline\[0\].learners: learner 9"):
        tiny(learners={"availability": {"kind": "schedule",
                                        "offline": [{"learners": [9], "at": 1}]}})


def test_a_trace_file_drives_availability(tiny, tmp_path):
    trace = tmp_path / "avail.csv"
    trace.write_text("learner,start_s,end_s,period_s\n0,0,0.05,0.1\n1,0,0.1,0.1\n"
                     "2,0.02,0.1,0.1\n3,0,0.1,0.1\n")
    sc = tiny(learners={"availability": {"kind": "trace", "file": str(trace)}},
              horizon={"rounds": 10})
    sim = build(sc).simulation
    sim.run()
    assert sim.rows_emitted == 10 and sim.counters["dropped"] > 0
    with pytest.raises(ScenarioError, match="learners.availability.file: .*no such"):
        build(tiny(learners={"availability": {"kind": "trace", "file": "nope.csv"}}))


# -- devices -----------------------------------------------------------------------------------


def test_device_trace_sets_step_times_and_access_links(tiny, tmp_path):
    path = tmp_path / "devices.csv"
    path.write_text("learner,steps_per_s,uplink_bps,downlink_bps\n"
                    "0,100,1e6,4e6\n1,50,2e6,8e6\n2,25,,\n3,10,5e5,1e6\n")
    sc = tiny(learners={"devices": {"file": str(path), "assign": "id"}, "compute_time": 0.01})
    built = build(sc)
    sim = built.simulation
    assert sim.tick == pytest.approx(0.01)
    assert sim.durations.tolist() == [1, 2, 4, 10]
    links = sim.network._links
    hub = sim.network.node_of(C)
    up0 = links[sim.network.node_of(0), hub]
    down0 = links[hub, sim.network.node_of(0)]
    assert (up0.bandwidth, down0.bandwidth) == (1e6, 4e6)
    two = links[sim.network.node_of(2), hub]
    assert two.bandwidth == pytest.approx(1e7)  # left out: the scenario's 10 Mbit/s


def test_device_assignment_is_seeded_and_errors_name_the_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("learner,steps_per_s\n0,1\n1,2\n2,3\n")
    _, table = read_devices(path)
    a = assign(table, 10, "random", np.random.default_rng(5)).steps_per_s
    b = assign(table, 10, "random", np.random.default_rng(5)).steps_per_s
    assert a.tolist() == b.tolist() and set(a.tolist()) <= {1.0, 2.0, 3.0}
    path.write_text("learner,steps_per_s\n0,fast\n")
    with pytest.raises(DeviceTraceError, match=r"d.csv, line 2: steps_per_s must be a number"):
        read_devices(path)


# -- FedScale's layouts ------------------------------------------------------------------------


def test_fedscale_behave_trace_converts_to_online_intervals(tmp_path):
    source = tmp_path / "client_behave_trace"
    source.write_bytes(pickle.dumps({
        2: {"active": [0, 50], "inactive": [20, 80], "finish_time": 100, "duration": 100},
        1: {"active": [10], "inactive": [30], "finish_time": 40, "duration": 40},
    }))
    out = tmp_path / "avail.csv"
    assert fedscale.main(["behave", str(source), str(out)]) == 0
    trace = av.read_trace(out)
    assert trace[1] == ([(10.0, 30.0)], 40.0)
    assert trace[2] == ([(0.0, 20.0), (50.0, 80.0)], 100.0)


def test_fedscale_device_capacity_converts_to_speeds_and_bandwidth(tmp_path):
    source = tmp_path / "client_device_capacity"
    source.write_bytes(pickle.dumps({1: {"computation": 20.0, "communication": 500.0}}))
    out = tmp_path / "devices.csv"
    assert fedscale.main(["devices", str(source), str(out), "--batch-size", "10"]) == 0
    _, table = read_devices(out)
    # FedScale: a step is 3 x batch x computation ms = 0.6 s; 500 kbit/s both ways
    assert table.steps_per_s.tolist() == pytest.approx([1 / 0.6])
    assert table.uplink_bps.tolist() == [5e5] and table.downlink_bps.tolist() == [5e5]
    source.write_bytes(pickle.dumps([1, 2]))
    assert fedscale.main(["devices", str(source), str(out)]) == 2


def test_dynamic_deadline_balances_without_a_slow_reply(tiny):
    """One learner's link is 1000x slower: with a deadline the coordinator balances the
    replies that came, the slow replies are late and their learner carries on."""
    slow = [{"u": 0, "v": 1, "bandwidth": "10 kbit/s"}]
    base = dict(learners={"count": 4, "compute_time": "10 ms"}, horizon={"rounds": 30},
                network={"links": slow},
                protocol={"name": "dynamic", "delta": 0.01, "augmentation": "all"})
    waited = build(tiny(**base)).simulation
    waited.run()
    base["protocol"] = {**base["protocol"], "deadline": 0.05}
    hurried = build(tiny(**base)).simulation
    hurried.run()
    assert hurried.rows_emitted == waited.rows_emitted == 30
    assert hurried.counters["messages_late"] > 0 and waited.counters["messages_late"] == 0
    assert not hurried.blocked.any()  # the late learners were let go
