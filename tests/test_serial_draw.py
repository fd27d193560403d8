"""Serial draws each round's batches once: the step trains on them, the protocol ships them."""

from __future__ import annotations

import torch

from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.sim import wire


class CountingSource:
    """The run's source, counting ``batch`` calls; everything else passes through."""

    def __init__(self, source) -> None:
        self.inner, self.calls = source, 0

    def batch(self, learners, rounds):
        self.calls += 1
        return self.inner.batch(learners, rounds)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_serial_draws_once_per_round_and_matches_a_reference(tiny):
    rounds, m, lr = 5, 4, 0.1
    scenario = tiny(protocol={"name": "serial"}, horizon={"rounds": rounds},
                    eval={"every": rounds})
    built = build(scenario)
    sim = built.simulation
    counting = CountingSource(sim.source)
    sim.source = counting
    sent: list[tuple[object, bytes]] = []
    send = sim.send

    def record(kind, src, dst, rnd, payload):
        sent.append((src, payload))
        return send(kind, src, dst, rnd, payload)

    sim.send = record
    start = sim.bank.get()
    sim.run()
    assert counting.calls == rounds  # one draw per round, not two

    # Reference: the same draws from an independent source, the serial algorithm by hand.
    ref_source = build(scenario).source
    ref = LearnerBank(build_model("mlp", ref_source.input_shape, ref_source.num_classes,
                                  hidden=[16]), 1, optimizer="sgd", lr=lr)
    ref.assign(None, start)
    expected_payloads = []
    for r in range(rounds):
        x, y = ref_source.batch(None, r)
        total = torch.zeros(())
        for j in range(m):
            total += ref.step(None, x[j : j + 1], y[j : j + 1]).loss_sum.sum()
            expected_payloads.append((j, wire.encode_samples(x[j], y[j])))
        assert sim.log.loss[r] == float(total)
        assert sim.log.samples[r] == m * x.shape[1]
    assert torch.equal(sim.bank.flat(), ref.flat())
    assert sent == expected_payloads  # the shipped samples are the trained ones
    assert sim.network.bytes_up == sum(wire.message_size(p) for _, p in expected_payloads)
