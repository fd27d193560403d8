"""Gradient statistics of seed 003's modelling slides, as plain functions over arrays.

Per layer and iteration: fitted generalized-normal shape (beta) and scale, excess kurtosis,
and the Wasserstein-2 distance between the empirical distribution of the update and the
fitted GenNorm, Normal and Laplace. Across iterations: Spearman rank correlation (are the
entries at the same coordinates of consecutive iterations independent?) and two-sample
Kolmogorov-Smirnov (are consecutive iterations identically distributed?) on random samples
of coordinates, reported as the ratio of pairs that pass (p-value > alpha) and the mean
statistic, as in the seed's tables. A probe or tool records updates and calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from netfl.compression import fitting


@dataclass(frozen=True)
class LayerStats:
    """Distribution statistics of one layer's update (n entries)."""

    n: int
    beta: float
    loc: float
    scale: float
    excess_kurtosis: float
    w2_gennorm: float
    w2_normal: float
    w2_laplace: float

    def row(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class IndependenceResult:
    """Pass ratios (p > alpha) and mean statistics over pairs of iterations."""

    pairs: int
    sample_size: int
    spearman_pass_ratio: float
    spearman_mean_stat: float
    ks_pass_ratio: float
    ks_mean_stat: float

    def row(self) -> dict[str, float]:
        return asdict(self)


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size < 2:
        raise ValueError(f"need at least 2 entries, got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError("the update contains NaN or Inf")
    return x


def wasserstein2(x: np.ndarray, dist: stats.rv_continuous) -> float:
    """W2 = (int_0^1 |F_x^-1(z) - F^-1(z)|^2 dz)^(1/2) between the empirical distribution of
    x and a frozen scipy distribution, the quantile integral taken at the midpoints
    z = (i + 1/2) / n of the n empirical steps."""
    x = np.sort(_flat(x))
    z = (np.arange(x.size) + 0.5) / x.size
    return float(np.sqrt(np.mean((x - dist.ppf(z)) ** 2)))


def fit_gennorm(x: np.ndarray, method: str = "mle") -> tuple[float, float, float]:
    """(beta, loc, scale) of a generalized normal fitted to x: scipy's maximum likelihood
    ("mle", loc free) or the moment ratio method of fitting.py ("moments", loc = mean)."""
    x = _flat(x)
    if method == "mle":
        beta, loc, scale = stats.gennorm.fit(x)
        return float(beta), float(loc), float(scale)
    loc = float(x.mean())
    beta, scale = fitting.fit(x - loc, "gennorm", "moments")
    return beta, loc, scale


def layer_stats(
    x: np.ndarray, method: str = "mle", max_samples: int | None = 20_000, seed: int = 0
) -> LayerStats:
    """Statistics of one layer's update. Fits and distances use at most max_samples entries
    drawn without replacement by a generator seeded with `seed` (MLE on millions of
    entries is slow and adds nothing to a fit of 2 or 3 parameters)."""
    x = _flat(x)
    n = x.size
    if max_samples is not None and n > max_samples:
        x = np.random.default_rng(seed).choice(x, size=max_samples, replace=False)
    beta, loc, scale = fit_gennorm(x, method)
    normal = stats.norm(loc=x.mean(), scale=x.std())
    median = float(np.median(x))
    laplace = stats.laplace(loc=median, scale=float(np.mean(np.abs(x - median))))
    return LayerStats(
        n=n,
        beta=beta,
        loc=loc,
        scale=scale,
        excess_kurtosis=float(stats.kurtosis(x, fisher=True)),
        w2_gennorm=wasserstein2(x, stats.gennorm(beta, loc=loc, scale=scale)),
        w2_normal=wasserstein2(x, normal),
        w2_laplace=wasserstein2(x, laplace),
    )


def independence_tests(
    series: Sequence[np.ndarray],
    sample_size: int = 100,
    alpha: float = 0.05,
    lag: int = 1,
    seed: int = 0,
) -> IndependenceResult:
    """Spearman and KS tests between iterations t and t + lag of one layer's updates.

    For each pair, `sample_size` coordinates are drawn (the same ones in both iterations);
    Spearman tests whether the two samples are monotonically related (pass: p > alpha, no
    evidence of dependence), KS whether they come from one distribution (pass: p > alpha).
    """
    if lag < 1:
        raise ValueError(f"lag must be >= 1, got {lag}")
    flats = [_flat(s) for s in series]
    if len(flats) <= lag:
        raise ValueError(f"need more than lag={lag} iterations, got {len(flats)}")
    n = flats[0].size
    if any(f.size != n for f in flats):
        raise ValueError("every iteration of a layer must have the same number of entries")
    size = min(sample_size, n)
    rng = np.random.default_rng(seed)
    sp_pass = sp_stat = ks_pass = ks_stat = 0.0
    pairs = len(flats) - lag
    for t in range(pairs):
        idx = rng.choice(n, size=size, replace=False)
        a, b = flats[t][idx], flats[t + lag][idx]
        rho, p_rho = stats.spearmanr(a, b)
        rho = 0.0 if np.isnan(rho) else float(rho)  # a constant sample: no monotone relation
        p_rho = 1.0 if np.isnan(p_rho) else float(p_rho)
        ks = stats.ks_2samp(a, b)
        sp_pass += p_rho > alpha
        sp_stat += rho
        ks_pass += float(ks.pvalue) > alpha
        ks_stat += float(ks.statistic)
    return IndependenceResult(
        pairs=pairs,
        sample_size=size,
        spearman_pass_ratio=sp_pass / pairs,
        spearman_mean_stat=sp_stat / pairs,
        ks_pass_ratio=ks_pass / pairs,
        ks_mean_stat=ks_stat / pairs,
    )


def run_stats(
    history: Sequence[Sequence[np.ndarray]],
    method: str = "mle",
    sample_size: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Rows for a whole run: history[t][l] is layer l's update at iteration t.

    Returns (per iteration and layer: LayerStats fields plus 'iteration' and 'layer';
    per layer: IndependenceResult fields plus 'layer'), ready for a recorder or a table."""
    rows = []
    for t, layers in enumerate(history):
        for layer, x in enumerate(layers):
            rows.append({"iteration": t, "layer": layer, **layer_stats(x, method, seed=seed).row()})
    tests = []
    if len(history) > 1:
        for layer in range(len(history[0])):
            series = [layers[layer] for layers in history]
            result = independence_tests(series, sample_size, alpha, seed=seed + layer)
            tests.append({"layer": layer, **result.row()})
    return rows, tests
