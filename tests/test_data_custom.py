"""A researcher's own data: as_dataset on arrays, tensors and torch Datasets, .npz files and
Python factories in scenarios, build(dataset=...), two-round runs, and the error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from netfl.build import build
from netfl.cli import main
from netfl.data import Dataset, as_dataset
from netfl.data.datasets import DataError
from netfl.scenario import ScenarioError, from_dict, load

from .conftest import BASE, merge

RUN = {"learners": {"count": 3}, "horizon": {"rounds": 2}, "eval": {"every": 1},
       "protocol": {"name": "periodic", "b": 2}}


def arrays(n: int = 50, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x whose first column is the sample's id, so tests can follow samples through splits."""
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x, np.arange(n) % classes


def ids(x: torch.Tensor) -> np.ndarray:
    return x[:, 0].numpy().astype(np.int64)


# Factories for dataset: python (imported as tests.test_data_custom:...).


def make_xy(n: int = 40, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return arrays(n, classes)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x, self.y = arrays(n, 3)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def make_torch(n: int = 30) -> Pairs:
    return Pairs(n)


def bad_return() -> str:
    return "not data"


# --------------------------------------------------------------------------- as_dataset


def test_pair_of_arrays_is_classification_split_stratified():
    x, y = arrays(50, 5)
    data = as_dataset((x, y), test_fraction=0.2, seed=1)
    assert data.task == "classification" and data.num_classes == 5
    assert len(data.y_train) == 40 and len(data.y_test) == 10
    assert np.bincount(data.y_test.numpy()).tolist() == [2] * 5  # stratified
    both = np.concatenate([ids(data.x_train), ids(data.x_test)])
    assert np.array_equal(np.sort(both), np.arange(50))
    assert np.array_equal(data.y_train.numpy(), y[ids(data.x_train)])  # rows stay paired
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    again = as_dataset((x, y), test_fraction=0.2, seed=1)
    assert torch.equal(again.x_test, data.x_test)
    assert not torch.equal(as_dataset((x, y), seed=2).x_test, data.x_test)


def test_four_tensors_keep_their_split_and_a_dataset_passes_through():
    x, y = arrays(20, 2)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    data = as_dataset((tx[:15], ty[:15], tx[15:], ty[15:]))
    assert torch.equal(data.x_train, tx[:15]) and torch.equal(data.y_test, ty[15:])
    assert as_dataset(data) is data


def test_dict_with_users_keeps_each_samples_user_through_the_split():
    x, y = arrays(60, 3)
    users = np.array([f"writer{i % 7}" for i in range(60)])
    data = as_dataset({"x": x, "y": y, "users": users, "num_classes": 4}, seed=0)
    assert data.num_classes == 4
    assert data.user_names == tuple(sorted({f"writer{i}" for i in range(7)}))
    names = np.array(data.user_names)
    assert np.array_equal(names[data.users_train], users[ids(data.x_train)])
    assert np.array_equal(names[data.users_test], users[ids(data.x_test)])
    moved = data.to("cpu")
    assert moved.users_train is data.users_train and moved.user_names == data.user_names


def test_torch_datasets_are_stacked():
    pairs = Pairs(30)
    data = as_dataset(pairs, seed=0)
    assert data.input_shape == (4,) and data.num_classes == 3 and len(data.y_train) == 24
    assert np.array_equal(data.y_train.numpy(), pairs.y[ids(data.x_train)])
    x, y = arrays(10, 2)
    tensors = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y),
                                             torch.arange(10) % 2)
    data = as_dataset(tensors, test_fraction=0.5)
    assert data.users_train is not None and data.user_names == ("0", "1")
    assert np.array_equal(data.users_train, ids(data.x_train) % 2)


def test_float_targets_are_regression():
    x, _ = arrays(40)
    targets = np.stack([x[:, 1], 2 * x[:, 2]], axis=1)
    data = as_dataset((x, targets), test_fraction=0.25, seed=0)
    assert data.task == "regression" and data.num_classes == 2
    assert len(data.y_test) == 10 and data.y_train.dtype == torch.float32
    assert torch.equal(data.y_train[:, 0], data.x_train[:, 1])


@pytest.mark.parametrize(("obj", "needle"), [
    ("data.csv", "expected a netfl Dataset, a tuple"),
    ((np.zeros((4, 2)),), "got a tuple of 1 items"),
    ((np.zeros((4, 2)), np.zeros(4)), "y: float targets mean regression and must be 2-D"),
    ((np.zeros((4, 2)), np.arange(3)), "y: 3 labels for the 4 samples of x"),
    ((np.zeros(4), np.arange(4)), "x: must be \\[N, \\*input_shape\\]"),
    ((np.zeros((4, 2)), np.array(list("abcd"))), "y: labels must be integers"),
    ((np.zeros((4, 2)), -np.arange(4)), "y: class labels must be >= 0"),
    ((np.full((4, 2), np.nan), np.arange(4)), "x: holds NaN"),
    ({"x": np.zeros((4, 2)), "Y": np.arange(4)}, "unknown array 'Y'"),
    ({"x": np.zeros((4, 2))}, "no array 'y'"),
    ({"x": np.zeros((4, 2)), "y": np.arange(4), "x_test": np.zeros((2, 2))},
     "x_test, y_test: give both or neither"),
    ((np.zeros((4, 2)), np.arange(4), np.zeros((2, 3)), np.arange(2)),
     "x_test: samples of shape \\[3\\] differ from x's \\[2\\]"),
    ({"x": np.zeros((4, 2)), "y": np.arange(4), "num_classes": 2}, "num_classes: must be an "
                                                                     "integer >= 4"),
])
def test_conversion_errors_say_what_is_wrong(obj, needle):
    with pytest.raises(DataError, match=needle):
        as_dataset(obj, test_fraction=0.5)


# --------------------------------------------------------------------------- npz files


def npz_scenario(path, **data) -> dict:
    return merge(BASE, {**RUN, "data": {"dataset": "npz", "path": str(path), "batch_size": 4,
                                        **data}})


def test_npz_natural_partition_runs_two_rounds(tmp_path):
    x, y = arrays(60, 3)
    users = np.arange(60) % 6
    np.savez(tmp_path / "d.npz", x=x, y=y, users=users)
    built = build(from_dict(npz_scenario(tmp_path / "d.npz", partition="natural")))
    data = built.source.dataset
    for part in built.source.stream._parts:  # whole users per learner, two of six each
        held = set(data.users_train[part].tolist())
        assert len(held) == 2
        assert np.array_equal(part, np.flatnonzero(np.isin(data.users_train, list(held))))
    built.simulation.run()
    assert built.simulation.rounds_done.tolist() == [2, 2, 2]
    assert 0 <= built.simulation.evaluate()["acc_mean_model"] <= 1


def test_npz_with_test_arrays_and_regression_targets(tmp_path):
    x, _ = arrays(40)
    targets = x[:, 1:3].copy()
    np.savez(tmp_path / "r.npz", x=x[:30], y=targets[:30], x_test=x[30:], y_test=targets[30:])
    built = build(from_dict(npz_scenario(tmp_path / "r.npz", partition="by_size")))
    assert built.source.task == "regression" and len(built.source.dataset.y_test) == 10
    assert torch.equal(built.source.dataset.x_test, torch.from_numpy(x[30:]))
    assert built.simulation.bank.regression  # trained with squared error
    built.simulation.run()
    assert built.simulation.evaluate()["mse_mean_model"] > 0


def test_npz_relative_path_resolves_beside_the_scenario_file(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    folder.mkdir()
    np.savez(folder / "d.npz", x=arrays(20)[0], y=np.arange(20) % 2)
    file = folder / "s.yaml"
    file.write_text(yaml.safe_dump(npz_scenario("d.npz")))
    monkeypatch.chdir(tmp_path)
    scenario = load(file)
    assert scenario.data.path == str(folder / "d.npz")
    assert len(build(scenario).source.dataset.y_train) == 16


@pytest.mark.parametrize(("write", "needle"), [
    (None, "no such file"),
    (lambda p: np.savez(p, x=np.zeros((4, 2))), "no array 'y'"),
    (lambda p: np.savez(p, x=np.zeros((4, 2)), y=np.arange(3)), "y: 3 labels for the 4"),
    (lambda p: np.savez(p, x=np.zeros((4, 2)), y=np.zeros(4)), "y: float targets"),
    (lambda p: np.savez(p, x=np.array([{}, {}], dtype=object), y=np.arange(2)),
     "can only unpickle"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz file|can only unpickle"),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or
     p.with_suffix(".npy").rename(p), "a single .npy array"),
])
def test_npz_errors_name_data_path_and_the_file(tmp_path, write, needle):
    path = tmp_path / "bad.npz"
    if write is not None:
        write(path)
    with pytest.raises(ScenarioError, match=f"^data.path: {path}: .*({needle})"):
        build(from_dict(npz_scenario(path)))


def test_npz_errors_exit_2_on_the_command_line(tmp_path, capsys):
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump(npz_scenario(tmp_path / "missing.npz")))
    assert main(["run", str(file), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data.path:" in err and "missing.npz: no such file" in err
    assert "Traceback" not in err


def test_natural_needs_users_and_enough_of_them(tmp_path):
    x, y = arrays(20, 2)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    with pytest.raises(ScenarioError, match="^data.partition: natural splits by the data's own "
                                            "users, and this dataset has none"):
        build(from_dict(npz_scenario(tmp_path / "plain.npz", partition="natural")))
    np.savez(tmp_path / "two.npz", x=x, y=y, users=np.arange(20) % 2)
    with pytest.raises(ScenarioError, match="^learners.count: 3 learners but the dataset has "
                                            "only 2 users"):
        build(from_dict(npz_scenario(tmp_path / "two.npz", partition="natural")))


def test_regression_refuses_label_partitions(tmp_path):
    x, _ = arrays(20)
    np.savez(tmp_path / "r.npz", x=x, y=x[:, 1:2])
    with pytest.raises(ScenarioError, match="^data.partition: 'dirichlet' splits by class label"):
        build(from_dict(npz_scenario(tmp_path / "r.npz", partition="dirichlet")))


@pytest.mark.parametrize(("data", "needle"), [
    ({"dataset": "npz"}, "dataset npz reads one file: set data.path"),
    ({"path": "d.npz"}, "path is for dataset npz, not digits"),
    ({"dataset": "python"}, "dataset python calls a function: set data.factory"),
    ({"factory": "m:f"}, "factory is for dataset python, not digits"),
])
def test_schema_pairs_dataset_and_its_key(data, needle):
    with pytest.raises(ScenarioError, match=needle):
        from_dict(merge(BASE, {"data": data}))


# --------------------------------------------------------------------------- python factories


def python_scenario(factory: str, **params) -> dict:
    return merge(BASE, {**RUN, "data": {"dataset": "python", "factory": factory,
                                        "params": params, "batch_size": 4}})


@pytest.mark.parametrize(("factory", "params", "train"), [
    ("tests.test_data_custom:make_xy", {"n": 40}, 32),
    ("tests.test_data_custom:make_torch", {"n": 30}, 24),
])
def test_python_factory_runs_two_rounds(factory, params, train):
    built = build(from_dict(python_scenario(factory, **params)))
    assert len(built.source.dataset.y_train) == train
    built.simulation.run()
    assert built.simulation.rounds_done.tolist() == [2, 2, 2]


@pytest.mark.parametrize(("factory", "params", "needle"), [
    ("nowhere_at_all.module:f", {}, "cannot import module 'nowhere_at_all.module'"),
    ("tests.test_data_custom:missing", {}, "has no attribute 'missing'"),
    ("tests.test_data_custom", {}, "expected 'package.module:function'"),
    ("tests.test_data_custom:RUN", {}, "dict is not callable"),
    ("tests.test_data_custom:make_xy", {"size": 3}, "cannot be called with params \\['size'\\]"),
    ("tests.test_data_custom:bad_return", {}, "returned unusable data: expected a netfl"),
])
def test_python_factory_errors_name_data_factory(factory, params, needle):
    with pytest.raises(ScenarioError, match=f"^data.factory: .*{needle}"):
        build(from_dict(python_scenario(factory, **params)))


# --------------------------------------------------------------------------- build(dataset=...)


def test_build_takes_a_dataset_object_in_place_of_loading():
    x, y = arrays(60, 3)
    scenario = from_dict(merge(BASE, {**RUN, "data": {"partition": "shard", "shards": 1,
                                                      "batch_size": 4}}))
    built = build(scenario, dataset={"x": x, "y": y})
    data = built.source.dataset
    assert data.input_shape == (4,) and len(data.y_train) == 48  # not digits
    for part in built.source.stream._parts:  # shard still applies: one class each
        assert len(np.unique(data.y_train.numpy()[part])) == 1
    built.simulation.run()
    assert built.simulation.rounds_done.tolist() == [2, 2, 2]
    ready = as_dataset((x, y), seed=3)
    assert build(scenario, dataset=ready).source.dataset.x_train.data_ptr() == \
        ready.x_train.data_ptr()
    assert isinstance(ready, Dataset)


def test_build_dataset_errors():
    scenario = from_dict(merge(BASE, RUN))
    with pytest.raises(ScenarioError, match="^dataset: expected a netfl Dataset"):
        build(scenario, dataset=[1, 2, 3])
    drifting = from_dict(merge(BASE, {"data": {"dataset": "graphical"}}))
    with pytest.raises(ScenarioError, match="drifting stream 'graphical'"):
        build(drifting, dataset=arrays(20))


def test_parameter_probe_replicas_train_on_the_given_dataset():
    x, y = arrays(60, 3)
    scenario = from_dict(merge(BASE, {**RUN, "probes": {"parameters": {
        "replicas": 2, "every": 1, "estimators": ["ksg"], "k": 1, "dims": 1}}}))
    built = build(scenario, dataset=(x, y))
    probe = next(p for p in built.probes if hasattr(p, "make_replica"))
    replica = probe.make_replica(0)
    assert replica.source.dataset.x_train is built.source.dataset.x_train  # not digits
