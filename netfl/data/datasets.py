"""Datasets as tensors in memory: bundled (digits), synthetic (gaussian_mixture, signal), or
read from local files (mnist IDX, cifar10 python pickles, a researcher's own .npz arrays,
LEAF's federated JSON) or made by a researcher's Python function. Nothing is ever downloaded.

Every loader is seeded by an argument and uses its own ``numpy.random.Generator``; no global
random state is read or changed, so the same ``(name, seed, params)`` always gives the same
tensors.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netfl.data.base import DataError, Dataset, random_split, stratified_split
from netfl.data.custom import load_npz, load_python
from netfl.data.leaf import load_leaf

__all__ = ["DATASETS", "DataError", "Dataset", "load_dataset", "random_split", "read_idx",
           "stratified_split"]


def load_dataset(
    name: str,
    *,
    seed: int,
    test_fraction: float = 0.2,
    root: str | os.PathLike[str] | None = None,
    **params: Any,
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``).

    - ``digits``: scikit-learn's bundled 8x8 digits, ``[N, 1, 8, 8]``.
    - ``gaussian_mixture``: synthetic, ``[N, n_features]``; params ``n_samples`` (6000),
      ``n_features`` (20), ``n_classes`` (10), ``separation`` (3.0), ``noise`` (1.0).
    - ``mnist``: IDX files in ``root``, ``[N, 1, 28, 28]``, official test split.
    - ``cifar10``: python batches in ``root``, ``[N, 3, 32, 32]``, official test split.
    - ``signal``: synthetic regression, ``[N, length, 1]`` -> (shift, scale); params
      ``n_samples`` (1500), ``length`` (64), ``components`` (3), ``min_cycles`` (8),
      ``max_cycles`` (16), ``max_shift`` (1), ``min_scale`` (0.5), ``max_scale`` (2),
      ``noise`` (0.05).
    - ``npz``: a researcher's arrays, param ``path`` (``netfl.data.custom.load_npz``).
    - ``python``: what ``factory`` (``'package.module:function'``) returns when called with
      ``params`` (``netfl.data.custom.load_python``).
    - ``leaf``: LEAF's JSON (FEMNIST, Shakespeare, Sent140, synthetic) in ``root``, with
      per-sample users (``netfl.data.leaf.load_leaf``).

    ``seed`` drives synthetic generation and the train/test split; ``test_fraction`` is the
    stratified test share where there is no official split. Unknown params are errors.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0.0 < test_fraction < 1.0
    ):
        raise DataError(f"test_fraction: must be in (0, 1), got {test_fraction!r}")
    return DATASETS[name](
        seed=int(seed), test_fraction=float(test_fraction), root=root, **params
    )


# --------------------------------------------------------------------------- helpers


def _no_params(name: str, params: dict[str, Any]) -> None:
    if params:
        raise DataError(f"{name}: unknown parameter(s) {', '.join(sorted(params))}")


def _int_param(dataset: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{dataset}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_param(dataset: str, key: str, value: Any, *, positive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise DataError(f"{dataset}: {key} must be a finite number {bound}, got {value!r}")
    return float(value)


def _from_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    test_fraction: float,
    rng: np.random.Generator,
) -> Dataset:
    train, test = stratified_split(y, test_fraction, rng)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    return Dataset(name, xt[tr], yt[tr], xt[te], yt[te], num_classes)


def _resolve_root(dataset: str, root: str | os.PathLike[str] | None, what: str) -> Path:
    if root is None:
        raise DataError(f"{dataset}: parameter 'root' is required: the directory holding {what}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset}: root directory not found: {path}")
    return path


# --------------------------------------------------------------------------- digits


def _load_digits(
    *, seed: int, test_fraction: float, root: str | os.PathLike[str] | None, **params: Any
) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, ships with scikit-learn).

    Images ``[N, 1, 8, 8]`` scaled from 0..16 to [0, 1]; stratified seeded split.
    """
    _no_params("digits", params)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return _from_arrays("digits", x, y, 10, test_fraction, np.random.default_rng(seed))


# --------------------------------------------------------------------------- gaussian mixture


def _load_gaussian_mixture(
    *,
    seed: int,
    test_fraction: float,
    root: str | os.PathLike[str] | None,
    n_samples: int = 6000,
    n_features: int = 20,
    n_classes: int = 10,
    separation: float = 3.0,
    noise: float = 1.0,
    **params: Any,
) -> Dataset:
    """Synthetic classification: one isotropic Gaussian per class.

    Class ``c`` has mean ``separation * u_c`` with ``u_c`` a random unit vector in
    ``R^n_features`` (so means lie on a sphere of radius ``separation`` and, in high
    dimension, about ``separation * sqrt(2)`` apart); a sample of class ``y`` is
    ``mean_y + noise * N(0, I)``. Classes are balanced (remainder to the lowest classes) and
    shuffled. Larger ``separation / noise`` means an easier task. Input shape
    ``(n_features,)``.
    """
    _no_params("gaussian_mixture", params)
    n_features = _int_param("gaussian_mixture", "n_features", n_features, 1)
    n_classes = _int_param("gaussian_mixture", "n_classes", n_classes, 2)
    n_samples = _int_param("gaussian_mixture", "n_samples", n_samples, 2 * n_classes)
    separation = _float_param("gaussian_mixture", "separation", separation, positive=False)
    noise = _float_param("gaussian_mixture", "noise", noise, positive=True)

    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_classes, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    means = separation * directions
    y = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    x = means[y] + noise * rng.standard_normal((n_samples, n_features))
    return _from_arrays("gaussian_mixture", x, y, n_classes, test_fraction, rng)


# --------------------------------------------------------------------------- signal


def _load_signal(
    *,
    seed: int,
    test_fraction: float,
    root: str | os.PathLike[str] | None,
    n_samples: int = 1500,
    length: int = 64,
    components: int = 3,
    min_cycles: float = 8.0,
    max_cycles: float = 16.0,
    max_shift: float = 1.0,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    noise: float = 0.05,
    **params: Any,
) -> Dataset:
    """Regression on random 1-D signals (seed 002's RNN task): predict shift and scale.

    Each sample draws its own source signal, a sum of ``components`` sinusoids with random
    frequencies (``min_cycles`` to ``max_cycles``
    cycles per window), phases and amplitudes, standardized to zero mean
    and unit variance over its ``length`` steps (periods of 4 to 8 steps by default: a
    slower source needs a memory longer than seed 002's small RNN learns to keep); the sample is
    ``scale * source + shift + noise * N(0, 1)`` with ``shift ~ U(-max_shift, max_shift)``
    and ``scale ~ U(min_scale, max_scale)``, and its target is ``(shift, scale)``. Inputs are
    ``[N, length, 1]`` (a sequence of scalars), targets float32 ``[N, 2]``; random split.
    """
    _no_params("signal", params)
    length = _int_param("signal", "length", length, 2)
    components = _int_param("signal", "components", components, 1)
    n_samples = _int_param("signal", "n_samples", n_samples, 2)
    min_cycles = _float_param("signal", "min_cycles", min_cycles, positive=True)
    max_cycles = _float_param("signal", "max_cycles", max_cycles, positive=True)
    max_shift = _float_param("signal", "max_shift", max_shift, positive=False)
    min_scale = _float_param("signal", "min_scale", min_scale, positive=True)
    max_scale = _float_param("signal", "max_scale", max_scale, positive=True)
    noise = _float_param("signal", "noise", noise, positive=False)
    if max_scale < min_scale:
        raise DataError(f"signal: max_scale {max_scale} is below min_scale {min_scale}")
    if max_cycles < min_cycles:
        raise DataError(f"signal: max_cycles {max_cycles} is below min_cycles {min_cycles}")
    if max_cycles > length / 2:
        raise DataError(f"signal: max_cycles {max_cycles} exceeds length/2 = {length / 2} "
                        f"(Nyquist: faster components alias)")

    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    freq = rng.uniform(min_cycles, max_cycles, (n_samples, components, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n_samples, components, 1))
    amp = rng.uniform(0.5, 1.0, (n_samples, components, 1))
    source = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(axis=1)
    source = (source - source.mean(1, keepdims=True)) / source.std(1, keepdims=True)
    shift = rng.uniform(-max_shift, max_shift, n_samples)
    scale = rng.uniform(min_scale, max_scale, n_samples)
    x = scale[:, None] * source + shift[:, None] + noise * rng.standard_normal(source.shape)
    y = np.stack([shift, scale], axis=1)
    n_test = round(test_fraction * n_samples)
    if not 0 < n_test < n_samples:
        raise DataError(f"test_fraction: {test_fraction} leaves an empty split of {n_samples}")
    order = rng.permutation(n_samples)
    train = torch.from_numpy(np.sort(order[n_test:]))
    test = torch.from_numpy(np.sort(order[:n_test]))
    xt = torch.from_numpy(x[:, :, None].astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    return Dataset("signal", xt[train], yt[train], xt[test], yt[test], 2, task="regression")


# --------------------------------------------------------------------------- mnist (IDX)

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (LeCun's MNIST format).

    Magic number ``0x0000 08 ndim`` then ``ndim`` big-endian uint32 sizes then the data;
    the magic and the total size are checked so that swapped or truncated files fail here.
    """
    path = Path(path)
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimension(s))"
        )
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + math.prod(dims):
        raise DataError(
            f"{path}: {len(data)} bytes do not match the header sizes {dims} "
            f"(expected {header + math.prod(dims)} bytes)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(dataset: str, dirs: list[Path], base: str, root: Path) -> Path:
    for d in dirs:
        for candidate in (d / base, d / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{dataset}: missing file {base} (or {base}.gz) in {root}")


def _load_mnist(
    *, seed: int, test_fraction: float, root: str | os.PathLike[str] | None, **params: Any
) -> Dataset:
    """MNIST from the four IDX files (optionally ``.gz``) in ``root`` or ``root/MNIST/raw``.

    Images ``[N, 1, 28, 28]`` scaled to [0, 1]; the official t10k files are the test split
    (``seed`` and ``test_fraction`` are unused).
    """
    _no_params("mnist", params)
    base = _resolve_root("mnist", root, "the MNIST IDX files")
    dirs = [base, base / "MNIST" / "raw"]
    arrays = {}
    for fname in _MNIST_FILES:
        arrays[fname] = read_idx(
            _find("mnist", dirs, fname, base), 3 if "images" in fname else 1
        )
    split = {}
    for prefix in ("train", "t10k"):
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"]
        if len(images) != len(labels):
            raise DataError(
                f"mnist: {prefix}-images has {len(images)} images but {prefix}-labels has "
                f"{len(labels)} labels"
            )
        if len(labels) and labels.max() > 9:
            raise DataError(f"mnist: {prefix}-labels holds label {labels.max()} outside 0..9")
        x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
        split[prefix] = (x, torch.from_numpy(labels.astype(np.int64)))
    return Dataset("mnist", *split["train"], *split["t10k"], num_classes=10)


# --------------------------------------------------------------------------- cifar10 (pickle)

_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    (module, name)
    for module in ("numpy", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("ndarray", "dtype", "_frombuffer")
} | {("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers only, so a hostile file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    except Exception as exc:  # corrupt pickles raise many types; all mean the same here
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' array or 'labels'")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data, labels.astype(np.int64)


def _load_cifar10(
    *, seed: int, test_fraction: float, root: str | os.PathLike[str] | None, **params: Any
) -> Dataset:
    """CIFAR-10 from the python batches (data_batch_1..5, test_batch) in ``root`` or in
    ``root/cifar-10-batches-py``.

    Images ``[N, 3, 32, 32]`` scaled to [0, 1]; ``test_batch`` is the test split (``seed`` and
    ``test_fraction`` are unused). Pickles are read with a restricted unpickler.
    """
    _no_params("cifar10", params)
    base = _resolve_root("cifar10", root, "the CIFAR-10 python batches")
    folder = base / "cifar-10-batches-py"
    folder = folder if folder.is_dir() else base

    def load(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for fname in names:
            path = folder / fname
            if not path.is_file():
                raise DataError(f"cifar10: missing file {fname} in {folder}")
            parts.append(_read_cifar_batch(path))
        data = np.concatenate([d for d, _ in parts])
        labels = np.concatenate([lab for _, lab in parts])
        x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(x), torch.from_numpy(labels)

    train = load([f"data_batch_{i}" for i in range(1, 6)])
    test = load(["test_batch"])
    return Dataset("cifar10", *train, *test, num_classes=10)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "gaussian_mixture": _load_gaussian_mixture,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "signal": _load_signal,
    "npz": load_npz,
    "python": load_python,
    "leaf": load_leaf,
}
"""Registry: dataset name -> loader taking ``seed, test_fraction, root, **params``."""
