"""Concept-drift schedules and sources (netfl.data.drift): the concept changes at exactly the
scheduled round, mixes as documented, recurs identically, and every request is deterministic.

Sources draw the concept-free randomness of a round from (seed, round) alone, so two sources
with the same seed but different schedules give identical batches in every round where their
concept (mixture) agrees: most tests compare against such twins to get exact equalities.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from netfl.data.datasets import DataError
from netfl.data.drift import (
    SOURCES,
    DriftEvent,
    DriftSchedule,
    GraphicalModelSource,
    PermutedDigitsSource,
    TeacherStudentSource,
    bayes_error,
    make_source,
    random_graphical_model,
)

KINDS = list(SOURCES)
M, B = 6, 4


def source(kind: str, schedule: DriftSchedule | None = None, *, m: int = M, b: int = B,
           seed: int = 7, **params):
    return make_source(kind, m=m, batch_size=b, seed=seed, device="cpu", schedule=schedule,
                       **params)


def rows(data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One row per sample: its flattened input and its label."""
    x, y = data
    return torch.cat([x.reshape(len(x), -1), y.reshape(-1, 1).float()], 1)


def same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------- schedules


def test_no_drift_is_concept_zero_forever():
    s = DriftSchedule.none()
    assert [s.concept_at(r) for r in (0, 1, 10**6)] == [0, 0, 0]
    assert s.mixture_at(123) == (0, 0, 1.0)
    assert s.events(10**6) == []


def test_sudden_drift_switches_at_the_listed_round():
    s = DriftSchedule.at([5, 9])
    assert [s.concept_at(r) for r in range(11)] == [0] * 5 + [1] * 4 + [2] * 2
    assert s.events(4) == []
    assert s.events(5) == [DriftEvent(5, "sudden", 0, 1)]
    assert s.events(100) == [DriftEvent(5, "sudden", 0, 1), DriftEvent(9, "sudden", 1, 2)]
    assert s.mixture_at(5) == (1, 1, 1.0)
    assert DriftSchedule.at([9, 5]).events(100) == s.events(100)  # order of listing is free


def test_gradual_drift_phases_in_linearly():
    s = DriftSchedule.at([10], kind="gradual", width=9)
    assert s.mixture_at(9) == (0, 0, 1.0)
    weights = [s.mixture_at(r)[2] for r in range(10, 19)]
    assert weights == pytest.approx([j / 10 for j in range(1, 10)])
    assert s.mixture_at(14) == (0, 1, pytest.approx(0.5))
    assert s.mixture_at(19) == (1, 1, 1.0)
    assert s.concept_at(10) == 1  # the concept phasing in
    assert s.events(50) == [DriftEvent(10, "gradual", 0, 1)]


def test_gradual_drift_cut_short_by_the_next_one():
    s = DriftSchedule.at([10, 12], kind="gradual", width=5)
    assert s.mixture_at(11) == (0, 1, pytest.approx(2 / 6))
    assert s.mixture_at(12) == (1, 2, pytest.approx(1 / 6))
    assert s.mixture_at(17) == (2, 2, 1.0)


def test_recurring_cycles_through_the_pool():
    s = DriftSchedule.at([3, 6, 9, 12], kind="recurring", pool=2)
    assert [s.concept_at(r) for r in (0, 3, 6, 9, 12)] == [0, 1, 0, 1, 0]
    assert [(e.concept_from, e.concept_to) for e in s.events(20)] == [(0, 1), (1, 0), (0, 1),
                                                                      (1, 0)]
    s3 = DriftSchedule.at([1, 2, 3, 4], kind="recurring", pool=3)
    assert [s3.concept_at(r) for r in range(5)] == [0, 1, 2, 0, 1]


def test_random_schedule_is_a_function_of_seed_and_p():
    a = DriftSchedule.random(0.01, seed=3)
    b = DriftSchedule.random(0.01, seed=3)
    for r in (7, 100, 5000, 20000):  # b asked incrementally, a once at the end
        b.concept_at(r)
    rounds = a.drift_rounds(20000)
    assert np.array_equal(rounds, b.drift_rounds(20000))
    assert np.array_equal(a.drift_rounds(1000), rounds[rounds <= 1000])
    assert not np.array_equal(rounds, DriftSchedule.random(0.01, seed=4).drift_rounds(20000))
    assert rounds.min() >= 1
    assert [a.concept_at(int(r)) for r in rounds[:3]] == [1, 2, 3]
    assert a.concept_at(int(rounds[0]) - 1) == 0
    # a smaller p with the same seed drifts at a subset of the rounds
    sub = DriftSchedule.random(0.002, seed=3).drift_rounds(20000)
    assert set(sub.tolist()) <= set(rounds.tolist())


def test_random_schedule_rate_is_p():
    n = 400_000
    for p in (0.001, 0.05):
        count = len(DriftSchedule.random(p, seed=11).drift_rounds(n))
        sigma = np.sqrt(n * p * (1 - p))
        assert abs(count - n * p) < 5 * sigma, (p, count)
    assert len(DriftSchedule.random(0.0, seed=1).drift_rounds(10_000)) == 0
    assert len(DriftSchedule.random(1.0, seed=1).drift_rounds(99)) == 99  # rounds 1..99


@pytest.mark.parametrize("kwargs, key", [
    ({"mode": "sometimes"}, "drift.mode"),
    ({"mode": "at", "rounds": [3], "kind": "abrupt"}, "drift.kind"),
    ({"mode": "at", "rounds": [0]}, "drift.rounds[0]"),
    ({"mode": "at", "rounds": [4, 2, 4]}, "drift.rounds"),
    ({"mode": "at", "rounds": [2.5]}, "drift.rounds[0]"),
    ({"mode": "random", "p": 1.5}, "drift.p"),
    ({"mode": "random", "p": -0.1}, "drift.p"),
    ({"mode": "random", "p": 0.1, "seed": -1}, "drift.seed"),
    ({"mode": "none", "p": 0.1}, "drift.p"),
    ({"mode": "random", "p": 0.1, "rounds": [3]}, "drift.rounds"),
    ({"mode": "at", "rounds": [3], "kind": "gradual", "width": 0}, "drift.width"),
    ({"mode": "at", "rounds": [3], "kind": "recurring", "pool": 1}, "drift.pool"),
])
def test_bad_schedules_name_the_parameter(kwargs, key):
    mode = kwargs.pop("mode")
    with pytest.raises(DataError, match=key.replace("[", r"\[").replace("]", r"\]")):
        DriftSchedule(mode, **kwargs)


def test_schedule_rejects_negative_rounds():
    with pytest.raises(DataError, match="rnd"):
        DriftSchedule.at([3]).concept_at(-1)
    with pytest.raises(DataError, match="up_to_round"):
        DriftSchedule.none().events(-2)


# ----------------------------------------------------------------- sources: the contract


@pytest.mark.parametrize("kind", KINDS)
def test_batch_shapes_and_types(kind):
    src = source(kind)
    x, y = src.batch(None, 0)
    assert x.shape == (M, B, *src.input_shape) and x.dtype == torch.float32
    assert y.shape == (M, B) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < src.num_classes
    xe, ye = src.eval_set(0)
    assert xe.shape[1:] == tuple(src.input_shape) and len(xe) == len(ye) > 0
    assert (src.m, src.batch_size) == (M, B)


@pytest.mark.parametrize("kind", KINDS)
def test_subsets_in_any_order_match_the_full_rounds(kind):
    sched = DriftSchedule.at([2], kind="gradual", width=3)  # rounds 2-4 mix two concepts
    src = source(kind, sched)
    full = [src.batch(None, r) for r in range(6)]
    rng = np.random.default_rng(0)
    learners = rng.integers(0, M, size=40)
    rounds = rng.integers(0, 6, size=40)
    fresh = source(kind, sched)  # nothing cached, asked in another order first
    fresh.batch(np.array([3, 1]), np.array([5, 0]))
    for s in (src, fresh):
        x, y = s.batch(learners, rounds)
        for j, (i, r) in enumerate(zip(learners, rounds)):
            assert torch.equal(x[j], full[r][0][i]) and torch.equal(y[j], full[r][1][i])
    x, y = fresh.batch(np.array([4, 0]), 3)  # a scalar round for every learner
    assert torch.equal(x, full[3][0][[4, 0]]) and torch.equal(y, full[3][1][[4, 0]])
    again = source(kind, sched)
    assert all(same(again.batch(None, r), full[r]) for r in reversed(range(6)))


@pytest.mark.parametrize("kind", KINDS)
def test_seed_changes_the_samples(kind):
    a, b = source(kind, seed=1), source(kind, seed=2)
    assert same(a.batch(None, 3), source(kind, seed=1).batch(None, 3))
    assert not same(a.batch(None, 3), b.batch(None, 3))
    assert not same(a.batch(None, 3), a.batch(None, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_sudden_drift_changes_the_distribution_at_exactly_its_round(kind):
    never = source(kind)
    at5 = source(kind, DriftSchedule.at([5]))
    at3 = source(kind, DriftSchedule.at([3]))
    for r in range(5):  # before the drift: the old concept, sample for sample
        assert same(at5.batch(None, r), never.batch(None, r))
    for r in range(5, 9):  # from the drift on: the new concept, the same one as at3's
        assert same(at5.batch(None, r), at3.batch(None, r))
        assert not same(at5.batch(None, r), never.batch(None, r))
    if kind != "graphical":  # only the labelling changes; inputs keep their distribution
        assert torch.equal(at5.batch(None, 5)[0], never.batch(None, 5)[0])
    assert [at5.concept_at(r) for r in (4, 5)] == [0, 1]
    assert at5.events(10) == [DriftEvent(5, "sudden", 0, 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_eval_set_follows_the_concept(kind):
    never = source(kind)
    src = source(kind, DriftSchedule.at([5, 8], kind="recurring", pool=2))
    assert same(src.eval_set(4), never.eval_set(0))
    assert not same(src.eval_set(5), never.eval_set(5))
    assert same(src.eval_set(7), source(kind, DriftSchedule.at([1])).eval_set(1))
    assert same(src.eval_set(9), never.eval_set(9))  # back to concept 0


@pytest.mark.parametrize("kind", KINDS)
def test_recurring_returns_to_the_identical_concept(kind):
    never = source(kind)
    src = source(kind, DriftSchedule.at([3, 6], kind="recurring", pool=2))
    other = source(kind, DriftSchedule.at([1]))
    assert [src.concept_at(r) for r in (2, 3, 6)] == [0, 1, 0]
    for r in (3, 4, 5):
        assert same(src.batch(None, r), other.batch(None, r))
    for r in (6, 7, 20):
        assert same(src.batch(None, r), never.batch(None, r))


@pytest.mark.parametrize("kind", KINDS)
def test_gradual_mixing_at_the_midpoint(kind):
    m, b = 200, 10
    sched = DriftSchedule.at([10], kind="gradual", width=9)  # weight 0.5 at round 14
    src = source(kind, sched, m=m, b=b)
    old, new = source(kind, m=m, b=b), source(kind, DriftSchedule.at([1]), m=m, b=b)
    fractions = [float(src.sample_concepts(None, r).float().mean()) for r in range(9, 20)]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    # 2000 samples: the binomial sd at weight 0.5 is 0.011, tolerance 0.05 (> 4 sd)
    assert fractions[5] == pytest.approx(0.5, abs=0.05)
    assert np.all(np.diff(fractions) > 0)
    # each sample is exactly that of the concept it is labelled with
    x, y = src.batch(None, 14)
    pick = src.sample_concepts(None, 14) == 1
    xo, yo = old.batch(None, 14)
    xn, yn = new.batch(None, 14)
    assert torch.equal(y[pick], yn[pick]) and torch.equal(y[~pick], yo[~pick])
    assert torch.equal(x[pick], xn[pick]) and torch.equal(x[~pick], xo[~pick])
    # subsets see the same mixture
    assert torch.equal(src.sample_concepts(np.array([7, 3]), np.array([14, 14])), pick[[7, 3]])
    # eval set at the midpoint: about half of its samples from the new concept
    mid, before, after = (rows(s) for s in (src.eval_set(14), old.eval_set(0), new.eval_set(1)))
    differ = (before != after).any(1)
    assert int(differ.sum()) > 300
    is_new = (mid == after).all(1)[differ]
    assert torch.equal(is_new, (mid != before).any(1)[differ])
    assert float(is_new.float().mean()) == pytest.approx(0.5, abs=0.1)


def test_random_schedule_drives_the_source():
    sched = DriftSchedule.random(0.05, seed=5)
    src = source("teacher_student", sched)
    rounds = sched.drift_rounds(200)
    assert [e.round for e in src.events(200)] == rounds.tolist()
    r = int(rounds[0])
    assert (src.concept_at(r - 1), src.concept_at(r)) == (0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_requests_raise(kind):
    src = source(kind)
    with pytest.raises(DataError, match="learners"):
        src.batch(np.array([0, M]), np.array([0, 0]))
    with pytest.raises(DataError, match="rounds"):
        src.batch(np.array([0]), np.array([-1]))
    with pytest.raises(DataError, match="rounds"):
        src.batch(None, -3)
    with pytest.raises(DataError, match="learners"):
        src.batch(np.array([0.5]), np.array([0]))
    with pytest.raises(DataError, match="equal length"):
        src.batch(np.array([0, 1]), np.array([0, 1, 2]))


# ----------------------------------------------------------------- the graphical model


def test_graphical_labels_follow_the_concept_model():
    src = source("graphical", DriftSchedule.at([5]), m=200, b=10)
    m0, m1 = src.model(0), src.model(1)
    assert src.model(0) is m0 and not np.array_equal(m0.weights, m1.weights)
    acc = {}
    for r in (4, 5):
        x, y = src.batch(None, r)
        x, y = x.reshape(-1, 20).double().numpy(), y.reshape(-1).numpy()
        acc[r] = (np.mean(m0.predict(x) == y), np.mean(m1.predict(x) == y))
    be0, be1 = (bayes_error(mdl, n_samples=20_000) for mdl in (m0, m1))
    # the Bayes classifier of the concept in force scores about 1 - its Bayes error ...
    assert acc[4][0] == pytest.approx(1 - be0, abs=0.04)
    assert acc[5][1] == pytest.approx(1 - be1, abs=0.04)
    # ... and the other concept's does much worse
    assert acc[5][0] < acc[5][1] - 0.1 and acc[4][1] < acc[4][0] - 0.1


@pytest.mark.parametrize("seed", [0, 3])
def test_bayes_error_against_trained_classifiers(seed):
    src = source("graphical", m=100, b=10, seed=seed)
    be = src.bayes_error(0, n_samples=20_000, seed=seed)
    assert 0.0 <= be <= 0.5
    # two Monte-Carlo estimates: each sd <= 0.25 / sqrt(20000) = 0.0018
    assert be == pytest.approx(bayes_error(src.model(0), n_samples=20_000, seed=seed + 10),
                               abs=0.008)

    def data(rounds: range) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = zip(*(src.batch(None, r) for r in rounds))
        return torch.cat(xs).reshape(-1, 20).double().numpy(), torch.cat(ys).reshape(-1).numpy()

    (x, y), (xt, yt) = data(range(20)), data(range(20, 40))  # 20000 samples each
    bayes_acc = np.mean(src.model(0).predict(xt) == yt)  # sd of an accuracy: <= 0.0036
    assert bayes_acc == pytest.approx(1 - be, abs=0.015)
    logreg = LogisticRegression(max_iter=1000).fit(x, y).score(xt, yt)
    assert 1 - be - 0.05 <= logreg <= 1 - be + 0.015  # near, never clearly above, Bayes


def test_bayes_error_exact_for_binary_features_agrees_with_monte_carlo():
    rng = np.random.default_rng(4)
    mdl = random_graphical_model(rng, n_hidden=5, n_features=10, binary=True)
    exact = bayes_error(mdl)  # sums over all 2^10 inputs
    assert 0.0 < exact < 0.5
    probs = np.exp(mdl.log_joint((np.arange(1024)[:, None] >> np.arange(10)) & 1))
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)  # log_joint is the exact joint here
    x, y = mdl.sample(50_000, np.random.default_rng(5))
    assert np.mean(mdl.predict(x) != y) == pytest.approx(exact, abs=0.01)


def test_graphical_source_samples_match_the_model():
    src = source("graphical", m=500, b=20, prior=0.3, features="binary")
    x, y = src.batch(None, 0)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    assert float(y.float().mean()) == pytest.approx(0.3, abs=0.02)
    mdl = src.model(0)
    xs, ys = mdl.sample(100_000, np.random.default_rng(0))
    # feature marginals of the torch sampler equal those of the numpy reference sampler
    got = x.reshape(-1, 20).double().mean(0).numpy()
    assert np.allclose(got, xs.mean(0), atol=0.02)
    acc = np.mean(mdl.predict(x.reshape(-1, 20).double().numpy()) == y.reshape(-1).numpy())
    assert acc == pytest.approx(1 - bayes_error(mdl, n_samples=20_000), abs=0.02)


# ----------------------------------------------------------------- digits and teacher


def test_digits_labels_are_permuted_copies():
    never = source("digits_permuted")
    src = source("digits_permuted", DriftSchedule.at([2, 4]))
    p0, p1, p2 = (src.permutation(c) for c in range(3))
    assert np.array_equal(p0, np.arange(10))
    for p in (p1, p2):
        assert sorted(p.tolist()) == list(range(10)) and not (p == np.arange(10)).any()
    for r, perm in ((1, p0), (3, p1), (5, p2)):
        (x, y), (xn, yn) = src.batch(None, r), never.batch(None, r)
        assert torch.equal(x, xn) and torch.equal(y, torch.as_tensor(perm)[yn])
    ye, yt = src.eval_set(3)[1], src.dataset.y_test
    assert torch.equal(ye, torch.as_tensor(p1)[yt])


def test_digits_with_given_parts_reads_only_them():
    parts = [np.arange(0, 10), np.arange(100, 130)]
    src = source("digits_permuted", m=2, b=5, parts=parts, eval_on="train", max_eval=50)
    x, _ = src.batch(None, 0)
    train = src.dataset.x_train
    for i, part in enumerate(parts):
        for row in x[i]:
            assert any(torch.equal(row, train[j]) for j in part)
    assert len(src.eval_set(0)[1]) == 50


def test_teacher_labels_are_the_teachers_argmax():
    src = source("teacher_student", DriftSchedule.at([5]), m=100, b=10, n_classes=4)
    t0, t1 = src.teacher(0), src.teacher(1)
    for r, (now, other) in ((4, (t0, t1)), (5, (t1, t0))):
        x, y = src.batch(None, r)
        x, y = x.reshape(-1, 20).double().numpy(), y.reshape(-1).numpy()
        assert np.mean(now.labels(x) == y) > 0.995  # float32 vs float64 near-ties only
        assert np.mean(other.labels(x) == y) < 0.6
    counts = np.bincount(src.eval_set(0)[1].numpy(), minlength=4) / 2000
    assert np.allclose(counts, 0.25, atol=0.04)  # balanced classes


# ----------------------------------------------------------------- construction errors


@pytest.mark.parametrize("kind, params, key", [
    ("graphical", {"n_hidden": 0}, "n_hidden"),
    ("graphical", {"n_hidden": 17}, "n_hidden"),
    ("graphical", {"fan_in": 9}, "fan_in"),
    ("graphical", {"noise": 0.0}, "noise"),
    ("graphical", {"prior": 1.0}, "prior"),
    ("graphical", {"features": "ternary"}, "features"),
    ("graphical", {"cpt_low": 0.8, "cpt_high": 0.2}, "cpt_high"),
    ("graphical", {"n_eval": 0}, "n_eval"),
    ("graphical", {"colour": 3}, "colour"),
    ("teacher_student", {"hidden": [8, 0]}, r"hidden\[1\]"),
    ("teacher_student", {"hidden": "wide"}, "hidden"),
    ("teacher_student", {"n_classes": 1}, "n_classes"),
    ("teacher_student", {"balanced": "yes"}, "balanced"),
    ("digits_permuted", {"eval_on": "validation"}, "eval_on"),
    ("digits_permuted", {"max_eval": 0}, "max_eval"),
    ("digits_permuted", {"parts": [np.arange(5)]}, "parts"),
])
def test_bad_source_parameters_name_themselves(kind, params, key):
    with pytest.raises(DataError, match=key):
        source(kind, **params)


def test_bad_common_parameters():
    with pytest.raises(DataError, match="unknown kind"):
        make_source("mnist_rotated", m=2, batch_size=2, seed=0, schedule=None)
    with pytest.raises(DataError, match="m:"):
        source("graphical", m=0)
    with pytest.raises(DataError, match="batch_size"):
        source("teacher_student", b=0)
    with pytest.raises(DataError, match="seed"):
        source("graphical", seed=-1)
    with pytest.raises(DataError, match="schedule"):
        make_source("graphical", m=2, batch_size=2, seed=0, schedule="sudden")
    with pytest.raises(DataError, match="device"):
        make_source("graphical", m=2, batch_size=2, seed=0, device="abacus")


def test_classes_are_exported():
    assert SOURCES == {"graphical": GraphicalModelSource,
                       "digits_permuted": PermutedDigitsSource,
                       "teacher_student": TeacherStudentSource}
