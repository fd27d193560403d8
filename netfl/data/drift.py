"""Concept-drift streams (issue 3, item 2): a drift schedule and three drifting sources.

All learners share one time-varying distribution P_t whose concept is a function of the
round (``DriftSchedule``); each source is a ``BatchSource`` (see ``netfl.data.sources``) that
also reports ``concept_at(rnd)`` and ``events(up_to_round)`` so the engine can record drifts.

- ``graphical``: binary labels from a random two-tier graphical model, a new model per
  concept (Kamp et al. 2018, section 5); ``bayes_error`` gives each concept's Bayes error.
- ``digits_permuted``: sklearn digits with the labels permuted per concept.
- ``teacher_student``: Gaussian inputs labelled by a random MLP teacher, a new teacher per
  concept (seed 003, Goldt et al. 2019).

Modules: ``drift_schedule`` (when), ``drift_base`` (shared generation, mixing and caching),
``drift_graphical``, ``drift_digits``, ``drift_teacher`` (what).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from netfl.data.datasets import DataError
from netfl.data.drift_base import DriftingSource
from netfl.data.drift_digits import PermutedDigitsSource, random_derangement
from netfl.data.drift_graphical import (
    GraphicalModel,
    GraphicalModelSource,
    bayes_error,
    random_graphical_model,
)
from netfl.data.drift_schedule import KINDS, MODES, DriftEvent, DriftSchedule
from netfl.data.drift_teacher import Teacher, TeacherStudentSource, random_teacher

SOURCES: dict[str, type[DriftingSource]] = {
    "graphical": GraphicalModelSource,
    "digits_permuted": PermutedDigitsSource,
    "teacher_student": TeacherStudentSource,
}

__all__ = [
    "KINDS", "MODES", "SOURCES", "DriftEvent", "DriftSchedule", "DriftingSource",
    "GraphicalModel", "GraphicalModelSource", "PermutedDigitsSource", "Teacher",
    "TeacherStudentSource", "bayes_error", "make_source", "random_derangement",
    "random_graphical_model", "random_teacher",
]

_COMMON = ("m", "batch_size", "seed", "device", "schedule")


def make_source(
    kind: str,
    *,
    m: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    schedule: DriftSchedule | None = None,
    **params: Any,
) -> DriftingSource:
    """The drifting source ``kind`` (a key of ``SOURCES``) with its own ``params``.

    Unknown kinds, unknown parameters and bad values raise DataError naming them.
    """
    if not isinstance(kind, str) or kind not in SOURCES:
        raise DataError(f"source: unknown kind {kind!r}; known: {', '.join(SOURCES)}")
    cls = SOURCES[kind]
    known = set(inspect.signature(cls.__init__).parameters) - {"self", *_COMMON}
    unknown = sorted(set(params) - known)
    if unknown:
        raise DataError(f"{kind}: unknown parameter(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return cls(m=m, batch_size=batch_size, seed=seed, device=device, schedule=schedule,
               **params)
