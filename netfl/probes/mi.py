"""Mutual-information estimators for the information-flow probes.

Four estimators of I(X; Y) in **bits**, each a pure function of two sample arrays (the
discrete-label form used when ``y`` holds integers in brackets):

* ``edge``: hashing dependence graph of Noshad, Zeng & Hero, O(N) (the label is the hash on
  the y side);
* ``ksg``: Kraskov k-nearest neighbours, algorithm 1 (Ross 2014, discrete-continuous);
* ``gaussian``: log-determinants of covariances (Gaussian class-conditionals);
* ``binned``: equal-width bins and plug-in entropies, the information-plane baseline (labels
  used as symbols).

Conventions shared by all of them:

* ``x`` has shape ``[N, dx]`` and ``y`` shape ``[N, dy]``; 1-D arrays are read as one column.
  NumPy arrays and torch tensors (any device) are accepted; inputs are never modified.
* A ``y`` of integer (or bool) dtype is read as discrete class labels, and each estimator
  switches to its discrete form (the I(Y; Z) case of the information plane). ``x`` is
  always continuous: pass a representation as ``x`` and labels as ``y``.
* Randomness (projections, offsets, tie-breaking noise) comes from
  ``numpy.random.default_rng(seed)``; the global generators are never touched, so the same
  inputs and seed give the same number.
* Bad shapes, NaN or infinity, and impossible parameters raise ``ValueError`` naming the
  argument.

Accuracy against a closed-form Gaussian truth for d = 1, 4, 8: ``tools/mi_accuracy.py``
(tested in tests/test_mi_accuracy.py); in several dimensions only ``ksg`` and ``gaussian``
follow the truth.

References: Kraskov, Stoegbauer & Grassberger, Phys. Rev. E 69, 066138 (2004); Ross, PLoS ONE
9, e87357 (2014); Noshad, Zeng & Hero, "Scalable mutual information estimation using
dependence graphs", ICASSP 2019; Saxe et al., ICLR 2018 (binning in the information plane).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import digamma

from netfl.probes.mi_neighbors import (
    KD_MAX_DIMS_JOINT,
    KD_MAX_DIMS_LABELS,
    ksg_counts,
    ross_counts,
)

__all__ = ["ESTIMATORS", "binned", "edge", "estimate", "gaussian", "ksg"]

_LN2 = math.log(2.0)

# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _as_array(a: Any, name: str) -> np.ndarray:
    """Return ``a`` as a 2-D NumPy array ``[N, d]`` (a view where possible, never a write)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor; avoids importing torch
        t = a.detach().cpu()
        try:
            a = t.numpy()
        except TypeError:  # bfloat16 and other dtypes NumPy lacks
            a = t.float().numpy()
    arr = np.asarray(a)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D [N] or 2-D [N, d], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty, got shape {arr.shape}")
    return arr


def _is_discrete(arr: np.ndarray) -> bool:
    return bool(np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_))


def _continuous(arr: np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return out


def _prepare(x: Any, y: Any, *, min_samples: int = 2) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a pair; return (x float64 [N, dx], y float64 [N, dy] or int64 ids [N], discrete)."""
    xa = _as_array(x, "x")
    ya = _as_array(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows (samples), "
            f"got {xa.shape[0]} and {ya.shape[0]}"
        )
    if xa.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples, got {xa.shape[0]}")
    xf = _continuous(xa, "x")
    if _is_discrete(ya):
        return xf, _row_ids(ya.astype(np.int64, copy=False))[0], True
    return xf, _continuous(ya, "y"), False


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str, *, low: float = 0.0, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or v < low or (strict and v == low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    return v


# --------------------------------------------------------------------------------------------
# discrete helpers
# --------------------------------------------------------------------------------------------


def _row_ids(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids ``0..K-1`` of the distinct rows of an integer array ``[N, m]``, and K.

    Rows become one mixed-radix int64 key (exact while the product of the column spans fits),
    then one ``np.unique``; otherwise columns are folded in one at a time, re-ranking each time.
    """
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.shape[1] == 1:
        _, ids = np.unique(codes[:, 0], return_inverse=True)
    else:
        lo = [int(v) for v in codes.min(axis=0)]
        spans = [int(h) - low + 1 for h, low in zip(codes.max(axis=0), lo, strict=True)]
        if math.prod(spans) < 2**62:
            radix = np.cumprod([1, *spans[:-1]]).astype(np.int64)
            _, ids = np.unique((codes - np.asarray(lo)) @ radix, return_inverse=True)
        else:
            ids = np.zeros(codes.shape[0], dtype=np.int64)
            for j in range(codes.shape[1]):
                _, col = np.unique(codes[:, j], return_inverse=True)
                _, ids = np.unique(ids * codes.shape[0] + col.reshape(-1), return_inverse=True)
                ids = ids.reshape(-1)
    ids = ids.reshape(-1).astype(np.int64, copy=False)
    return ids, int(ids.max()) + 1


def _entropy_bits(ids: np.ndarray) -> float:
    """Plug-in entropy (bits) of a symbol sequence given as non-negative integer ids."""
    counts = np.bincount(ids)
    counts = counts[counts > 0].astype(np.float64)
    n = counts.sum()
    return float(math.log2(n) - np.dot(counts, np.log2(counts)) / n)


def _joint_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ids of the pairs (a_i, b_i) for dense ids a, b."""
    return np.unique(a * (int(b.max()) + 1) + b, return_inverse=True)[1].reshape(-1)


# --------------------------------------------------------------------------------------------
# EDGE
# --------------------------------------------------------------------------------------------


def _edge_dims(n: int) -> int:
    """Bound on projected dimensions, d' <= floor(log2(N / 10)), at least 1 (Noshad et al.)."""
    return max(1, int(math.floor(math.log2(n / 10.0))))


def _edge_project(x: np.ndarray, dproj: int, rng: np.random.Generator) -> np.ndarray:
    """Coordinates to hash: x W with a Gaussian (2-stable) W [d, d'] if d > d', else x itself;
    centred and scaled to unit standard deviation (a constant coordinate stays 0)."""
    p = x @ rng.standard_normal((x.shape[1], dproj)) if x.shape[1] > dproj else x
    return _standardize(p)


def _edge_hash(p: np.ndarray, width: float, offsets: np.ndarray) -> np.ndarray:
    """Bucket ids of rows: floor(p / eps + b) per coordinate, b in [0, 1) bucket."""
    return _row_ids(np.floor(p / width + offsets).astype(np.int64))[0]


def _edge_width(p: np.ndarray, buckets: int, offsets: np.ndarray) -> float:
    """Bucket width giving about ``buckets`` occupied buckets (bisection on log width).

    Occupancy falls as the width grows; 20 halvings of the log-interval pin it to 0.1%.
    When the data hold fewer distinct rows than ``buckets``, the smallest width is returned.
    """
    lo = math.log(1e-6)
    hi = math.log(float(np.ptp(p, axis=0).max()) + 1.0)
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if _row_ids(np.floor(p / math.exp(mid) + offsets).astype(np.int64))[1] > buckets:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def _edge_graph_mi(hx: np.ndarray, hy: np.ndarray, upper: float, floor: float) -> float:
    """Dependence-graph estimate from bucket ids: sum N_ij w_ij / sum N_ij (bits).

    w_ij = max(min(log2(N_ij N / (N_i M_j)), upper), floor) on each occupied pair of buckets.
    """
    n = hx.shape[0]
    ky = int(hy.max()) + 1
    pair, n_ij = np.unique(hx * ky + hy, return_counts=True)
    n_i = np.bincount(hx)[pair // ky]
    m_j = np.bincount(hy)[pair % ky]
    ratio = np.log2(n_ij * float(n) / (n_i.astype(np.float64) * m_j))
    w = np.maximum(np.minimum(ratio, upper), floor)
    return float(np.dot(n_ij, w) / n)


def edge(
    x: Any,
    y: Any,
    *,
    seed: int = 0,
    ensemble: int = 10,
    epsilon: float | None = None,
    buckets: int | None = None,
    spread: float = 2.0,
    upper: float = 20.0,
    floor: float = 0.001,
    dims: int | None = None,
) -> float:
    """EDGE: the ensemble dependence-graph estimator of Noshad, Zeng & Hero (2019), in bits.

    Why this one: it is O(N) (hashing and counting, no neighbour search), so it scales to the
    representation probe's every-aggregation schedule, and it is the estimator of seed 000.
    It is coarse: in 1-D within 0.25 bit, but for 4 or more dimensions per side it keeps at most
    30% of the dependence (see Limits below); use KSG or Gaussian for values.

    Each continuous side is hashed into buckets: rows are projected with a random 2-stable
    (Gaussian) matrix W to ``d' = min(d, floor(log2(N / 10)))`` coordinates (kept as they are
    when d <= d'), each coordinate is scaled to unit standard deviation, and the bucket is
    ``floor((x W + b) / eps)`` with random offsets b. A ``y`` of integer dtype is its own bucket.
    With collision counts N_i (x buckets), M_j (y buckets) and N_ij (both), the estimate is
    ``sum N_ij * max(min(log2(N_ij N / (N_i M_j)), upper), floor) / N``.

    The bucket width eps is chosen per side so that about ``buckets`` buckets are occupied
    (the reference code also sets eps from the data, through k-NN distances). The ensemble
    repeats the hashing ``ensemble`` times with fresh offsets and widths ``eps * f``, f spread
    geometrically over ``[1/spread, spread]`` (one projection per side, as in the reference),
    and returns the **median**. The paper weights the members by a small convex program to
    cancel bias terms; the median needs no solver and is robust to a member whose width is far
    off, at the price of keeping the base estimator's bias.

    Parameters
    ----------
    x : array [N, dx] (1-D accepted), continuous.
    y : array [N, dy] (1-D accepted); integer dtype means class labels.
    seed : seed of the estimator's own generator (projections, offsets).
    ensemble : number of members L (>= 1).
    epsilon : fixed bucket width in standard deviations of a hashed coordinate, instead of the
        occupancy rule (makes estimates comparable across rounds at a fixed geometry scale).
    buckets : target number of occupied buckets per hashed side. Default: about N^(1/3) when
        both sides are hashed (the joint table then holds about N^(1/3) samples per cell) and
        about sqrt(N) when y is labels (so that K classes can fall in separate buckets).
    spread : the members' widths range over ``[eps/spread, eps*spread]`` (>= 1).
    upper : cap U on an edge weight, in bits (20, the reference's value for I(X;T)).
    floor : floor on an edge weight, in bits (0.001 as in the reference); ``-inf`` gives the
        plain plug-in estimate of the hashed variables.
    dims : override of the bound floor(log2(N / 10)) on projected dimensions.

    Returns
    -------
    float, bits, >= ``min(floor, 0)``; at most the entropy of the hashed variables.

    Bias
    ----
    The floor replaces every negative edge weight, so the negative terms of the MI sum (cells
    rarer than under independence) are lost and fluctuations no longer cancel: on
    **independent** data the estimate is positive, about ``1 / (ln 2 sqrt(2 pi lambda))`` bits
    with lambda the mean number of samples per occupied (x, y) cell. Measured with the
    defaults at N = 4000 (over 8 seeds): 0.09-0.12 bit for 1-D pairs, 0.06-0.09 for 3 + 2
    dimensions, 0.15-0.3 for 20-D against 10 labels. Weak dependence is over-stated by more
    (rho = 0.5 in 1-D: 0.35-0.41 for a true 0.21; rho = 0.9: 1.21-1.27 for 1.20). Coarse
    buckets lose information, so multivariate dependence is heavily under-stated (3 + 2
    correlated dimensions: 0.43 for a true 1.01) and well-separated classes slightly (10
    classes in 20-D: 2.9-3.2 for 3.32); classes that differ only slightly in each of many
    dimensions are largely lost by the projection to d' dimensions.

    Limits in several dimensions (``tools/mi_accuracy.py``, X, Y each d-dimensional with
    per-coordinate correlation rho, N = 500 and 2000, seeds 0-19): within 0.25 bit of the truth
    for d = 1; for d >= 4 below 0.75 bit and at most 30% of the truth in every cell (d = 4, rho
    = 0.6: 0.11-0.36 for 1.29), and at d = 8 it cannot tell rho = 0 (0.05-0.21) from rho = 0.9
    (0.10-0.52 for 9.58): the ranges overlap. The causes, measured: (1) the occupancy rule
    gives each side about N^(1/3) buckets (8 at N = 500) whatever d, under 2 per axis at d = 4,
    and a coarse partition keeps little of the dependence (the data processing inequality
    bounds I of the hashed variables by I(X; Y), and two cells per axis keep at most 0.125 of
    0.32 bit per rho = 0.6 coordinate); (2) above d' the two sides are projected with
    independent random matrices, which loses more. Finer buckets do not help at these N: the
    joint table has 2d dimensions, so the plug-in bias grows faster than the information kept;
    even the plug-in (``floor=-inf``) minus its own value on shuffled y (the independence
    baseline), at the best of 4-128 buckets, reaches only 1.2 of 4.79 bits (d = 4, rho = 0.9, N
    = 2000) and 0.6 of 9.58 (d = 8). No ensemble over widths (median, or the paper's weights,
    which cancel terms in powers of eps) recovers what no single width keeps. The reference
    code fails the other way (8.85 bits for the 1.29 above, issue 13), consistent with nearly
    one sample per bucket, where every weight is log2 N (8.97 at N = 500). So in several
    dimensions EDGE measures the hashed variables, not I(X; Y): read trends under fixed
    settings at most, and prefer ``ksg`` (README "Probes").
    """
    xv, yv, discrete = _prepare(x, y)
    n_ens = _check_int(ensemble, "ensemble", 1)
    spread = _check_float(spread, "spread", low=1.0)
    upper = _check_float(upper, "upper", low=-math.inf)
    floor = float(floor)
    if math.isnan(floor) or floor > upper:
        raise ValueError(f"floor must be <= upper ({upper}), got {floor!r}")
    if epsilon is not None:
        epsilon = _check_float(epsilon, "epsilon", strict=True)
    n = xv.shape[0]
    if buckets is None:
        target = max(2, round(math.sqrt(n) if discrete else n ** (1.0 / 3.0)))
    else:
        target = _check_int(buckets, "buckets", 1)
    dproj = _edge_dims(n) if dims is None else _check_int(dims, "dims", 1)
    rng = np.random.default_rng(seed)

    def side(a: np.ndarray) -> tuple[np.ndarray, float]:
        p = _edge_project(a, dproj, rng)
        if epsilon is not None:
            return p, epsilon
        return p, _edge_width(p, target, rng.uniform(size=p.shape[1]))

    px, wx = side(xv)
    py, wy = (None, 0.0) if discrete else side(yv)
    factors = np.geomspace(1.0 / spread, spread, n_ens) if n_ens > 1 else np.ones(1)
    estimates = []
    for f in factors:
        hx = _edge_hash(px, wx * f, rng.uniform(size=px.shape[1]))
        hy = yv if py is None else _edge_hash(py, wy * f, rng.uniform(size=py.shape[1]))
        estimates.append(_edge_graph_mi(hx, hy, upper, floor))
    return float(np.median(estimates))


# --------------------------------------------------------------------------------------------
# KSG (and Ross for labels)
# --------------------------------------------------------------------------------------------


def _jitter(a: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """a + noise * scale * N(0, 1) per column, scale = the column's std (|mean| or 1 if 0)."""
    if noise == 0.0:
        return a
    scale = a.std(axis=0)
    flat = scale == 0
    scale[flat] = np.abs(a.mean(axis=0))[flat]
    scale[scale == 0] = 1.0
    return a + noise * scale * rng.standard_normal(a.shape)


def ksg(
    x: Any,
    y: Any,
    k: int = 3,
    *,
    seed: int = 0,
    noise: float = 1e-10,
    clip: bool = True,
    metric: str = "chebyshev",
    algorithm: str = "auto",
    workers: int = -1,
) -> float:
    """Kraskov-Stoegbauer-Grassberger estimator (algorithm 1, max-norm), in bits.

    Why this one: it needs no density model and adapts to the local scale; seed 002 uses it
    for client parameters.

    With eps_i the max-norm distance from z_i = (x_i, y_i) to its k-th neighbour in the joint
    space, and n_x(i), n_y(i) the numbers of other points whose max-norm distance in x (in y)
    is **strictly** less than eps_i (``np.nextafter(eps, 0)`` as in scikit-learn, never an
    absolute offset), ``I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >`` (seed 002
    eq. 6). Both sides may be multivariate.

    For a ``y`` of integer dtype, Ross's discrete-continuous estimator:
    ``I = psi(N) - < psi(N_y) > + < psi(k_i) > - < psi(m_i) >`` with d_i the distance to the
    k-th neighbour of the same class (k_i = min(k, N_y - 1); points of singleton classes are
    left out) and m_i the number of points of any class within d_i.

    Ties (repeated values, dead units) inflate KSG (scikit-learn issue 30772), so each column
    gets Gaussian noise of ``noise`` times its standard deviation from the seeded generator.
    In the continuous case each side is then divided by one factor, the root-mean-square
    standard deviation of its non-constant columns, so that the estimate does not depend on
    the units of x or y (the joint max-norm would otherwise be dominated by the wider side);
    scikit-learn scales each feature likewise.

    Parameters
    ----------
    x : array [N, dx] (1-D accepted), continuous.
    y : array [N, dy] (1-D accepted); integer dtype means class labels.
    k : neighbours (>= 1, < N). Small k: less bias, more variance.
    seed : seed of the tie-breaking noise.
    noise : relative noise amplitude (>= 0; 0 disables it).
    clip : clip the result at 0 (default, as scikit-learn). KSG itself can be slightly
        negative on independent data; pass ``clip=False`` to average estimates without bias.
    metric : norm within x and within y: ``"chebyshev"`` (max-norm, the default and the
        usual KSG) or ``"euclidean"``. The joint norm is always the max of the two, which is
        all algorithm 1 needs (Kraskov et al. 2004, sec. II: any norms may be used in the
        marginal spaces). Euclidean lets brute force use BLAS, several times faster in high
        dimension; its squared distances come from a Gram expansion (relative error ~1e-8
        near zero, so ties are broken by round-off rather than by ``noise``).
    algorithm : ``"kd_tree"`` (``scipy.spatial.cKDTree``: ``query`` for eps,
        ``query_ball_point`` with ``return_length`` for the counts), ``"brute"`` (blocked
        all-pairs distances on ``workers`` threads), or ``"auto"``: kd-tree up to 8 joint
        dimensions (4 with labels), brute force above (a kd-tree prunes little there).
        Both give the same counts; continuous y with ``metric="euclidean"`` is brute force.
    workers : threads for the neighbour search (-1: all cores).

    Returns
    -------
    float, bits (>= 0 when ``clip``).

    Bias
    ----
    Nearly unbiased for independent variables (|I| ~ 0.01 bit at N = 4000, below 0.12 bit at
    N = 500 up to 8 + 8 dimensions) and in low dimension (1-D: within 0.07 bit at N = 2000,
    0.15 at N = 500); under-estimates strong dependence in high dimension but keeps its order:
    ``tools/mi_accuracy.py`` (X, Y each d-dimensional, per-coordinate correlation rho,
    N = 500-2000) gives 55-90% of the truth at d = 4 and 35-60% at d = 8 (d = 8, rho = 0.9,
    N = 500: 3.4-3.6 bits for 9.58). Cost: O(N log N) with the
    kd-tree in low dimension, O(N^2 d) with brute force.
    """
    kk = _check_int(k, "k", 1)
    noise = _check_float(noise, "noise")
    if metric not in ("chebyshev", "euclidean"):
        raise ValueError(f"metric must be 'chebyshev' or 'euclidean', got {metric!r}")
    if algorithm not in ("auto", "kd_tree", "brute"):
        raise ValueError(f"algorithm must be 'auto', 'kd_tree' or 'brute', got {algorithm!r}")
    nworkers = _workers(workers)
    xv, yv, discrete = _prepare(x, y)
    n = xv.shape[0]
    rng = np.random.default_rng(seed)
    xj = _jitter(xv, noise, rng)
    if discrete:
        if algorithm == "auto":
            algorithm = "kd_tree" if xv.shape[1] <= KD_MAX_DIMS_LABELS else "brute"
        k_i, n_c, m = ross_counts(xj, yv, kk, metric=metric, algorithm=algorithm, workers=nworkers)
        nats = (
            digamma(k_i.size)
            + digamma(k_i).mean()
            - digamma(n_c).mean()
            - digamma(np.maximum(m, 1)).mean()
        )
    else:
        if kk >= n:
            raise ValueError(f"k must be < the number of samples ({n}), got {kk}")
        xj = xj / _side_scale(xv)
        yj = _jitter(yv, noise, rng) / _side_scale(yv)
        if algorithm == "auto":
            low = xv.shape[1] + yv.shape[1] <= KD_MAX_DIMS_JOINT and metric == "chebyshev"
            algorithm = "kd_tree" if low else "brute"
        nx, ny = ksg_counts(xj, yj, kk, metric=metric, algorithm=algorithm, workers=nworkers)
        nats = digamma(kk) + digamma(n) - (digamma(nx + 1) + digamma(ny + 1)).mean()
    bits = float(nats) / _LN2
    return max(bits, 0.0) if clip else bits


def _side_scale(a: np.ndarray) -> float:
    """Root-mean-square standard deviation of the non-constant columns (1 if none): one factor
    per side keeps the side's geometry, lets x and y weigh alike in the joint max-norm, and
    ignores dead units."""
    var = a.var(axis=0)
    var = var[var > 0]
    return math.sqrt(float(var.mean())) if var.size else 1.0


def _workers(workers: int) -> int:
    if workers == -1:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be -1 (all cores) or an integer >= 1, got {workers!r}")
    return int(workers)


# --------------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------------


_CONSTANT = 1e-12  # a column whose spread is below this share of its magnitude is constant


def _standardize(a: np.ndarray) -> np.ndarray:
    """Centred columns with unit standard deviation; constant columns become exactly 0.

    A constant column of a value that floats cannot hold exactly (0.3) centres to
    round-off of about 1e-17, not 0; dividing that by its equally tiny standard deviation
    would turn it into unit-variance noise that correlates with the other constant columns
    (8 to 10 bits of MI between constants). So a spread below ``_CONSTANT`` times the
    column's magnitude counts as none."""
    c = a - a.mean(axis=0)
    sd = c.std(axis=0)
    scale = np.abs(a).max(axis=0) if len(a) else np.zeros(a.shape[1:])
    constant = sd <= _CONSTANT * scale
    c[:, constant] = 0.0
    sd[constant | (sd == 0)] = 1.0
    return c / sd


def _logdet(c: np.ndarray, what: str) -> float:
    sign, logdet = np.linalg.slogdet(c)
    if sign <= 0 or not np.isfinite(logdet):
        raise ValueError(f"the covariance of {what} is singular; use ridge > 0")
    return float(logdet)


def _logdet_bias(d: int, n: int, what: str) -> float:
    """E[log det S] - log det Sigma (nats) for the ML covariance S of n Gaussian samples in d
    dimensions: d log(2/n) + sum_{i=1..d} psi((n - i) / 2) (Wishart moments)."""
    if n <= d:
        raise ValueError(
            f"bias_correction needs more samples than dimensions for {what}, got {n} <= {d}"
        )
    return float(d * math.log(2.0 / n) + digamma((n - np.arange(1, d + 1)) / 2.0).sum())


def gaussian(x: Any, y: Any, *, ridge: float = 1e-6, bias_correction: bool = False) -> float:
    """Mutual information of the Gaussian fit: 1/2 [log det Sx + log det Sy - log det Sxy].

    Why this one: it is exact for jointly Gaussian data, cheap (O(N d^2 + d^3)) and has no
    tuning; seed 002 (eqs. 1-5) uses it for client parameters.

    Columns are standardized first (MI is invariant to that), covariances are the maximum-
    likelihood ones (divided by N), and ``ridge * trace(S) / d`` is added to the diagonal of
    the joint covariance (its blocks are then the marginal ones), so the log-determinants stay
    finite when a covariance is singular. A constant column (dead unit) then contributes the
    same ridge term to both determinants and cancels exactly.

    For a ``y`` of integer dtype (labels): ``I = H(X) - sum_y p(y) H(X | y)`` with Gaussian
    X and Gaussian class-conditionals, i.e. ``1/2 [log det S - sum_y p(y) log det S_y]``,
    clipped to ``[0, H(Y)]`` (H(Y) the plug-in label entropy), since a Gaussian fit of a
    mixture over-states H(X).

    Parameters
    ----------
    x : array [N, dx] (1-D accepted), continuous.
    y : array [N, dy] (1-D accepted); integer dtype means class labels.
    ridge : relative ridge (>= 0; 0 raises ValueError on a singular covariance).
    bias_correction : subtract the expected sample bias of each log-determinant under the
        Gaussian model (Wishart moments); needs N > dx + dy (each class: N_y > dx). Off by
        default, to match seed 002's formula.

    Returns
    -------
    float, bits, >= 0 (negative values, from round-off or the correction, are clipped).

    Bias
    ----
    Uncorrected, the sample bias is about ``dx dy / (2 N ln 2)`` bits for Gaussian data, and
    ``dx^2 (K - 1) / (4 N ln 2)`` bits in the label form with K classes (20 dimensions, 10
    classes, N = 4000: 0.37 bit on independent data), which ``bias_correction`` removes.
    Independent columns therefore give about that bias, not 0 (8 + 8 dimensions, N = 500:
    0.06-0.11 bit), and below 0.05 bit with ``bias_correction``; constant columns give exactly
    0. On Gaussian data (``tools/mi_accuracy.py``, d = 1-8, N = 500-2000) it is within 10% of
    the truth plus that bias plus 0.1 bit. For non-Gaussian dependence it measures the linear
    correlations only. With N <= d the
    sample covariance is singular and the result is dominated by the ridge (finite, but large
    and meaningless): keep N well above dx + dy.
    """
    ridge = _check_float(ridge, "ridge")
    xv, yv, discrete = _prepare(x, y)
    n, dx = xv.shape
    if discrete:
        zs = _standardize(xv)
        cov = zs.T @ zs / n
        tr = float(np.trace(cov))
        eye = ridge * (tr / dx if tr > 0 else 1.0) * np.eye(dx)
        nats = 0.5 * _logdet(cov + eye, "x")
        counts = np.bincount(yv)
        if bias_correction:
            nats -= 0.5 * _logdet_bias(dx, n, "x")
        for c in np.flatnonzero(counts):
            zc = zs[yv == c]
            zc = zc - zc.mean(axis=0)
            ld = _logdet(zc.T @ zc / counts[c] + eye, f"x in class {c}")
            if bias_correction:
                ld -= _logdet_bias(dx, int(counts[c]), f"class {c}")
            nats -= 0.5 * counts[c] / n * ld
        return float(min(max(nats / _LN2, 0.0), _entropy_bits(yv)))
    dy = yv.shape[1]
    zs = _standardize(np.hstack([xv, yv]))
    cov = zs.T @ zs / n
    tr = float(np.trace(cov))
    cov[np.diag_indices_from(cov)] += ridge * (tr / cov.shape[0] if tr > 0 else 1.0)
    nats = 0.5 * (
        _logdet(cov[:dx, :dx], "x") + _logdet(cov[dx:, dx:], "y") - _logdet(cov, "(x, y)")
    )
    if bias_correction:
        nats -= 0.5 * (
            _logdet_bias(dx, n, "x") + _logdet_bias(dy, n, "y") - _logdet_bias(dx + dy, n, "(x, y)")
        )
    return float(max(nats / _LN2, 0.0))


# --------------------------------------------------------------------------------------------
# binning
# --------------------------------------------------------------------------------------------


def _bin_codes(a: np.ndarray, bins: int, value_range: tuple[float, float] | None) -> np.ndarray:
    """Equal-width bin index of every entry, per column, over the column's range (or given)."""
    if value_range is None:
        lo = a.min(axis=0)
        hi = a.max(axis=0)
    else:
        lo = np.full(a.shape[1], value_range[0], dtype=np.float64)
        hi = np.full(a.shape[1], value_range[1], dtype=np.float64)
    span = hi - lo
    span[span == 0] = 1.0  # a constant column falls in bin 0
    idx = np.floor((a - lo) / span * bins)
    return np.clip(idx, 0, bins - 1).astype(np.int64)


def binned(
    x: Any,
    y: Any,
    *,
    bins: int = 30,
    range: tuple[float, float] | None = None,  # shadows the builtin, as in numpy.histogram
) -> float:
    """Plug-in MI of equal-width binned variables: H(Xb) + H(Yb) - H(Xb, Yb), in bits.

    Why this one: it is the information-plane baseline (Shwartz-Ziv & Tishby; Saxe et al.),
    kept to compare with the literature's plots.

    Each column is cut into ``bins`` equal bins over the data's own [min, max] (or over
    ``range`` if given), and each row's tuple of bin indices is one symbol. A ``y`` of integer
    dtype is used as symbols directly. Saxe et al.'s code bins over a fixed [-1, 1], which is
    wrong for ReLU units: values outside fall into the edge bins. Here values outside a given
    ``range`` are likewise clipped into the edge bins, so give a range only when it covers the
    data.

    Parameters
    ----------
    x : array [N, dx] (1-D accepted), continuous.
    y : array [N, dy] (1-D accepted); integer dtype means class labels.
    bins : bins per column (>= 1).
    range : (low, high) applied to every continuous column of x and y, or None.

    Returns
    -------
    float, bits, in [0, min(H(Xb), H(Yb))].

    Bias
    ----
    Positive finite-sample bias of about ``(Kxy - Kx - Ky + 1) / (2 N ln 2)`` bits (K: occupied
    bins), large when N is not much above the number of occupied cells; with many columns
    every row is its own symbol and the estimate degenerates to the entropy of the other side.
    Binning also loses information, so strong dependence is under-estimated.
    """
    nbins = _check_int(bins, "bins", 1)
    value_range = None
    if range is not None:
        try:
            lo, hi = (float(v) for v in range)
        except (TypeError, ValueError):
            raise ValueError(f"range must be a pair (low, high), got {range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"range must be finite with low < high, got {range!r}")
        value_range = (lo, hi)
    xv, yv, discrete = _prepare(x, y)
    hx = _row_ids(_bin_codes(xv, nbins, value_range))[0]
    hy = yv if discrete else _row_ids(_bin_codes(yv, nbins, value_range))[0]
    bits = _entropy_bits(hx) + _entropy_bits(hy) - _entropy_bits(_joint_ids(hx, hy))
    return float(max(bits, 0.0))


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

ESTIMATORS: dict[str, Callable[..., float]] = {
    "edge": edge,
    "ksg": ksg,
    "gaussian": gaussian,
    "binned": binned,
}


def estimate(name: str, x: Any, y: Any, **kwargs: Any) -> float:
    """Estimate I(X; Y) in bits with the estimator registered as ``name`` in ESTIMATORS."""
    try:
        fn = ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ESTIMATORS))
        raise ValueError(f"unknown MI estimator {name!r}; known: {known}") from None
    return fn(x, y, **kwargs)
