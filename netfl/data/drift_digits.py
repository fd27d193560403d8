"""A real dataset whose concept changes by permuting the labels (default: sklearn digits).

Inputs keep their distribution while the labelling function changes, the simplest real-data
concept drift. Concept 0 is the identity; concept c >= 1 relabels class k as ``perm_c[k]``,
where ``perm_c`` is a uniformly random derangement (no class keeps its label) drawn from
``default_rng(SeedSequence(seed, spawn_key=(3, c)))``, so every drift changes every class
and a recurring concept is the same permutation. Learners read their partition through a
``SampleStream`` (the same per-learner index streams as the no-drift ``DatasetSource``).
"""

from __future__ import annotations

import numpy as np
import torch

from netfl.data.datasets import DataError, Dataset, load_dataset
from netfl.data.drift_base import (
    LRU,
    TAG_CONCEPT,
    TAG_STREAM,
    DriftingSource,
    Noise,
    check_int,
    sub_seed,
)
from netfl.data.drift_schedule import DriftSchedule
from netfl.data.partition import partition
from netfl.data.streams import SampleStream

EVAL_ON = ("test", "train")


def random_derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (n >= 2)."""
    while True:  # accepted with probability ~1/e
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


class PermutedDigitsSource(DriftingSource):
    """``dataset`` (default: ``load_dataset("digits", seed=seed)``) with labels permuted per
    concept.

    ``parts``: each learner's training indices (default: a seeded iid ``partition``).
    ``eval_on``: the split ``eval_set`` relabels (``test`` or ``train``), cut to
    ``max_eval`` samples when given.
    """

    name = "digits_permuted"

    def __init__(
        self,
        *,
        m: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        schedule: DriftSchedule | None = None,
        dataset: Dataset | None = None,
        parts: list[np.ndarray] | None = None,
        eval_on: str = "test",
        max_eval: int | None = None,
    ) -> None:
        g = self.name
        if eval_on not in EVAL_ON:
            raise DataError(f"{g}: eval_on must be one of {', '.join(EVAL_ON)}, got {eval_on!r}")
        if max_eval is not None:
            max_eval = check_int(f"{g}: max_eval", max_eval, 1)
        seed = check_int("seed", seed, 0)
        if dataset is None:
            dataset = load_dataset("digits", seed=seed)
        if not isinstance(dataset, Dataset):
            raise DataError(f"{g}: dataset must be a Dataset, got {type(dataset).__name__}")
        if dataset.num_classes < 2:
            raise DataError(f"{g}: dataset needs >= 2 classes to permute")
        split = dataset.y_test if eval_on == "test" else dataset.y_train
        n_eval = len(split) if max_eval is None else min(max_eval, len(split))
        super().__init__(m=m, batch_size=batch_size, seed=seed, device=device,
                         schedule=schedule, n_eval=max(n_eval, 1))
        self.dataset = dataset.to(self.device)
        self.eval_on = eval_on
        self.input_shape = dataset.input_shape
        self.num_classes = dataset.num_classes
        stream_seed, part_seed = (int(v) for v in
                                  sub_seed(seed, TAG_STREAM).generate_state(2, np.uint32))
        if parts is None:
            parts = partition(dataset.y_train.cpu().numpy(), self.m, "iid", seed=part_seed)
        elif len(parts) != self.m:
            raise DataError(f"{g}: parts has {len(parts)} partitions for m = {self.m} learners")
        self.stream = SampleStream(list(parts), self.batch_size, seed=stream_seed,
                                   device=self.device)
        self._perms = LRU(256)

    def permutation(self, concept: int) -> np.ndarray:
        """int64 ``[num_classes]``: concept ``concept`` relabels class k as ``perm[k]``."""
        concept = check_int("concept", concept, 0)
        if concept == 0:
            return np.arange(self.num_classes, dtype=np.int64)
        rng = np.random.default_rng(sub_seed(self.seed, TAG_CONCEPT, concept))
        return random_derangement(self.num_classes, rng).astype(np.int64)

    def _draw_round(self, gen: torch.Generator, rnd: int) -> Noise:
        idx = self.stream.indices_all(rnd)
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    def _eval_noise(self) -> Noise:
        d = self.dataset
        x, y = (d.x_test, d.y_test) if self.eval_on == "test" else (d.x_train, d.y_train)
        return x[: self.n_eval], y[: self.n_eval]

    def _apply(self, concept: int, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        perm = self._perms.get_or(concept, lambda: torch.as_tensor(
            self.permutation(concept), device=self.device))
        x, y = noise
        return x, perm[y]
