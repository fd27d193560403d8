"""Representation probe (seed 000, Adilova et al.): information in the last hidden layer.

At each probe round, for every learner i, on a fixed sample of learner i's own training
data: Z is the last hidden layer of learner i's model and of the average of all learners'
models (computed here even when the protocol never sends it, as for averaging without
redistribution). The probe records I(X; Z) and I(Y; Z) in bits with one estimator of
``netfl.probes.mi`` and the accuracy and mean loss of both models on that sample: one row per
(round, learner, model), ``model`` being ``local`` or ``average``.

Why a fixed sample: estimates at different rounds then differ only because the model
changed, not because the data did. Why the learner's own data: seed 000 measures each local
dataset separately, so that in the non-iid case one sees whether the average keeps the
information of each learner's classes.

The probe only reads the bank (``features``, ``evaluate``, ``mean``), draws its sample once
from its own seed, and charges no bytes. I(X; Z) of a deterministic network is infinite in
theory; the estimators return finite, estimator-specific values (EDGE's hashing bounds it by
the entropy of the hashed variables), so compare values across rounds and models, not with
other estimators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from netfl.observers import Observer
from netfl.probes.mi import estimate
from netfl.probes.schedule import Schedule

if TYPE_CHECKING:
    from netfl.learning.bank import LearnerBank
    from netfl.sim.engine import Simulation

TABLE = "probes_representation"
COLUMNS = [
    "round", "sim_time_s", "learner", "model", "estimator", "samples",
    "mi_xz_bits", "mi_yz_bits", "acc", "loss_mean",
]
SEEDED = ("edge", "ksg")  # estimators that take a seed (projections, offsets, tie noise)


def local_samples(
    parts: Sequence[np.ndarray],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    samples: int,
    seed: int | Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of each learner's partition: ``x [m, n, *in]``, ``y [m, n]``.

    ``n = min(samples, smallest partition)``, so that every learner's sample stacks into one
    batched forward pass. Learner i draws without replacement from its own child generator of
    ``SeedSequence(seed)``; the global generator is never used.
    """
    n = min(int(samples), min(len(p) for p in parts))
    children = np.random.SeedSequence(seed).spawn(len(parts))
    idx = np.stack([
        np.sort(np.random.default_rng(child).choice(np.asarray(part), n, replace=False))
        for child, part in zip(children, parts)
    ])
    index = torch.from_numpy(idx).to(x_train.device)
    return x_train[index], y_train[index]


def _mi(name: str, z: np.ndarray, other: np.ndarray, seed: int) -> float:
    kwargs = {"seed": seed} if name in SEEDED else {}
    return estimate(name, z, other, **kwargs)


def measure(
    bank: LearnerBank, x: torch.Tensor, y: torch.Tensor, estimator: str, *, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per (learner, model) for the bank as it is now (no round or time columns).

    ``x [m, n, *in]`` and ``y [m, n]`` hold each learner's sample; the average model is
    ``bank.mean()`` broadcast to every learner, so both models go through one vmapped call.
    """
    m, n = y.shape
    avg = bank.mean()
    average = {k: v.unsqueeze(0).expand(m, *v.shape) for k, v in avg.items()}
    inputs = x.reshape(m, n, -1).detach().cpu().numpy().astype(np.float64)
    labels = y.detach().cpu().numpy().astype(np.int64)
    measured: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for model, params in (("local", bank.params), ("average", average)):
        z = bank.features(params, x).cpu().numpy()
        loss, correct = bank.evaluate(params, x, y)
        measured[model] = (z, loss.cpu().numpy(), correct.cpu().numpy())
    rows = []
    for i in range(m):  # the estimators take one learner's sample at a time
        for model, (z, loss, correct) in measured.items():
            rows.append({
                "learner": i,
                "model": model,
                "estimator": estimator,
                "samples": n,
                "mi_xz_bits": _mi(estimator, z[i], inputs[i], seed),
                "mi_yz_bits": _mi(estimator, z[i], labels[i], seed),
                "acc": float(correct[i]) / n,
                "loss_mean": float(loss[i]) / n,
            })
    return rows


class RepresentationProbe(Observer):
    """Observer writing ``probes_representation`` rows to the run's observers (on_probe)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        every: int | str,
        estimator: str = "ksg",
        seed: int = 0,
    ) -> None:
        self.x, self.y = x, y
        self.schedule = Schedule(every)
        self.estimator = estimator
        self.seed = seed

    def on_round(self, sim: Simulation, row: dict[str, Any]) -> None:
        rnd = int(row["round"])
        if not self.schedule.due(sim, rnd):
            return
        rows = measure(sim.bank, self.x, self.y, self.estimator, seed=self.seed)
        now = round(sim.env.now, 9)
        for row in rows:
            row.update(round=rnd, sim_time_s=now)
        sim.observers.probe(TABLE, COLUMNS, rows)
