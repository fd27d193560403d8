"""Batched messages (Simulation.send_many, Network.send_many) give the per-message results.

Each case runs the same scenario twice, once with the star protocols' batched uploads and
broadcasts (the default) and once with one send and one callback per message, and compares
every file of the run directory (metrics, messages, links, events, the summary without its
wall time and directory) byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simpy

from netfl.api import simulate
from netfl.protocols.base import StarAveraging
from netfl.scenario import from_dict
from netfl.sim.network import COORDINATOR, Message, Network
from netfl.sim.topology import configure_links, generate, place

BASE: dict[str, Any] = {
    "name": "batched", "seed": 3, "device": "cpu",
    "network": {"topology": {"generator": "hierarchy"}, "bandwidth": "10 Mbit/s",
                "latency": "5 ms"},
    "learners": {"count": 12, "compute_time": "10 ms"},
    "data": {"dataset": "gaussian_mixture",
             "params": {"n_samples": 400, "n_features": 4, "n_classes": 2},
             "partition": "iid", "batch_size": 4},
    "model": {"kind": "linear", "hidden": []},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "protocol": {"name": "continuous"},
    "horizon": {"rounds": 6},
    "eval": {"every": 3},
    "output": {"messages": True},
}
SLOW = {"dist": "uniform", "low": 0.01, "high": 0.05}
CASES: dict[str, dict[str, Any]] = {
    "continuous": {},
    "continuous_store_and_forward": {"network": {"model": "store_and_forward"}},
    "periodic_star_loss": {"protocol": {"name": "periodic", "b": 2},
                           "network": {"topology": {"generator": "star"}, "loss": 0.2}},
    "periodic_deadline_nowait": {
        "learners": {"count": 10, "compute_time": SLOW},
        "protocol": {"name": "periodic", "b": 2, "deadline": 0.02, "wait": False},
        "horizon": {"rounds": 10}},
    "fedavg_overcommit": {
        "learners": {"count": 10, "compute_time": SLOW},
        "protocol": {"name": "fedavg", "b": 2, "fraction": 0.4, "overcommit": 1.5},
        "horizon": {"rounds": 10}},
    "fedavg_availability_failures": {
        "learners": {"count": 8, "compute_time": "20 ms",
                     "availability": {"kind": "markov", "mean_offline": 0.06,
                                      "offline_fraction": 0.3}},
        "protocol": {"name": "fedavg", "b": 2, "fraction": 0.5, "overcommit": 1.3},
        "network": {"topology": {"generator": "star"}, "give_up": 1.0,
                    "failures": [{"links": "all", "mtbf": 2.0, "mttr": 0.2}]},
        "horizon": {"rounds": 12}},
    "continuous_availability_loss": {
        "learners": {"count": 8, "compute_time": SLOW,
                     "availability": {"kind": "markov", "mean_offline": 0.05,
                                      "offline_fraction": 0.3}},
        "network": {"loss": 0.1, "give_up": 0.5}, "horizon": {"rounds": 12}},
    "scaffold": {"protocol": {"name": "scaffold", "b": 2, "fraction": 0.5}},
    "continuous_time_horizon_cuts_messages": {
        "learners": {"compute_time": SLOW}, "network": {"bandwidth": "20 kbit/s"},
        "horizon": {"rounds": None, "sim_time": 0.33}},
    "periodic_topk_server_opt": {
        "protocol": {"name": "periodic", "b": 2,
                     "server_optimizer": {"name": "adam", "lr": 0.01}},
        "compression": {"uplink": {"name": "topk", "k": 0.5}}},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def run_files(scenario: dict[str, Any], batched: bool, out: Path,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    with monkeypatch.context() as patch:
        patch.setattr(StarAveraging, "batch_messages", batched)
        simulate(from_dict(scenario), out=out)
    files = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
    summary = json.loads(files.pop("summary.json"))
    for key in ("wall_time_s", "run_dir"):
        summary.pop(key, None)
    files["summary.json"] = json.dumps(summary, sort_keys=True).encode()
    return files


@pytest.mark.parametrize("case", list(CASES))
def test_batched_messages_give_the_per_message_run(case, tmp_path, monkeypatch):
    scenario = merge(BASE, CASES[case])
    batched = run_files(scenario, True, tmp_path / "batched", monkeypatch)
    single = run_files(scenario, False, tmp_path / "single", monkeypatch)
    assert batched.keys() == single.keys()
    assert b"\n" in batched["messages.csv"].strip()  # messages were recorded
    for name in batched:
        assert batched[name] == single[name], name


def _net(n: int, model: str = "flow", **kwargs: Any) -> tuple[simpy.Environment, Network]:
    g = configure_links(generate("hierarchy", None, seed=0, leaves=n), bandwidth=1e6,
                        latency=0.01)
    coordinator, nodes = place(g, n, coordinator=0)
    env = simpy.Environment()
    placement = {COORDINATOR: coordinator, **dict(enumerate(nodes))}
    return env, Network(env, g, placement, rng=np.random.default_rng(0), model=model,
                        **kwargs)


@pytest.mark.parametrize("model", ["flow", "store_and_forward"])
def test_send_many_delivers_in_lists_with_the_per_message_times(model):
    sizes = [1000 + 100 * i for i in range(9)]
    env, net = _net(9, model)
    done = [net.send(Message("model", i, COORDINATOR, 1, None, s)) for i, s in enumerate(sizes)]
    env.run()
    single = [(e.value.src, e.value.delivered_at) for e in done]
    env, net = _net(9, model)
    calls: list[list[Message]] = []
    net.send_many([Message("model", i, COORDINATOR, 1, None, s) for i, s in enumerate(sizes)],
                  calls.append)
    env.run()
    batched = [(msg.src, msg.delivered_at) for call in calls for msg in call]
    assert sorted(batched) == sorted(single)
    assert sum(map(len, calls)) == 9 and net.messages == 9 and net.in_flight == 0
    # one callback per arrival instant, not one per message
    assert len(calls) == len({at for _, at in single})


def test_send_many_of_one_payload_shares_it_and_charges_each_message():
    env, net = _net(4)
    payload = b"x" * 500
    calls: list[list[Message]] = []
    net.send_many([Message("broadcast", COORDINATOR, i, 2, payload, 517) for i in range(4)],
                  calls.append)
    env.run()
    assert [len(c) for c in calls] == [4]  # equal routes and sizes: one arrival instant
    assert all(msg.payload is payload for msg in calls[0])
    assert net.bytes_down == 4 * 517 and net.messages_by_kind == {"broadcast": 4}


def test_send_many_to_an_offline_endpoint_loses_only_that_message():
    env, net = _net(3)
    lost: list[Message] = []
    net.on_lost = lost.append
    net.set_endpoint(1, False)
    calls: list[list[Message]] = []
    net.send_many([Message("model", i, COORDINATOR, 1, None, 100) for i in range(3)],
                  calls.append)
    env.run()
    assert [m.src for m in lost] == [1] and net.messages_lost == 1
    assert sorted(m.src for c in calls for m in c) == [0, 2]


def test_the_continuous_run_moves_its_batches_as_arrays(tmp_path, monkeypatch):
    """Uploads and broadcasts of the base case take the array path (netfl.sim.flow_batch),
    whose files test_batched_messages_give_the_per_message_run compares."""
    import netfl.sim.network as network_module

    sizes: list[int] = []

    class Counting(network_module.FlowBatch):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            sizes.append(len(args[3]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(network_module, "FlowBatch", Counting)
    simulate(from_dict(BASE), out=tmp_path)
    assert sizes == [12] * 12  # 6 rounds of 12 uploads and 12 broadcasts
