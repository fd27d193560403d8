"""LearnerBank: the parameters of m learners stacked on one device, trained in one batch.

Layout: one contiguous ``[m, P]`` tensor, ``buffer``, holds every parameter of every
learner (row i is learner i's flat model, in ``names`` order: what ``flat`` returns), and
``params[name]`` are views ``[m, *shape]`` of its column blocks. So a flat model is one
row: ``flat(idx)`` is one gather, ``assign`` of a flat model one row write, and the
optimizer's state (``optim.py``) is laid out the same way, one ``[m, T]`` tensor per kind
of state. A step of any subset of learners is one call of ``vmap(grad(loss))`` over
``torch.func.functional_call`` of a single template module on those views, followed by
one stacked optimizer update; many learners step in chunks of rows (``step_bytes`` of
gradients and inputs each, ``_step_chunks``), so a step holds one chunk's gradients and
temporaries, not a [m, P] set of each, with the same values bit for bit. There is no
Python loop over learners anywhere (only over such chunks): averaging, assignment,
distances and divergence are tensor operations over the buffer's rows, whose reductions
run per parameter block so that every value is bit for bit the one separate
per-parameter tensors give.

Conventions (seed 004, Kamp et al. 2018):
* ``step`` reports the loss suffered *before* the update, summed over the mini-batch
  (the per-round term of the cumulative loss, eq. 1), plus the number of correct
  predictions, both per learner.
* ``loss`` is 'cross_entropy' (classification, int64 labels) or 'mse' (regression:
  float targets ``[..., T]``; a sample's loss is its squared error averaged over the T
  targets, as Keras' MSE; ``correct`` is then always 0).
* ``divergence`` is eq. 2, ``1/k sum_i ||f_i - mean||^2`` over all parameters.
* All learners start from one random model (homogeneous init); ``init_noise > 0`` adds
  independent Gaussian noise per learner (heterogeneous init, seed 004 Fig. 8).

Limits: only parameters are per learner. Buffers stay those of the template, shared by
every learner, so models must be stateless in the mode they are given (no batch norm
that tracks running statistics in training mode, no dropout); the models of ``models.py``
are, and ``custom.check_model`` refuses a module that is not. Tied parameters are one
parameter (``named_parameters()`` lists them once; ``functional_call`` keeps them tied).
Indices passed in ``idx`` must be unique.
"""

from __future__ import annotations

import copy
import math
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from netfl.learning.custom import accepts_features
from netfl.learning.models import init_parameters
from netfl.learning.optim import Adam, Optimizer, column_views, make_optimizer

if TYPE_CHECKING:
    from netfl.sim.wire import RowSet

__all__ = ["LearnerBank", "StepResult", "resolve_device"]

IndexLike = Tensor | int | Sequence[int] | None
_CHUNK_ELEMENTS = 2**20  # parameters per chunk of a pass over rows (CPU caches)
_HOLD_BYTES = 32 * 2**20  # largest gradient tensor held between steps (glibc's heap)
# Gradients + inputs of one chunk of a step's rows, on CPU: at most glibc's largest mmap
# threshold (32 MiB), so a chunk's gradients come from the heap and not from fresh pages.
# A step of up to twice that runs in one pass: each chunk costs a vmap call (at 1,000
# learners of the 8,970-parameter MLP, 38 MB, three chunks of 16 MiB made a step 25%
# slower than one pass; at 10,000 learners, 12 chunks of 32 MiB are 18% faster than 23 of
# 16 MiB, and 0.56 of the bare loop's one pass).
_STEP_BYTES = 32 * 2**20
_STEP_BYTES_DEVICE = 2**30  # the same elsewhere (an accelerator wants large batches)


class _Loans:
    """Row sets lent out of the buffer (``LearnerBank.lend``), held weakly: the bank
    detaches those still alive, all at once, before it next writes the buffer. Callable
    (calling it detaches them), so a checkpoint leaves it to the fresh build, as it does
    the bank's other build-made objects: loans are never saved state (payloads pickle as
    bytes, and checkpoints are taken with nothing in flight)."""

    def __init__(self) -> None:
        self._sets: weakref.WeakSet = weakref.WeakSet()
        self.detached = 0  # row sets that had to be copied out (still alive at a write)

    def add(self, rows: object) -> None:
        self._sets.add(rows)

    def __call__(self) -> None:
        if not self._sets:
            return
        for rows in list(self._sets):
            rows.detach()  # type: ignore[attr-defined]
            self.detached += 1
        self._sets.clear()


@dataclass
class StepResult:
    """Per-learner outcome of one step, measured on the batch before the update."""

    loss_sum: Tensor  # [k] float: sum over the batch of per-sample loss (eq. 1)
    correct: Tensor  # [k] int64: correct predictions in the batch (0 for regression)
    # [k] bool, after the update: ``finite`` of the rows, taken while each chunk was still in
    # cache (None where the step could not: a subset of rows, a model without one block)
    finite: Tensor | None = None


def resolve_device(device: torch.device | str) -> torch.device:
    """``'auto'`` is CUDA when present, else CPU; anything else as ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LearnerBank:
    """m learners of one architecture: rows of one ``[m, P]`` buffer, ``params[name]``
    its ``[m, *shape]`` views (write them in place only; rebinding a key detaches it).

    ``model`` is used as a stateless template (a private copy is kept; the caller's
    module is not modified). ``reduction`` picks the training objective: 'mean' takes
    the gradient of the batch mean (common practice), 'sum' that of the batch sum
    (seed 004's mini-batch SGD). The optimizer ('sgd' or 'adam') keeps per-learner
    state that survives ``assign``: replacing a model does not reset its momentum or
    Adam moments (call ``reset_optimizer`` for that). ``seed`` drives a local
    generator for the init and ``init_noise``; the global RNG is never used.
    ``seed`` is any non-negative integer (folded modulo 2**64). ``input_shape`` (one
    sample's shape) defaults to ``model.input_shape`` (else the first ``step``'s); it
    tells shared from per-learner inputs in ``features``/``evaluate``. ``init`` is
    'reset' (re-initialise the template like PyTorch's defaults from the seeded
    generator: the built-in models) or 'given' (keep the module's own values: a
    researcher's model, perhaps pretrained); either way every learner starts from the
    same values, plus ``init_noise``.
    """

    def __init__(
        self,
        model: nn.Module,
        m: int,
        *,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        reduction: str = "mean",
        device: torch.device | str = "cpu",
        seed: int = 0,
        init_noise: float = 0.0,
        input_shape: tuple[int, ...] | None = None,
        trainable: Sequence[str] | None = None,
        loss: str = "cross_entropy",
        init: str = "reset",
    ) -> None:
        try:
            m = operator.index(m)
        except TypeError:
            raise ValueError(f"m: must be a positive integer, got {m!r}") from None
        if m < 1:
            raise ValueError(f"m: must be a positive integer, got {m!r}")
        if optimizer == "adam" and momentum:
            raise ValueError("momentum: not used by optimizer 'adam' (see betas)")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: must be 'mean' or 'sum', got {reduction!r}")
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"loss: must be 'cross_entropy' or 'mse', got {loss!r}")
        self.loss = loss
        self.regression = loss == "mse"
        if init_noise < 0:
            raise ValueError(f"init_noise: must be >= 0, got {init_noise}")
        if init not in ("reset", "given"):
            raise ValueError(f"init: must be 'reset' or 'given', got {init!r}")
        self.m = m
        self.device = resolve_device(device)
        self.reduction = reduction
        shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
        self.input_shape: tuple[int, ...] | None = None if shape is None else tuple(shape)

        # Private template on CPU: seeded init there, so results do not depend on device.
        template = copy.deepcopy(model).to("cpu")
        gen = torch.Generator().manual_seed(int(seed) % 2**64)
        if init == "reset":
            init_parameters(template, gen)
        named = [(n, p.detach()) for n, p in template.named_parameters()]
        if not named:
            raise ValueError("model: has no parameters to train")
        if len({p.dtype for _, p in named}) > 1:
            raise ValueError("model: parameters mix dtypes; the bank stacks one dtype "
                             "(call model.float())")
        self.names: list[str] = [n for n, _ in named]
        self.shapes: dict[str, torch.Size] = {n: p.shape for n, p in named}
        self.numels: list[int] = [p.numel() for _, p in named]
        self.num_params: int = sum(self.numels)
        # Column of each parameter's first value in a row of ``buffer`` (``names`` order).
        self.offsets: dict[str, int] = dict(
            zip(self.names, np.cumsum([0, *self.numels[:-1]]).tolist(), strict=True))
        self._shape_list = [self.shapes[n] for n in self.names]
        self._flat_shapes = [torch.Size([n]) for n in self.numels]
        self.dtype = named[0][1].dtype
        # One contiguous [m, P] tensor holds every learner's parameters (row i: learner i,
        # in ``names`` order, as ``flat``); ``params[name]`` are views of its column blocks.
        self.buffer: Tensor = torch.empty(m, self.num_params, dtype=self.dtype,
                                          device=self.device)
        for view, (_, p) in zip(column_views(self.buffer, self._shape_list), named, strict=True):
            # Built on CPU a parameter at a time (noise drawn in names order, as [m, *shape]):
            # the values do not depend on the device, and the host holds one block at once
            # (none without noise: the model is broadcast into the rows).
            if init_noise > 0:
                stacked = p.unsqueeze(0).repeat(m, *([1] * p.dim()))
                stacked.add_(torch.randn(stacked.shape, generator=gen, dtype=p.dtype),
                             alpha=init_noise)
                view.copy_(stacked)
                del stacked
            else:
                view.copy_(p.unsqueeze(0).expand(m, *p.shape))
        self.params: dict[str, Tensor] = dict(
            zip(self.names, column_views(self.buffer, self._shape_list), strict=True))
        self._blocks = column_views(self.buffer, self._flat_shapes)  # [m, n] per parameter
        # Frozen parameters (transfer learning: train only the last layer) keep their
        # initial values; the optimizer never sees them.
        self.trainable: list[str] = list(self.names if trainable is None else trainable)
        unknown = sorted(set(self.trainable) - set(self.names))
        if unknown or not self.trainable:
            raise ValueError(f"trainable: unknown or no parameters {unknown}; "
                             f"known: {', '.join(self.names)}")
        self._frozen = [n for n in self.names if n not in self.trainable]
        self._split_all = ({n: self.params[n] for n in self.trainable},
                           {n: self.params[n] for n in self._frozen})
        self._train_shapes = [self.shapes[n] for n in self.trainable]
        self._train_params = [self.params[n] for n in self.trainable]
        # Columns [a, b) of the trainable parameters when they are one block in trainable
        # order (all of them, or the last layer): then their rows are one slice.
        self._tcols = self._block(self.trainable)
        self.model = template.to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.all_idx = torch.arange(m, device=self.device)
        self._all_cpu = torch.arange(m)

        opts: dict[str, object] = {"lr": lr, "weight_decay": weight_decay}
        if optimizer == "sgd":
            opts["momentum"] = momentum
        elif optimizer == "adam":
            opts.update(betas=betas, eps=eps)
        self.optimizer: Optimizer = make_optimizer(optimizer, self._plist(), **opts)

        # Optional additive gradient terms, both off by default (see ``set_proximal`` and
        # ``set_correction``): FedProx's mu*(w - anchor) and SCAFFOLD's control correction.
        self.prox_mu: float = 0.0
        self.anchor: dict[str, Tensor] | None = None  # [m, ...] per trainable parameter
        self._anchor_flat: Tensor | None = None  # [m, T]: ``anchor``'s storage
        self.correction: Tensor | None = None  # [m, P] flat, in ``names`` order
        self._correction_rows: dict[str, Tensor] = {}  # views of ``correction`` per parameter

        self._train = vmap(grad(self._objective, has_aux=True))
        # A model that can run k parameter sets at once (forward_stacked) is differentiated
        # by plain autograd: learners' losses are separate, so the gradient of their sum is
        # every learner's own gradient, without vmap's per-op overhead.
        self._stacked_forward = getattr(self.model, "forward_stacked", None)
        self._scratch: dict[str, Tensor] | None = None
        # Bytes of gradients and inputs per chunk of a step's rows (``_step_chunks``).
        self.step_bytes: int = _STEP_BYTES if self.device.type == "cpu" else _STEP_BYTES_DEVICE
        # Exact divergence shortcuts, keyed by the parameters' version stamp (``_stamp``):
        # the stamp at which every row was last known equal (divergence exactly 0), and
        # the last full value with its stamp (nothing changed since: the same value).
        self._uniform_at: tuple[int, ...] | None = None if init_noise > 0 else self._stamp()
        self._divergence_at: tuple[tuple[int, ...], float] | None = None
        self._forward_shared = vmap(self._forward, in_dims=(0, None, None))
        self._has_features = accepts_features(self.model)
        self._forward_each = vmap(self._forward, in_dims=(0, 0, None))
        self._loans = _Loans()  # rows of ``buffer`` read in place by payloads in flight

    # ------------------------------------------------------------------ internals
    def _plist(self) -> list[Tensor]:
        """The trainable parameters (views of ``buffer``), always the same objects: the
        optimizer recognises them as column blocks of the buffer."""
        return self._train_params

    def _block(self, names: Sequence[str]) -> tuple[int, int] | None:
        """Columns ``[a, b)`` holding ``names`` one after another, or None."""
        start = end = self.offsets[names[0]]
        for n in names:
            if self.offsets[n] != end:
                return None
            end += self.shapes[n].numel()
        return start, end

    def _views(self, rows: Tensor) -> dict[str, Tensor]:
        """Per-parameter views ``[k, ...]`` of flat rows ``[k, P]``."""
        return dict(zip(self.names, column_views(rows, self._shape_list), strict=True))

    def _trainable_rows(self, rows: Tensor) -> Tensor:
        """The trainable columns of flat rows ``[k, P]`` as ``[k, T]`` (a view when they
        are one block, else a copy), in ``trainable`` order."""
        if self._tcols is not None:
            return rows[:, self._tcols[0]:self._tcols[1]]
        k = rows.shape[0]
        views = self._views(rows)
        return torch.cat([views[n].reshape(k, -1) for n in self.trainable], dim=1)

    def _forward(self, params: dict[str, Tensor], x: Tensor, features: bool) -> Tensor:
        # The keyword only when asked for: a researcher's forward(x) need not take it.
        if features:
            return functional_call(self.model, params, (x,), {"features": True})
        return functional_call(self.model, params, (x,))

    def _objective(
        self, params: dict[str, Tensor], frozen: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # Differentiated in the trainable ``params`` only: no gradient, and no backward
        # pass below the lowest trainable layer, for frozen ones (transfer learning).
        logits = functional_call(self.model, (params, frozen), (x,))
        loss_sum = self._sample_losses(logits, y).sum()
        obj = loss_sum if self.reduction == "sum" else loss_sum / y.shape[0]
        return obj, (loss_sum, logits)

    def _sample_losses(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-sample training loss ``[..., B]`` of outputs ``[..., B, C]``: squared error
        averaged over the targets, or cross-entropy as -log_softmax[y] (the same value as
        F.cross_entropy, with fewer operators under vmap, whose nll_loss batching rule
        decomposes: ~7% faster)."""
        if self.regression:
            return (out - y).square().mean(-1)
        return -torch.log_softmax(out, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)

    def _train_stacked(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        """``_train``'s results for a model with ``forward_stacked``, by autograd."""
        leaves = {n: p.detach().requires_grad_(n in self.trainable) for n, p in params.items()}
        with torch.enable_grad():
            out = self._stacked_forward(leaves, x)
            loss_sum = self._sample_losses(out, y).sum(-1)
            obj = loss_sum.sum() if self.reduction == "sum" else loss_sum.sum() / y.shape[1]
            # A parameter the graph never reaches (an RNN over one time step has no use
            # for its recurrent kernel) gets a zero gradient, as vmap(grad) gives it.
            found = torch.autograd.grad(obj, [leaves[n] for n in self.trainable],
                                        allow_unused=True, materialize_grads=True)
        # Contiguous like the parameters, so the optimizer's fused multi-tensor ops apply.
        grads = {n: g.contiguous() for n, g in zip(self.trainable, found, strict=True)}
        return grads, (loss_sum.detach(), out.detach())

    def _index(self, idx: IndexLike) -> tuple[Tensor | None, int]:
        """(device index tensor or None for 'all learners in order', k)."""
        if idx is None or idx is self.all_idx:
            return None, self.m
        if isinstance(idx, Tensor):
            if idx.dim() == 0:
                idx = idx.reshape(1)
            if idx.dtype != torch.int64:
                idx = idx.long()
        elif isinstance(idx, int):
            idx = torch.tensor([idx], dtype=torch.int64)
        else:
            idx = torch.as_tensor(list(idx), dtype=torch.int64)
        k = idx.numel()
        if k == self.m:
            ref = self._all_cpu if idx.device.type == "cpu" else self.all_idx
            if idx.device == ref.device and torch.equal(idx, ref):
                return None, k
        return idx.to(self.device), k

    def _rows(self, index: Tensor | None) -> Tensor:
        """Rows ``index`` of the buffer ``[k, P]``: the buffer itself for all (no copy)."""
        return self.buffer if index is None else self.buffer.index_select(0, index)

    def _inputs(self, x: Tensor) -> Tensor:
        """Inputs on the bank's device; floating inputs (e.g. float64 from numpy) in the
        parameters' dtype."""
        if x.is_floating_point():
            return x.to(self.device, self.dtype)
        return x.to(self.device)

    def _targets(self, y: Tensor) -> Tensor:
        """Labels as int64 for cross-entropy; regression targets in the parameters' dtype."""
        return y.to(self.device, self.dtype if self.regression else torch.int64)

    def _is_stacked(self, params: dict[str, Tensor]) -> bool:
        n = self.names[0]
        dim, ref = params[n].dim(), len(self.shapes[n])
        if dim not in (ref, ref + 1):
            raise ValueError(f"params[{n!r}]: expected {ref} or {ref + 1} dims, got {dim}")
        return dim == ref + 1

    def _per_learner_input(self, x: Tensor) -> bool:
        """Whether stacked-model input ``x`` is ``[k, N, *in]`` rather than shared ``[N, *in]``.

        A sample comes shaped as ``input_shape`` or reshaped (e.g. flat ``[C*H*W]``): then its
        number of dims is the fewest trailing dims of ``x`` whose product is the sample size."""
        if self.input_shape is None:
            raise ValueError(
                "input_shape: unknown; pass it to LearnerBank (or step once) to use "
                "features/evaluate with stacked parameters"
            )
        nd = len(self.input_shape)
        if tuple(x.shape[x.dim() - nd :]) == self.input_shape:
            return x.dim() == nd + 2
        size = math.prod(self.input_shape)
        for d in range(1, x.dim()):
            if math.prod(x.shape[x.dim() - d :]) == size:
                return x.dim() == d + 2
        raise ValueError(f"x: shape {tuple(x.shape)} does not end in samples of {self.input_shape}")

    # ------------------------------------------------------------------ training
    def step(self, idx: IndexLike, x: Tensor, y: Tensor) -> StepResult:
        """One batched optimizer step for learners ``idx`` on their own batches.

        ``x [k, B, *in]``, ``y [k, B]`` (regression: ``[k, B, T]``; row j belongs to learner
        ``idx[j]``). Returns the
        batch-summed loss and correct count of each learner *before* the update.
        """
        index, k = self._index(idx)
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[2:])
        if x.shape[0] != k or y.shape[0] != k:
            raise ValueError(f"x, y: leading size must be k={k}, got {x.shape[0]}, {y.shape[0]}")
        if y.dim() != (3 if self.regression else 2):
            want = "[k, B, T] regression targets" if self.regression else "[k, B] labels"
            raise ValueError(f"y: expected {want}, got shape {tuple(y.shape)}")
        x, y = self._inputs(x), self._targets(y)
        self._loans()  # payloads still reading rows in place keep what was sent
        self._scratch = None  # the last step's gradients: their memory is the new ones'
        chunks = self._step_chunks(k, x)
        if len(chunks) == 1:
            grads, loss_sum, correct, finite = self._step_rows(index, None, x, y)
        else:
            losses, counts, checks = [], [], []
            for i, (s, e) in enumerate(chunks):
                part, span = (None, (s, e)) if index is None else (index[s:e], None)
                grads, loss, count, check = self._step_rows(part, span, x[s:e], y[s:e])
                losses.append(loss)
                counts.append(count)
                checks.append(check)
                if i < len(chunks) - 1:
                    del grads  # freed before the next chunk allocates: its memory is reused
            loss_sum, correct = torch.cat(losses), torch.cat(counts)
            finite = None if checks[0] is None else torch.cat(checks)
        # Hold the gradients until the next step starts. Freed at once, they leave a large
        # free block that glibc returns to the OS and faults back in on the next step
        # (about twice the page faults of a plain loop, ~10% slower on CPU); held, then
        # freed just before the next step allocates, they are reused. Only where that
        # works: on CPU, and tensors that glibc keeps on its heap (up to 32 MiB, its
        # largest mmap threshold; larger ones are always mapped afresh), so a large bank
        # does not keep a useless gradient set between steps. (With chunks: the last
        # chunk's, whose memory every chunk of the next step reuses.)
        if self.device.type == "cpu" and max(g.nbytes for g in grads.values()) <= _HOLD_BYTES:
            self._scratch = grads
        return StepResult(loss_sum=loss_sum, correct=correct, finite=finite)

    def _step_chunks(self, k: int, x: Tensor) -> list[tuple[int, int]]:
        """Row ranges ``[s, e)`` of one step: chunks whose gradients and inputs take about
        ``step_bytes`` (on CPU ``_STEP_BYTES``, ``_STEP_BYTES_DEVICE`` elsewhere; one pass up to
        twice that), so a step of many
        learners holds one chunk's gradients and autograd temporaries at a time (bounded
        memory, and in cache) rather than a [k, T] set of each. Balanced (sizes differ by
        at most one row) and never under two rows (a one-row reduction may be split across
        threads, which sums in another order). Every row is computed by the same
        operations whatever the chunking: results are bit for bit one pass's."""
        per_row = self.optimizer.width * self.buffer.element_size()
        per_row += x[0].nbytes if k else 0
        bound = max(1, self.step_bytes)
        if k * per_row <= 2 * bound:  # one pass where chunks would save little memory
            return [(0, k)]
        n = min(-(-k * per_row // bound), k // 2)
        if n <= 1:
            return [(0, k)]
        return [(k * i // n, k * (i + 1) // n) for i in range(n)]

    def _step_rows(self, index: Tensor | None, span: tuple[int, int] | None, x: Tensor,
                   y: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor | None]:
        """One step of the rows ``index`` (None: all, or the row range ``span`` of them) on
        their batch ``x``, ``y``: (their gradients, loss_sum, correct, finite). ``finite``
        (rows of the buffer with one trainable block only, else None) reads the rows just
        updated, still in cache: a separate pass over all m x P values after the step
        costs about a tenth of a 1,000-learner step."""
        if index is None and span is None:  # all learners: the buffer's own views (no copy)
            rows, current = self.buffer, self.params
        elif index is None:  # a range of rows: views of the buffer's rows (no copy)
            rows = self.buffer[span[0]:span[1]]
            current = self._views(rows)
        else:  # a subset: one gather of its rows
            rows = self.buffer.index_select(0, index)
            current = self._views(rows)
        if self._stacked_forward is not None:
            grads, (loss_sum, logits) = self._train_stacked(current, x, y)
        else:
            if index is None and span is None:
                train, frozen = self._split_all
            else:
                train = {n: current[n] for n in self.trainable}
                frozen = {n: current[n] for n in self._frozen}
            grads, (loss_sum, logits) = self._train(train, frozen, x, y)
        if self.anchor is not None or self.correction is not None:
            self._add_terms(grads, rows, index, span)
        self.optimizer.update(self._plist(), [grads[n] for n in self.trainable], index,
                              rows=span)
        finite = None
        if index is None and self._tcols is not None:
            finite = torch.isfinite(self._finite_sums(rows))
        if self.regression:
            correct = torch.zeros(x.shape[0], dtype=torch.int64, device=self.device)
        else:
            correct = (logits.argmax(-1) == y).sum(-1)
        return grads, loss_sum, correct, finite

    def _add_terms(self, grads: dict[str, Tensor], rows: Tensor, index: Tensor | None,
                   span: tuple[int, int] | None = None) -> None:
        """Add the proximal term ``mu*(w - anchor)`` and the correction rows to ``grads`` of
        the rows ``index`` (or the row range ``span``; all for neither), whose parameters
        are ``rows [k, P]``, in place: one op over the trainable columns for the
        difference, one fused op per term for the gradients."""
        g = [grads[n] for n in self.trainable]
        s, e = span if span is not None else (0, self.m)
        if self._anchor_flat is not None:
            anchor = self._anchor_flat[s:e] if index is None else self._anchor_flat.index_select(
                0, index)
            diff = torch.sub(self._trainable_rows(rows), anchor)
            torch._foreach_add_(g, column_views(diff, self._train_shapes), alpha=self.prox_mu)
        if self.correction is not None:
            if index is None:
                corr = [self._correction_rows[n][s:e] for n in self.trainable]
            else:
                picked = self._trainable_rows(self.correction).index_select(0, index)
                corr = column_views(picked, self._train_shapes)
            torch._foreach_add_(g, corr)

    # ------------------------------------------------------------ gradient terms
    @torch.no_grad()
    def set_proximal(self, mu: float, anchor: Tensor | dict[str, Tensor] | None = None) -> None:
        """FedProx (Li et al. 2020): train on ``f_i(w) + mu/2 ||w - anchor_i||^2``, i.e. every
        step adds ``mu * (w - anchor_i)`` to the gradient (whatever ``reduction``; the
        optimizer's weight decay comes on top). ``anchor`` is one model for every row (flat
        ``[P]`` or a dict), stacked rows (``[m, P]`` or a stacked dict), or None: the
        current models. From then on ``assign`` also sets the anchors of the rows it
        assigns, so a learner's anchor is the model it last received. ``mu = 0`` turns
        the term off (and forgets the anchors). The anchors are one ``[m, T]`` tensor over
        the trainable parameters; ``anchor[name]`` are views of it."""
        mu = float(mu)
        if not mu >= 0:
            raise ValueError(f"mu: must be >= 0, got {mu}")
        if mu == 0:
            self.prox_mu, self.anchor, self._anchor_flat = 0.0, None, None
            return
        self.prox_mu = mu
        flat = self._trainable_rows(self.buffer).clone(memory_format=torch.contiguous_format)
        self._anchor_flat = flat
        self.anchor = dict(zip(self.trainable, column_views(flat, self._train_shapes),
                               strict=True))
        if anchor is not None:
            self.set_anchor(None, anchor)

    @torch.no_grad()
    def set_anchor(self, idx: IndexLike, anchor: Tensor | dict[str, Tensor]) -> None:
        """Set the proximal anchors of rows ``idx`` (flat ``[P]``/``[k, P]`` or a dict)."""
        if self.anchor is None or self._anchor_flat is None:
            raise ValueError("set_anchor: no proximal term; call set_proximal(mu > 0) first")
        index, k = self._index(idx)
        if isinstance(anchor, Tensor) and self._tcols is not None:
            self.unflatten(anchor)  # checks the shape
            a, b = self._tcols
            self._copy_rows(self._anchor_flat, index, k, anchor[..., a:b], "anchor")
            return
        params = self.unflatten(anchor) if isinstance(anchor, Tensor) else anchor
        for n in self.trainable:
            self._copy_rows(self.anchor[n], index, k, params[n], n)

    @torch.no_grad()
    def set_correction(self, correction: Tensor | None, idx: IndexLike = None) -> None:
        """An additive gradient correction per row (SCAFFOLD's ``c - c_i``): every step adds
        row i of it to learner i's gradient (frozen parameters ignore it). ``correction``
        is flat: ``[m, P]`` (or ``[P]`` for every row) with ``idx=None``, which replaces
        the whole correction (None turns it off), or ``[k, P]``/``[P]`` for the rows
        ``idx`` of the current one (zero rows first if there is none)."""
        index, k = self._index(idx)
        if correction is None:
            if idx is not None:
                raise ValueError("set_correction: None turns the correction off for all rows")
            self.correction, self._correction_rows = None, {}
            return
        if correction.shape[-1] != self.num_params or correction.dim() not in (1, 2):
            raise ValueError(f"correction: expected [P] or [k, P] with P={self.num_params}, "
                             f"got {tuple(correction.shape)}")
        if self.correction is None:
            self.correction = torch.zeros(self.m, self.num_params, device=self.device,
                                          dtype=self.dtype)
            self._correction_rows = self._views(self.correction)
        self._copy_rows(self.correction, index, k, correction, "correction")

    def _copy_rows(self, dest: Tensor, index: Tensor | None, k: int, value: Tensor,
                   name: str) -> None:
        """Write ``value`` (one row ``dest.shape[1:]``, broadcast, or ``k`` rows) into the
        rows ``index`` of ``dest`` (all for None), with one operation."""
        v = value.to(device=self.device, dtype=dest.dtype)
        if v.untyped_storage().data_ptr() == dest.untyped_storage().data_ptr():
            v = v.clone()  # rows of dest itself (e.g. a view of the buffer): no overlap
        if v.dim() == dest.dim() - 1:
            if v.shape != dest.shape[1:]:
                raise ValueError(f"{name}: expected {tuple(dest.shape[1:])} or "
                                 f"{(k, *dest.shape[1:])}, got {tuple(v.shape)}")
            v = v.unsqueeze(0).expand(k, *v.shape)  # a broadcast: no copy
        elif v.dim() != dest.dim() or v.shape != (k, *dest.shape[1:]):
            raise ValueError(f"{name}: expected {tuple(dest.shape[1:])} or "
                             f"{(k, *dest.shape[1:])}, got {tuple(v.shape)}")
        if index is None:
            dest.copy_(v)
        else:
            dest.index_copy_(0, index, v)

    def reset_optimizer(self, idx: IndexLike = None) -> None:
        """Reset the optimizer state (momentum, Adam moments and step counts) of ``idx``."""
        index, _ = self._index(idx)
        self.optimizer.reset(index)

    @property
    def steps(self) -> Tensor | None:
        """Per-learner Adam step counts ``[m]`` (None for SGD, which needs none)."""
        return self.optimizer.steps if isinstance(self.optimizer, Adam) else None

    # ------------------------------------------------------------------ parameters
    @torch.no_grad()
    def mean(self, idx: IndexLike = None) -> dict[str, Tensor]:
        """Average model of learners ``idx`` (all by default), unstacked: views of one
        ``[P]`` vector, read from the buffer's rows without copying them (all learners)."""
        index, _ = self._index(idx)
        return self.unflatten(self._mean_rows(self._rows(index)))

    def _mean_rows(self, rows: Tensor) -> Tensor:
        """Column means ``[P]`` of ``rows [k, P]``, reduced per parameter block: the same
        reduction, so the same rounding, as separate per-parameter tensors (one reduction
        over all P columns can sum a block's columns in another order). A one-value block
        is reduced as a contiguous vector, as a separate tensor of it would be."""
        blocks = self._blocks if rows is self.buffer else column_views(rows, self._flat_shapes)
        return torch.cat([(b if b.shape[1] > 1 else b.contiguous()).mean(0) for b in blocks])

    def _as_flat(self, params: dict[str, Tensor]) -> Tensor | None:
        """The ``[P]`` or ``[k, P]`` tensor that ``params`` are the ``unflatten`` views of
        (read from storage offsets and strides), or None: then they are separate tensors."""
        first = params[self.names[0]]
        if first.dtype != self.dtype or first.device != self.device:
            return None
        stacked = first.dim() == len(self.shapes[self.names[0]]) + 1
        lead = 1 if stacked else 0
        k = first.shape[0] if stacked else 1
        row = first.stride(0) if stacked else self.num_params
        storage, start = first.untyped_storage().data_ptr(), first.storage_offset()
        for n in self.names:
            t, shape = params[n], self.shapes[n]
            if (t.dim() != len(shape) + lead or t.shape[lead:] != shape or t.dtype != first.dtype
                    or t.untyped_storage().data_ptr() != storage
                    or t.storage_offset() != start + self.offsets[n]):
                return None
            if stacked and (t.shape[0] != k or (k > 1 and t.stride(0) != row)):
                return None
            expect = 1
            for size, stride in zip(reversed(shape), reversed(t.stride()[lead:]), strict=True):
                if size != 1 and stride != expect:
                    return None
                expect *= size
        if stacked and k > 1 and row < self.num_params:
            return None
        if not stacked:
            return first.as_strided((self.num_params,), (1,), start)
        return first.as_strided((k, self.num_params), (row if k > 1 else self.num_params, 1),
                                start)

    def _flat_model(self, params: dict[str, Tensor], k: int) -> tuple[Tensor, bool]:
        """``params`` (one model or ``k`` stacked ones, checked) as flat ``[P]`` or
        ``[k, P]``, and whether it is stacked. A model given by ``unflatten`` is its flat
        tensor itself; separate tensors are joined (a copy)."""
        missing = set(self.names) - set(params)
        if missing:
            raise KeyError(f"params: missing {sorted(missing)}")
        unstacked = True
        for n in self.names:
            v, shape = params[n], self.shapes[n]
            if v.dim() == len(shape) and v.shape == shape:
                continue
            if v.dim() != len(shape) + 1 or v.shape[0] != k or v.shape[1:] != shape:
                raise ValueError(f"params[{n!r}]: expected {tuple(shape)} or "
                                 f"{(k, *shape)}, got {tuple(v.shape)}")
            unstacked = False
        if unstacked:
            vec = self._as_flat(params)
            if vec is None:
                vec = torch.cat([params[n].to(self.device, self.dtype).reshape(-1)
                                 for n in self.names])
            return vec, False
        every = all(params[n].dim() == len(self.shapes[n]) + 1 for n in self.names)
        vec = self._as_flat(params) if every else None
        if vec is None:
            vec = torch.cat([params[n].to(self.device, self.dtype).expand(k, *self.shapes[n])
                             .reshape(k, -1) for n in self.names], dim=1)
        return vec, True

    @torch.no_grad()
    def assign(self, idx: IndexLike, params: dict[str, Tensor]) -> None:
        """Replace the models of ``idx`` by ``params``: one unstacked model (broadcast to
        all of ``idx``) or stacked ``[k, ...]``. Optimizer state is kept. With a proximal
        term (``set_proximal``) the assigned models also become the anchors of ``idx``.
        A model from ``unflatten`` is written as its flat rows: one write into the buffer."""
        index, k = self._index(idx)
        vec, stacked = self._flat_model(params, k)
        self._loans()
        self._copy_rows(self.buffer, index, k, vec, "params")
        if index is None and not stacked:
            self._uniform_at = self._stamp()  # one model broadcast to every row
        if self._anchor_flat is not None:  # FedProx: a received model is the new anchor
            if self._tcols is not None:
                cols = self._trainable_rows(self.buffer)
                rows = cols if index is None else cols.index_select(0, index)
            else:
                rows = self._trainable_rows(self._rows(index))
            self._copy_rows(self._anchor_flat, index, k, rows, "anchor")

    @torch.no_grad()
    def get(self, idx: IndexLike = None) -> dict[str, Tensor]:
        """Stacked copies ``[k, ...]`` of the models of ``idx`` (an int gives k = 1): views
        of one new ``[k, P]`` tensor."""
        return self._views(self.flat(idx))

    @torch.no_grad()
    def flat(self, idx: IndexLike = None) -> Tensor:
        """Parameter vectors ``[k, P]`` (row j: learner ``idx[j]``), in ``names`` order: a
        copy of the buffer's rows (one gather)."""
        index, _ = self._index(idx)
        if index is None:
            return self.buffer.clone()
        return self.buffer.index_select(0, index)

    @torch.no_grad()
    def rows(self, idx: IndexLike = None) -> Tensor:
        """``flat(idx)`` without the copy where none is needed: the buffer itself ``[m, P]``
        (live: later steps and assigns show through) for all learners in order, else the
        gathered rows. For a reader that is done with them before the bank changes, or
        that holds them through ``lend`` (the encoder of the models being sent); it must
        not write to them."""
        index, _ = self._index(idx)
        return self.buffer if index is None else self.buffer.index_select(0, index)

    def lend(self, rows: RowSet) -> None:
        """Let the payloads of ``rows`` (``wire.encode_vectors`` of ``rows()``) read the
        buffer in place while they are in flight: the bank copies them out (``detach``)
        only if they are still alive when it next writes the buffer (a step, an assign).
        A round's uploads, averaged and dropped before their senders' next write, so cost
        no copy of the models at all. Rows outside the buffer (a gather) are the set's own."""
        if rows.lend_from(self.buffer):
            self._loans.add(rows)

    @property
    def loans_detached(self) -> int:
        """How many lent row sets were still alive at a write, and were copied out."""
        return self._loans.detached

    @torch.no_grad()
    def finite(self, idx: IndexLike = None) -> np.ndarray:
        """Whether each row's trainable parameters are all finite, from one sum per row (a
        NaN or inf makes the sum non-finite; no [k, P] copy is made for all rows). A row of
        finite values whose float32 sum overflows reads as non-finite: only near 3e38."""
        index, k = self._index(idx)
        if self._tcols is not None:
            total = self._finite_sums(self.buffer if index is None else
                                      self.buffer.index_select(0, index))
        else:
            total = torch.zeros(k, device=self.device, dtype=torch.float32)
            for name in self.trainable:
                p = self.params[name]
                part = p if index is None else p.index_select(0, index)
                total += part.reshape(k, -1).sum(dim=1, dtype=torch.float32)
        return torch.isfinite(total).cpu().numpy()

    def _finite_sums(self, rows: Tensor) -> Tensor:
        """One float32 sum per row of the trainable columns of ``rows [k, P]`` (one block):
        non-finite exactly where a row holds a NaN or inf (or sums past 3e38)."""
        return self._trainable_rows(rows).sum(dim=1, dtype=torch.float32)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Inverse of ``flat``: ``[P]`` gives an unstacked model, ``[k, P]`` a stacked one
        (views of ``vec``)."""
        if vec.shape[-1] != self.num_params or vec.dim() not in (1, 2):
            raise ValueError(
                f"vec: expected [P] or [k, P] with P={self.num_params}, got {tuple(vec.shape)}"
            )
        lead = tuple(vec.shape[:-1])
        parts = torch.split(vec, self.numels, dim=-1)
        return {
            n: t.reshape((*lead, *self.shapes[n]))  # a tuple: a 0-dim parameter too
            for n, t in zip(self.names, parts, strict=True)
        }

    @torch.no_grad()
    def sq_dist(self, ref: dict[str, Tensor], idx: IndexLike = None) -> Tensor:
        """``||f_i - ref||^2`` over all parameters for each learner of ``idx``: ``[k]``.

        ``ref`` is one unstacked model (e.g. the reference vector of dynamic averaging)
        or stacked ``[k, ...]`` (one reference per learner). The squared norms of each
        parameter block of the buffer's rows are summed (the values of separate
        per-parameter tensors), in row chunks (``_row_chunks``) with the same operations
        per row as one pass, so the values are bit for bit those of one pass."""
        index, k = self._index(idx)
        vec, stacked = self._flat_model(ref, k)
        return self._sq_dist(vec.to(self.device), stacked, index, k)

    def _sq_dist(self, ref: Tensor, per_row: bool, index: Tensor | None, k: int,
                 rows: Tensor | None = None) -> Tensor:
        """``sq_dist`` against flat ``ref`` (``[P]``, or ``[k, P]`` when ``per_row``) of the
        rows ``index``, or of ``rows`` (those rows, already gathered)."""
        total = torch.empty(k, device=self.device, dtype=torch.float32)
        refs = None if per_row else torch.split(ref, self.numels, dim=-1)
        for s, e in self._row_chunks(k):
            if rows is not None:
                cur = rows[s:e]
            else:
                cur = self.buffer[s:e] if index is None else self.buffer.index_select(
                    0, index[s:e])
            chunk_refs = torch.split(ref[s:e], self.numels, dim=-1) if refs is None else refs
            # Per parameter block: the rounding of separate tensors, and a contiguous
            # difference to reduce (a norm over a strided view of one [rows, P] difference
            # is 40% slower); vector_norm is one fused pass on CPU.
            part = torch.zeros(e - s, device=self.device, dtype=torch.float32)
            for block, r in zip(torch.split(cur, self.numels, dim=1), chunk_refs, strict=True):
                part += torch.linalg.vector_norm(block - r, dim=1).square_()
            total[s:e] = part
        return total

    def _row_chunks(self, k: int) -> list[tuple[int, int]]:
        """Row ranges ``[s, e)`` covering ``k`` rows: about ``_CHUNK_ELEMENTS`` parameters
        each on CPU, so the temporaries stay in cache (at m=1000, P=8970: 40% less time
        than one pass), all rows at once on other devices. Never a one-row chunk out of
        several: a reduction with a single output may be split across threads, which
        sums in another order than the same row among others."""
        if self.device.type != "cpu":
            return [(0, k)]
        rows = max(2, _CHUNK_ELEMENTS // self.num_params)
        starts = list(range(0, k, rows))
        if len(starts) > 1 and k - starts[-1] == 1:
            starts.pop()
        return list(zip(starts, [*starts[1:], k], strict=True))

    def _stamp(self) -> tuple[int, ...]:
        """Identity and in-place version counter of the parameter buffer: any write to a
        parameter (a step, an assign, a protocol's in-place edit, through ``params`` or
        any other view) changes it, as views share their base's counter."""
        return (id(self.buffer), self.buffer._version)

    @torch.no_grad()
    def divergence(self, idx: IndexLike = None) -> float:
        """Model divergence (seed 004 eq. 2): ``1/k sum_i ||f_i - mean||^2`` over ``idx``.

        Exact, and free where the answer is known: 0 while every row still holds the
        model last broadcast to all of them (or the homogeneous init), and the last
        value over all learners while no parameter has changed since."""
        stamp = self._stamp()
        if stamp == self._uniform_at:
            return 0.0
        index, k = self._index(idx)
        if index is None and self._divergence_at is not None and self._divergence_at[0] == stamp:
            return self._divergence_at[1]
        rows = self._rows(index)
        value = float(self._sq_dist(self._mean_rows(rows), False, index, k, rows).mean())
        if index is None:
            self._divergence_at = (stamp, value)
        return value

    # ------------------------------------------------------------------ inference
    @staticmethod
    def _chunks(n: int, k: int, batch: int) -> tuple[range, int]:
        """Sample chunks of at most ``batch`` model-sample rows (at least one sample)."""
        size = max(1, batch // k)
        return range(0, n, size), size

    @torch.no_grad()
    def features(self, params: dict[str, Tensor], x: Tensor, batch: int = 4096) -> Tensor:
        """Last-hidden-layer representation (linear model: the flattened input).

        Stacked params ``[k, ...]`` with shared ``x [N, *in]`` or per-model ``x [k, N, *in]``
        give ``[k, N, H]``; an unstacked model with ``x [N, *in]`` gives ``[N, H]``.
        ``batch`` bounds the model-sample rows per forward pass (memory).
        """
        if not self._has_features:
            raise ValueError(f"model: {type(self.model).__name__}.forward takes no 'features' "
                             "argument; representations need forward(x, features=True) to "
                             "return the last hidden layer [N, H]")
        return self._infer(params, x, None, batch)

    @torch.no_grad()
    def evaluate(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, batch: int = 4096
    ) -> tuple[Tensor, Tensor]:
        """(loss_sum, correct) of the bank's loss on ``(x, y)``, without gradients.

        Per model ``[k]`` for stacked params (``x`` shared ``[N, *in]`` with ``y [N]``, or
        per model ``[k, N, *in]`` with ``y [k, N]``; regression targets add a trailing
        ``T``); 0-dim tensors for an unstacked model. ``batch`` bounds the model-sample
        rows per forward pass (memory).
        """
        return self._infer(params, x, y, batch)

    def _infer(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor | None, batch: int
    ) -> Tensor | tuple[Tensor, Tensor]:
        params = {n: params[n].to(self.device) for n in self.names}
        x = self._inputs(x)
        stacked = self._is_stacked(params)
        k = params[self.names[0]].shape[0] if stacked else 1
        each = stacked and self._per_learner_input(x)
        n_axis = 1 if each else 0
        n = x.shape[n_axis]
        starts, size = self._chunks(n, k, batch)
        feats: list[Tensor] = []
        loss = torch.zeros(k if stacked else (), device=self.device)
        correct = torch.zeros(k if stacked else (), device=self.device, dtype=torch.int64)
        if y is not None:
            y = self._targets(y)
        # Axis of samples in y: the last for labels, the one before the targets' otherwise.
        y_axis = -2 if self.regression else -1
        for s in starts:
            xs = x.narrow(n_axis, s, min(size, n - s))
            if not stacked:
                out = self._forward(params, xs, y is None)
            elif each:
                out = self._forward_each(params, xs, y is None)
            else:
                out = self._forward_shared(params, xs, y is None)
            if y is None:
                feats.append(out)
                continue
            ys = y.narrow(y.dim() + y_axis, s, xs.shape[n_axis])
            if self.regression:
                loss += self._sample_losses(out, ys).sum(-1)
                continue
            if stacked:
                ys = ys.expand(k, -1) if ys.dim() == 1 else ys
                per = F.cross_entropy(out.transpose(1, 2), ys, reduction="none")
                loss += per.sum(-1)
            else:
                loss += F.cross_entropy(out, ys, reduction="sum")
            correct += (out.argmax(-1) == ys).sum(-1)
        if y is None:
            if not feats:
                h = self.model(torch.zeros(1, *x.shape[n_axis + 1 :], device=self.device), True)
                shape = (k, 0, h.shape[-1]) if stacked else (0, h.shape[-1])
                return torch.zeros(shape, device=self.device)
            return torch.cat(feats, dim=-2)
        return loss, correct

    def __repr__(self) -> str:
        return (
            f"LearnerBank(m={self.m}, model={type(self.model).__name__}, "
            f"num_params={self.num_params}, optimizer={type(self.optimizer).__name__}, "
            f"reduction={self.reduction!r}, device={self.device})"
        )
