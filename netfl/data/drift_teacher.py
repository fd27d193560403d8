"""Teacher-student classification: a fixed random network labels Gaussian inputs.

The teacher-student setup (Goldt et al. 2019, "Dynamics of stochastic gradient descent for
two-layer neural networks in the teacher-student setup"; seed 003) gives a learning problem
that can be produced in any quantity with a known target. Here the teacher of concept c is an
MLP ``n_features -> hidden... -> n_classes`` with activation ``erf(z / sqrt(2))`` (Goldt et
al.'s g), weights ``N(0, 1 / fan_in)`` and zero hidden biases, drawn from
``default_rng(SeedSequence(seed, spawn_key=(3, c)))``; inputs are ``x ~ N(0, I)`` and the
label is the argmax of the teacher's logits, so the Bayes error is 0. With ``balanced``, the
output biases are tuned on 4096 calibration inputs so that classes are about equally
frequent (a random teacher otherwise favours a few classes). A drift draws a new teacher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf

from netfl.data.datasets import DataError
from netfl.data.drift_base import (
    LRU,
    TAG_CONCEPT,
    DriftingSource,
    Noise,
    check_int,
    sub_seed,
)
from netfl.data.drift_schedule import DriftSchedule

_CALIBRATION = 4096
_CALIBRATION_STEPS = 60


@dataclass(frozen=True, eq=False)
class Teacher:
    """A random MLP labeller: ``weights[l]`` is ``[out, in]``, ``biases[l]`` is ``[out]``."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[n, n_classes]`` logits of inputs ``x [n, n_features]`` (float64 numpy)."""
        h = np.asarray(x, dtype=np.float64)
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T + b
            if layer < len(self.weights) - 1:
                h = erf(h / math.sqrt(2.0))
        return h

    def labels(self, x: np.ndarray) -> np.ndarray:
        """int64 argmax labels of inputs ``x``."""
        return self.logits(x).argmax(axis=1)


def random_teacher(rng: np.random.Generator, *, n_features: int, hidden: Sequence[int],
                   n_classes: int, balanced: bool = True) -> Teacher:
    """A teacher drawn with ``rng`` (see the module docstring)."""
    sizes = [n_features, *hidden, n_classes]
    weights = tuple(rng.standard_normal((o, i)) / math.sqrt(i) for i, o in zip(sizes, sizes[1:]))
    biases = [np.zeros(o) for o in sizes[1:]]
    if balanced:
        x = rng.standard_normal((_CALIBRATION, n_features))
        logits = Teacher(weights, tuple(biases)).logits(x)
        biases[-1] = _balance(logits, n_classes)
    return Teacher(weights, tuple(biases))


def _balance(logits: np.ndarray, n_classes: int) -> np.ndarray:
    """Output biases that make the argmax classes of ``logits`` about equally frequent:
    multiplicative-weights steps on the log-ratio of each class's share to 1/C."""
    bias = np.zeros(n_classes)
    scale = float(logits.std()) or 1.0
    n = len(logits)
    for step in range(_CALIBRATION_STEPS):
        share = np.bincount((logits + bias).argmax(1), minlength=n_classes) / n
        bias -= scale * 0.5 / (1 + step) ** 0.5 * np.log((share + 1.0 / n) * n_classes)
    return bias - bias.mean()


class TeacherStudentSource(DriftingSource):
    """Gaussian inputs ``[n_features]`` labelled by a random teacher, a new one per concept.

    Per round all m*B inputs come from one ``torch.randn`` draw seeded by (seed, round).
    """

    name = "teacher_student"

    def __init__(
        self,
        *,
        m: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        schedule: DriftSchedule | None = None,
        n_features: int = 20,
        hidden: int | Sequence[int] = 32,
        n_classes: int = 10,
        balanced: bool = True,
        n_eval: int = 2000,
    ) -> None:
        super().__init__(m=m, batch_size=batch_size, seed=seed, device=device,
                         schedule=schedule, n_eval=n_eval)
        g = self.name
        self.n_features = check_int(f"{g}: n_features", n_features, 1)
        layers = [hidden] if isinstance(hidden, (int, np.integer)) else hidden
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise DataError(f"{g}: hidden must be an integer or a list of integers, got "
                            f"{hidden!r}")
        self.hidden = tuple(check_int(f"{g}: hidden[{i}]", h, 1) for i, h in enumerate(layers))
        self.n_classes = check_int(f"{g}: n_classes", n_classes, 2)
        if not isinstance(balanced, (bool, np.bool_)):
            raise DataError(f"{g}: balanced must be true or false, got {balanced!r}")
        self.balanced = bool(balanced)
        self.input_shape = (self.n_features,)
        self.num_classes = self.n_classes
        self._teachers = LRU(64)
        self._tensors = LRU(64)

    def teacher(self, concept: int) -> Teacher:
        """The teacher of ``concept`` (a pure function of (seed, concept))."""
        concept = check_int("concept", concept, 0)
        return self._teachers.get_or(concept, lambda: random_teacher(
            np.random.default_rng(sub_seed(self.seed, TAG_CONCEPT, concept)),
            n_features=self.n_features, hidden=self.hidden, n_classes=self.n_classes,
            balanced=self.balanced))

    def _draw(self, gen: torch.Generator, shape: tuple[int, ...]) -> Noise:
        return (torch.randn((*shape, self.n_features), generator=gen, device=self.device),)

    def _apply(self, concept: int, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        layers = self._tensors.get_or(concept, lambda: self._to_device(concept))
        x = noise[0]
        h = x.reshape(-1, self.n_features)
        for i, (w_t, b) in enumerate(layers):
            h = torch.addmm(b, h, w_t)
            if i < len(layers) - 1:
                h = torch.erf(h.mul_(1.0 / math.sqrt(2.0)))
        return x, h.argmax(dim=1).view(x.shape[:-1])

    def _to_device(self, concept: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        t = self.teacher(concept)
        return [(torch.as_tensor(w.T.copy(), dtype=torch.float32, device=self.device),
                 torch.as_tensor(b, dtype=torch.float32, device=self.device))
                for w, b in zip(t.weights, t.biases)]
