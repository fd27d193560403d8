"""LEAF's JSON layout on small files the tests write: FEMNIST-like images, Shakespeare-like and
Sent140-like text, the per-user split, partition: natural and two-round runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.data.datasets import DataError, load_dataset
from netfl.data.leaf import ALL_LETTERS, encode_text
from netfl.scenario import ScenarioError, from_dict

from .conftest import BASE, merge

# Copied from leaf/models/utils/language_utils.py so that a change to ours shows here.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


def write(file: Path, users: dict[str, tuple[list, list]]) -> None:
    """One LEAF JSON file: users, num_samples, user_data."""
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({
        "users": list(users), "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }))


def femnist_user(n: int, label: int, seed: int) -> tuple[list, list]:
    pixels = np.random.default_rng(seed).random((n, 784)).round(3)
    pixels[:, 0] = seed  # marks the writer
    return pixels.tolist(), [(label + j) % 3 for j in range(n)]


@pytest.fixture
def femnist(tmp_path) -> Path:
    root = tmp_path / "femnist"
    write(root / "train" / "a.json", {"f0": femnist_user(6, 0, 0), "f1": femnist_user(4, 1, 1)})
    write(root / "train" / "b.json", {"f2": femnist_user(5, 2, 2), "f3": femnist_user(3, 0, 3)})
    write(root / "test" / "a.json", {"f0": femnist_user(2, 1, 0), "f2": femnist_user(1, 0, 2)})
    return root


SPEECH = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to sufé"


def shakespeare_user(offset: int, n: int) -> tuple[list, list]:
    text = (SPEECH * 3)[offset:]
    return [text[j:j + 80] for j in range(n)], [text[j + 80] for j in range(n)]


@pytest.fixture
def shakespeare(tmp_path) -> Path:
    root = tmp_path / "shakespeare"
    users = {"HAMLET": shakespeare_user(0, 5), "OPHELIA": shakespeare_user(7, 4),
             "POLONIUS": shakespeare_user(20, 3)}
    write(root / "train" / "all.json", users)
    write(root / "test" / "all.json", {"HAMLET": shakespeare_user(40, 2)})
    return root


def tweet(user: str, text: str) -> list:
    return ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", user, text]


@pytest.fixture
def sent140(tmp_path) -> Path:
    root = tmp_path / "sent140"
    users = {
        "alice": ([tweet("alice", "good day!"), tweet("alice", "x" * 100 + " sad")], [1, 0]),
        "bob": ([tweet("bob", "meh"), tweet("bob", "fine")], [0, 1]),
        "carol": ([tweet("carol", "great")], [1]),
    }
    write(root / "all_data.json", users)  # one folder, no train/test: split per user
    return root


def load(root: Path, **params):
    return load_dataset("leaf", seed=0, test_fraction=0.5, root=root, **params)


# --------------------------------------------------------------------------- loading


def test_vocabulary_is_leafs():
    assert ALL_LETTERS == LEAF_LETTERS and len(ALL_LETTERS) == 80


def test_femnist_like_images_users_and_classes(femnist):
    data = load(femnist, num_classes=62)
    assert data.x_train.shape == (18, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert data.num_classes == 62 and data.task == "classification"
    assert data.user_names == ("f0", "f1", "f2", "f3")  # sorted files, each file's order
    assert data.users_train.tolist() == [0] * 6 + [1] * 4 + [2] * 5 + [3] * 3
    assert data.users_test.tolist() == [0, 0, 2]
    writer = data.x_train[:, 0, 0, 0].numpy()  # the pixel that marks the writer
    assert np.array_equal(writer, data.users_train.astype(np.float32))
    assert data.y_train[:6].tolist() == [0, 1, 2, 0, 1, 2]
    first = json.loads((femnist / "train" / "a.json").read_text())["user_data"]["f0"]["x"][0]
    assert torch.equal(data.x_train[0].reshape(-1), torch.tensor(first, dtype=torch.float32))
    assert load(femnist).num_classes == 3  # max(y) + 1 without num_classes
    assert load(femnist, shape=[784]).input_shape == (784,)
    kept = load(femnist, max_users=2)
    assert kept.user_names == ("f0", "f1") and len(kept.y_train) == 10
    assert kept.users_test.tolist() == [0, 0]


def test_shakespeare_like_one_hot_sequences(shakespeare):
    data = load(shakespeare)
    assert data.x_train.shape == (12, 80, 80) and data.num_classes == 80
    codes = data.x_train.argmax(-1)
    text, target = shakespeare_user(0, 5)
    for j in range(5):  # 'é' is outside the vocabulary: the last index, as in LEAF
        expected = [LEAF_LETTERS.find(c) if c in LEAF_LETTERS else 79 for c in text[j]]
        assert codes[j].tolist() == expected
    assert "é" in text[4] and 79 in codes[4].tolist() and LEAF_LETTERS[79] == "}"
    assert data.x_train.sum(-1).eq(1).all()  # exactly one-hot, no padding at 80 characters
    assert data.y_train[:5].tolist() == [LEAF_LETTERS.find(c) % 80 for c in target]
    assert data.users_train.tolist() == [0] * 5 + [1] * 4 + [2] * 3
    assert data.user_names == ("HAMLET", "OPHELIA", "POLONIUS")


def test_sent140_like_text_split_per_user(sent140):
    data = load(sent140)
    # test_fraction 0.5: alice 2 -> 1 + 1, bob 2 -> 1 + 1, carol 1 -> 1 + 0
    assert data.users_train.tolist() == [0, 1, 2] and data.users_test.tolist() == [0, 1]
    assert data.x_train.shape == (3, 80, 80) and data.num_classes == 2
    for x, y, u in zip(data.x_train, data.y_train, data.users_train, strict=True):
        texts = {0: {"good day!": 1, "x" * 100 + " sad": 0}, 1: {"meh": 0, "fine": 1},
                 2: {"great": 1}}[int(u)]
        text = next(t for t, label in texts.items() if label == int(y))
        assert torch.equal(x, torch.from_numpy(encode_text([text])[0]))
    short = encode_text(["great"])[0]
    assert short[:75].sum() == 0 and short[75:].argmax(-1).tolist() == [
        LEAF_LETTERS.find(c) for c in "great"]  # left-padded with zero rows
    long = encode_text(["x" * 100 + " sad"])[0]
    assert long.argmax(-1).tolist() == [LEAF_LETTERS.find(c) for c in ("x" * 100 + " sad")[-80:]]
    again = load(sent140)
    assert torch.equal(again.x_test, data.x_test)


@pytest.mark.parametrize(("make", "needle"), [
    (lambda r: None, "no such directory"),
    (lambda r: r.mkdir(), "no LEAF \\*.json files"),
    (lambda r: (r / "train").mkdir(parents=True), "has train/ but no test/"),
    (lambda r: r.mkdir() or (r / "a.json").write_text("{oops"), "not valid JSON \\(line 1"),
    (lambda r: r.mkdir() or (r / "a.json").write_text("[]"), "not a LEAF file"),
    (lambda r: r.mkdir() or (r / "a.json").write_text(json.dumps(
        {"users": ["u"], "num_samples": [3], "user_data": {"u": {"x": [[1.0]], "y": [0]}}})),
     "num_samples says 3, user_data holds 1"),
    (lambda r: write(r / "a.json", {"u": ([[1.0], "text"], [0, 1])}),
     "x is not like the first sample \\(numeric data\\)"),
    (lambda r: write(r / "a.json", {"u": ([tweet("u", "hi"), tweet("u", "yo")], [0, 4])}),
     "y must be 0 or 1, got 4"),
    (lambda r: write(r / "a.json", {"u": ([{"a": 1}, {"a": 2}], [0, 1])}),
     "x holds dict samples"),
])
def test_leaf_errors_name_the_file(tmp_path, make, needle):
    root = tmp_path / "leaf"
    make(root)
    with pytest.raises(DataError, match=needle):
        load(root)


def test_leaf_parameter_errors(femnist, shakespeare):
    with pytest.raises(DataError, match="shape must be positive integers whose product is the "
                                        "784 features"):
        load(femnist, shape=[2, 3])
    with pytest.raises(DataError, match="num_classes must be an integer >= 3"):
        load(femnist, num_classes=2)
    with pytest.raises(DataError, match="unknown parameter\\(s\\) vocab"):
        load(shakespeare, vocab="abc")


# --------------------------------------------------------------------------- scenarios and runs

RUN = {"learners": {"count": 2}, "horizon": {"rounds": 2}, "eval": {"every": 1},
       "protocol": {"name": "periodic", "b": 2}}


@pytest.mark.parametrize(("fixture", "model", "users_per_learner"), [
    ("femnist", {"kind": "cnn", "hidden": [8]}, 2),
    ("shakespeare", {"kind": "rnn", "hidden": [8]}, None),
    ("sent140", {"kind": "rnn", "hidden": [4]}, None),
])
def test_natural_partition_runs_two_rounds(request, fixture, model, users_per_learner):
    root = request.getfixturevalue(fixture)
    scenario = from_dict(merge(BASE, {**RUN, "model": model, "data": {
        "dataset": "leaf", "root": str(root), "partition": "natural", "batch_size": 2,
        "test_fraction": 0.5}}))
    built = build(scenario)
    data = built.source.dataset
    held = [set(data.users_train[p].tolist()) for p in built.source.stream._parts]
    assert set().union(*held) == set(range(len(np.unique(data.users_train))))
    assert not held[0] & held[1]  # each user with one learner, whole
    if users_per_learner is not None:
        assert [len(h) for h in held] == [users_per_learner] * 2
    built.simulation.run()
    assert built.simulation.rounds_done.tolist() == [2, 2]
    assert 0 <= built.simulation.evaluate()["acc_mean_model"] <= 1


def test_scenario_errors_name_data_root_and_learners_count(tmp_path, sent140):
    missing = from_dict(merge(BASE, {"data": {"dataset": "leaf", "root": str(tmp_path / "no")}}))
    with pytest.raises(ScenarioError, match="^data.root: .*no: no such directory"):
        build(missing)
    crowded = from_dict(merge(BASE, {"data": {"dataset": "leaf", "root": str(sent140),
                                              "partition": "natural", "test_fraction": 0.5}}))
    with pytest.raises(ScenarioError, match="^learners.count: 4 learners but the dataset has "
                                            "only 3 users"):
        build(crowded)
    small = from_dict(merge(BASE, {"data": {"dataset": "leaf", "root": str(sent140)}}))
    with pytest.raises(ScenarioError, match="no test samples: every user is too small to give "
                                            "test_fraction 0.2"):
        build(small)
    with pytest.raises(ScenarioError, match="dataset leaf reads local files: set data.root"):
        from_dict(merge(BASE, {"data": {"dataset": "leaf"}}))
