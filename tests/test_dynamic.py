"""Dynamic averaging (seed 004 Algorithm 1): invariants, paths and their byte charges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.protocols.dynamic import Dynamic, augment, average_into
from netfl.sim import wire

MODEL_MSG = None


def model_size(sim) -> int:
    return wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params


def test_balancing_operator_keeps_the_mean():
    gen = torch.Generator().manual_seed(0)
    models = torch.randn(7, 50, generator=gen)
    for members in ([0], [1, 4], [0, 2, 3, 6], list(range(7))):
        out = average_into(models, np.array(members))
        torch.testing.assert_close(out.mean(0), models.mean(0), atol=1e-6, rtol=0)
        assert torch.equal(out[members[0]], out[members[-1]])


def test_random_doubling_and_all_at_once():
    rng = np.random.default_rng(0)
    assert len(augment({3}, 10, "double", rng)) == 1
    added = augment({1, 2, 5}, 10, "double", rng)
    assert len(added) == 3 and not set(added) & {1, 2, 5}
    assert augment({1, 2, 5}, 10, "all", rng) == [0, 3, 4, 6, 7, 8, 9]
    assert augment({0, 1, 2}, 5, "double", rng) == [3, 4]  # fewer left than |B|: take all


def driven(tiny, m=4, delta=1.0, augmentation="double"):
    """A dynamic simulation whose learners we move by hand, with the coordinator running."""
    built = build(tiny(learners={"count": m},
                       protocol={"name": "dynamic", "delta": delta, "b": 1,
                                 "augmentation": augmentation}))
    sim = built.simulation
    sim.protocol.start()
    return sim


def move(sim, learner: int, offset: torch.Tensor) -> None:
    idx = torch.tensor([learner])
    sim.bank.assign(idx, sim.bank.unflatten(sim.protocol.reference + offset))


def unit(sim, k: int) -> torch.Tensor:
    u = torch.zeros(sim.bank.num_params)
    u[k] = 1.0
    return u


def test_violation_is_balanced_with_one_more_learner(tiny):
    sim = driven(tiny)
    move(sim, 0, 2.0 * unit(sim, 0))  # ||f_0 - r||^2 = 4 > delta = 1
    mean_before = sim.bank.flat().mean(0)
    sim.protocol.after_step(np.arange(4), np.ones(4, dtype=np.int64))
    assert sim.blocked.tolist() == [True, False, False, False]  # the violator waits
    sim.env.run()
    sim.apply_pending()
    counts = sim.network.messages_by_kind
    assert counts["violation"] == 1 and counts["request"] == 1 and counts["model"] == 1
    assert counts["balance"] == 2 and counts.get("sync", 0) == 0
    size = model_size(sim)
    kinds = sim.network.bytes_by_kind
    assert kinds["violation"] == size and kinds["model"] == size
    assert kinds["request"] == wire.HEADER_BYTES  # a request is a header and no payload
    assert kinds["balance"] == 2 * size
    assert sim.counters["balancings"] == 1 and sim.counters["augmentations"] == 1
    assert sim.counters["full_syncs"] == 0
    flat = sim.bank.flat()
    torch.testing.assert_close(flat.mean(0), mean_before, atol=1e-6, rtol=0)
    # every local condition holds afterwards, and nobody is left waiting
    assert (((flat - sim.protocol.reference) ** 2).sum(1) <= 1.0 + 1e-6).all()
    assert not sim.blocked.any()


def test_all_at_once_augmentation_is_a_full_sync(tiny):
    sim = driven(tiny, augmentation="all")
    move(sim, 2, 2.0 * unit(sim, 0))
    old_reference = sim.protocol.reference.clone()
    sim.protocol.after_step(np.arange(4), np.ones(4, dtype=np.int64))
    sim.env.run()
    sim.apply_pending()
    assert sim.network.messages_by_kind["request"] == 3
    assert sim.network.messages_by_kind["sync"] == 4
    assert sim.counters["full_syncs"] == 1 and sim.counters["reference_updates"] == 1
    assert sim.bank.divergence() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(sim.protocol.reference, old_reference + 0.5 * unit(sim, 0))
    assert sim.protocol.violation_counter == 0


def test_violation_counter_reaching_m_forces_full_sync(tiny):
    sim = driven(tiny, delta=10.0)
    sim.protocol.violation_counter = 3
    move(sim, 1, 4.0 * unit(sim, 0))  # 16 > 10, but mean of all would be within delta
    sim.protocol.after_step(np.arange(4), np.ones(4, dtype=np.int64))
    sim.env.run()
    assert sim.counters["full_syncs"] == 1 and sim.counters["augmentations"] == 0
    assert sim.network.messages_by_kind["request"] == 3
    assert sim.protocol.violation_counter == 0


def test_no_violation_no_bytes(tiny):
    sim = build(tiny(protocol={"name": "dynamic", "delta": 1e6, "b": 1})).simulation
    sim.run()
    assert sim.network.bytes_total == 0 and sim.counters["violations"] == 0
    assert sim.bank.divergence() > 0


def test_tiny_delta_is_continuous_averaging(tiny):
    """Every learner violates every round, v reaches m at once: the same models and bytes
    as averaging every round."""
    rounds = 6
    dyn = build(tiny(protocol={"name": "dynamic", "delta": 1e-12, "b": 1},
                     horizon={"rounds": rounds})).simulation
    cont = build(tiny(protocol={"name": "continuous"}, horizon={"rounds": rounds})).simulation
    dyn.run()
    cont.run()
    assert dyn.counters["full_syncs"] == rounds and dyn.counters["balancings"] == 0
    assert dyn.network.bytes_total == cont.network.bytes_total
    assert dyn.network.messages_by_kind.get("request", 0) == 0
    torch.testing.assert_close(dyn.bank.flat(), cont.bank.flat(), atol=1e-6, rtol=0)


def test_balances_keep_members_within_delta(tiny, monkeypatch):
    """Throughout a real run, a partial average is sent back only when within delta of r."""
    seen = []
    original = Dynamic._send_average

    def checked(self, models, full):
        members = sorted(models)
        mean = torch.stack([models[i] for i in members]).mean(0)
        seen.append((len(members), float(((mean - self.reference) ** 2).sum())))
        original(self, models, full)

    monkeypatch.setattr(Dynamic, "_send_average", checked)
    sim = build(tiny(learners={"count": 8}, protocol={"name": "dynamic", "delta": 0.05, "b": 2},
                     horizon={"rounds": 40})).simulation
    sim.run()
    partial = [d for n, d in seen if n < 8]
    assert partial and all(d <= 0.05 for d in partial)
    assert sim.counters["violations"] > 0 and sim.counters["balancings"] == len(partial)
    assert sim.counters["full_syncs"] == len(seen) - len(partial)


def test_dynamic_is_deterministic(tiny):
    def once():
        sim = build(tiny(learners={"count": 8}, protocol={"name": "dynamic", "delta": 0.05},
                         network={"loss": 0.1}, horizon={"rounds": 30})).simulation
        sim.run()
        return sim.network.bytes_by_kind, dict(sim.counters), sim.bank.flat()

    a, b = once(), once()
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2])


@pytest.mark.parametrize("delta", [0.3, 1.0])
def test_violations_arriving_while_balancing_count_towards_full_sync(delta):
    # slow hierarchy links: violations arrive while the coordinator waits for queried
    # models; Algorithm 1 then forces B = [m] once v reaches m, never a partial balancing
    from netfl.build import build
    from netfl.scenario import from_dict

    s = from_dict({
        "seed": 1, "device": "cpu", "learners": {"count": 16, "compute_time": "10 ms"},
        "network": {"topology": {"generator": "hierarchy"}, "bandwidth": "2 Mbit/s",
                    "latency": "20 ms"},
        "data": {"dataset": "digits", "batch_size": 10}, "model": {"kind": "mlp", "hidden": [16]},
        "protocol": {"name": "dynamic", "delta": delta}, "horizon": {"rounds": 100}})
    built = build(s)
    built.simulation.run()
    protocol, counters = built.simulation.protocol, built.simulation.counters
    assert counters["full_syncs"] >= 3  # violations did pile up to m
    assert protocol.partial_at_full_count == 0
