"""Information-flow probes: observers that never disturb the run, and the values they write."""

from __future__ import annotations

import csv
from itertools import combinations

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.observers import Tables
from netfl.probes import parameters as par
from netfl.probes import representation as rep
from netfl.probes.schedule import Schedule
from netfl.run import run
from netfl.scenario import ScenarioError, from_dict

from .conftest import BASE, merge

PROBES = {
    "representation": {"every": "sync", "samples": 60},
    "parameters": {"replicas": 3, "every": 5, "estimators": ["gaussian", "ksg"], "k": 1,
                   "dims": 1},
}


def scenario(**changes):
    return from_dict(merge(BASE, changes))


def read(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def collect(s):
    """Build ``s`` with an observer that keeps the probes' rows by table."""
    tables = Tables(learners=False, messages=False)
    return build(s, observers=[tables]), tables.rows


# --------------------------------------------------------------------------- observers


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny scenario run without and with both probes (3 learners, periodic b=5)."""
    base = tmp_path_factory.mktemp("probes")
    changes = {"learners": {"count": 3}, "horizon": {"rounds": 10}}
    plain = run(scenario(**changes), str(base / "plain"), progress=False)
    probed = run(scenario(**changes, probes=PROBES), str(base / "probed"), progress=False)
    return base / "plain", base / "probed", plain, probed


def test_metrics_byte_identical_with_and_without_probes(runs):
    plain, probed, s_plain, s_probed = runs
    assert (probed / "metrics.csv").read_bytes() == (plain / "metrics.csv").read_bytes()
    assert (probed / "links.csv").read_bytes() == (plain / "links.csv").read_bytes()
    for key in ("bytes_total", "messages", "cumulative_loss", "final_accuracy"):
        assert s_probed[key] == s_plain[key]


def test_probe_tables_rows_and_columns(runs):
    _, probed, _, _ = runs
    rows = read(probed / "probes_representation.csv")
    assert list(rows[0]) == rep.COLUMNS
    # periodic b=5 over 10 rounds: probes at the syncs 5 and 10; 3 learners x 2 models each
    assert [(int(r["round"]), int(r["learner"]), r["model"]) for r in rows] == [
        (t, i, model) for t in (5, 10) for i in range(3) for model in ("local", "average")]
    assert all(r["estimator"] == "ksg" and int(r["samples"]) == 60 for r in rows)
    for r in rows:
        assert 0.0 <= float(r["acc"]) <= 1.0
        assert float(r["mi_yz_bits"]) >= 0 and float(r["mi_xz_bits"]) >= 0

    rows = read(probed / "probes_parameters.csv")
    assert list(rows[0]) == par.columns(["gaussian", "ksg"])
    assert [(int(r["round"]), int(r["learner_a"]), int(r["learner_b"])) for r in rows] == [
        (t, a, b) for t in (5, 10) for a, b in combinations(range(3), 2)]
    assert all(int(r["replicas"]) == 3 and int(r["dims"]) == 1 for r in rows)
    assert all(float(r["dist_euclidean"]) > 0 for r in rows)


def test_average_rows_exist_without_redistribution():
    s = scenario(learners={"count": 2}, protocol={"name": "nosync"}, horizon={"rounds": 6},
                 probes={"representation": {"every": 3, "samples": 40, "estimator": "binned"}})
    built, tables = collect(s)
    built.simulation.run()
    rows = tables["probes_representation"]
    assert [(r["round"], r["learner"], r["model"]) for r in rows] == [
        (t, i, model) for t in (3, 6) for i in range(2) for model in ("local", "average")]
    # the average is computed by the probe: its accuracy is that of bank.mean() on the sample
    bank, probe = built.simulation.bank, built.probes[0]
    mean = bank.mean()
    for i in range(2):
        _, correct = bank.evaluate(mean, probe.x[i], probe.y[i])
        row = rows[-4 + 2 * i + 1]
        assert row["model"] == "average" and row["acc"] == pytest.approx(int(correct) / 40)
        _, local = bank.evaluate({k: v[i] for k, v in bank.params.items()}, probe.x[i],
                                 probe.y[i])
        assert rows[-4 + 2 * i]["acc"] == pytest.approx(int(local) / 40)
    assert built.simulation.network.bytes_total == 0  # nosync: the probe sends nothing


def test_label_information_grows_with_training():
    """EDGE I(Y;Z) of the local models on their own data: untrained vs 40 rounds of SGD."""
    s = scenario(learners={"count": 2}, protocol={"name": "nosync"}, data={"batch_size": 20},
                 model={"hidden": [32]}, optimizer={"lr": 0.3}, horizon={"rounds": 40},
                 probes={"representation": {"every": 40, "samples": 200}})
    built, _ = collect(s)
    probe, sim = built.probes[0], built.simulation
    before = rep.measure(sim.bank, probe.x, probe.y, "edge")
    sim.run()
    after = rep.measure(sim.bank, probe.x, probe.y, "edge")
    for b, a in zip(before, after):
        assert a["mi_yz_bits"] > b["mi_yz_bits"] + 0.2  # measured: 1.2 -> 1.6 bits
        assert a["acc"] > b["acc"] + 0.3
        assert 0 < a["mi_yz_bits"] < np.log2(10)  # never above H(Y)


def test_local_samples_are_fixed_and_from_each_partition():
    y = torch.arange(100) % 10
    x = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    parts = [np.arange(0, 60), np.arange(60, 100)]
    xs, ys = rep.local_samples(parts, x, y, 50, seed=[3, 0])
    assert xs.shape == (2, 40, 1) and ys.shape == (2, 40)  # capped by the smaller partition
    assert set(xs[0, :, 0].long().tolist()) <= set(range(60))
    assert sorted(xs[1, :, 0].long().tolist()) == list(range(60, 100))
    again, _ = rep.local_samples(parts, x, y, 50, seed=[3, 0])
    assert torch.equal(again, xs)
    assert len(set(xs[0, :, 0].tolist())) == 40  # without replacement


# --------------------------------------------------------------------------- replicas


def test_replicas_share_initialization_and_differ_after_training():
    s = scenario(learners={"count": 2}, protocol={"name": "nosync"}, horizon={"rounds": 5},
                 probes={"parameters": {"replicas": 3, "every": 5, "estimators": ["ksg"],
                                        "k": 1}})
    built = build(s, one_bank=False)  # separate replicas (one bank: test_probe_replicas.py)
    probe = built.probes[0]
    main, one, two = built.simulation, probe.make_replica(1), probe.make_replica(2)
    start = main.bank.flat()
    assert torch.equal(one.bank.flat(), start) and torch.equal(two.bank.flat(), start)
    first = one.source.batch(None, 0)[1]
    assert not torch.equal(first, main.source.batch(None, 0)[1])  # new sampling noise
    assert one.source.stream.sizes == main.source.stream.sizes
    for sim in (main, one, two):
        sim.run()
    ends = [sim.bank.flat() for sim in (main, one, two)]
    assert not torch.equal(ends[0], ends[1]) and not torch.equal(ends[1], ends[2])
    assert par.replica_seed(7, 0) == 7
    assert len({par.replica_seed(7, r) for r in range(4)}) == 4


def test_distances_match_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    d = x - y
    expected = [np.sqrt((d**2).sum(1)).mean(), np.abs(d).sum(1).mean(), np.abs(d).max(1).mean()]
    np.testing.assert_allclose(par.distances(x, y), expected, rtol=1e-12)
    np.testing.assert_allclose(par.distances(np.zeros(3), np.array([3.0, -4.0, 0.0])),
                               [5.0, 7.0, 4.0])
    flat = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32)
    got = par.pair_distances(flat)
    f = flat.double().numpy()
    for j, (a, b) in enumerate(combinations(range(3), 2)):
        np.testing.assert_allclose(got[j], par.distances(f[a:a + 1], f[b:b + 1]), rtol=1e-10)


def test_parameter_rows_average_over_replicas():
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(40, 2))
    snaps = []
    for r in range(40):
        coords = np.stack([shared[r], shared[r] + 0.01 * rng.normal(size=2),
                           rng.normal(size=2)])  # 0 ~ 1 strongly, 2 independent
        snaps.append(par.Snapshot(coords, np.full((3, 3), float(r)), divergence=2.0 * r,
                                  sim_time_s=0.5))
    probe = par.ParameterProbe(replicas=40, every=5, estimators=["gaussian", "ksg"], k=3,
                               projection=par.Projection(10, 2, "random", seed=0), seed=0,
                               make_replica=None)
    rows = probe.rows(5, snaps)
    assert [(r["learner_a"], r["learner_b"]) for r in rows] == [(0, 1), (0, 2), (1, 2)]
    assert all(r["dist_euclidean"] == pytest.approx(19.5) for r in rows)  # mean of 0..39
    assert all(r["divergence"] == pytest.approx(39.0) for r in rows)
    dependent, independent = rows[0], rows[1]
    assert dependent["mi_gaussian_bits"] > 4 and dependent["mi_ksg_bits"] > 2
    assert independent["mi_gaussian_bits"] < 0.5 and independent["mi_ksg_bits"] < 0.5


def test_projection_is_fixed_by_seed():
    flat = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    coords = par.Projection(10, 3, "coordinates", seed=4)
    picked = coords(flat)
    assert picked.shape == (2, 3)
    np.testing.assert_array_equal(picked[1] - picked[0], [10.0] * 3)  # entries of the vectors
    a, b = par.Projection(10, 3, "random", seed=4), par.Projection(10, 3, "random", seed=4)
    np.testing.assert_array_equal(a(flat), b(flat))
    assert par.Projection(10, 50, "random", seed=0).dims == 10  # all coordinates
    np.testing.assert_array_equal(par.Projection(10, 50, "random", seed=0)(flat), flat.numpy())


# --------------------------------------------------------------------------- schedule


def test_schedule_every_and_sync():
    class Star:
        def syncs_at(self, rnd):
            return rnd % 4 == 0

    class Sim:
        protocol, counters = object(), {"syncs": 0}

    sim = Sim()
    every = Schedule(3)
    assert [t for t in range(1, 10) if every.due(sim, t)] == [3, 6, 9]
    sim.protocol = Star()
    assert [t for t in range(1, 10) if Schedule("sync").due(sim, t)] == [4, 8]
    sim.protocol = object()  # dynamic averaging: no syncs_at, count the syncs
    counted = Schedule("sync")
    seen = []
    for t, syncs in enumerate([0, 0, 1, 1, 3, 3], start=1):
        sim.counters["syncs"] = syncs
        seen += [t] if counted.due(sim, t) else []
    assert seen == [3, 5]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("probes, needle", [
    ({"representation": {"every": 0}}, "probes.representation.every: must be a positive"),
    ({"representation": {"every": "often"}}, "probes.representation.every"),
    ({"representation": {"estimator": "magic"}}, "probes.representation.estimator"),
    ({"representation": {"samples": 1}}, "probes.representation.samples"),
    ({"representation": {"extra": 1}}, "probes.representation.extra: unknown key"),
    ({"parameters": {"replicas": 1}}, "probes.parameters.replicas"),
    ({"parameters": {"every": "sync"}}, "probes.parameters.every"),
    ({"parameters": {"replicas": 8, "dims": 4}}, "needs replicas > 2*dims = 8"),
    ({"parameters": {"replicas": 3, "estimators": ["ksg"], "k": 3}}, "needs replicas > k"),
    ({"parameters": {"estimators": []}}, "probes.parameters.estimators"),
])
def test_bad_probe_settings_name_the_key(probes, needle):
    with pytest.raises(ScenarioError, match=needle.replace("*", r"\*")):
        scenario(probes=probes)


@pytest.mark.parametrize("changes, needle", [
    ({"protocol": {"name": "nosync"}, "probes": {"representation": {"every": "sync"}}},
     "probes.representation.every: 'sync' needs a protocol that synchronizes"),
    ({"protocol": {"name": "serial"}, "probes": {"representation": {"every": 2}}},
     "probes: the serial protocol"),
    ({"data": {"dataset": "graphical"}, "probes": {"representation": {"every": 2}}},
     "probes.representation: needs a fixed dataset"),
    ({"learners": {"count": 1}, "probes": {"parameters": {"replicas": 9}}},
     "probes.parameters: needs at least 2 learners"),
])
def test_impossible_probe_settings_fail_at_build(changes, needle):
    with pytest.raises(ScenarioError, match=needle):
        build(scenario(**changes))


def test_probes_default_off_and_resolved():
    resolved = scenario().resolved()
    assert resolved["probes"] == {"representation": None, "parameters": None}
    on = scenario(probes={"representation": {}}).resolved()["probes"]["representation"]
    assert on == {"every": "sync", "estimator": "ksg", "samples": 500, "seed": 0}
