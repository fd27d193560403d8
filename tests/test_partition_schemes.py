"""The flwr-datasets-style partitions (shard, by_size), the natural split by users, shared with
any number of learners, and the scenario errors that name their keys."""

from __future__ import annotations

import numpy as np
import pytest

from netfl.build import build
from netfl.data.datasets import DataError
from netfl.data.partition import by_size_counts, partition
from netfl.scenario import ScenarioError, from_dict

from .conftest import BASE, merge


def covers_once(parts: list[np.ndarray], n: int) -> None:
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


# --------------------------------------------------------------------------- shard


def test_shard_gives_each_learner_whole_label_shards():
    y = np.repeat(np.arange(8), 5)  # 8 classes of 5: with 4 learners x 2 shards, one per class
    parts = partition(y, 4, "shard", seed=3, shards=2)
    covers_once(parts, 40)
    for p in parts:
        classes = np.unique(y[p])
        assert len(classes) == 2
        assert np.array_equal(p, np.flatnonzero(np.isin(y, classes)))  # whole classes
    # The documented rule: a seeded permutation of the 8 shards, two per learner.
    perm = np.random.default_rng(3)
    perm.permutation(40)  # the shuffle before the label sort
    shard_order = perm.permutation(8)
    owners = np.empty(8, dtype=np.int64)
    owners[shard_order] = np.arange(8) // 2
    for i, p in enumerate(parts):
        assert set(np.unique(y[p])) == set(np.flatnonzero(owners == i))


def test_shard_sizes_differ_by_at_most_one_shard_sample():
    y = np.arange(23) % 3
    parts = partition(y, 3, "shard", seed=0, shards=2)
    covers_once(parts, 23)
    assert sorted(len(p) for p in parts) == [7, 8, 8]  # 6 shards of 4,4,4,4,4,3
    assert [list(p) for p in parts] == [list(p) for p in
                                        partition(y, 3, "shard", seed=0, shards=2)]


def test_shard_errors():
    with pytest.raises(DataError, match="shards: 4 learners x 3 shards = 12 shards exceed the 10"):
        partition(np.arange(10) % 2, 4, "shard", seed=0, shards=3)
    with pytest.raises(DataError, match="shards: must be an integer >= 1"):
        partition(np.arange(10) % 2, 2, "shard", seed=0, shards=0)


# --------------------------------------------------------------------------- by_size


@pytest.mark.parametrize(("n", "m", "exponent", "counts"), [
    (100, 4, 1.0, [47, 24, 16, 13]),  # 1 each + 96 * (1, 1/2, 1/3, 1/4) / (25/12)
    (100, 4, 2.0, [68, 18, 9, 5]),
    (100, 4, 0.0, [25, 25, 25, 25]),
    (12, 10, 1.0, [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]),  # everyone keeps at least one
    (10, 10, 3.0, [1] * 10),
])
def test_by_size_counts_are_the_documented_power_law(n, m, exponent, counts):
    assert by_size_counts(n, m, exponent).tolist() == counts


def test_by_size_ranks_are_a_seeded_permutation():
    y = np.zeros(100, dtype=np.int64)
    parts = partition(y, 4, "by_size", seed=7, size_exponent=1.0)
    covers_once(parts, 100)
    rank = np.random.default_rng(7).permutation(4)
    assert [len(p) for p in parts] == [[47, 24, 16, 13][r] for r in rank]
    again = partition(y, 4, "by_size", seed=7, size_exponent=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    with pytest.raises(DataError, match="size_exponent: must be a finite number >= 0"):
        partition(y, 4, "by_size", seed=7, size_exponent=-1.0)


# --------------------------------------------------------------------------- natural


def test_natural_gives_each_learner_whole_users_in_seeded_blocks():
    users = np.array([0, 1, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 6, 6, 0])  # 7 users
    parts = partition(np.zeros(15, dtype=np.int64), 3, "natural", seed=5, users=users)
    covers_once(parts, 15)
    order = np.random.default_rng(5).permutation(7)
    blocks = [order[:3], order[3:5], order[5:]]  # user counts 3, 2, 2 (j * m // U)
    for p, block in zip(parts, blocks, strict=True):
        assert np.array_equal(p, np.flatnonzero(np.isin(users, block)))
    other = partition(np.zeros(15, dtype=np.int64), 3, "natural", seed=6, users=users)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_natural_errors():
    y = np.zeros(6, dtype=np.int64)
    with pytest.raises(DataError, match="m: 4 learners but only 3 users"):
        partition(y, 4, "natural", seed=0, users=np.array([0, 0, 1, 1, 2, 2]))
    with pytest.raises(DataError, match="natural' needs the user of each sample"):
        partition(y, 2, "natural", seed=0)


# --------------------------------------------------------------------------- shared


def test_shared_accepts_more_learners_than_samples():
    parts = partition(np.array([0, 1, 0]), 10, "shared", seed=0)
    assert len(parts) == 10 and all(np.array_equal(p, np.arange(3)) for p in parts)
    data = {"dataset": "gaussian_mixture", "partition": "shared", "batch_size": 2,
            "params": {"n_samples": 20, "n_features": 3, "n_classes": 2}}
    source = build(from_dict(merge(BASE, {"data": data, "learners": {"count": 30}}))).source
    assert source.stream.sizes == [16] * 30


# --------------------------------------------------------------------------- scenarios


def scenario(**data):
    return from_dict(merge(BASE, {"data": data}))


def test_scenario_shard_and_by_size_split_digits():
    shard = build(scenario(partition="shard", shards=1)).source
    labels = shard.dataset.y_train.numpy()
    sizes = shard.stream.sizes
    assert sum(sizes) == len(labels) and max(sizes) - min(sizes) <= 1
    by_size = build(scenario(partition="by_size", size_exponent=1.0)).source
    assert sorted(by_size.stream.sizes, reverse=True) == \
        by_size_counts(len(labels), 4, 1.0).tolist()


@pytest.mark.parametrize(("data", "needle"), [
    ({"partition": "natural"}, "^data.partition: natural splits by the data's own users, "
                               "and this dataset has none"),
    ({"dataset": "graphical", "partition": "natural"}, "drifting stream graphical has none"),
    ({"partition": "shard", "shards": 1000}, "data.shards: 4 learners x 1000 shards"),
    ({"dataset": "signal", "partition": "shard"}, "partition 'shard' splits by class label"),
    ({"partition": "by_size", "size_exponent": -1}, "data.size_exponent"),
])
def test_scenario_errors_name_the_key(data, needle):
    with pytest.raises(ScenarioError, match=needle):
        build(scenario(**data))
