"""Split a training set over m learners: iid, disjoint class groups, or Dirichlet label skew.

Each scheme returns, per learner, the sorted indices into the training set; every index goes
to exactly one learner. All randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from netfl.data.datasets import DataError

SCHEMES = ("iid", "classes", "dirichlet", "shared")
MAX_DIRICHLET_DRAWS = 1000


def partition(
    labels: np.ndarray | Any,
    m: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    groups: int | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Assign the samples with ``labels`` to ``m`` learners; returns ``m`` sorted int64 arrays.

    - ``iid``: a seeded shuffle cut into ``m`` parts whose sizes differ by at most one.
    - ``classes``: the sorted classes are cut into ``groups`` contiguous disjoint groups
      (default ``min(m, num_classes)``); learner ``i`` belongs to group ``i % groups`` and the
      samples of a group are split iid among its learners. With 10 classes and ``m = 2`` this
      is the non-iid setting of Adilova et al. (classes 0-4 vs 5-9).
    - ``dirichlet``: for each class, proportions over learners ~ Dirichlet(``alpha``) (Hsu et
      al. 2019, "Measuring the effects of non-identical data distribution"); small ``alpha``
      gives few classes per learner, large ``alpha`` approaches iid. Redrawn (at most
      ``MAX_DIRICHLET_DRAWS`` times) until every learner holds ``>= min_size`` samples.

    - ``shared``: every learner draws from the whole training set (its own shuffled epochs),
      seed 004's setting of m learners sampling iid from one distribution P_t; with few
      samples per learner, disjoint shards would make the online loss a memorization test.

    Every scheme fails with DataError if some learner would hold fewer than ``min_size``.
    """
    y = _labels(labels)
    n = len(y)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise DataError(f"m: must be an integer >= 1, got {m!r}")
    m = int(m)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise DataError(f"min_size: must be an integer >= 0, got {min_size!r}")
    if m > n or m * min_size > n:
        raise DataError(
            f"m: {m} learners with min_size {min_size} need more than the {n} samples"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))

    if scheme == "shared":
        everything = np.arange(n, dtype=np.int64)
        return [everything for _ in range(m)]
    if scheme == "iid":
        owner = _iid_owner(n, m, rng)
    elif scheme == "classes":
        owner = _classes_owner(y, m, groups, rng)
    elif scheme == "dirichlet":
        ok = not isinstance(alpha, bool) and isinstance(alpha, (int, float, np.floating))
        if not ok or not math.isfinite(alpha) or alpha <= 0:
            raise DataError(f"alpha: must be a finite number > 0, got {alpha!r}")
        owner = _dirichlet_owner(y, m, float(alpha), int(min_size), rng)
    else:
        raise DataError(f"scheme: unknown partition scheme {scheme!r}; known: {', '.join(SCHEMES)}")

    parts = _group_by_owner(owner, m)
    smallest = min(len(p) for p in parts)
    if smallest < min_size:
        raise DataError(
            f"m: with scheme {scheme!r} some learner gets {smallest} samples, "
            f"fewer than min_size {min_size}; use fewer learners"
        )
    return parts


def _labels(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):  # a torch tensor, possibly on an accelerator
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise DataError(f"labels: must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
    if y.size == 0:
        raise DataError("labels: empty training set")
    return y


def _group_by_owner(owner: np.ndarray, m: int) -> list[np.ndarray]:
    """Sorted indices of each owner; one stable sort instead of m boolean masks."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    bounds = np.cumsum(np.bincount(owner, minlength=m))[:-1]
    return np.split(order, bounds)


def _iid_owner(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    owner = np.empty(n, dtype=np.int64)
    owner[rng.permutation(n)] = np.arange(n) * m // n  # sizes floor/ceil of n/m
    return owner


def _classes_owner(
    y: np.ndarray, m: int, groups: int | None, rng: np.random.Generator
) -> np.ndarray:
    classes = np.unique(y)
    if groups is None:
        groups = min(m, len(classes))
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise DataError(f"groups: must be an integer >= 1, got {groups!r}")
    if groups > len(classes):
        raise DataError(f"groups: {groups} groups exceed the {len(classes)} classes")
    if groups > m:
        raise DataError(f"groups: {groups} groups exceed the {m} learners; a group would be unused")
    owner = np.empty(len(y), dtype=np.int64)
    for g, group_classes in enumerate(np.array_split(classes, groups)):
        members = np.flatnonzero(np.isin(y, group_classes))
        learners = np.arange(g, m, groups)
        k = len(members)
        owner[rng.permutation(members)] = learners[np.arange(k) * len(learners) // k]
    return owner


def _dirichlet_owner(
    y: np.ndarray, m: int, alpha: float, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    classes, inverse = np.unique(y, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    owner = np.empty(len(y), dtype=np.int64)
    for _ in range(MAX_DIRICHLET_DRAWS):
        proportions = rng.dirichlet(np.full(m, alpha), size=len(classes))
        if not np.all(np.isfinite(proportions)):
            continue
        for c, idx in enumerate(members):
            cuts = (np.cumsum(proportions[c]) * len(idx)).astype(np.int64)
            cuts[-1] = len(idx)
            counts = np.diff(cuts, prepend=0)
            owner[rng.permutation(idx)] = np.repeat(np.arange(m), counts)
        if np.bincount(owner, minlength=m).min() >= min_size:
            return owner
    raise DataError(
        f"alpha: {MAX_DIRICHLET_DRAWS} Dirichlet draws with alpha={alpha} all left a learner "
        f"with fewer than min_size={min_size} samples; raise alpha or lower m or min_size"
    )
