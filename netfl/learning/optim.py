"""Optimizers on stacked parameters: every tensor is ``[m, ...]``, one row per learner.

They reproduce ``torch.optim.SGD`` and ``torch.optim.Adam`` (single-tensor code path)
for each learner independently, so m learners in a ``LearnerBank`` behave as m copies
of an ``nn.Module`` with their own ``torch.optim`` optimizer, without a Python loop
over learners. Learners may step different numbers of times: Adam keeps a step
count per learner for its bias correction.

``update(params, grads, idx)`` changes the rows ``idx`` of ``params`` (and of the
state) in place; ``grads`` holds the gradients of those rows, in the order of
``idx``. ``idx=None`` (or all learners in order) takes a fast path with no
gather/scatter. Indices must be unique. ``rows=(s, e)`` (with ``idx=None``) is that
fast path over the row range ``[s, e)`` alone, ``grads`` being those rows' gradients:
a bank that steps its learners a chunk of rows at a time updates each chunk in place,
with the same elementwise operations on every row as one update of all rows.

Layout: each kind of state (momentum, Adam's two moments) is one contiguous ``[m, T]``
tensor (T: the values of one row of all ``params``, in list order), and the per-tensor
lists (``buffers``, ``exp_avg``, ``exp_avg_sq``) are views of its column blocks. So a
reset, a gather or a scatter of rows is one operation per state whatever the number of
tensors. When ``params`` are themselves the column blocks of one ``[m, T]`` tensor (the
bank's parameter buffer), the steps that do not read the gradients run as one operation
over it too. Every value is computed by the same elementwise operations as the
per-tensor code, so results are bit for bit those of separate tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "column_base", "column_views", "is_full",
           "make_optimizer"]


_CHUNK_ELEMENTS = 2**18  # values per chunk of Adam's gradient-free pass (in L2 cache)


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


def column_views(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Views ``[k, *shape]`` of the consecutive column blocks of ``flat [k, T]``."""
    k, out, off = flat.shape[0], [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[:, off:off + n].view(k, *shape))
        off += n
    return out


def column_base(tensors: Sequence[Tensor]) -> Tensor | None:
    """The ``[m, T]`` tensor whose consecutive column blocks are ``tensors`` (each
    ``[m, ...]``), as a view of their common storage; None when they are not laid out so.

    Read from storage offsets and strides alone, so it finds the layout of views made by
    ``column_views`` (the bank's parameters) without being told."""
    first = tensors[0]
    if first.dim() == 0:
        return None
    m, row = first.shape[0], first.stride(0)
    storage = first.untyped_storage().data_ptr()
    start = offset = first.storage_offset()
    for t in tensors:
        if (t.dim() == 0 or t.shape[0] != m or t.dtype != first.dtype
                or t.untyped_storage().data_ptr() != storage or t.storage_offset() != offset):
            return None
        inner = t.shape[1:]
        if m > 1 and t.stride(0) != row:
            return None
        expect = 1
        for size, stride in zip(reversed(inner), reversed(t.stride()[1:]), strict=True):
            if size != 1 and stride != expect:
                return None
            expect *= size
        offset += math.prod(inner)
    width = offset - start
    if m > 1 and row < width:
        return None
    return first.as_strided((m, width), (row if m > 1 else width, 1), start)


class Optimizer:
    """Base class: holds the number of learners and the layout of the state."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        if not params:
            raise ValueError("params: need at least one stacked tensor")
        self.m = int(params[0].shape[0])
        for p in params:
            if p.shape[0] != self.m:
                raise ValueError("params: all tensors must have the same leading size m")
            if p.dtype != params[0].dtype or p.device != params[0].device:
                raise ValueError("params: all tensors must share one dtype and device")
        self.shapes: list[torch.Size] = [p.shape[1:] for p in params]
        self.width: int = sum(math.prod(s) for s in self.shapes)
        self._dtype, self._device = params[0].dtype, params[0].device
        # The tensors given, when they are the column blocks of one [m, T] tensor: then
        # updates of these very tensors run their gradient-free steps over it at once.
        self._given = list(params)
        self._flat = column_base(params)

    def _state(self) -> tuple[Tensor, list[Tensor]]:
        """A zero ``[m, T]`` state tensor and its per-parameter views."""
        flat = torch.zeros(self.m, self.width, dtype=self._dtype, device=self._device)
        return flat, column_views(flat, self.shapes)

    def _flat_of(self, params: list[Tensor]) -> Tensor | None:
        """The ``[m, T]`` tensor of ``params`` when they are the ones given at init."""
        if self._flat is None or len(params) != len(self._given):
            return None
        if all(p is q for p, q in zip(params, self._given, strict=True)):
            return self._flat
        return None

    def update(self, params: list[Tensor], grads: list[Tensor], idx: Tensor | None = None,
               *, rows: tuple[int, int] | None = None) -> None:
        """Apply one step to learners ``idx`` in place (``None``: all learners, or the
        row range ``rows`` of them)."""
        raise NotImplementedError

    def _span(self, idx: Tensor | None, rows: tuple[int, int] | None) -> tuple[bool, int, int]:
        """(whether the update takes the in-place path, and its row range ``[s, e)``)."""
        if rows is None:
            return is_full(idx, self.m), 0, self.m
        if idx is not None:
            raise ValueError("rows: a row range is given with idx=None only")
        s, e = int(rows[0]), int(rows[1])
        if not 0 <= s <= e <= self.m:
            raise ValueError(f"rows: expected 0 <= s <= e <= {self.m}, got {rows}")
        return True, s, e

    def reset(self, idx: Tensor | None = None) -> None:
        """Forget the state of learners ``idx`` (``None``: all), as a fresh optimizer."""
        raise NotImplementedError


def _clear(flat: Tensor, idx: Tensor | None) -> None:
    if idx is None:
        flat.zero_()
    else:
        flat.index_fill_(0, idx, 0.0)


class SGD(Optimizer):
    """``torch.optim.SGD`` per learner: momentum buffer ``b = mu*b + g`` (first step b = g,
    dampening 0), L2 weight decay ``g + wd*p``, optional Nesterov.

    Buffers start at zero, which reproduces PyTorch's first step ``b = g`` exactly. The
    momentum buffers are one ``[m, T]`` tensor, ``momentum_flat``; ``buffers`` are views.
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
        self.momentum_flat: Tensor | None = None
        self.buffers: list[Tensor] = []
        if self.momentum:
            self.momentum_flat, self.buffers = self._state()

    def reset(self, idx: Tensor | None = None) -> None:
        if self.momentum_flat is not None:
            _clear(self.momentum_flat, idx)

    def update(self, params: list[Tensor], grads: list[Tensor], idx: Tensor | None = None,
               *, rows: tuple[int, int] | None = None) -> None:
        full, s, e = self._span(idx, rows)
        if full and (s, e) != (0, self.m):
            params = [p[s:e] for p in params]
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        if wd:
            current = params if full else [p.index_select(0, idx) for p in params]
            torch._foreach_add_(grads, current, alpha=wd)
        step = grads
        if mu:
            assert self.momentum_flat is not None
            if full and (s, e) == (0, self.m):
                bufs = self.buffers
                flat = self.momentum_flat
            elif full:
                bufs = [b[s:e] for b in self.buffers]
                flat = self.momentum_flat[s:e]
            else:
                flat = self.momentum_flat.index_select(0, idx)
                bufs = column_views(flat, self.shapes)
            flat.mul_(mu)
            torch._foreach_add_(bufs, grads)
            if not full:
                self.momentum_flat.index_copy_(0, idx, flat)
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
    The moments are two ``[m, T]`` tensors (``exp_avg_flat``, ``exp_avg_sq_flat``);
    ``exp_avg`` and ``exp_avg_sq`` are views of their column blocks.
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
        self.exp_avg_flat, self.exp_avg = self._state()
        self.exp_avg_sq_flat, self.exp_avg_sq = self._state()
        self.steps = torch.zeros(self.m, dtype=torch.int64, device=self._device)

    def reset(self, idx: Tensor | None = None) -> None:
        _clear(self.exp_avg_flat, idx)
        _clear(self.exp_avg_sq_flat, idx)
        if idx is None:
            self.steps.zero_()
        else:
            self.steps.index_fill_(0, idx, 0)

    def update(self, params: list[Tensor], grads: list[Tensor], idx: Tensor | None = None,
               *, rows: tuple[int, int] | None = None) -> None:
        full, s0, e0 = self._span(idx, rows)
        b1, b2 = self.betas
        flat = self._flat_of(params)
        if full and (s0, e0) != (0, self.m):  # a row range: the same path on its rows
            params = [p[s0:e0] for p in params]
            flat = None if flat is None else flat[s0:e0]
            self.steps[s0:e0] += 1
            steps, current = self.steps[s0:e0], params
            f1, f2 = self.exp_avg_flat[s0:e0], self.exp_avg_sq_flat[s0:e0]
            m1, m2 = [v[s0:e0] for v in self.exp_avg], [v[s0:e0] for v in self.exp_avg_sq]
        elif full:
            self.steps += 1
            steps, f1, f2, current = self.steps, self.exp_avg_flat, self.exp_avg_sq_flat, params
            m1, m2 = self.exp_avg, self.exp_avg_sq
        else:
            steps = self.steps.index_select(0, idx) + 1
            self.steps.index_copy_(0, idx, steps)
            f1 = self.exp_avg_flat.index_select(0, idx)
            f2 = self.exp_avg_sq_flat.index_select(0, idx)
            m1, m2 = column_views(f1, self.shapes), column_views(f2, self.shapes)
            current = [p.index_select(0, idx) for p in params] if self.weight_decay else []
        if self.weight_decay:
            torch._foreach_add_(grads, current, alpha=self.weight_decay)
        torch._foreach_lerp_(m1, grads, 1.0 - b1)
        f2.mul_(b2)
        torch._foreach_addcmul_(m2, grads, grads, value=1.0 - b2)
        # Bias corrections per learner, in float64 like torch's Python-float path.
        t = steps.to(torch.float64)
        step_size = (self.lr / (1.0 - torch.pow(b1, t))).to(self._dtype)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, t)).to(self._dtype)
        # From here on no gradient is read: one operation over the [k, T] moments per
        # chunk of rows, whose temporary stays in cache (one [k, T] temporary would be a
        # fresh allocation each step, faulted in page by page: 1.5x slower at m=1000).
        per = max(1, _CHUNK_ELEMENTS // self.width)
        for s in range(0, f2.shape[0], per):
            e = min(s + per, f2.shape[0])
            denom = torch.sqrt(f2[s:e])
            denom.div_(_rows(bc2_sqrt[s:e], denom)).add_(self.eps)
            upd = torch.div(f1[s:e], denom, out=denom).mul_(_rows(step_size[s:e], denom))
            if full and flat is not None:
                flat[s:e].sub_(upd)
            elif full:
                torch._foreach_sub_([p[s:e] for p in params], column_views(upd, self.shapes))
            elif flat is not None:
                flat.index_add_(0, idx[s:e], upd, alpha=-1.0)
            else:
                for p, u in zip(params, column_views(upd, self.shapes), strict=True):
                    p.index_add_(0, idx[s:e], u, alpha=-1.0)
        if not full:
            self.exp_avg_flat.index_copy_(0, idx, f1)
            self.exp_avg_sq_flat.index_copy_(0, idx, f2)


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
