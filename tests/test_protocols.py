"""Protocols through the whole simulator: bytes, timing, and the seed's equivalences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.sim import wire


def run_sim(scenario):
    built = build(scenario)
    built.simulation.run()
    return built.simulation


def model_message_size(sim) -> int:
    return wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params


def test_continuous_averaging_equals_serial_minibatch_sgd(tiny):
    """Seed 004 Prop. 3: m learners, batch B, lr eta, averaged every round
    == serial mini-batch SGD with batch mB and lr eta/m (summed losses)."""
    m, batch, lr, rounds = 4, 5, 0.05, 6
    s = tiny(protocol={"name": "continuous"}, horizon={"rounds": rounds},
             optimizer={"lr": lr, "reduction": "sum"})
    built = build(s)
    sim = built.simulation
    serial = LearnerBank(
        build_model("mlp", built.source.input_shape, built.source.num_classes, hidden=[16]),
        1, optimizer="sgd", lr=lr / m, reduction="sum", seed=0,
    )
    serial.assign(torch.tensor([0]), sim.bank.mean())  # same start as every learner
    sim.run()
    for r in range(rounds):
        x, y = sim.source.batch(None, r)
        serial.step(torch.tensor([0]), x.reshape(1, m * batch, *x.shape[2:]), y.reshape(1, -1))
    assert sim.bank.divergence() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(sim.bank.flat()[0], serial.flat()[0], atol=1e-5, rtol=1e-5)


def test_periodic_bytes_messages_and_timing(tiny):
    s = tiny(protocol={"name": "periodic", "b": 5}, horizon={"rounds": 10})
    sim = run_sim(s)
    size = model_message_size(sim)
    m = 4
    assert sim.network.messages == 2 * m * 2  # two syncs, up and down
    assert sim.network.bytes_up == 2 * m * size
    assert sim.network.bytes_down == 2 * m * size
    assert sim.counters["syncs"] == 2
    # every learner has its own leaf link: upload and broadcast each take size*8/bw + latency
    hop = size * 8 / 10e6 + 0.005
    resume_tick = int(np.ceil((0.05 + 2 * hop) / 0.01))
    last_step_tick = resume_tick + 5
    assert sim.env.now == pytest.approx(last_step_tick * 0.01 + 2 * hop, rel=1e-12)
    assert sim.bank.divergence() == pytest.approx(0.0, abs=1e-12)  # final sync was delivered


def test_charged_bytes_equal_encoding_length(tiny):
    sim = run_sim(tiny(protocol={"name": "periodic", "b": 10}, horizon={"rounds": 10}))
    payload = sim.protocol.channel.encode_up(np.array([0]), sim.bank.flat()[:1])[0]
    assert len(payload) == 4 + 4 * sim.bank.num_params
    assert sim.network.bytes_by_kind["model"] == 4 * (wire.HEADER_BYTES + len(payload))
    torch.testing.assert_close(wire.decode_vector(payload), sim.bank.flat()[0])


@pytest.mark.parametrize("fraction, m", [(0.3, 10), (0.5, 4), (0.01, 10), (1.0, 6)])
def test_fedavg_picks_round_c_times_m(tiny, fraction, m):
    s = tiny(learners={"count": m}, protocol={"name": "fedavg", "b": 5, "fraction": fraction},
             horizon={"rounds": 15})
    sim = run_sim(s)
    chosen = max(1, round(fraction * m))
    assert sim.network.messages_by_kind["model"] == 3 * chosen
    assert sim.network.messages_by_kind["broadcast"] == 3 * m
    picks = [tuple(sim.protocol.uploaders(r)) for r in (5, 10, 15)]
    assert all(len(set(p)) == chosen for p in picks)
    assert sim.bank.divergence() == pytest.approx(0.0, abs=1e-12)


def test_fedavg_selection_is_seeded_and_varies(tiny):
    scenario = tiny(learners={"count": 10}, protocol={"name": "fedavg", "fraction": 0.3})
    sim = build(scenario).simulation
    again = build(tiny(learners={"count": 10}, protocol={"name": "fedavg", "fraction": 0.3}))
    rounds = range(10, 110, 10)
    first = [tuple(sim.protocol.uploaders(r)) for r in rounds]
    assert first == [tuple(again.simulation.protocol.uploaders(r)) for r in rounds]
    assert len(set(first)) > 1


def test_nosync_sends_nothing_and_diverges(tiny):
    sim = run_sim(tiny(protocol={"name": "nosync"}))
    assert sim.network.bytes_total == 0 and sim.network.messages == 0
    assert sim.bank.divergence() > 0
    assert sim.env.now == pytest.approx(0.20)


def test_serial_charges_shipped_samples_and_steps_per_batch(tiny):
    rounds, m, batch = 6, 4, 5
    sim = run_sim(tiny(protocol={"name": "serial"}, horizon={"rounds": rounds}))
    features = 64
    per_batch = wire.HEADER_BYTES + 8 + batch * features * 4 + batch * 8
    assert sim.network.bytes_up == rounds * m * per_batch
    assert sim.network.bytes_down == 0
    assert sim.bank.m == 1
    assert int(sim.log.samples[:rounds].sum()) == rounds * m * batch
    assert sim.env.now == pytest.approx(rounds * m * 0.01 + per_batch * 8 / 10e6 + 0.005)


def test_waiting_learners_do_not_step_and_no_wait_keeps_training(tiny):
    waiting = run_sim(tiny(protocol={"name": "periodic", "b": 5, "wait": True}))
    eager = run_sim(tiny(protocol={"name": "periodic", "b": 5, "wait": False}))
    assert eager.env.now < waiting.env.now
    assert eager.network.bytes_total == waiting.network.bytes_total


def test_stragglers_keep_the_round_accounting(tiny):
    s = tiny(learners={"count": 4, "compute_time": {"dist": "uniform", "low": "10 ms",
                                                       "high": "40 ms"}},
             protocol={"name": "periodic", "b": 4}, horizon={"rounds": 12})
    sim = run_sim(s)
    assert sim.rows_emitted == 12
    assert (sim.rounds_done == 12).all()
    assert int(sim.log.samples[:12].sum()) == 12 * 4 * 5
    assert len(set(sim.durations.tolist())) > 1


def test_sim_time_horizon_stops_learners(tiny):
    sim = run_sim(tiny(protocol={"name": "nosync"}, horizon={"sim_time": "105 ms"}))
    assert (sim.rounds_done == 10).all()
    assert sim.rows_emitted == 10


def test_heterogeneous_init(tiny):
    same = build(tiny()).simulation.bank
    noisy = build(tiny(learners={"init_noise": 0.01})).simulation.bank
    assert same.divergence() == 0.0
    assert noisy.divergence() > 0.0
