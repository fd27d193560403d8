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
    num_classes: int  # classes, or the number of regression targets
    task: str  # 'classification' or 'regression'

    def batch(self, learners: np.ndarray | None, rounds: np.ndarray | int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [k, B, *input_shape], y [k, B] for learners (None: all) at 0-based rounds."""

    def eval_set(self, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out samples of the distribution in force at round rnd."""


class DatasetSource:
    """A fixed dataset read through per-learner index streams (no drift)."""

    def __init__(self, dataset: Dataset, stream: SampleStream, *, eval_on: str = "test",
                 max_eval: int | None = None, shift: int = 0, noise: float = 0.0,
                 seed: int = 0) -> None:
        self.dataset = dataset
        self.stream = stream
        self.m = stream.m
        self.batch_size = stream.batch_size
        self.input_shape = dataset.input_shape
        self.num_classes = dataset.num_classes
        self.task = dataset.task
        x, y = ((dataset.x_test, dataset.y_test) if eval_on == "test"
                else (dataset.x_train, dataset.y_train))
        self._eval = (x[:max_eval], y[:max_eval]) if max_eval else (x, y)
        self.shift, self.noise, self.seed = int(shift), float(noise), int(seed)
        if self.shift and len(self.input_shape) < 2:
            raise ValueError(f"data.augment.shift: shifts move pixels of images; this "
                             f"dataset's samples have shape {tuple(self.input_shape)} (use "
                             "augment.noise, or give image-shaped data)")

    def batch(self, learners, rounds):
        if learners is None:
            index = self.stream.indices_all(int(rounds))
        else:
            device = self.stream.device
            index = self.stream.indices(torch.as_tensor(learners, device=device),
                                        torch.as_tensor(rounds, device=device))
        index = index.to(self.dataset.x_train.device).long()
        x, y = self.dataset.x_train[index], self.dataset.y_train[index]
        if self.shift or self.noise:
            x = self._augment(x, learners, rounds)
        return x, y

    def _augment(self, x: torch.Tensor, learners, rounds) -> torch.Tensor:
        """Per-sample random shifts of up to `shift` pixels (wrapping) and Gaussian noise,
        drawn from (seed, learner, round) alone so batches do not depend on how learners are
        grouped into calls. Drawing loops over learners; the image work is vectorized."""
        learners = np.arange(self.m) if learners is None else np.asarray(learners)
        rounds = np.broadcast_to(np.asarray(rounds), learners.shape)
        k, b = x.shape[:2]
        side = 2 * self.shift + 1
        codes, noises = [], []
        for learner, rnd in zip(learners, rounds):
            state = np.random.SeedSequence([self.seed, int(learner), int(rnd)])
            gen = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
            codes.append(torch.randint(0, side * side, (b,), generator=gen))
            if self.noise:
                noises.append(torch.randn(x.shape[1:], generator=gen))
        out = x
        if self.shift:
            offsets = [(dy, dx) for dy in range(-self.shift, self.shift + 1)
                       for dx in range(-self.shift, self.shift + 1)]
            variants = torch.stack([torch.roll(x, o, dims=(-2, -1)) for o in offsets])
            code = torch.stack(codes).to(x.device)
            out = variants[code, torch.arange(k)[:, None], torch.arange(b)[None, :]]
        if self.noise:
            out = out + self.noise * torch.stack(noises).to(x.device)
        return out

    def eval_set(self, rnd: int):
        return self._eval
