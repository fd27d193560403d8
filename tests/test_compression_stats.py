"""Gradient statistics (issue 4, item 6): fits, kurtosis, W2 distances, independence tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from netfl.compression.stats import (
    fit_gennorm,
    independence_tests,
    layer_stats,
    run_stats,
    wasserstein2,
)


def test_wasserstein2_is_exact_on_quantiles_and_shifts():
    n = 1000
    z = (np.arange(n) + 0.5) / n
    q = stats.norm.ppf(z)
    assert wasserstein2(q, stats.norm()) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein2(q + 0.5, stats.norm()) == pytest.approx(0.5, abs=1e-12)
    assert wasserstein2(2 * q, stats.norm()) == pytest.approx(
        np.sqrt(np.mean(q**2)), rel=1e-12
    )


def test_laplace_layer():
    x = np.random.default_rng(0).laplace(scale=0.01, size=20_000)
    s = layer_stats(x)
    assert s.n == 20_000
    assert s.beta == pytest.approx(1.0, abs=0.05)
    assert s.scale == pytest.approx(0.01, rel=0.05)
    assert s.excess_kurtosis == pytest.approx(3.0, abs=0.5)
    assert s.w2_gennorm < s.w2_normal and s.w2_laplace < s.w2_normal
    assert s.w2_gennorm < 0.05 * x.std()


def test_gaussian_layer():
    x = np.random.default_rng(1).normal(scale=2.0, size=20_000)
    s = layer_stats(x, method="moments")
    assert s.beta == pytest.approx(2.0, abs=0.1)
    assert s.excess_kurtosis == pytest.approx(0.0, abs=0.15)
    assert s.w2_normal < 0.03 * 2.0 and s.w2_laplace > 3 * s.w2_normal


def test_heavy_tailed_layer_has_small_beta():
    x = stats.gennorm.rvs(0.6, size=20_000, random_state=np.random.default_rng(2))
    s = layer_stats(x)
    assert s.beta == pytest.approx(0.6, abs=0.05)
    assert s.excess_kurtosis > 5
    assert s.w2_gennorm < s.w2_laplace < s.w2_normal


def test_subsampling_is_seeded():
    x = np.random.default_rng(3).standard_t(4, size=100_000)
    a, b = layer_stats(x, max_samples=5000, seed=4), layer_stats(x, max_samples=5000, seed=4)
    assert a == b and a.n == 100_000


def test_fit_gennorm_methods_agree():
    x = stats.gennorm.rvs(1.4, loc=0.2, scale=0.5, size=20_000,
                          random_state=np.random.default_rng(5))
    beta_mle, loc_mle, scale_mle = fit_gennorm(x, "mle")
    beta_mom, loc_mom, scale_mom = fit_gennorm(x, "moments")
    assert beta_mle == pytest.approx(1.4, rel=0.05) and loc_mle == pytest.approx(0.2, abs=0.01)
    assert beta_mom == pytest.approx(beta_mle, rel=0.08)
    assert scale_mom == pytest.approx(scale_mle, rel=0.08)


def test_independent_iterations_pass_both_tests():
    rng = np.random.default_rng(6)
    series = [rng.laplace(size=5000) for _ in range(60)]
    r = independence_tests(series, sample_size=100, seed=0)
    assert r.pairs == 59 and r.sample_size == 100
    assert r.spearman_pass_ratio >= 0.85 and r.ks_pass_ratio >= 0.85
    assert abs(r.spearman_mean_stat) < 0.05
    assert r.ks_mean_stat < 0.15


def test_dependent_or_drifting_iterations_fail():
    rng = np.random.default_rng(7)
    base = rng.laplace(size=5000)
    correlated = [base + 0.1 * rng.standard_normal(5000) for _ in range(20)]
    r = independence_tests(correlated, sample_size=100, seed=1)
    assert r.spearman_pass_ratio == 0.0 and r.spearman_mean_stat > 0.9
    growing = [rng.laplace(scale=3.0**t, size=5000) for t in range(20)]
    r = independence_tests(growing, sample_size=300, seed=1)
    assert r.ks_pass_ratio <= 0.1


def test_independence_is_deterministic_and_validates():
    rng = np.random.default_rng(8)
    series = [rng.standard_normal(1000) for _ in range(10)]
    assert independence_tests(series, seed=3) == independence_tests(series, seed=3)
    with pytest.raises(ValueError):
        independence_tests(series[:1])
    with pytest.raises(ValueError):
        independence_tests([np.zeros(10), np.zeros(11)])
    with pytest.raises(ValueError):
        layer_stats(np.array([1.0, np.nan, 2.0]))


def test_run_stats_rows():
    rng = np.random.default_rng(9)
    history = [[rng.standard_normal((20, 30)), rng.laplace(size=50)] for _ in range(4)]
    rows, tests = run_stats(history, method="moments")
    assert len(rows) == 8 and {r["layer"] for r in rows} == {0, 1}
    assert rows[0]["iteration"] == 0 and rows[0]["n"] == 600
    assert len(tests) == 2 and tests[1]["pairs"] == 3 and tests[1]["sample_size"] == 50
