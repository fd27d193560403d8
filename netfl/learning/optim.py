"""Optimizers on stacked parameters: every tensor is ``[m, ...]``, one row per learner.

They reproduce ``torch.optim.SGD`` and ``torch.optim.Adam`` (single-tensor code path)
for each learner independently, so m learners in a ``LearnerBank`` behave as m copies
of an ``nn.Module`` with their own ``torch.optim`` optimizer, without a Python loop
over learners. Learners may step different numbers of times: Adam keeps a step
count per learner for its bias correction.

``update(params, grads, idx)`` changes the rows ``idx`` of ``params`` (and of the
state) in place; ``grads`` holds the gradients of those rows, in the order of
``idx``. ``idx=None`` (or all learners in order) takes a fast path with no
gather/scatter. Indices must be unique.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "is_full", "make_optimizer"]


def is_full(idx: Tensor | None, m: int) -> bool:
    """True when ``idx`` selects all ``m`` learners in order (or is None)."""
    if idx is None:
        return True
    if idx.numel() != m:
        return False
    return bool(torch.equal(idx, torch.arange(m, device=idx.device, dtype=idx.dtype)))


def _rows(t: Tensor, ref: Tensor) -> Tensor:
    """View a per-learner vector ``[k]`` so that it broadcasts against ``ref [k, ...]``."""
    return t.view(-1, *([1] * (ref.dim() - 1)))


class Optimizer:
    """Base class: holds stacked state tensors and the number of learners."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        if not params:
            raise ValueError("params: need at least one stacked tensor")
        self.m = int(params[0].shape[0])
        for p in params:
            if p.shape[0] != self.m:
                raise ValueError("params: all tensors must have the same leading size m")

    def update(self, params: list[Tensor], grads: list[Tensor], idx: Tensor | None = None) -> None:
        """Apply one step to learners ``idx`` in place (``None``: all learners)."""
        raise NotImplementedError

    def reset(self, idx: Tensor | None = None) -> None:
        """Forget the state of learners ``idx`` (``None``: all), as a fresh optimizer."""
        raise NotImplementedError


class SGD(Optimizer):
    """``torch.optim.SGD`` per learner: momentum buffer ``b = mu*b + g`` (first step b = g,
    dampening 0), L2 weight decay ``g + wd*p``, optional Nesterov.

    Buffers start at zero, which reproduces PyTorch's first step ``b = g`` exactly.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params)
        if lr < 0:
            raise ValueError(f"lr: must be >= 0, got {lr}")
        if momentum < 0:
            raise ValueError(f"momentum: must be >= 0, got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov: requires momentum > 0")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.buffers: list[Tensor] = [torch.zeros_like(p) for p in params] if self.momentum else []

    def reset(self, idx: Tensor | None = None) -> None:
        for b in self.buffers:
            if idx is None:
                b.zero_()
            else:
                b.index_fill_(0, idx, 0.0)

    def update(self, params: list[Tensor], grads: list[Tensor], idx: Tensor | None = None) -> None:
        full = is_full(idx, self.m)
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        if wd:
            current = params if full else [p.index_select(0, idx) for p in params]
            torch._foreach_add_(grads, current, alpha=wd)
        step = grads
        if mu:
            bufs = self.buffers if full else [b.index_select(0, idx) for b in self.buffers]
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads)
            if not full:
                for b, sub in zip(self.buffers, bufs, strict=True):
                    b.index_copy_(0, idx, sub)
            if self.nesterov:
                torch._foreach_add_(grads, bufs, alpha=mu)
            else:
                step = bufs
        if full:
            torch._foreach_add_(params, step, alpha=-lr)
        else:
            for p, d in zip(params, step, strict=True):
                p.index_add_(0, idx, d, alpha=-lr)


class Adam(Optimizer):
    """``torch.optim.Adam`` per learner (L2 weight decay, no amsgrad), with a step count
    per learner so that bias correction is right when learners step unequally often.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params)
        b1, b2 = betas
        if lr < 0:
            raise ValueError(f"lr: must be >= 0, got {lr}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: each must be in [0, 1), got {tuple(betas)}")
        if eps < 0:
            raise ValueError(f"eps: must be >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = torch.zeros(self.m, dtype=torch.int64, device=params[0].device)

    def reset(self, idx: Tensor | None = None) -> None:
        for t in (*self.exp_avg, *self.exp_avg_sq):
            if idx is None:
                t.zero_()
            else:
                t.index_fill_(0, idx, 0.0)
        if idx is None:
            self.steps.zero_()
        else:
            self.steps.index_fill_(0, idx, 0)

    def update(self, params: list[Tensor], grads: list[Tensor], idx: Tensor | None = None) -> None:
        full = is_full(idx, self.m)
        b1, b2 = self.betas
        if full:
            self.steps += 1
            steps, m1, m2, current = self.steps, self.exp_avg, self.exp_avg_sq, params
        else:
            steps = self.steps.index_select(0, idx) + 1
            self.steps.index_copy_(0, idx, steps)
            m1 = [t.index_select(0, idx) for t in self.exp_avg]
            m2 = [t.index_select(0, idx) for t in self.exp_avg_sq]
            current = [p.index_select(0, idx) for p in params] if self.weight_decay else []
        if self.weight_decay:
            torch._foreach_add_(grads, current, alpha=self.weight_decay)
        torch._foreach_lerp_(m1, grads, 1.0 - b1)
        torch._foreach_mul_(m2, b2)
        torch._foreach_addcmul_(m2, grads, grads, value=1.0 - b2)
        # Bias corrections per learner, in float64 like torch's Python-float path.
        t = steps.to(torch.float64)
        step_size = (self.lr / (1.0 - torch.pow(b1, t))).to(params[0].dtype)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, t)).to(params[0].dtype)
        denom = torch._foreach_sqrt(m2)
        for i, (p, d, a) in enumerate(zip(params, denom, m1, strict=True)):
            d.div_(_rows(bc2_sqrt, d)).add_(self.eps)
            upd = torch.div(a, d).mul_(_rows(step_size, d))
            if full:
                p.sub_(upd)
            else:
                p.index_add_(0, idx, upd, alpha=-1.0)
                self.exp_avg[i].index_copy_(0, idx, a)
                self.exp_avg_sq[i].index_copy_(0, idx, m2[i])


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, params: Sequence[Tensor], **kwargs: object) -> Optimizer:
    """Build the optimizer registered as ``name`` ('sgd' or 'adam') over stacked params."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"optimizer: must be one of {', '.join(OPTIMIZERS)}, got {name!r}"
        ) from None
    return cls(params, **kwargs)  # type: ignore[arg-type]
