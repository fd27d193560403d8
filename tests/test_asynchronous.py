"""FedAsync and FedBuff: staleness functions, server updates, never waiting, failures."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from netfl.build import build
from netfl.observers import Observer
from netfl.protocols import PROTOCOLS
from netfl.protocols.asynchronous import (
    encode,
    fedasync_mix,
    fedbuff_apply,
    fedbuff_weight,
    staleness_weight,
)
from netfl.run import run
from netfl.scenario import ScenarioError
from netfl.sim import wire
from netfl.sim.interface import COORDINATOR
from netfl.sim.network import Message

STRAGGLERS = {"count": 4, "compute_time": {"dist": "uniform", "low": "5 ms", "high": "40 ms"}}


def arrival(proto, learner: int, base: int, vector: torch.Tensor) -> SimpleNamespace:
    """A model_up arriving at the coordinator, as the network's event would carry it."""
    (payload,) = encode(base, vector[None])
    return SimpleNamespace(value=Message("model_up", learner, COORDINATOR, 5, payload, 0))


def never_blocks(sim) -> list[bool]:
    seen: list[bool] = []

    class Watch(Observer):
        def on_round(self, s, row):
            seen.append(bool(s.blocked.any()))

    sim.observers.append(Watch())
    return seen


# -------------------------------------------------------------------- formulas


@pytest.mark.parametrize("d", [0, 1, 2, 4, 5, 9, 30])
def test_staleness_functions_follow_the_paper(d):
    assert staleness_weight("constant", d) == 1.0
    assert staleness_weight("polynomial", d, 0.5) == pytest.approx((d + 1) ** -0.5)
    assert staleness_weight("polynomial", d, 2.0) == pytest.approx((d + 1) ** -2.0)
    hinge = 1.0 if d <= 4 else 1.0 / (10 * (d - 4) + 1)
    assert staleness_weight("hinge", d, 10.0, 4.0) == pytest.approx(hinge)
    assert fedbuff_weight(d) == pytest.approx(1 / math.sqrt(1 + d))


def test_staleness_function_values_and_defaults():
    assert staleness_weight("polynomial", 3) == pytest.approx(0.5)  # default a = 0.5
    assert staleness_weight("hinge", 5) == pytest.approx(1 / 11)  # a = 10, b = 4
    assert staleness_weight("hinge", 6, 1.0, 2.0) == pytest.approx(1 / 5)
    with pytest.raises(ValueError):
        staleness_weight("polynomial", -1)


def test_configs_validate_and_resolve_a_by_staleness_function():
    cfg = PROTOCOLS["fedasync"].Config
    assert cfg(name="fedasync").a == 0.5
    assert cfg(name="fedasync", staleness="hinge").a == 10.0
    assert cfg(name="fedasync", staleness="hinge", a=3).a == 3.0
    assert cfg(name="fedasync", staleness="constant").a is None
    for bad in ({"alpha": 0}, {"alpha": 1.5}, {"b": 0}, {"a": -1}, {"staleness": "linear"}):
        with pytest.raises(ValidationError):
            cfg(name="fedasync", **bad)
    buff = PROTOCOLS["fedbuff"].Config
    assert buff(name="fedbuff").K == 3 and buff(name="fedbuff").staleness_scaling
    for bad in ({"K": 0}, {"server_lr": 0}, {"b": 0}):
        with pytest.raises(ValidationError):
            buff(name="fedbuff", **bad)


# ------------------------------------------------------------ server updates


def test_fedasync_mixing_on_a_hand_built_arrival(tiny):
    sim = build(tiny(learners={"count": 2}, protocol={"name": "fedasync", "alpha": 0.6})).simulation
    proto = sim.protocol
    torch.testing.assert_close(proto.x, sim.bank.flat().mean(dim=0))  # the start: version 0
    proto.version = 3
    x0 = proto.x.clone()
    x_new = torch.linspace(-1, 1, sim.bank.num_params)
    proto._on_upload(arrival(proto, 1, 1, x_new))  # based on version 1: staleness 2
    alpha_t = 0.6 * 3 ** -0.5
    torch.testing.assert_close(proto.x, (1 - alpha_t) * x0 + alpha_t * x_new)
    torch.testing.assert_close(fedasync_mix(x0, x_new, alpha_t), proto.x)
    assert proto.version == 4 and proto.staleness == [2]
    assert sim.counters["server_updates"] == 1
    assert sim.network.messages_by_kind["model_down"] == 1  # the new model goes back to 1


def test_fedbuff_applies_the_scaled_mean_every_k_arrivals(tiny):
    sim = build(tiny(learners={"count": 2}, protocol={"name": "fedbuff", "K": 2,
                                                      "server_lr": 0.5})).simulation
    proto = sim.protocol
    proto.version = 2
    x0 = proto.x.clone()
    p = sim.bank.num_params
    d1, d2 = torch.full((p,), 1.0), torch.linspace(0, 1, p)
    proto._on_upload(arrival(proto, 0, 2, d1))  # staleness 0
    assert proto.version == 2 and len(proto.buffer) == 1
    torch.testing.assert_close(proto.x, x0)
    proto._on_upload(arrival(proto, 1, 0, d2))  # staleness 2
    expected = x0 + 0.5 * (d1 + d2 / math.sqrt(3)) / 2
    torch.testing.assert_close(proto.x, expected)
    torch.testing.assert_close(fedbuff_apply(x0, torch.stack([d1, d2]), [1, 3 ** -0.5], 0.5),
                               expected)
    assert proto.version == 3 and proto.buffer == [] and proto.staleness == [0, 2]
    assert sim.network.messages_by_kind["model_down"] == 2  # both contributors


def test_fedbuff_without_scaling_takes_the_plain_mean(tiny):
    sim = build(tiny(learners={"count": 2}, protocol={
        "name": "fedbuff", "K": 2, "staleness_scaling": False})).simulation
    proto = sim.protocol
    proto.version = 5
    x0 = proto.x.clone()
    d = torch.ones(sim.bank.num_params)
    proto._on_upload(arrival(proto, 0, 0, d))
    proto._on_upload(arrival(proto, 0, 1, 3 * d))
    torch.testing.assert_close(proto.x, x0 + 2 * d)
    assert sim.network.messages_by_kind["model_down"] == 1  # one contributor, sent once


def test_fedbuff_deltas_count_each_step_once(tiny):
    """A learner's deltas sum to its progress: no upload repeats an earlier one."""
    s = tiny(learners={"count": 1}, protocol={"name": "fedbuff", "b": 2, "K": 100},
             horizon={"rounds": 6})
    sim = build(s).simulation
    start = sim.bank.flat()[0].clone()
    sent = []
    arrive = sim.protocol.arrive
    sim.protocol.arrive = lambda i, r, st, v: (sent.append(v.clone()), arrive(i, r, st, v))
    sim.run()
    assert len(sent) == 3 and sim.protocol.version == 0  # buffer never full
    torch.testing.assert_close(sum(sent), sim.bank.flat()[0] - start, atol=1e-5, rtol=1e-5)


def test_end_to_end_mixing_equals_the_formula(tiny):
    s = tiny(learners=STRAGGLERS, protocol={"name": "fedasync", "b": 2, "staleness": "hinge",
                                            "a": 2.0, "hinge_b": 1}, horizon={"rounds": 20})
    sim = build(s).simulation
    proto = sim.protocol
    checked = []

    def arrive(learner, rnd, staleness, vector, _arrive=proto.arrive):
        before = proto.x.clone()
        _arrive(learner, rnd, staleness, vector)
        w = 1.0 if staleness <= 1 else 1 / (2.0 * (staleness - 1) + 1)
        torch.testing.assert_close(proto.x, (1 - 0.6 * w) * before + 0.6 * w * vector)
        checked.append(staleness)

    proto.arrive = arrive
    sim.run()
    assert len(checked) == 4 * 20 // 2 and max(checked) > 1


# ---------------------------------------------------------------- whole runs


@pytest.mark.parametrize("name", ["fedasync", "fedbuff"])
def test_stragglers_make_staleness_summarized_in_summary_json(tiny, tmp_path, name):
    s = tiny(learners=STRAGGLERS, protocol={"name": name}, horizon={"rounds": 20})
    summary = run(s, str(tmp_path / "run"), progress=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "completed"
    arrivals = 4 * 20 // 5
    assert saved["arrivals"] == arrivals == sum(saved["staleness_histogram"].values())
    assert saved["staleness_max"] > 0 and saved["staleness_mean"] > 0
    mean = sum(int(k) * v for k, v in saved["staleness_histogram"].items()) / arrivals
    assert saved["staleness_mean"] == pytest.approx(mean)
    assert saved["server_updates"] == (arrivals if name == "fedasync" else arrivals // 3)
    assert summary["server_updates"] == saved["server_updates"] == saved["syncs"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"server_updates", "bytes_model_up", "bytes_model_down"} <= set(header)


@pytest.mark.parametrize("name, k", [("fedasync", 1), ("fedbuff", 1), ("fedbuff", 3)])
def test_learners_never_wait_and_updates_follow_arrivals(tiny, name, k):
    protocol = {"name": name, "b": 2} | ({"K": k} if name == "fedbuff" else {})
    sim = build(tiny(learners=STRAGGLERS, protocol=protocol, horizon={"rounds": 20})).simulation
    seen = never_blocks(sim)
    sim.run()
    assert len(seen) == 20 and not any(seen) and not sim.blocked.any()
    assert (sim.rounds_done == 20).all()
    arrivals = len(sim.protocol.staleness)
    assert arrivals == 4 * 10
    assert sim.counters["server_updates"] == arrivals // k
    assert sim.network.messages_by_kind["model_up"] == arrivals
    # nobody waits: the run takes the slowest learner's 20 steps plus its last round trip
    slowest = int(sim.durations.max()) * sim.tick * 20
    assert slowest <= sim.env.now < slowest + 0.1


@pytest.mark.parametrize("topology", ["star", "hierarchy"])
@pytest.mark.parametrize("name", ["fedasync", "fedbuff"])
def test_learns_digits_on_star_and_hierarchy(tiny, tmp_path, name, topology):
    s = tiny(protocol={"name": name}, optimizer={"lr": 0.3}, horizon={"rounds": 60},
             eval={"every": 60}, network={"topology": {"generator": topology}})
    summary = run(s, str(tmp_path / "run"), progress=False)
    assert summary["status"] == "completed" and summary["rounds"] == 60
    assert summary["global_accuracy"] > 0.25  # chance: 0.1 (seen: 0.40 to 0.69)
    assert summary["final_accuracy"] > 0.25
    assert summary["staleness_max"] > 0  # equal speeds, yet uploads arriving together age


def test_runs_are_deterministic(tiny):
    def final(name):
        sim = build(tiny(learners=STRAGGLERS, protocol={"name": name},
                         horizon={"rounds": 10})).simulation
        sim.run()
        return sim.protocol.x, sim.protocol.staleness

    for name in ("fedasync", "fedbuff"):
        (x1, s1), (x2, s2) = final(name), final(name)
        assert torch.equal(x1, x2) and s1 == s2


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("name", ["fedasync", "fedbuff"])
def test_a_learner_cut_off_for_good_neither_deadlocks_nor_waits(tiny, tmp_path, name):
    s = tiny(protocol={"name": name, "b": 2}, network={
        "failures": [{"link": [0, 1], "at": "0.02 s"}], "give_up": "0.5 s"})
    summary = run(s, str(tmp_path / "run"), progress=False)
    assert summary["status"] == "completed" and summary["rounds"] == 20
    # learner 0 uploads every 20 ms from 20 ms on, when its link fails: all 10 are lost
    assert summary["uploads_lost"] == 10 and summary["downloads_lost"] == 0
    assert summary["messages_lost"] == 10
    assert summary["arrivals"] == 3 * 10


def test_a_lost_download_leaves_the_learner_as_it_is(tiny):
    sim = build(tiny(protocol={"name": "fedbuff"})).simulation
    proto = sim.protocol
    base = proto.base.clone()
    proto.on_lost(Message("model_down", COORDINATOR, 2, 5, b"", 0))
    proto.on_lost(Message("model_up", 1, COORDINATOR, 5, b"", 0))
    assert proto.downloads_lost == 1 and proto.uploads_lost == 1
    assert not sim.blocked.any() and (proto.learner_version == 0).all()
    assert torch.equal(proto.base, base)


def test_an_overtaken_download_is_ignored(tiny):
    sim = build(tiny(protocol={"name": "fedasync"})).simulation
    proto = sim.protocol
    proto.learner_version[1] = 4
    (old,) = encode(3, proto.x[None])
    proto._on_download(SimpleNamespace(value=Message("model_down", COORDINATOR, 1, 5, old, 0)))
    assert proto.downloads_stale == 1 and proto.learner_version[1] == 4
    (new,) = encode(5, proto.x[None])
    proto._on_download(SimpleNamespace(value=Message("model_down", COORDINATOR, 1, 5, new, 0)))
    assert proto.learner_version[1] == 5


@pytest.mark.parametrize("name", ["fedasync", "fedbuff"])
def test_codecs_are_refused_with_a_user_error(tiny, name):
    with pytest.raises(ScenarioError, match="compression"):
        build(tiny(protocol={"name": name},
                   compression={"uplink": {"name": "randk", "k": 8}}))


def test_bytes_are_version_plus_full_model(tiny):
    sim = build(tiny(protocol={"name": "fedasync"}, horizon={"rounds": 5})).simulation
    sim.run()
    size = wire.HEADER_BYTES + 4 + 4 + 4 * sim.bank.num_params
    assert sim.network.bytes_by_kind["model_up"] == 4 * size
    assert sim.network.bytes_by_kind["model_down"] == 4 * size
    # all four upload at round 5 and arrive together: staleness 0, 1, 2, 3 in turn
    assert sorted(sim.protocol.staleness) == [0, 1, 2, 3]
    assert sorted(sim.protocol.learner_version.tolist()) == [1, 2, 3, 4]
