"""Mutual-information estimators against ground truth (netfl.probes.mi).

Truths: jointly Gaussian pairs, I = 1/2 log2(det Sx det Sy / det Sxy); independent pairs
(I = 0); a class-conditional Gaussian mixture whose I(Y;Z) is a 1-D integral (quadrature);
well-separated classes (I = H(Y) ~ log2 K). Every tolerance is stated in the assertion; the
numbers in comments are the estimates these fixed seeds give (N = 4000).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.special import expit, xlogy

from netfl.probes import mi

N = 4000
ESTIMATOR_NAMES = ["edge", "ksg", "gaussian", "binned"]
SQUARE = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])


def gaussian_truth(cov: np.ndarray, dx: int) -> float:
    """I(X;Y) in bits for jointly Gaussian (X, Y) with covariance cov, X the first dx dims."""
    _, ld = np.linalg.slogdet(cov)
    _, ldx = np.linalg.slogdet(cov[:dx, :dx])
    _, ldy = np.linalg.slogdet(cov[dx:, dx:])
    return 0.5 * (ldx + ldy - ld) / math.log(2)


def rho_pair(rho: float, n: int = N, seed: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = rho * a + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return a, b, -0.5 * math.log2(1 - rho**2)


def block_pair(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """x [n, 3], y [n, 2] with a random full covariance (cross-block correlations)."""
    a = np.random.default_rng(3).standard_normal((5, 5))
    cov = a @ a.T + 0.5 * np.eye(5)
    z = np.random.default_rng(seed).standard_normal((n, 5)) @ np.linalg.cholesky(cov).T
    return z[:, :3], z[:, 3:], gaussian_truth(cov, 3)


def square_mixture_truth() -> float:
    """I(Y;Z) for 4 equiprobable classes at the corners of a square of side 2, unit variance.

    The label is two independent bits, each seen through its own coordinate, so I is twice
    the MI of a binary label and N(+-1, 1): 1 - E[h2(P(b=1 | z))], P(b=1 | z) = expit(2 z).
    """

    def integrand(z: float) -> float:
        density = 0.5 * (math.exp(-((z - 1) ** 2) / 2) + math.exp(-((z + 1) ** 2) / 2))
        p = expit(2 * z)
        h2 = -(xlogy(p, p) + xlogy(1 - p, 1 - p)) / math.log(2)
        return density / math.sqrt(2 * math.pi) * h2

    return 2 * (1 - integrate.quad(integrand, -25, 25, epsabs=1e-13, limit=200)[0])


def square_mixture(n: int = N, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    return SQUARE[labels] + rng.standard_normal((n, 2)), labels


def separated(n: int = N, seed: int = 4) -> tuple[np.ndarray, np.ndarray, float]:
    """10 classes in 20-D, means 6 standard deviations apart per axis: I = H(Y)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    means = 6.0 * rng.standard_normal((10, 20))
    counts = np.bincount(labels) / n
    return means[labels] + rng.standard_normal((n, 20)), labels, -float(counts @ np.log2(counts))


def independent(n: int = N, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 2))


def check(name: str, est: float, truth: float, tol: float) -> None:
    assert abs(est - truth) < tol, f"{name}: {est:.4f} vs truth {truth:.4f} (tolerance {tol})"


def test_truth_helpers() -> None:
    # Quadrature against the textbook values; tolerance 1e-4 bit.
    assert abs(rho_pair(0.5)[2] - 0.2075) < 1e-4
    assert abs(rho_pair(0.9)[2] - 1.198) < 1e-3
    assert abs(square_mixture_truth() - 0.9719) < 1e-4  # Monte Carlo (4e5 draws): 0.974


# ---------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_gaussian_correlated_1d(rho: float) -> None:
    x, y, truth = rho_pair(rho)
    check("gaussian", mi.gaussian(x, y), truth, 0.03)  # 0.206 / 1.207


def test_gaussian_block_and_independent() -> None:
    x, y, truth = block_pair()
    check("gaussian block", mi.gaussian(x, y), truth, 0.05)  # 1.032 vs 1.014
    xi, yi = independent()
    assert mi.gaussian(xi, yi) < 0.01, "independent: within 0.01 bit (bias ~ dx dy / 2N ln2)"


def test_gaussian_labels() -> None:
    z, labels = square_mixture()
    # Gaussian fit of the mixture over-states H(Z): 0.996 vs 0.972; tolerance 0.06 bit.
    check("gaussian labels", mi.gaussian(z, labels), square_mixture_truth(), 0.06)
    zs, ls, hy = separated()
    check("gaussian separated (clipped at H(Y))", mi.gaussian(zs, ls), hy, 0.01)


def test_gaussian_bias_correction() -> None:
    rng = np.random.default_rng(6)
    z = rng.standard_normal((N, 20))
    labels = rng.integers(0, 10, N)
    raw = mi.gaussian(z, labels)
    corrected = mi.gaussian(z, labels, bias_correction=True)
    assert raw > 0.2, f"uncorrected label form is biased on independent 20-D data: {raw:.3f}"
    assert corrected < 0.05, f"corrected: within 0.05 bit of 0, got {corrected:.3f}"
    x, y, truth = block_pair()
    check("gaussian corrected block", mi.gaussian(x, y, bias_correction=True), truth, 0.05)


def test_gaussian_singular_covariance() -> None:
    x, y, _ = block_pair()
    base = mi.gaussian(x, y)
    # A duplicated column and a dead unit make Sx singular; the ridge keeps it finite and
    # the estimate moves by less than 1e-3 bit.
    x_bad = np.column_stack([x, x[:, 0], np.zeros(len(x))])
    est = mi.gaussian(x_bad, y)
    assert math.isfinite(est) and abs(est - base) < 1e-3, (est, base)
    # N < d: finite and non-negative (dominated by the ridge, as documented).
    rng = np.random.default_rng(7)
    small = mi.gaussian(rng.standard_normal((20, 50)), rng.standard_normal((20, 30)))
    assert math.isfinite(small) and small >= 0.0
    with pytest.raises(ValueError, match="singular"):
        mi.gaussian(x_bad, y, ridge=0.0)


# ---------------------------------------------------------------------------- KSG


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ksg_correlated_1d(rho: float) -> None:
    x, y, truth = rho_pair(rho)
    check("ksg", mi.ksg(x, y), truth, 0.04)  # 0.217 / 1.200


def test_ksg_block_and_independent() -> None:
    x, y, truth = block_pair()
    check("ksg block", mi.ksg(x, y), truth, 0.08)  # 1.016 vs 1.014
    xi, yi = independent()
    raw = mi.ksg(xi, yi, clip=False)
    assert abs(raw) < 0.03, f"independent, unclipped: |I| < 0.03 bit, got {raw:.4f}"
    assert mi.ksg(xi, yi) == max(raw, 0.0), "clip=True clips at 0"


def test_ksg_labels_ross() -> None:
    z, labels = square_mixture()
    check("ksg labels", mi.ksg(z, labels), square_mixture_truth(), 0.05)  # 0.986 vs 0.972
    zs, ls, hy = separated()
    check("ksg separated", mi.ksg(zs, ls), hy, 0.05)
    zi = np.random.default_rng(8).standard_normal((N, 20))
    assert mi.ksg(zi, ls, clip=False) < 0.03, "independent labels: below 0.03 bit"


def test_ksg_matches_scikit_learn_univariate() -> None:
    # scikit-learn implements the same estimators for one feature (nats); agree to 1e-9 bit.
    fs = pytest.importorskip("sklearn.feature_selection")
    x, y, _ = rho_pair(0.7, n=2000)
    ref = fs.mutual_info_regression(x[:, None], y, n_neighbors=3, random_state=0)[0]
    assert abs(mi.ksg(x, y) - ref / math.log(2)) < 1e-9
    z, labels = square_mixture(n=2000)
    ref = fs.mutual_info_classif(z[:, :1], labels, n_neighbors=3, random_state=0)[0]
    assert abs(mi.ksg(z[:, 0], labels) - ref / math.log(2)) < 1e-9


def test_ksg_search_strategies_agree() -> None:
    # kd-tree and brute force count the same neighbours: equal to 1e-12.
    x, y, _ = block_pair(n=1500)
    z, labels = square_mixture(n=1500)
    for a, b in [(x, y), (z, labels)]:
        kd = mi.ksg(a, b, algorithm="kd_tree", clip=False)
        brute = mi.ksg(a, b, algorithm="brute", clip=False, workers=2)
        assert abs(kd - brute) < 1e-12, (kd, brute)
    kd = mi.ksg(z, labels, metric="euclidean", algorithm="kd_tree")
    brute = mi.ksg(z, labels, metric="euclidean", algorithm="brute")
    assert abs(kd - brute) < 1e-12, (kd, brute)


def test_ksg_euclidean_marginals() -> None:
    # Any marginal norm is valid in algorithm 1: same truth, tolerance 0.08 bit.
    x, y, truth = block_pair()
    check("ksg euclidean block", mi.ksg(x, y, metric="euclidean"), truth, 0.08)


def test_ksg_dead_unit_and_ties() -> None:
    x, y, _ = block_pair(n=1500)
    base = mi.ksg(x, y)
    dead = np.column_stack([y, np.full(len(y), 3.0)])  # a constant unit, like a dead ReLU
    assert abs(mi.ksg(x, dead) - base) < 1e-6, "a constant column changes nothing (1e-6 bit)"
    # Heavily tied data (a 0.5-quantized column) still gives a finite, sane estimate.
    q = np.round(x * 2) / 2
    est = mi.ksg(q, y)
    assert math.isfinite(est) and 0.0 <= est < 3.0, est


# ---------------------------------------------------------------------------- EDGE


def test_edge_correlated_1d() -> None:
    # Upward bias from the floor on weak dependence (documented): 0.37 for a true 0.21.
    x, y, truth = rho_pair(0.5)
    est = mi.edge(x, y)
    assert truth - 0.05 < est < truth + 0.25, f"edge rho=0.5: {est:.3f} vs {truth:.3f}"
    x, y, truth = rho_pair(0.9)
    check("edge rho=0.9", mi.edge(x, y), truth, 0.15)  # 1.25


def test_edge_block_is_understated_but_ordered() -> None:
    # Coarse buckets under-state multivariate dependence (documented): 0.43 for 1.01.
    x, y, truth = block_pair()
    est = mi.edge(x, y)
    xi, yi = independent()
    ind = mi.edge(xi, yi)
    assert ind < 0.15, f"independent 3+2 dims: below 0.15 bit (floor bias), got {ind:.3f}"
    assert ind + 0.15 < est < truth + 0.1, f"dependent {est:.3f}, independent {ind:.3f}"


def test_edge_independent_1d() -> None:
    x, y = np.random.default_rng(9).standard_normal((2, N))
    assert mi.edge(x, y) < 0.2, "independent 1-D: below 0.2 bit (floor bias ~0.1)"


def test_edge_labels() -> None:
    z, labels = square_mixture()
    check("edge labels", mi.edge(z, labels), square_mixture_truth(), 0.25)  # 1.11 vs 0.97
    zs, ls, hy = separated()
    check("edge separated", mi.edge(zs, ls), hy, 0.5)  # 2.9-3.2 over seeds, H(Y) = 3.32
    zi = np.random.default_rng(8).standard_normal((N, 20))
    assert mi.edge(zi, ls) < 0.4, "independent labels: below 0.4 bit (floor bias 0.15-0.3)"


def test_edge_parameters() -> None:
    x, y, _ = rho_pair(0.9, n=2000)
    fixed = mi.edge(x, y, epsilon=0.5)
    assert 0.5 < fixed < 2.0, fixed
    plain = mi.edge(x, y, floor=-np.inf, ensemble=1)
    assert 0.5 < plain < 2.0, plain
    assert mi.edge(x, y, buckets=4) < mi.edge(x, y, buckets=40), "fewer buckets, less MI"


# ---------------------------------------------------------------------------- binned


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_binned_correlated_1d(rho: float) -> None:
    x, y, truth = rho_pair(rho)
    est = mi.binned(x, y)
    # 30 x 30 bins on 4000 points: plug-in bias up to ~0.15 bit, binning loss below 0.05.
    assert truth - 0.05 < est < truth + 0.15, f"binned rho={rho}: {est:.3f} vs {truth:.3f}"


def test_binned_independent_and_labels() -> None:
    x, y = np.random.default_rng(9).standard_normal((2, N))
    assert mi.binned(x, y, bins=10) < 0.03, "independent, 10 bins: bias ~81/(2N ln 2) = 0.015"
    z, labels = square_mixture()
    check("binned labels", mi.binned(z, labels), square_mixture_truth(), 0.2)  # 1.10
    zs, ls, hy = separated(n=1000)
    check("binned separated", mi.binned(zs, ls), hy, 1e-9)


def test_binned_fixed_range_clips_relu() -> None:
    # Saxe et al.'s fixed [-1, 1] range folds ReLU values above 1 into the last bin, so
    # the two upper quartiles of the pre-activation become one symbol.
    _, y, _ = rho_pair(0.9)
    quartile = np.searchsorted(np.quantile(y, [0.25, 0.5, 0.75]), y)
    relu = np.maximum(10 * y, 0)
    own = mi.binned(relu, quartile)  # 1.21 (the two lower quartiles merge at 0)
    fixed = mi.binned(relu, quartile, range=(-1.0, 1.0))  # 0.96
    assert fixed < own - 0.15, f"fixed range loses information: {fixed:.3f} vs {own:.3f}"


# ---------------------------------------------------------------------------- contracts


def all_estimates(x, y, **kw) -> dict[str, float]:
    return {name: mi.estimate(name, x, y, **kw.get(name, {})) for name in ESTIMATOR_NAMES}


@pytest.fixture(scope="module")
def small():
    x, y, _ = block_pair(n=600)
    z, labels = square_mixture(n=600)
    return x, y, z, labels


def test_permutation_invariance(small) -> None:
    x, y, z, labels = small
    perm = np.random.default_rng(10).permutation(len(x))
    for a, b in [(x, y), (z, labels)]:
        before = all_estimates(a, b)
        after = all_estimates(a[perm], b[perm])
        for name in ESTIMATOR_NAMES:
            assert abs(before[name] - after[name]) < 1e-9, (name, before[name], after[name])


def test_inputs_not_mutated_and_readonly_ok(small) -> None:
    x, y, z, labels = small
    arrays = [a.copy() for a in (x, y, z, labels)]
    for a in arrays:
        a.setflags(write=False)  # any in-place write would raise
    all_estimates(arrays[0], arrays[1])
    all_estimates(arrays[2], arrays[3])
    for a, original in zip(arrays, (x, y, z, labels), strict=True):
        np.testing.assert_array_equal(a, original)


def test_seeded_and_global_rng_untouched(small) -> None:
    x, y, z, labels = small
    np.random.seed(123)
    state = np.random.get_state()
    first = all_estimates(x, y)
    second = all_estimates(x, y)
    assert first == second, "same inputs and seed: identical results"
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    assert mi.edge(x, y, seed=1) != mi.edge(x, y, seed=2), "the seed drives EDGE's hashing"
    assert abs(mi.ksg(x, y, seed=1) - mi.ksg(x, y, seed=2)) < 1e-6, "noise only breaks ties"


def test_torch_inputs(small) -> None:
    torch = pytest.importorskip("torch")
    x, y, z, labels = small
    for a, b in [(x, y), (z, labels)]:
        ref = all_estimates(a, b)
        got = all_estimates(torch.from_numpy(a), torch.from_numpy(b))
        for name in ESTIMATOR_NAMES:
            assert abs(ref[name] - got[name]) < 1e-12, name
    f32 = all_estimates(torch.from_numpy(z).float(), torch.from_numpy(labels))
    assert all(math.isfinite(v) for v in f32.values())


def test_one_dimensional_inputs(small) -> None:
    x, y, z, labels = small
    flat = all_estimates(x[:, 0], y[:, 0])
    column = all_estimates(x[:, :1], y[:, :1])
    assert flat == column
    assert all_estimates(z, labels) == all_estimates(z, labels[:, None])


def test_integer_y_is_labels_float_y_is_continuous(small) -> None:
    _, _, z, labels = small
    # The same values as floats go through the continuous forms: results differ.
    as_float = mi.ksg(z, labels.astype(float))
    assert as_float != mi.ksg(z, labels)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_bad_inputs(name: str) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((50, 2))
    y = rng.standard_normal(50)
    with pytest.raises(ValueError, match="same number of rows"):
        mi.estimate(name, x, y[:40])
    with pytest.raises(ValueError, match=r"1-D \[N\] or 2-D"):
        mi.estimate(name, x[:, :, None], y)
    with pytest.raises(ValueError, match="empty"):
        mi.estimate(name, np.empty((0, 2)), np.empty(0))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        mi.estimate(name, bad, y)
    with pytest.raises(ValueError, match="numeric"):
        mi.estimate(name, x, np.array(["a"] * 50))


def test_bad_parameters() -> None:
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((2, 30))
    with pytest.raises(ValueError, match="unknown MI estimator 'nope'; known: binned, edge"):
        mi.estimate("nope", x, y)
    with pytest.raises(ValueError, match="k must be < the number of samples"):
        mi.ksg(x, y, k=30)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        mi.ksg(x, y, k=0)
    with pytest.raises(ValueError, match="metric"):
        mi.ksg(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="workers must be -1"):
        mi.ksg(x, y, workers=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mi.ksg(x, np.arange(30))
    with pytest.raises(ValueError, match="bins must be an integer >= 1"):
        mi.binned(x, y, bins=0)
    with pytest.raises(ValueError, match="range must be finite with low < high"):
        mi.binned(x, y, range=(1.0, -1.0))
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        mi.gaussian(x, y, ridge=-1.0)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        mi.edge(x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="floor must be <= upper"):
        mi.edge(x, y, floor=5.0, upper=1.0)
    with pytest.raises(ValueError, match="bias_correction needs more samples"):
        mi.gaussian(
            rng.standard_normal((10, 8)), rng.standard_normal((10, 8)), bias_correction=True
        )


def test_registry() -> None:
    assert set(mi.ESTIMATORS) == set(ESTIMATOR_NAMES)
    x, y, _ = rho_pair(0.9, n=500)
    assert mi.estimate("gaussian", x, y) == mi.gaussian(x, y)


@pytest.mark.parametrize("n", [10, 100, 1000, 4097])
@pytest.mark.parametrize("cx, cy", [(0.3, 0.1), (10.0 / 3, 0.7)])
def test_gaussian_is_zero_on_constant_columns_whatever_their_value(n, cx, cy):
    # 0.3 is not a float: its centred column is round-off, which must not count as signal
    assert mi.gaussian(np.full((n, 3), cx), np.full((n, 2), cy)) == 0.0
    assert mi.gaussian(np.full((n, 1), cx), np.full((n, 1), cy)) == 0.0
    noise = np.random.default_rng(n).normal(size=(n, 2))
    with_constant = np.hstack([noise[:, :1], np.full((n, 1), cx)])
    assert mi.gaussian(with_constant, noise[:, 1:]) == pytest.approx(
        mi.gaussian(noise[:, :1], noise[:, 1:]), abs=1e-6)  # the ridge scales with d


def test_a_small_spread_on_a_large_offset_is_not_taken_for_a_constant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1))
    y = x + 0.5 * rng.normal(size=(2000, 1))
    truth = mi.gaussian(x, y)
    assert truth > 0.5
    assert mi.gaussian(1e6 + 1e-3 * x, y) == pytest.approx(truth, rel=1e-6)
