"""Parameter probe (seed 002, Xiao et al.): client parameters as random vectors.

Seed 002 treats each client's trained parameter vector as a random variable, the randomness
being SGD's sampling noise, and estimates the MI between clients from repeated trainings. The
probe does the same with R replicas of the scenario: the same initialization, partition,
network and timing, and independent sampling noise (replica r > 0 draws its batches from a
stream seed derived from the run's stream seed and r; replica 0 is the run itself). At each
probe round (every ``every`` rounds) the R replicas give R samples of every learner's
parameter vector, and for every pair of learners (a, b) the probe records:

* ``mi_<estimator>_bits``: I(theta_a; theta_b) by each chosen estimator (Gaussian, seed 002
  eqs. 1-5; KSG, eq. 6), on a **projection** of the parameters (below);
* ``dist_euclidean``, ``dist_manhattan``, ``dist_chebyshev``: seed 002 eqs. 7-9, the L2, L1
  and max-norm distance between theta_a and theta_b of one replica, averaged over the R
  replicas, on the full vectors;
* ``divergence``: the model divergence of all learners (seed 004 eq. 2, as in metrics.csv),
  averaged over the replicas (the same on every pair's row).

Dimensionality. R samples of P-dimensional vectors with P >> R cannot support an MI estimate
in P dimensions (the sample covariance is singular, and k-NN distances concentrate). The MI
is estimated on ``dims`` coordinates per learner, the same for all learners and rounds:
``projection: random`` multiplies the flat parameter vector by a fixed Gaussian matrix
``[P, dims]`` drawn from the probe's seed (every coordinate then mixes all parameters);
``projection: coordinates`` takes ``dims`` parameter entries chosen at random, once, from the
probe's seed. Both are functions of the parameters, so by data processing the estimate targets
a lower bound of the MI between the full vectors. The Gaussian estimate of two d-dimensional
vectors from R samples has a positive bias of about ``d^2 / (2 R ln 2)`` bits (scenario
validation requires R > 2d); KSG is nearly unbiased at MI 0 but noisy at small R.

Replicas run one of two ways (the ``replica_path`` column says which):

* ``one_bank``: inside the run, as R x m rows of its bank (``netfl.learning.replicas``): one
  batched step trains every replica, the protocol averages each replica's learners among
  themselves without knowing, messages are charged one replica's bytes, and the metrics
  are replica 0's, byte for byte those of the run without the probe (on CPU, in the tests
  and on seed 002's setups; CUDA's batched kernels are unchecked). Taken where that is
  exact (``one_bank_refusal``): full float32 models on the wire (no codec), a protocol
  whose timing and results never depend on model values (``ONE_BANK_PROTOCOLS``), no
  observer of uploads, and a bank of R x m rows that fits the device.
* ``separate``: otherwise, R - 1 separate simulations, in process and one after the other,
  the first time the run reaches a probe round; each keeps only its projected coordinates,
  distances and divergence at the probe rounds. They share nothing with the run (own bank,
  network, streams).

Both give the same rows (tests/test_probe_replicas.py) and leave the run's metrics as they
are without probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from netfl.observers import Observer
from netfl.probes.mi import estimate

if TYPE_CHECKING:
    from netfl.learning.replicas import ReplicaBank
    from netfl.sim.engine import Simulation

TABLE = "probes_parameters"
DISTANCES = ("dist_euclidean", "dist_manhattan", "dist_chebyshev")
SEEDED = ("edge", "ksg")
# Protocols whose messages, timing and summary never depend on model values, and whose model
# arithmetic is elementwise or row-linear (averages, mixing, server optimizers, FedProx):
# their replicas can share one bank. Not dynamic (a violation depends on the models), serial
# (ships samples), scaffold (its summary reads the norm of the control variate).
ONE_BANK_PROTOCOLS = frozenset({"nosync", "continuous", "periodic", "fedavg", "gossip", "dpsgd",
                                "hierarchical", "fedasync", "fedbuff"})


def columns(estimators: list[str]) -> list[str]:
    """Columns of probes_parameters.csv for the chosen estimators."""
    return [
        "round", "sim_time_s", "learner_a", "learner_b", "replicas", "dims",
        *[f"mi_{e}_bits" for e in estimators], *DISTANCES, "divergence", "replica_path",
    ]


def one_bank_refusal(scenario: Any, observers: Iterable[Observer] = ()) -> str | None:
    """Why the replicas of ``scenario``'s parameter probe cannot train as rows of the run's
    bank (None: they can; memory is the build's check)."""
    name = scenario.protocol.name
    if name not in ONE_BANK_PROTOCOLS:
        return (f"protocol {name}: its timing or results depend on model values, or it does "
                "not send models")
    for direction in ("uplink", "downlink"):
        if getattr(scenario.compression, direction) is not None:
            return f"compression.{direction}: a codec's state and draws span one model"
    if any(o.listens("on_upload") for o in observers):
        return "an observer reads uploads (on_upload), which would see every replica"
    return None


def replica_seed(stream_seed: int, replica: int) -> int:
    """Stream seed of replica ``replica`` (0 is the run itself, which keeps ``stream_seed``)."""
    if replica == 0:
        return int(stream_seed)
    child = np.random.SeedSequence([int(stream_seed), int(replica)])
    return int(child.generate_state(1)[0])


def distances(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> np.ndarray:
    """Seed 002 eqs. 7-9 for samples ``x, y [N, P]`` (row i: sample i of each vector).

    Returns ``[D_Eu, D_Man, D_Che]``: the Euclidean, Manhattan and Chebyshev distance of each
    pair of rows, averaged over the N rows.
    """
    d = torch.as_tensor(x, dtype=torch.float64) - torch.as_tensor(y, dtype=torch.float64)
    if d.dim() == 1:
        d = d.unsqueeze(0)
    a = d.abs()
    return np.array([
        float(d.square().sum(1).sqrt().mean()), float(a.sum(1).mean()),
        float(a.amax(1).mean()),
    ])


def pair_distances(flat: torch.Tensor) -> np.ndarray:
    """``[pairs, 3]``: Euclidean, Manhattan, Chebyshev distance of every learner pair
    (a < b, in ``combinations`` order) of one replica's ``flat [m, P]``."""
    f = flat.to(torch.float64)
    m = f.shape[0]
    iu = torch.triu_indices(m, m, offset=1, device=f.device)
    out = [
        torch.cdist(f, f, p=p, compute_mode="donot_use_mm_for_euclid_dist")[iu[0], iu[1]]
        for p in (2.0, 1.0, math.inf)
    ]
    return torch.stack(out, dim=1).cpu().numpy()


class Projection:
    """The fixed map from a flat parameter vector ``[P]`` to the ``dims`` coordinates the MI is
    estimated on (all P coordinates when ``dims >= P``)."""

    def __init__(self, num_params: int, dims: int, kind: str, seed: int,
                 device: torch.device | str = "cpu") -> None:
        if kind not in ("random", "coordinates"):
            raise ValueError(f"projection: must be 'random' or 'coordinates', got {kind!r}")
        rng = np.random.default_rng(seed)
        self.dims = min(int(dims), int(num_params))
        self.matrix: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        if self.dims == num_params:
            self.index = torch.arange(num_params, device=device)
        elif kind == "random":
            w = rng.standard_normal((num_params, self.dims)) / math.sqrt(num_params)
            self.matrix = torch.from_numpy(w).to(device)
        else:
            picks = np.sort(rng.choice(num_params, self.dims, replace=False))
            self.index = torch.from_numpy(picks).to(device)

    def __call__(self, flat: torch.Tensor) -> np.ndarray:
        """``[m, dims]`` coordinates of ``flat [m, P]`` (float64)."""
        if self.matrix is not None:
            return (flat.to(torch.float64) @ self.matrix.to(flat.device)).cpu().numpy()
        return flat.index_select(1, self.index.to(flat.device)).to(torch.float64).cpu().numpy()


@dataclass
class Snapshot:
    """What one replica contributes at one probe round."""

    coords: np.ndarray  # [m, dims] projected parameters
    dists: np.ndarray  # [pairs, 3] distances between learners (full vectors)
    divergence: float
    sim_time_s: float


def snapshot(sim: Simulation, projection: Projection) -> Snapshot:
    """Read one replica's learners now (read only: ``flat`` returns a copy)."""
    flat = sim.bank.flat()
    return Snapshot(
        coords=projection(flat), dists=pair_distances(flat),
        divergence=sim.bank.divergence() if sim.m > 1 else 0.0,
        sim_time_s=round(sim.env.now, 9),
    )


def bank_snapshots(sim: Simulation, bank: ReplicaBank, projection: Projection
                   ) -> list[Snapshot]:
    """Every replica's snapshot from the rows of one bank, with the very operations (and
    shapes) ``snapshot`` applies to a replica's own m-row bank, so the values are the same.
    One pass per replica, at probe rounds only."""
    now = round(sim.env.now, 9)
    out = []
    for r in range(bank.replicas):
        flat = bank.replica_flat(r)
        out.append(Snapshot(
            coords=projection(flat), dists=pair_distances(flat),
            divergence=bank.divergence(replica=r) if bank.m > 1 else 0.0, sim_time_s=now,
        ))
    return out


class ReplicaRecorder(Observer):
    """Observer of a replica: keeps its snapshots at the probe rounds, by round."""

    def __init__(self, every: int, projection: Projection) -> None:
        self.every = every
        self.projection = projection
        self.snapshots: dict[int, Snapshot] = {}

    def on_round(self, sim: Simulation, row: dict[str, Any]) -> None:
        rnd = int(row["round"])
        if rnd % self.every == 0:
            self.snapshots[rnd] = snapshot(sim, self.projection)


def mi_between(
    coords: np.ndarray, estimators: list[str], *, k: int = 3, seed: int = 0
) -> dict[tuple[int, int], dict[str, float]]:
    """MI in bits between learners' coordinates ``coords [R, m, d]`` for every pair a < b."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    for a, b in combinations(range(coords.shape[1]), 2):
        values = {}
        for name in estimators:
            kwargs: dict[str, Any] = {"seed": seed} if name in SEEDED else {}
            if name == "ksg":
                kwargs["k"] = k
            values[name] = estimate(name, coords[:, a], coords[:, b], **kwargs)
        out[(a, b)] = values
    return out


class ParameterProbe(Observer):
    """Observer of the run (replica 0); writes probes_parameters rows to the run's
    observers (on_probe).

    With ``bank`` (the run's ReplicaBank) every replica lives in the run and is read from
    it (path ``one_bank``). Without it the probe runs replicas 1..R-1 itself (``separate``):
    ``make_replica(r)`` returns a fresh Simulation of the same scenario without probes and
    with replica r's stream seed; build.py provides it, so the probe never imports build.
    ``fallback`` says why the replicas are separate (None on the one-bank path).
    """

    def __init__(
        self,
        *,
        replicas: int,
        every: int,
        estimators: list[str],
        k: int,
        projection: Projection,
        seed: int,
        make_replica: Callable[[int], Simulation],
        bank: ReplicaBank | None = None,
        fallback: str | None = None,
    ) -> None:
        self.replicas = replicas
        self.every = every
        self.estimators = list(estimators)
        self.k = k
        self.projection = projection
        self.seed = seed
        self.make_replica = make_replica
        if bank is not None and bank.replicas != replicas:
            raise ValueError(f"bank: holds {bank.replicas} replicas, the probe wants {replicas}")
        self.bank = bank
        self.path = "separate" if bank is None else "one_bank"
        self.fallback = fallback
        self.columns = columns(self.estimators)
        self._others: list[dict[int, Snapshot]] | None = None

    def run_replicas(self) -> list[dict[int, Snapshot]]:
        """Run replicas 1..R-1 to the end, once; their snapshots by round."""
        if self._others is None:
            others = []
            for r in range(1, self.replicas):
                sim = self.make_replica(r)
                recorder = ReplicaRecorder(self.every, self.projection)
                sim.observers.append(recorder)
                sim.run()
                others.append(recorder.snapshots)
            self._others = others
        return self._others

    def on_round(self, sim: Simulation, row: dict[str, Any]) -> None:
        rnd = int(row["round"])
        if rnd % self.every:
            return
        if self.bank is not None:
            samples = bank_snapshots(sim, self.bank, self.projection)
        else:
            own = snapshot(sim, self.projection)
            samples = [own] + [o[rnd] for o in self.run_replicas() if rnd in o]
        sim.observers.probe(TABLE, self.columns, self.rows(rnd, samples))

    def rows(self, rnd: int, samples: list[Snapshot]) -> list[dict[str, Any]]:
        """One row per learner pair from the replicas' snapshots at round ``rnd``."""
        coords = np.stack([s.coords for s in samples])  # [R, m, d]
        dists = np.mean([s.dists for s in samples], axis=0)  # [pairs, 3]
        divergence = float(np.mean([s.divergence for s in samples]))
        mi = mi_between(coords, self.estimators, k=self.k, seed=self.seed)
        rows = []
        for j, (pair, values) in enumerate(mi.items()):
            row: dict[str, Any] = {
                "round": rnd, "sim_time_s": samples[0].sim_time_s,
                "learner_a": pair[0], "learner_b": pair[1],
                "replicas": len(samples), "dims": coords.shape[2],
                "divergence": divergence, "replica_path": self.path,
            }
            row.update({f"mi_{name}_bits": v for name, v in values.items()})
            row.update(dict(zip(DISTANCES, dists[j].tolist())))
            rows.append(row)
        return rows
