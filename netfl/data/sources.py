"""Batch sources: what the engine asks for each round, whether the data drift or not.

The engine only needs "the B samples learner i sees in its round t" and "the
data to evaluate on now"; a source answers both, so a drifting stream can
stand where a fixed dataset stands without the engine knowing the difference.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from netfl.data.datasets import Dataset
from netfl.data.streams import SampleStream


class BatchSource(Protocol):
    m: int
    batch_size: int
    input_shape: tuple[int, ...]
    num_classes: int

    def batch(self, learners: np.ndarray | None, rounds: np.ndarray | int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [k, B, *input_shape], y [k, B] for learners (None: all) at 0-based rounds."""

    def eval_set(self, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out samples of the distribution in force at round rnd."""


class DatasetSource:
    """A fixed dataset read through per-learner index streams (no drift)."""

    def __init__(self, dataset: Dataset, stream: SampleStream, *, eval_on: str = "test",
                 max_eval: int | None = None) -> None:
        self.dataset = dataset
        self.stream = stream
        self.m = stream.m
        self.batch_size = stream.batch_size
        self.input_shape = dataset.input_shape
        self.num_classes = dataset.num_classes
        x, y = ((dataset.x_test, dataset.y_test) if eval_on == "test"
                else (dataset.x_train, dataset.y_train))
        self._eval = (x[:max_eval], y[:max_eval]) if max_eval else (x, y)

    def batch(self, learners, rounds):
        if learners is None:
            index = self.stream.indices_all(int(rounds))
        else:
            device = self.stream.device
            index = self.stream.indices(torch.as_tensor(learners, device=device),
                                        torch.as_tensor(rounds, device=device))
        index = index.to(self.dataset.x_train.device).long()
        return self.dataset.x_train[index], self.dataset.y_train[index]

    def eval_set(self, rnd: int):
        return self._eval
