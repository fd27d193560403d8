"""Datasets, partitions and sample streams: shapes, exact file round trips, seeding, errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from netfl.data import streams
from netfl.data.datasets import DataError, Dataset, load_dataset, read_idx, stratified_split
from netfl.data.partition import partition
from netfl.data.streams import SampleStream


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_stratified_split(digits: Dataset) -> None:
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert len(digits.x_test) == round(0.2 * 1797)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.x_train.min() >= 0.0 and digits.x_train.max() == 1.0
    full = np.bincount(np.r_[digits.y_train.numpy(), digits.y_test.numpy()], minlength=10)
    test = np.bincount(digits.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test - 0.2 * full) <= 1)


def test_digits_seeded(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.x_train, digits.x_train)
    assert torch.equal(again.y_test, digits.y_test)
    assert not torch.equal(other.y_test, digits.y_test)


def test_dataset_to_keeps_values(digits: Dataset) -> None:
    moved = digits.to("cpu")
    assert moved.input_shape == digits.input_shape
    assert torch.equal(moved.x_test, digits.x_test) and moved.num_classes == 10


def test_stratified_split_exact_counts() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, test = stratified_split(labels, 0.5, np.random.default_rng(0))
    assert np.array_equal(np.bincount(labels[test]), [5, 10, 15])
    assert np.array_equal(np.sort(np.r_[train, test]), np.arange(60))


# --------------------------------------------------------------------------- gaussian mixture


def test_gaussian_mixture_shapes_and_learnable() -> None:
    from sklearn.linear_model import LogisticRegression

    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    ds = load_dataset("gaussian_mixture", seed=3, n_samples=2000, n_features=8, n_classes=4)
    assert np.array_equal(np.random.get_state()[1], np_state)  # global RNGs untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert ds.input_shape == (8,) and ds.num_classes == 4
    assert len(ds.x_train) == 1600 and len(ds.x_test) == 400
    assert ds.x_train.dtype == torch.float32
    assert np.array_equal(np.bincount(ds.y_test.numpy()), [100] * 4)
    clf = LogisticRegression(max_iter=500).fit(ds.x_train.numpy(), ds.y_train.numpy())
    accuracy = clf.score(ds.x_test.numpy(), ds.y_test.numpy())
    assert accuracy > 0.8  # chance is 0.25

    again = load_dataset("gaussian_mixture", seed=3, n_samples=2000, n_features=8, n_classes=4)
    assert torch.equal(again.x_train, ds.x_train)
    harder = load_dataset("gaussian_mixture", seed=3, n_samples=2000, n_features=8,
                          n_classes=4, separation=0.0)
    clf = LogisticRegression(max_iter=500).fit(harder.x_train.numpy(), harder.y_train.numpy())
    assert clf.score(harder.x_test.numpy(), harder.y_test.numpy()) < 0.4


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"n_features": 0}, "n_features"),
        ({"n_classes": 1}, "n_classes"),
        ({"noise": 0}, "noise"),
        ({"separation": -1.0}, "separation"),
        ({"n_samples": 5}, "n_samples"),
        ({"bogus": 1}, "bogus"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_gaussian_mixture_bad_params(params: dict, word: str) -> None:
    kwargs = {"seed": 0, **params}
    with pytest.raises(DataError, match=word):
        load_dataset("gaussian_mixture", **kwargs)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", seed=0)


# --------------------------------------------------------------------------- mnist


def _write_idx(path: Path, array: np.ndarray, *, gz: bool = False, magic: int | None = None):
    magic = 0x0800 + array.ndim if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def _tiny_mnist(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 2, 6], dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for k, (name, arr) in enumerate(arrays.items()):
        _write_idx(root / name, arr, gz=k % 2 == 0)  # train images and t10k images gzipped
    return arrays


def test_mnist_round_trip(tmp_path: Path) -> None:
    arrays = _tiny_mnist(tmp_path)
    ds = load_dataset("mnist", seed=0, root=tmp_path)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert torch.equal((ds.x_train[:, 0] * 255).round().to(torch.uint8),
                       torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal((ds.x_test[:, 0] * 255).round().to(torch.uint8),
                       torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert ds.y_train.tolist() == [3, 1, 4, 1, 5] and ds.y_test.tolist() == [9, 2, 6]
    assert ds.y_train.dtype == torch.int64


def test_mnist_torchvision_layout(tmp_path: Path) -> None:
    _tiny_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_dataset("mnist", seed=0, root=tmp_path).y_test) == 3


def test_mnist_wrong_magic(tmp_path: Path) -> None:
    _tiny_mnist(tmp_path)
    labels = np.zeros(5, dtype=np.uint8)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, magic=0x0803)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: bad IDX magic number"):
        load_dataset("mnist", seed=0, root=tmp_path)


def test_mnist_truncated_and_mismatched(tmp_path: Path) -> None:
    path = _write_idx(tmp_path / "x", np.zeros((2, 4, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="do not match the header"):
        read_idx(path, 3)
    arrays = _tiny_mnist(tmp_path / "m")
    _write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"][:2])
    with pytest.raises(DataError, match="3 images but t10k-labels has 2"):
        load_dataset("mnist", seed=0, root=tmp_path / "m")


def test_mnist_missing_dir_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="root directory not found: .*nowhere"):
        load_dataset("mnist", seed=0, root=missing)
    with pytest.raises(DataError, match="root"):
        load_dataset("mnist", seed=0)
    _tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing file t10k-labels-idx1-ubyte"):
        load_dataset("mnist", seed=0, root=tmp_path)


def test_mnist_corrupt_gzip(tmp_path: Path) -> None:
    _tiny_mnist(tmp_path)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset("mnist", seed=0, root=tmp_path)


# --------------------------------------------------------------------------- cifar10


def _tiny_cifar(folder: Path, protocol: int = 2) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    data, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 2).tolist()
        batch = {b"batch_label": name.encode(), b"data": x, b"labels": y,
                 b"filenames": [b"a.png", b"b.png"]}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        data.append(x)
        labels += y
    return np.concatenate(data), labels


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip(tmp_path: Path, protocol: int) -> None:
    data, labels = _tiny_cifar(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_dataset("cifar10", seed=0, root=tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.x_train) == 10 and len(ds.x_test) == 2
    restored = (torch.cat([ds.x_train, ds.x_test]) * 255).round().to(torch.uint8)
    assert torch.equal(restored.reshape(12, 3072), torch.from_numpy(data))
    assert torch.cat([ds.y_train, ds.y_test]).tolist() == labels
    # the red channel of the first image is the first 1024 bytes, row-major 32x32
    assert torch.equal(restored[0, 0].reshape(-1), torch.from_numpy(data[0, :1024]))


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official files were (Python 2 cPickle, protocol 2)."""
    array = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(K\x00t" + _py2_str(b"b")
    array += b"tR(K\x01(M" + struct.pack("<H", len(data)) + b"M\x00\x0ct"
    array += b"cnumpy\ndtype\n(" + _py2_str(b"u1") + b"K\x00K\x01tR(K\x03" + _py2_str(b"|")
    array += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _py2_str(data.tobytes())
    array += b"tb"
    listing = b"](" + b"".join(b"K" + bytes([y]) for y in labels) + b"e"
    return (b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + listing
            + b"u.")


def test_cifar10_reads_python2_pickles(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 2, 3072), dtype=np.uint8)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, x in zip(names, images, strict=True):
        (tmp_path / name).write_bytes(_py2_batch(x, [1, 8]))
    ds = load_dataset("cifar10", seed=0, root=tmp_path)
    restored = (ds.x_test * 255).round().to(torch.uint8).reshape(2, 3072)
    assert torch.equal(restored, torch.from_numpy(images[5]))
    assert ds.y_train.tolist() == [1, 8] * 5


def test_cifar10_errors(tmp_path: Path) -> None:
    _tiny_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing file data_batch_3"):
        load_dataset("cifar10", seed=0, root=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 batch"):
        load_dataset("cifar10", seed=0, root=tmp_path)


def test_cifar10_refuses_code_in_pickle(tmp_path: Path) -> None:
    _tiny_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="test_batch: .*refusing"):
        load_dataset("cifar10", seed=0, root=tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------- partition


def test_iid_partition_covers_once_balanced() -> None:
    labels = np.arange(103) % 7
    parts = partition(labels, 10, "iid", seed=1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(103))
    assert all(np.all(np.diff(p) > 0) for p in parts)
    assert all(p.dtype == np.int64 for p in parts)
    again = partition(labels, 10, "iid", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(labels, 10, "iid", seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_classes_partition_two_learners_on_digits(digits: Dataset) -> None:
    labels = digits.y_train.numpy()
    parts = partition(labels, 2, "classes", seed=0)
    assert set(labels[parts[0]].tolist()) == {0, 1, 2, 3, 4}
    assert set(labels[parts[1]].tolist()) == {5, 6, 7, 8, 9}
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_classes_partition_round_robin() -> None:
    labels = np.arange(200) % 10
    parts = partition(labels, 4, "classes", seed=0, groups=2)
    sets = [set(labels[p].tolist()) for p in parts]
    assert sets == [{0, 1, 2, 3, 4}, {5, 6, 7, 8, 9}] * 2
    assert [len(p) for p in parts] == [50, 50, 50, 50]
    parts = partition(labels, 20, "classes", seed=0)  # m > classes: 10 groups of one class
    assert [set(labels[p].tolist()) for p in parts] == [{c} for c in range(10)] * 2
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each learner's label histogram and the global."""
    glob = np.bincount(labels) / len(labels)
    dists = [0.5 * np.abs(np.bincount(labels[p], minlength=len(glob)) / len(p) - glob).sum()
             for p in parts]
    return float(np.mean(dists))


def test_dirichlet_skew_coverage_seeding() -> None:
    labels = np.arange(5000) % 10
    skewed = partition(labels, 10, "dirichlet", seed=0, alpha=0.1)
    flat = partition(labels, 10, "dirichlet", seed=0, alpha=1000.0)
    for parts in (skewed, flat):
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(5000))
        assert min(len(p) for p in parts) >= 1
    assert _label_skew(labels, skewed) > 0.5
    assert _label_skew(labels, flat) < 0.1
    again = partition(labels, 10, "dirichlet", seed=0, alpha=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again, strict=True))
    sized = partition(labels, 10, "dirichlet", seed=0, alpha=0.1, min_size=50)
    assert min(len(p) for p in sized) >= 50


def test_partition_accepts_torch_labels(digits: Dataset) -> None:
    a = partition(digits.y_train, 3, "iid", seed=4)
    b = partition(digits.y_train.numpy(), 3, "iid", seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"m": 3, "scheme": "shards"}, "scheme"),
        ({"m": 0, "scheme": "iid"}, "m:"),
        ({"m": 21, "scheme": "iid"}, "m:"),
        ({"m": 3, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"m": 3, "scheme": "dirichlet", "alpha": -1.0}, "alpha"),
        ({"m": 3, "scheme": "classes", "groups": 5}, "groups"),
        ({"m": 2, "scheme": "classes", "groups": 3}, "groups"),
        ({"m": 3, "scheme": "iid", "min_size": 8}, "m:"),
        ({"m": 20, "scheme": "dirichlet", "alpha": 0.001}, "alpha"),
    ],
)
def test_partition_errors(kwargs: dict, word: str) -> None:
    labels = np.arange(20) % 4
    with pytest.raises(DataError, match=word):
        partition(labels, seed=0, **kwargs)


# --------------------------------------------------------------------------- streams


def _parts() -> list[np.ndarray]:
    return partition(np.arange(300) % 10, 7, "dirichlet", seed=5, alpha=0.5, min_size=3)


def test_stream_stays_in_partition_and_epochs_do_not_repeat() -> None:
    parts = _parts()
    stream = SampleStream(parts, 4, seed=9)
    assert stream.m == 7 and stream.batch_size == 4
    rounds = 60
    seen = torch.stack([stream.indices_all(t) for t in range(rounds)], dim=1)  # [m, R, B]
    assert seen.dtype == torch.int64 and seen.shape == (7, rounds, 4)
    for i, part in enumerate(parts):
        flow = seen[i].reshape(-1).numpy()
        assert np.isin(flow, part).all()
        n = len(part)
        for e in range(len(flow) // n):  # every whole epoch is a permutation of the part
            assert np.array_equal(np.sort(flow[e * n : (e + 1) * n]), part)
        assert not np.array_equal(flow[:n], flow[n : 2 * n])  # reshuffled each epoch


def test_stream_small_partitions_cycle() -> None:
    stream = SampleStream([np.array([7]), np.array([1, 2, 3])], 10, seed=0)
    out = stream.indices_all(2)
    assert out[0].tolist() == [7] * 10
    flow = torch.cat([stream.indices_all(t)[1] for t in range(3)]).numpy()
    for e in range(10):
        assert sorted(flow[3 * e : 3 * e + 3].tolist()) == [1, 2, 3]


def test_stream_order_independent() -> None:
    parts = _parts()
    reference = SampleStream(parts, 5, seed=3)
    expected = torch.stack([reference.indices_all(t) for t in range(150)])  # [R, m, B]

    rng = np.random.default_rng(0)
    shuffled = SampleStream(parts, 5, seed=3)
    pairs = np.array([(i, t) for i in range(7) for t in range(150)])
    pairs = pairs[rng.permutation(len(pairs))]
    for chunk in np.array_split(pairs, 37):  # uneven groups, mixed learners and rounds
        got = shuffled.indices(torch.from_numpy(chunk[:, 0]), torch.from_numpy(chunk[:, 1]))
        assert torch.equal(got, expected[chunk[:, 1], chunk[:, 0]])

    late_first = SampleStream(parts, 5, seed=3)  # the schedule grows in one jump
    assert torch.equal(late_first.indices(torch.tensor([6, 0]), 149), expected[149, [6, 0]])
    assert torch.equal(late_first.indices_all(0), expected[0])


def test_stream_in_many_chunks_is_the_stream_in_one(monkeypatch) -> None:
    """A schedule grown chunk by chunk (never copied into a larger tensor) gives the same
    samples as one drawn in one block, for queries within a chunk and across chunks."""
    parts = _parts()
    reference = SampleStream(parts, 5, seed=3)  # 7 x 5 entries a round: one 1,024-round chunk
    expected = torch.stack([reference.indices_all(t) for t in range(150)])
    assert len(reference._chunks) == 1
    monkeypatch.setattr(streams, "_TARGET_INITIAL_ENTRIES", 1)  # first chunk: 16 rounds
    monkeypatch.setattr(streams, "_CHUNK_ENTRIES", 7 * 5 * 10)  # 10 rounds: later ones 16
    chunked = SampleStream(parts, 5, seed=3)
    for t in range(150):
        assert torch.equal(chunked.indices_all(t), expected[t])
    assert [len(c) for c in chunked._chunks] == [16] * 10
    assert chunked.rounds_cached == 160
    rng = np.random.default_rng(1)
    mixed = SampleStream(parts, 5, seed=3)
    mixed.indices_all(40)  # a first chunk of all 41 rounds asked, then 20 more
    mixed.indices_all(60)
    assert [len(c) for c in mixed._chunks] == [41, 20]
    learners = torch.from_numpy(rng.integers(0, 7, 400))
    rounds = torch.from_numpy(rng.integers(0, 150, 400))  # across every chunk
    got = mixed.indices(learners, rounds)  # grows by the 89 missing rounds, then gathers
    assert [len(c) for c in mixed._chunks] == [41, 20, 89]
    assert torch.equal(got, expected[rounds, learners]) and got.dtype == torch.int64
    assert torch.equal(mixed.indices(learners[:3], 17), expected[17, learners[:3]])


def test_stream_learner_independent_of_others() -> None:
    parts = _parts()
    full = SampleStream(parts, 3, seed=1)
    few = SampleStream(parts[:2], 3, seed=1)
    assert torch.equal(full.indices_all(40)[:2], few.indices_all(40))
    assert not torch.equal(full.indices_all(40), SampleStream(parts, 3, seed=2).indices_all(40))


def test_indices_all_matches_indices() -> None:
    parts = _parts()
    stream = SampleStream(parts, 6, seed=4)
    everyone = torch.arange(7)
    for t in (0, 17, 300):
        assert torch.equal(stream.indices_all(t), stream.indices(everyone, torch.full((7,), t)))
        assert torch.equal(stream.indices_all(t), stream.indices(everyone, t))
    assert stream.indices(torch.tensor([], dtype=torch.int64), 0).shape == (0, 6)


def test_indices_all_returns_a_copy() -> None:
    stream = SampleStream(_parts(), 2, seed=0)
    first = stream.indices_all(0)
    first.fill_(-1)
    assert (stream.indices_all(0) >= 0).all()


def test_stream_errors() -> None:
    with pytest.raises(DataError, match=r"parts\[1\]"):
        SampleStream([np.array([1, 2]), np.array([], dtype=np.int64)], 2, seed=0)
    with pytest.raises(DataError, match="batch_size"):
        SampleStream([np.array([1])], 0, seed=0)
    with pytest.raises(DataError, match="parts"):
        SampleStream([], 1, seed=0)
    stream = SampleStream([np.array([1]), np.array([2])], 1, seed=0)
    with pytest.raises(DataError, match="learners"):
        stream.indices(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(DataError, match="rounds"):
        stream.indices(torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(DataError, match="round"):
        stream.indices_all(-1)


def test_shared_partition_gives_every_learner_the_whole_set():
    from netfl.data.partition import partition
    from netfl.data.streams import SampleStream

    labels = np.arange(30) % 3
    parts = partition(labels, 4, "shared", seed=0)
    assert all(np.array_equal(p, np.arange(30)) for p in parts)
    stream = SampleStream(parts, 5, seed=1)
    first = stream.indices_all(0)
    assert not torch.equal(first[0], first[1])  # each learner its own order


def test_a_partition_shared_by_learners_is_copied_once_and_streams_as_separate_copies():
    shared = partition(np.arange(50) % 3, 30, "shared", seed=0)
    assert all(p is shared[0] for p in shared)
    one = SampleStream(shared, 4, seed=5)
    assert all(p is one._parts[0] for p in one._parts)  # one read-only copy for all
    assert not one._parts[0].flags.writeable and one._parts[0].dtype == np.int32
    apart = SampleStream([p.copy() for p in shared], 4, seed=5)
    assert torch.equal(one.indices_all(0), apart.indices_all(0))
    assert torch.equal(one.indices_all(60), apart.indices_all(60))
