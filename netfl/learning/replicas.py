"""R replicas of a run in one bank: the parameter probe's replicas trained as R x m rows.

The parameter probe (seed 002, ``netfl.probes.parameters``) needs R runs of one scenario
that differ only in sampling noise. Run one after another they cost R runs; here they are
one run whose bank holds R x m rows (replica r, learner i at row ``r*m + i``), so one
batched step trains every replica's learners at once.

Two views of the same rows, so that neither the engine nor the protocol knows:

* **protocol view** (``flat``, ``unflatten``, ``assign``, ``num_params``, the FedProx
  anchors and SCAFFOLD corrections): learner i's model is the concatenation of its R
  replicas' vectors, ``[R*P]``. Whatever a protocol does elementwise or row-linearly to
  models (average uploads, mix neighbours, step a server optimizer) it then does to each
  replica on its own, exactly as R separate runs would;
* **metrics view** (``step``'s losses, ``mean``, ``params``, ``evaluate``, ``features``,
  ``divergence``): replica 0, the run itself, with the same operations on the same
  ``[m, ...]`` shapes as an m-row bank, so metrics.csv is byte for byte the run's.

``message_size`` charges a payload what one replica's would cost: full float32 payloads
are small headers plus float32 vectors with a 4-byte count, here of R*P entries instead of
P. This is exact only where nothing about the run depends on model values beyond those
elementwise operations; ``netfl.probes.parameters.one_bank_refusal`` says where it is not
(lossy codecs, dynamic averaging, serial, ...), and the probe then runs separate replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from netfl.learning.bank import StepResult
from netfl.sim import wire

if TYPE_CHECKING:
    from netfl.learning.bank import LearnerBank

__all__ = ["ReplicaBank", "ReplicaSource", "Replicated"]

IndexLike = Tensor | int | Sequence[int] | np.ndarray | None
_MAX_HEADER = 64  # bytes of a payload that are not model vectors (version, count fields)


class Replicated(dict):
    """What ``ReplicaBank.unflatten`` returns: replica 0's layers (what a reader of a model
    sees, like the metrics view), carrying the whole concatenated vector ``vec`` for
    ``assign``."""

    def __init__(self, layers: dict[str, Tensor], vec: Tensor) -> None:
        super().__init__(layers)
        self.vec = vec


class ReplicaBank:
    """R replicas of m learners as the ``R*m`` rows of ``inner`` (row ``r*m + i``).

    Build it with :meth:`tile`. ``uniform`` mirrors the m-row bank's exact-zero divergence
    shortcut: True while every learner holds the model last broadcast to all of them in
    order (or the shared initial model), which is the same for every replica since the
    replicas see the same assigns and steps.
    """

    def __init__(self, inner: LearnerBank, replicas: int, *, uniform: bool) -> None:
        if replicas < 1 or inner.m % replicas:
            raise ValueError(f"replicas: {replicas} does not divide the bank's {inner.m} rows")
        self.inner = inner
        self.replicas = int(replicas)
        self.m = inner.m // self.replicas
        self.replica_params = inner.num_params  # P: one replica's model
        self.num_params = self.replicas * inner.num_params  # what a protocol sees per learner
        self.device = inner.device
        self.dtype = inner.dtype
        self.regression = inner.regression
        self.optimizer = inner.optimizer
        self.input_shape = inner.input_shape
        self.all_idx = torch.arange(self.m, device=self.device)
        self.uniform = bool(uniform)
        self._offsets = torch.arange(self.replicas, device=self.device) * self.m
        self._vector_head = len(wire.encode_vector(torch.zeros(0)))  # a vector's count field

    @classmethod
    def tile(cls, bank: LearnerBank, replicas: int, inner: LearnerBank) -> ReplicaBank:
        """Every replica starts as ``bank`` (m rows, after any pretraining): its models are
        copied into each replica's rows of ``inner``, a fresh bank of the same options with
        ``replicas * bank.m`` rows (fresh optimizer state, as ``bank``'s)."""
        if inner.m != replicas * bank.m or inner.num_params != bank.num_params:
            raise ValueError(f"inner: expected {replicas * bank.m} rows of {bank.num_params} "
                             f"parameters, got {inner.m} of {inner.num_params}")
        start = bank.flat()
        inner.assign(None, inner.unflatten(start.repeat(replicas, 1)))
        uniform = bank.m == 1 or bank.divergence() == 0.0  # exactly 0: the shortcut's state
        return cls(inner, replicas, uniform=uniform)

    # ------------------------------------------------------------------ indexing
    def _learners(self, idx: IndexLike) -> tuple[Tensor | None, int]:
        """(learner ids on the device, or None for every learner in order; k)."""
        if idx is None or idx is self.all_idx:
            return None, self.m
        if isinstance(idx, Tensor):
            t = idx.reshape(-1).long()
        else:
            t = torch.as_tensor(np.asarray(idx, dtype=np.int64).reshape(-1))
        t = t.to(self.device)
        if t.numel() == self.m and torch.equal(t, self.all_idx):
            return None, self.m
        return t, t.numel()

    def _rows(self, learners: Tensor | None) -> Tensor | None:
        """Rows of ``learners`` in every replica, replica-major (None: all rows in order)."""
        if learners is None:
            return None
        return (self._offsets[:, None] + learners[None, :]).reshape(-1)

    def replica_rows(self, replica: int, idx: IndexLike = None) -> Tensor:
        """Rows of learners ``idx`` (all by default) in replica ``replica``."""
        learners, _ = self._learners(idx)
        base = self.all_idx if learners is None else learners
        return base + int(replica) * self.m

    def _split(self, vec: Tensor, k: int) -> Tensor:
        """Concatenated vectors ``[R*P]`` (one for all k) or ``[k, R*P]`` as the inner
        bank's rows ``[R*k, P]``, replica-major."""
        r, p = self.replicas, self.replica_params
        if vec.shape[-1] != r * p or vec.dim() not in (1, 2):
            raise ValueError(f"vec: expected [R*P] or [k, R*P] with R*P={r * p}, "
                             f"got {tuple(vec.shape)}")
        if vec.dim() == 1:
            return vec.reshape(r, 1, p).expand(r, k, p).reshape(r * k, p)
        if vec.shape[0] != k:
            raise ValueError(f"vec: expected {k} rows, got {vec.shape[0]}")
        return vec.reshape(k, r, p).transpose(0, 1).reshape(r * k, p)

    def _as_vec(self, params: dict[str, Tensor] | Tensor) -> Tensor:
        """A flat or dict model as concatenated vectors: a Replicated dict carries its own;
        a plain model (one replica's layers) is the same model in every replica."""
        if isinstance(params, Tensor):
            return params
        if isinstance(params, Replicated):
            return params.vec
        names = self.inner.names
        stacked = params[names[0]].dim() == len(self.inner.shapes[names[0]]) + 1
        lead = params[names[0]].shape[:1] if stacked else ()
        one = torch.cat([params[n].to(self.device).reshape(*lead, -1) for n in names], dim=-1)
        return one.repeat(*([1] * (one.dim() - 1)), self.replicas)

    # ------------------------------------------------------------------ training
    def step(self, idx: IndexLike, x: Tensor, y: Tensor) -> StepResult:
        """One batched step of learners ``idx`` in every replica: ``x [R*k, B, ...]``
        replica-major (``ReplicaSource``). Returns replica 0's losses and correct counts."""
        learners, k = self._learners(idx)
        if x.shape[0] != self.replicas * k:
            raise ValueError(f"x: expected {self.replicas * k} rows (R={self.replicas} "
                             f"replicas of k={k}), got {x.shape[0]}")
        self.uniform = False
        rows = self._rows(learners)
        if k == 1 and self.replicas > 1:
            # one learner alone: vmap's kernels for a batch of one model round differently
            # from the same model among others (last float32 bits), so each replica takes
            # the one-row step its own m-row bank would (as many calls as separate runs)
            results = [self.inner.step(rows[r : r + 1], x[r : r + 1], y[r : r + 1])
                       for r in range(self.replicas)]
            return results[0]
        result = self.inner.step(rows, x, y)
        return StepResult(loss_sum=result.loss_sum[:k], correct=result.correct[:k])

    def reset_optimizer(self, idx: IndexLike = None) -> None:
        learners, _ = self._learners(idx)
        self.inner.reset_optimizer(self._rows(learners))

    # ------------------------------------------------------------- protocol view
    @torch.no_grad()
    def flat(self, idx: IndexLike = None) -> Tensor:
        """``[k, R*P]``: each learner's R replica vectors, concatenated."""
        learners, k = self._learners(idx)
        rows = self.inner.flat(self._rows(learners))  # [R*k, P]
        return rows.reshape(self.replicas, k, -1).transpose(0, 1).reshape(k, self.num_params)

    def unflatten(self, vec: Tensor) -> Replicated:
        """``[R*P]`` or ``[k, R*P]`` as a model for ``assign`` (its layers: replica 0's)."""
        if vec.shape[-1] != self.num_params or vec.dim() not in (1, 2):
            raise ValueError(f"vec: expected [P] or [k, P] with P={self.num_params}, "
                             f"got {tuple(vec.shape)}")
        return Replicated(self.inner.unflatten(vec[..., : self.replica_params]), vec)

    @torch.no_grad()
    def assign(self, idx: IndexLike, params: dict[str, Tensor]) -> None:
        """Replace the models of ``idx`` in every replica (optimizer state kept; FedProx
        anchors follow, as in LearnerBank.assign)."""
        learners, k = self._learners(idx)
        vec = self._as_vec(params)
        self.inner.assign(self._rows(learners), self.inner.unflatten(self._split(vec, k)))
        self.uniform = learners is None and vec.dim() == 1  # one model broadcast to all

    @torch.no_grad()
    def set_proximal(self, mu: float, anchor: Tensor | dict[str, Tensor] | None = None) -> None:
        """FedProx in every replica; ``anchor`` as in LearnerBank (None: the current models)."""
        converted = None if anchor is None else self._split(self._as_vec(anchor), self.m)
        self.inner.set_proximal(mu, converted)

    @torch.no_grad()
    def set_anchor(self, idx: IndexLike, anchor: Tensor | dict[str, Tensor]) -> None:
        learners, k = self._learners(idx)
        self.inner.set_anchor(self._rows(learners), self._split(self._as_vec(anchor), k))

    @torch.no_grad()
    def set_correction(self, correction: Tensor | None, idx: IndexLike = None) -> None:
        if correction is None:
            if idx is not None:
                raise ValueError("set_correction: None turns the correction off for all rows")
            self.inner.set_correction(None)
            return
        learners, k = self._learners(idx)
        self.inner.set_correction(self._split(correction, k), self._rows(learners))

    def message_size(self, payload: bytes | bytearray | memoryview) -> int:
        """What the message costs on the wire in one replica: header plus the payload with
        every float32 vector of R*P entries counted as one of P (the rest, version and
        count fields, as it is). Refuses a payload that is not such vectors."""
        r, p = self.replicas, self.replica_params
        block = self._vector_head + 4 * r * p
        blocks, rest = divmod(len(payload), block)
        if rest > _MAX_HEADER:
            raise RuntimeError(f"payload of {len(payload)} bytes is not float32 models of "
                               f"{r} replicas x {p} parameters: the probe's one-bank replicas "
                               "cannot charge it; report this as a bug")
        return wire.message_size(payload) - blocks * 4 * (r - 1) * p

    # -------------------------------------------------------------- metrics view
    @property
    def params(self) -> dict[str, Tensor]:
        """Replica 0's stacked parameters ``[m, ...]`` (views)."""
        return {n: p[: self.m] for n, p in self.inner.params.items()}

    @torch.no_grad()
    def mean(self, idx: IndexLike = None) -> dict[str, Tensor]:
        """Replica 0's average model of learners ``idx``."""
        return self.inner.mean(self.replica_rows(0, idx))

    @torch.no_grad()
    def replica_flat(self, replica: int) -> Tensor:
        """Replica ``replica``'s parameter vectors ``[m, P]``."""
        return self.inner.flat(self.replica_rows(replica))

    @torch.no_grad()
    def divergence(self, idx: IndexLike = None, *, replica: int = 0) -> float:
        """Model divergence of replica ``replica``'s learners (replica 0: the run's), with
        the m-row bank's exact 0 while they hold one broadcast model."""
        if self.uniform:
            return 0.0
        return self.inner.divergence(self.replica_rows(replica, idx))

    @torch.no_grad()
    def finite(self, idx: IndexLike = None) -> np.ndarray:
        """Whether each learner's parameters are finite in every replica (a replica that
        diverges stops the run, as its own simulation would have)."""
        learners, k = self._learners(idx)
        ok = self.inner.finite(self._rows(learners))
        return ok.reshape(self.replicas, k).all(axis=0)

    def evaluate(self, params: dict[str, Tensor], x: Tensor, y: Tensor,
                 batch: int = 4096) -> tuple[Tensor, Tensor]:
        return self.inner.evaluate(params, x, y, batch)

    def features(self, params: dict[str, Tensor], x: Tensor, batch: int = 4096) -> Tensor:
        return self.inner.features(params, x, batch)

    def __repr__(self) -> str:
        return (f"ReplicaBank(replicas={self.replicas}, m={self.m}, "
                f"params_per_replica={self.replica_params}, inner={self.inner!r})")


class ReplicaSource:
    """The batch sources of R replicas as one: ``batch`` stacks replica r's batches as
    rows ``r*k .. r*k+k-1`` (what ``ReplicaBank.step`` takes); everything else (the eval
    set, drift events, shapes) is replica 0's, the run's."""

    def __init__(self, sources: Sequence[Any]) -> None:
        if not sources:
            raise ValueError("sources: need at least one")
        self.sources = list(sources)
        self.replicas = len(self.sources)

    def batch(self, learners: np.ndarray | None, rounds: np.ndarray | int
              ) -> tuple[Tensor, Tensor]:
        drawn = [source.batch(learners, rounds) for source in self.sources]
        return torch.cat([x for x, _ in drawn]), torch.cat([y for _, y in drawn])

    def __getattr__(self, name: str) -> Any:
        if name == "sources":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sources[0], name)
