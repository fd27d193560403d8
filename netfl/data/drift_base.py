"""The machinery shared by drifting sources: per-round randomness, concept mixing, caching.

A drifting source splits the generation of a round into a concept-free part and a concept
part. ``_draw`` makes the round's randomness for all m learners at once (Gaussian inputs,
uniforms, dataset indices), from a ``torch.Generator`` seeded by a hash of (seed, round);
``_apply(concept, noise)`` turns it into inputs and labels under one concept. So a
(learner, round) always maps to the same samples whatever the order or grouping of the
calls, and two schedules that differ only in their drifts give the same noise in each round
(common random numbers: only the concept differs). During a gradual drift both concepts are
applied to the same noise and each sample picks one with the uniforms drawn after it.

Values depend on the device's generator: a CPU run and a CUDA run of the same seed draw
different (equally distributed) samples. Returned tensors are shared with a small cache of
recent rounds: treat them as read-only.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from netfl.data.datasets import DataError
from netfl.data.drift_schedule import DriftEvent, DriftSchedule

Noise = tuple[torch.Tensor, ...]
_MASK64 = (1 << 64) - 1
_CACHE_BYTES = 64 << 20  # recent rounds kept for subset requests (async learners) ...
_CACHE_ROUNDS = 16  # ... at most this many

# Tags that make the seed streams of one source independent of each other.
TAG_ROUND, TAG_EVAL, TAG_CONCEPT, TAG_MIX, TAG_STREAM = 1, 2, 3, 4, 5


def splitmix64(x: int) -> int:
    """The splitmix64 finalizer (Steele et al. 2014): a cheap, well-mixed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sub_seed(seed: int, *key: int) -> np.random.SeedSequence:
    """An independent seed sequence for one use (``key``) of the source's ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=key)


def resolve_device(device: torch.device | str) -> torch.device:
    """``auto`` takes CUDA when present; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DataError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError("device: cuda requested but no CUDA device is available")
    return dev


class LRU(OrderedDict):
    """A tiny least-recently-used dict bounded by entry count."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its bound (a checkpoint holds the caches too)."""
        return type(self), (self.size,), None, None, iter(self.items())

    def get_or(self, key: Any, make: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class DriftingSource:
    """Base of the drifting ``BatchSource`` implementations (see the module docstring).

    Subclasses set ``input_shape`` and ``num_classes`` and implement ``_draw`` and
    ``_apply``; digits-like sources also override ``_draw_round`` / ``_eval_noise``.
    """

    name = "drifting"
    input_shape: tuple[int, ...]
    num_classes: int
    task = "classification"

    def __init__(
        self,
        *,
        m: int,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        schedule: DriftSchedule | None,
        n_eval: int,
    ) -> None:
        self.m = check_int("m", m, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.n_eval = check_int(f"{self.name}: n_eval", n_eval, 1)
        if schedule is None:
            schedule = DriftSchedule.none()
        if not isinstance(schedule, DriftSchedule):
            raise DataError(f"schedule: must be a DriftSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.device = resolve_device(device)
        self._gen = torch.Generator(device=self.device)
        self._round_key = int(sub_seed(self.seed, TAG_ROUND).generate_state(1, np.uint64)[0])
        self._rounds = LRU(8)  # round -> (x, y, concept per sample)
        self._evals = LRU(8)  # (from, to, weight) -> (x, y)
        self._eval_parts: Noise | None = None
        self._eval_mix: torch.Tensor | None = None

    # ------------------------------------------------------------- BatchSource

    def batch(self, learners: np.ndarray | None, rounds: np.ndarray | int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[k, B, *input_shape]`` float32, y ``[k, B]`` int64 on ``device`` for
        ``learners`` (None: all m, in order) at their 0-based ``rounds`` (array or scalar)."""
        if learners is None:
            x, y, _ = self._round(_scalar_round(rounds))
            return x, y
        x, y, _ = self._gather(learners, rounds)
        return x, y

    def eval_set(self, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_eval`` held-out samples of the distribution in force at round ``rnd`` (the same
        noise for every concept; a gradual mixture picks per sample with fixed uniforms)."""
        key = self.schedule.mixture_at(rnd)
        return self._evals.get_or(key, lambda: self._make_eval(*key))

    def sample_concepts(self, learners: np.ndarray | None, rounds: np.ndarray | int
                        ) -> torch.Tensor:
        """int64 ``[k, B]``: the concept each sample of ``batch(learners, rounds)`` comes from."""
        if learners is None:
            return self._round(_scalar_round(rounds))[2]
        return self._gather(learners, rounds)[2]

    def concept_at(self, rnd: int) -> int:
        """The newest concept in force at round ``rnd`` (``DriftSchedule.concept_at``)."""
        return self.schedule.concept_at(rnd)

    def events(self, up_to_round: int) -> list[DriftEvent]:
        """Drifts started at rounds <= ``up_to_round`` (``DriftSchedule.events``)."""
        return self.schedule.events(up_to_round)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(m={self.m}, batch_size={self.batch_size}, "
                f"seed={self.seed}, device={str(self.device)!r}, schedule={self.schedule})")

    # ------------------------------------------------------------- subclass hooks

    def _draw(self, gen: torch.Generator, shape: tuple[int, ...]) -> Noise:
        """Concept-free randomness for samples with leading dims ``shape``."""
        raise NotImplementedError

    def _apply(self, concept: int, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the samples ``noise`` under ``concept``."""
        raise NotImplementedError

    def _draw_round(self, gen: torch.Generator, rnd: int) -> Noise:
        return self._draw(gen, (self.m, self.batch_size))

    def _eval_noise(self) -> Noise:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(sub_seed(self.seed, TAG_EVAL).generate_state(1, np.uint64)[0]))
        return self._draw(gen, (self.n_eval,))

    # ------------------------------------------------------------- internals

    def _round(self, rnd: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hit = self._rounds.get(rnd)
        if hit is not None:
            self._rounds.move_to_end(rnd)
            return hit
        self._gen.manual_seed(splitmix64(self._round_key ^ splitmix64(rnd)))
        noise = self._draw_round(self._gen, rnd)
        old, new, weight = self.schedule.mixture_at(rnd)
        x, y = self._apply(new, noise)
        if weight < 1.0:
            pick = torch.rand(y.shape, generator=self._gen, device=self.device) < weight
            x_old, y_old = self._apply(old, noise)
            x, y = _mix(pick, (x, y), (x_old, y_old))
            concept = torch.where(pick, new, old)
        else:
            concept = torch.full(y.shape, new, dtype=torch.int64, device=self.device)
        out = (x, y, concept)
        self._rounds[rnd] = out
        self._rounds.size = max(1, min(_CACHE_ROUNDS, _CACHE_BYTES // max(1, _nbytes(out))))
        while len(self._rounds) > self._rounds.size:
            self._rounds.popitem(last=False)
        return out

    def _gather(self, learners: Any, rounds: Any
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of the generated rounds, one round generation per distinct round asked."""
        who = _int_array("learners", learners)
        when = _int_array("rounds", rounds)
        if when.ndim == 0:
            when = np.broadcast_to(when, who.shape)
        if who.ndim != 1 or when.shape != who.shape:
            raise DataError(f"learners and rounds must be 1-D of equal length, got "
                            f"{list(who.shape)} and {list(when.shape)}")
        k = len(who)
        if k and (who.min() < 0 or who.max() >= self.m):
            raise DataError(f"learners: ids must lie in [0, {self.m}), got "
                            f"{who.min()}..{who.max()}")
        if k and when.min() < 0:
            raise DataError(f"rounds: must be >= 0, got {when.min()}")
        distinct = np.unique(when)
        if len(distinct) == 1:
            idx = torch.as_tensor(who, device=self.device)
            return tuple(t.index_select(0, idx) for t in self._round(int(distinct[0])))
        x0, y0, _ = self._round(int(distinct[0]))
        x = torch.empty((k, *x0.shape[1:]), dtype=x0.dtype, device=self.device)
        y = torch.empty((k, *y0.shape[1:]), dtype=y0.dtype, device=self.device)
        concept = torch.empty((k, *y0.shape[1:]), dtype=torch.int64, device=self.device)
        for r in distinct:  # few distinct rounds (stragglers), never a loop over learners
            rows = np.flatnonzero(when == r)
            pos = torch.as_tensor(rows, device=self.device)
            src = torch.as_tensor(who[rows], device=self.device)
            for out, full in zip((x, y, concept), self._round(int(r))):
                out[pos] = full.index_select(0, src)
        return x, y, concept

    def _make_eval(self, old: int, new: int, weight: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eval_parts is None:
            self._eval_parts = self._eval_noise()
        x, y = self._apply(new, self._eval_parts)
        if weight >= 1.0:
            return x, y
        if self._eval_mix is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(sub_seed(self.seed, TAG_MIX).generate_state(1, np.uint64)[0]))
            self._eval_mix = torch.rand(y.shape, generator=gen, device=self.device)
        return _mix(self._eval_mix < weight, (x, y), self._apply(old, self._eval_parts))


def _mix(pick: torch.Tensor, new: tuple[torch.Tensor, torch.Tensor],
         old: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: ``new`` where ``pick`` else ``old``."""
    x_pick = pick.view(*pick.shape, *([1] * (new[0].dim() - pick.dim())))
    return torch.where(x_pick, new[0], old[0]), torch.where(pick, new[1], old[1])


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _scalar_round(rounds: Any) -> int:
    arr = _int_array("rounds", rounds)
    if arr.size != 1:
        raise DataError(f"rounds: with learners=None give one round, got shape {list(arr.shape)}")
    rnd = int(arr.reshape(()))
    if rnd < 0:
        raise DataError(f"rounds: must be >= 0, got {rnd}")
    return rnd


def _int_array(key: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{key}: must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


# ----------------------------------------------------------------- parameter checks


def check_int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum], else DataError naming ``key``."""
    bad = isinstance(value, bool) or not isinstance(value, (int, np.integer))
    if bad or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DataError(f"{key}: must be an integer {bound}, got {value!r}")
    return int(value)


def check_float(key: str, value: Any, low: float, high: float, *, open_low: bool = False,
                open_high: bool = False) -> float:
    """``value`` as a finite float in the interval, else DataError naming ``key``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
    if ok:
        v = float(value)
        ok = (math.isfinite(v) and (v > low if open_low else v >= low)
              and (v < high if open_high else v <= high))
    if not ok:
        lb, hb = "(" if open_low else "[", ")" if open_high else "]"
        raise DataError(f"{key}: must be a number in {lb}{low}, {high}{hb}, got {value!r}")
    return float(value)
