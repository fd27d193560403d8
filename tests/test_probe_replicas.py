"""The parameter probe's replicas in one bank: the same rows and metrics as R separate runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.learning.replicas import ReplicaBank, ReplicaSource
from netfl.observers import Observer, Tables
from netfl.probes import parameters as par
from netfl.scenario import from_dict
from netfl.sim import wire

from .conftest import BASE, merge

PROBE = {"parameters": {"replicas": 3, "every": 2, "estimators": ["gaussian", "ksg"], "k": 1,
                        "dims": 1}}
TINY = {"learners": {"count": 3}, "horizon": {"rounds": 4}, "eval": {"every": 3},
        "probes": PROBE}


def scenario(**changes):
    return from_dict(merge(merge(BASE, TINY), changes))


def tables(s, *, one_bank: bool, observers=()):
    """Run ``s`` and return (its probe, every table's rows, plus the events and the
    protocol's summary as tables of their own)."""
    t = Tables(learners=True, messages=True)
    built = build(s, observers=[t, *observers], one_bank=one_bank)
    sim = built.simulation
    sim.run()
    probe = next(p for p in built.probes if isinstance(p, par.ParameterProbe))
    return probe, {**t.rows, "events": sim.events, "summary": [sim.protocol.summary()]}


def without_path(rows):
    return [{k: v for k, v in r.items() if k != "replica_path"} for r in rows]


CASES = {
    "periodic": {"protocol": {"name": "periodic", "b": 2}},
    "fedavg": {"protocol": {"name": "fedavg", "b": 2, "fraction": 0.6}},
    "fedprox_fedadam": {"protocol": {"name": "fedavg", "b": 2, "fraction": 0.6, "mu": 0.1,
                                     "server_optimizer": {"name": "adam", "lr": 0.05}}},
    "gossip": {"protocol": {"name": "gossip", "b": 2},
               "network": {"topology": {"generator": "complete"}}},
    "dpsgd_ring": {"protocol": {"name": "dpsgd"}, "network": {"topology": {"generator": "ring"}}},
    # stragglers: learners often step alone (one-row steps) and the round waits for them
    "fedavg_stragglers": {"protocol": {"name": "fedavg", "b": 2, "fraction": 0.6},
                          "learners": {"compute_time": {"dist": "lognormal", "mean": 0.01}}},
    "hierarchical": {"protocol": {"name": "hierarchical", "b": 2, "b_global": 1}},
    "fedasync": {"protocol": {"name": "fedasync", "b": 2}},  # summary: the global model's score
    "drifting_stream": {"data": {"dataset": "graphical", "drift": {"mode": "at", "rounds": [3]}},
                        "protocol": {"name": "periodic", "b": 2}},
    "fedbuff_adam_noise": {"protocol": {"name": "fedbuff", "b": 2, "K": 2},
                           "optimizer": {"name": "adam", "lr": 0.01},
                           "learners": {"init_noise": 0.01}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_bank_gives_the_rows_and_metrics_of_separate_runs(case):
    s = scenario(**CASES[case])
    bank_probe, one = tables(s, one_bank=True)
    sep_probe, separate = tables(s, one_bank=False)
    assert bank_probe.path == "one_bank" and bank_probe.fallback is None
    assert sep_probe.path == "separate"
    # the run's own tables, bytes and timing included, are those of the run without replicas
    for name in ("metrics", "learners", "messages", "events", "summary"):
        assert one[name] == separate[name], name
    assert one["messages"], "the run sent messages"
    rows, ref = one[par.TABLE], separate[par.TABLE]
    assert {r["replica_path"] for r in rows} == {"one_bank"}
    assert {r["replica_path"] for r in ref} == {"separate"}
    pairs = s.learners.count * (s.learners.count - 1) // 2
    assert [r["round"] for r in rows] == [2] * pairs + [4] * pairs
    assert without_path(rows) == without_path(ref)  # exact, not merely close
    assert all(r["replicas"] == 3 and r["dist_euclidean"] > 0 for r in rows)


def test_one_bank_keeps_the_representation_probe_and_sim_time_horizon():
    s = scenario(protocol={"name": "periodic", "b": 2}, horizon={"rounds": None, "sim_time": 0.1},
                 probes={**PROBE, "representation": {"every": "sync", "samples": 30}})
    _, one = tables(s, one_bank=True)
    _, separate = tables(s, one_bank=False)
    for name in ("metrics", "messages", par.TABLE, "probes_representation"):
        got, want = one[name], separate[name]
        assert without_path(got) == without_path(want), name
    assert len(one["probes_representation"]) > 0


class Uploads(Observer):
    def on_upload(self, sim, learner, update):
        pass


@pytest.mark.parametrize(("changes", "observers", "reason"), [
    ({"protocol": {"name": "dynamic", "delta": 0.5, "b": 2}}, (), "protocol dynamic"),
    ({"compression": {"uplink": {"name": "randk", "k": 10}}}, (), "compression.uplink"),
    ({"compression": {"downlink": {"name": "qsgd"}}}, (), "compression.downlink"),
    ({"protocol": {"name": "scaffold", "b": 2}}, (), "protocol scaffold"),
    ({}, (Uploads(),), "on_upload"),
])
def test_fallback_to_separate_runs_where_one_bank_is_not_exact(changes, observers, reason):
    s = scenario(**changes)
    probe, rows = tables(s, one_bank=True, observers=observers)
    assert probe.path == "separate" and reason in probe.fallback
    assert probe.bank is None
    assert {r["replica_path"] for r in rows[par.TABLE]} == {"separate"}
    assert all(r["replicas"] == 3 for r in rows[par.TABLE])


# ----------------------------------------------------------------------- the wrapper


def banks(replicas=3, m=2, **options):
    model = build_model("mlp", (4,), 3, hidden=[5])
    one = LearnerBank(model, m, seed=1, init_noise=0.1, input_shape=(4,), **options)
    inner = LearnerBank(model, replicas * m, seed=9, input_shape=(4,), **options)
    return one, ReplicaBank.tile(one, replicas, inner)


def test_flat_concatenates_replicas_and_assign_splits_them():
    one, rb = banks()
    p = one.num_params
    assert rb.num_params == 3 * p and rb.m == 2 and not rb.uniform  # init noise
    flat = rb.flat()
    assert flat.shape == (2, 3 * p)
    for r in range(3):  # every replica starts as the m-row bank
        torch.testing.assert_close(flat[:, r * p:(r + 1) * p], one.flat(), rtol=0, atol=0)
    vec = torch.arange(3 * p, dtype=torch.float32)
    rb.assign([1], rb.unflatten(vec))  # one concatenated model to learner 1
    assert not rb.uniform
    got = rb.flat([1])[0]
    assert torch.equal(got, vec)
    assert torch.equal(rb.replica_flat(2)[1], vec[2 * p:])
    assert torch.equal(rb.params[rb.inner.names[0]][1].reshape(-1),
                       vec[: rb.inner.numels[0]].reshape(-1))  # metrics view: replica 0
    rb.assign(None, rb.unflatten(vec))  # everyone, in order, one model: the exact-0 state
    assert rb.uniform and rb.divergence() == 0.0
    stacked = torch.randn(2, 3 * p)
    rb.assign(np.array([1, 0]), rb.unflatten(stacked[[1, 0]]))
    assert torch.equal(rb.flat(), stacked) and not rb.uniform


def test_step_trains_every_replica_as_its_own_bank():
    one, rb = banks(optimizer="adam", lr=0.01)
    refs = [LearnerBank(one.model, 2, seed=1, init_noise=0.1, input_shape=(4,),
                        optimizer="adam", lr=0.01) for _ in range(3)]
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        idx = [1] if step == 2 else None
        k = 1 if idx else 2
        x = torch.randn(3, k, 6, 4, generator=gen)
        y = torch.randint(0, 3, (3, k, 6), generator=gen)
        got = rb.step(idx, x.reshape(3 * k, 6, 4), y.reshape(3 * k, 6))
        want = [ref.step(idx, x[r], y[r]) for r, ref in enumerate(refs)]
        assert torch.equal(got.loss_sum, want[0].loss_sum)  # replica 0's losses
    for r, ref in enumerate(refs):
        assert torch.equal(rb.replica_flat(r), ref.flat())
        assert rb.divergence(replica=r) == ref.divergence()
    assert rb.finite().tolist() == [True, True]


def test_message_size_is_one_replicas():
    one, rb = banks()
    p = one.num_params
    flat = rb.flat()
    (single,) = wire.encode_vectors(one.flat()[:1])
    (both,) = wire.encode_vectors(flat[:1])
    assert rb.message_size(both) == wire.message_size(single)
    head = b"\x01\x00\x00\x00"  # a version or count field before the vector (fedasync, ...)
    two = both + wire.encode_vector(flat[1])  # SCAFFOLD-like: model and control variate
    assert rb.message_size(head + two) == wire.HEADER_BYTES + 4 + 2 * (4 + 4 * p)
    assert rb.message_size(b"") == wire.HEADER_BYTES
    with pytest.raises(RuntimeError, match="not float32 models"):
        rb.message_size(bytes(4 + 4 * 3 * p + 100))


def test_replica_source_stacks_batches_replica_major():
    class Fixed:
        m, batch_size, task = 2, 3, "classification"

        def __init__(self, value):
            self.value = value

        def batch(self, learners, rounds):
            k = 2 if learners is None else len(learners)
            return torch.full((k, 3, 4), float(self.value)), torch.zeros(k, 3, dtype=torch.long)

        def eval_set(self, rnd):
            return self.value

    src = ReplicaSource([Fixed(0), Fixed(1), Fixed(2)])
    x, y = src.batch(np.array([1]), np.array([0]))
    assert x.shape == (3, 3, 4) and x[:, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert src.eval_set(0) == 0 and src.batch_size == 3  # replica 0's
    assert getattr(src, "events", None) is None
