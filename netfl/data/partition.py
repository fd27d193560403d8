"""Split a training set over m learners: iid, disjoint class groups, Dirichlet label skew,
label shards, power-law sizes, or the data's own users.

Each scheme returns, per learner, the sorted indices into the training set; every index goes
to exactly one learner (``shared``: every learner gets all). All randomness comes from
``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from netfl.data.datasets import DataError

SCHEMES = ("iid", "classes", "dirichlet", "shared", "shard", "by_size", "natural")
LABEL_SCHEMES = ("classes", "dirichlet", "shard")  # read class labels
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
    shards: int = 2,
    size_exponent: float = 1.0,
    users: np.ndarray | None = None,
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
      Any ``m`` works, even more learners than samples.
    - ``shard``: pathological non-iid (McMahan et al. 2017, "Communication-efficient learning
      of deep networks from decentralized data"): the samples are shuffled, stably sorted by
      label, cut into ``m * shards`` contiguous shards whose sizes differ by at most one, and
      a seeded permutation of the shards gives learner ``i`` shards
      ``perm[i * shards:(i + 1) * shards]``. With 2 shards each learner sees about 2 classes.
    - ``by_size``: power-law (Zipf) sample counts, like flwr-datasets' size partitioners:
      learner ``i`` has weight ``rank_i ** -size_exponent`` where the ranks ``1..m`` are a
      seeded permutation (which learner is largest is drawn; the sizes are not). Every
      learner first gets one sample; the other ``n - m`` are shared in proportion to the
      weights, floors plus the remainders by largest fraction (ties to the lower rank).
      Samples go by a seeded shuffle. ``size_exponent = 0`` gives equal sizes.
    - ``natural``: the data's own users (``users``, one id per sample; LEAF's writers):
      the distinct users are put in a seeded order and cut into ``m`` contiguous blocks whose
      user counts differ by at most one; a learner holds all samples of its users. Needs at
      least ``m`` users.

    Every scheme fails with DataError if some learner would hold fewer than ``min_size``.
    """
    y = _labels(labels)
    n = len(y)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise DataError(f"m: must be an integer >= 1, got {m!r}")
    m = int(m)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise DataError(f"min_size: must be an integer >= 0, got {min_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    if scheme == "shared":  # every learner samples the whole set: any m works
        if min_size > n:
            raise DataError(f"min_size: {min_size} exceeds the {n} samples")
        everything = np.arange(n, dtype=np.int64)
        return [everything for _ in range(m)]
    if m > n or m * min_size > n:
        raise DataError(
            f"m: {m} learners with min_size {min_size} need more than the {n} samples"
        )

    if scheme == "iid":
        owner = _iid_owner(n, m, rng)
    elif scheme == "classes":
        owner = _classes_owner(y, m, groups, rng)
    elif scheme == "dirichlet":
        ok = not isinstance(alpha, bool) and isinstance(alpha, (int, float, np.floating))
        if not ok or not math.isfinite(alpha) or alpha <= 0:
            raise DataError(f"alpha: must be a finite number > 0, got {alpha!r}")
        owner = _dirichlet_owner(y, m, float(alpha), int(min_size), rng)
    elif scheme == "shard":
        owner = _shard_owner(y, m, shards, rng)
    elif scheme == "by_size":
        owner = _by_size_owner(n, m, size_exponent, rng)
    elif scheme == "natural":
        owner = _natural_owner(users, n, m, rng)
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


def _shard_owner(y: np.ndarray, m: int, shards: Any, rng: np.random.Generator) -> np.ndarray:
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise DataError(f"shards: must be an integer >= 1, got {shards!r}")
    total = m * int(shards)
    if total > len(y):
        raise DataError(f"shards: {m} learners x {shards} shards = {total} shards exceed the "
                        f"{len(y)} samples")
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    shard_of = np.empty(len(y), dtype=np.int64)
    shard_of[by_label] = np.arange(len(y)) * total // len(y)  # sizes floor/ceil of n/total
    learner_of_shard = np.empty(total, dtype=np.int64)
    learner_of_shard[rng.permutation(total)] = np.arange(total) // int(shards)
    return learner_of_shard[shard_of]


def by_size_counts(n: int, m: int, size_exponent: float) -> np.ndarray:
    """Sample counts of ranks 1..m under ``by_size`` (before the seeded rank draw)."""
    weights = np.arange(1, m + 1, dtype=np.float64) ** -float(size_exponent)
    ideal = weights / weights.sum() * (n - m)
    counts = np.floor(ideal).astype(np.int64)
    extra = (n - m) - int(counts.sum())
    counts[np.argsort(-(ideal - counts), kind="stable")[:extra]] += 1
    return counts + 1


def _by_size_owner(n: int, m: int, size_exponent: Any, rng: np.random.Generator
                   ) -> np.ndarray:
    ok = not isinstance(size_exponent, bool) and isinstance(
        size_exponent, (int, float, np.floating))
    if not ok or not math.isfinite(size_exponent) or size_exponent < 0:
        raise DataError(f"size_exponent: must be a finite number >= 0, got {size_exponent!r}")
    rank = rng.permutation(m)  # learner i has rank rank[i] + 1
    sizes = by_size_counts(n, m, float(size_exponent))[rank]
    owner = np.empty(n, dtype=np.int64)
    owner[rng.permutation(n)] = np.repeat(np.arange(m), sizes)
    return owner


def _natural_owner(users: Any, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    if users is None:
        raise DataError("scheme: 'natural' needs the user of each sample (users=...)")
    users = np.asarray(users)
    if users.shape != (n,):
        raise DataError(f"users: one user per sample, shape [{n}], got {list(users.shape)}")
    distinct, inverse = np.unique(users, return_inverse=True)
    if len(distinct) < m:
        raise DataError(f"m: {m} learners but only {len(distinct)} users; natural gives each "
                        f"learner whole users")
    order = rng.permutation(len(distinct))
    learner_of_user = np.empty(len(distinct), dtype=np.int64)
    learner_of_user[order] = np.arange(len(distinct)) * m // len(distinct)
    return learner_of_user[inverse.reshape(-1)]
