"""What every loader returns: the ``Dataset`` of tensors, its error type and the stratified
split. Kept apart from the loaders so that the file, LEAF and custom-object loaders can use
them without importing each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """A data request a user can get wrong (name, file, parameter); the message names it."""


@dataclass
class Dataset:
    """A classification or regression dataset held as tensors.

    ``x_*`` are float32 ``[N, *input_shape]`` (images scaled to [0, 1]). For ``task``
    'classification' ``y_*`` are int64 class labels in ``[0, num_classes)``; for
    'regression' they are float32 targets ``[N, num_classes]`` (``num_classes`` is then the
    number of targets, the model's output width, and training minimizes squared error).

    Federated datasets also say who wrote each sample: ``users_train`` / ``users_test`` are
    int64 numpy arrays of indices into ``user_names`` (``partition: natural`` reads them).
    They stay numpy on the host, since only partitioning reads them, and ``to(device)``
    carries them over unchanged.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    task: str = "classification"
    users_train: np.ndarray | None = None
    users_test: np.ndarray | None = None
    user_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise DataError(f"{self.name}: inputs and labels differ in length")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: train and test inputs differ in shape")
        for split, users, n in (("train", self.users_train, len(self.y_train)),
                                ("test", self.users_test, len(self.y_test))):
            if users is None:
                continue
            if users.shape != (n,):
                raise DataError(f"{self.name}: users_{split} must hold one user per sample "
                                f"({n}), got shape {list(users.shape)}")
            if self.user_names is None or (n and not 0 <= users.min() <= users.max()
                                           < len(self.user_names)):
                raise DataError(f"{self.name}: users_{split} must index user_names")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 8, 8)`` for digits."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device`` (same object's tensors if already there);
        the user indices, numpy arrays, are shared."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with each class split in proportion ``test_fraction``.

    The test total is ``round(test_fraction * N)``; per-class shares are rounded by largest
    remainder so that class proportions match the full set as closely as integers allow.
    """
    n = len(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_test = round(test_fraction * n)
    if not 0 < n_test < n:
        raise DataError(f"test_fraction: {test_fraction} leaves an empty split of {n} samples")
    ideal = counts * test_fraction
    per_class = np.floor(ideal).astype(np.int64)
    extra = n_test - int(per_class.sum())
    order = np.argsort(-(ideal - per_class), kind="stable")
    per_class[order[:extra]] += 1
    test_mask = np.zeros(n, dtype=bool)
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        test_mask[rng.permutation(members)[: per_class[c]]] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def random_split(n: int, test_fraction: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices of a seeded shuffle, ``round(test_fraction * n)`` test."""
    n_test = round(test_fraction * n)
    if not 0 < n_test < n:
        raise DataError(f"test_fraction: {test_fraction} leaves an empty split of {n} samples")
    order = rng.permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
