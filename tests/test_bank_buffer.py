"""The bank's layout: one contiguous [m, P] parameter buffer, parameters and optimizer state
as views of it, and every result equal, bit for bit, to separate per-parameter tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netfl.learning import optim
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.learning.optim import SGD, Adam, column_base, column_views

M = 6


def _bank(kind: str = "mlp", m: int = M, **kw: object) -> LearnerBank:
    shape = {"mlp": (12,), "cnn": (1, 8, 8), "rnn": (5, 2)}[kind]
    hidden = {"mlp": [16, 8], "cnn": [20, 12], "rnn": [4, 3]}[kind]
    kw.setdefault("init_noise", 0.1)
    return LearnerBank(build_model(kind, shape, 4, hidden=hidden), m, seed=1, **kw)


def _batch(bank: LearnerBank, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, 5, *bank.input_shape, generator=gen)
    return x, torch.randint(0, 4, (k, 5), generator=gen)


def _shares(t: torch.Tensor, base: torch.Tensor) -> bool:
    return t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


def test_parameters_are_views_of_one_contiguous_buffer_read_by_flat():
    bank = _bank("cnn")
    buf = bank.buffer
    assert buf.shape == (M, bank.num_params) and buf.is_contiguous()
    for n in bank.names:
        p = bank.params[n]
        assert _shares(p, buf) and p.shape == (M, *bank.shapes[n])
        assert p.storage_offset() == bank.offsets[n]
    assert torch.equal(bank.flat(), buf)
    idx = torch.tensor([4, 1])
    assert torch.equal(bank.flat(idx), buf[[4, 1]])
    # a write through a parameter view is a write to the buffer, seen by flat
    bank.params["conv2.bias"][3].fill_(7.0)
    off = bank.offsets["conv2.bias"]
    assert torch.all(bank.flat(3)[0, off:off + 16] == 7.0)
    # rows: the same values, the live buffer for everyone (no copy), a gather otherwise
    assert bank.rows() is buf and torch.equal(bank.rows(idx), bank.flat(idx))
    # flat and get are copies: changing them leaves the bank alone
    before = buf.clone()
    bank.flat().zero_()
    bank.get(idx)["conv1.weight"].zero_()
    assert torch.equal(bank.buffer, before)


def test_step_and_assign_write_the_buffer_in_place():
    bank = _bank(optimizer="sgd", momentum=0.5)
    buf, ptr = bank.buffer, bank.buffer.data_ptr()
    version = buf._version
    bank.step(None, *_batch(bank, M, 0))
    bank.step(torch.tensor([5, 2]), *_batch(bank, 2, 1))
    assert bank.buffer is buf and buf.data_ptr() == ptr and buf._version > version
    vec = bank.flat(0)[0] + 1.0
    bank.assign(torch.tensor([3, 1]), bank.unflatten(vec))  # one row write, broadcast
    assert torch.equal(buf[3], vec) and torch.equal(buf[1], vec)
    rows = torch.stack([vec, vec * 2])
    bank.assign(torch.tensor([0, 4]), bank.unflatten(rows))  # stacked flat rows
    assert torch.equal(buf[[0, 4]], rows)
    # a model made of the buffer's own rows (overlapping memory) is copied first
    bank.assign(torch.tensor([0, 1]), bank.unflatten(buf[4]))
    assert torch.equal(buf[0], rows[1]) and torch.equal(buf[1], rows[1])
    assert bank.buffer is buf and buf.data_ptr() == ptr


def test_assign_of_separate_tensors_equals_assign_of_a_flat_model():
    a, b = _bank(), _bank()
    vec = torch.randn(a.num_params, generator=torch.Generator().manual_seed(3))
    a.assign([2, 0], a.unflatten(vec))  # views of one vector: written as its row
    b.assign([2, 0], {n: t.clone() for n, t in b.unflatten(vec).items()})  # joined first
    assert torch.equal(a.buffer, b.buffer)
    stacked = torch.randn(2, a.num_params, generator=torch.Generator().manual_seed(4))
    a.assign([5, 1], a.unflatten(stacked))
    b.assign([5, 1], {n: t.clone() for n, t in b.unflatten(stacked).items()})
    assert torch.equal(a.buffer, b.buffer)
    with pytest.raises(ValueError, match="hidden.0.weight"):
        a.assign([1], {n: t.t() if t.dim() == 2 else t for n, t in a.unflatten(vec).items()})


@pytest.mark.parametrize(("optimizer", "opts"), [
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-2}),
    ("adam", {"betas": (0.8, 0.99), "weight_decay": 1e-2}),
])
def test_optimizer_state_is_contiguous_and_its_lists_are_views(optimizer, opts):
    bank = _bank(optimizer=optimizer, **opts)
    opt = bank.optimizer
    flats = [opt.momentum_flat] if optimizer == "sgd" else [opt.exp_avg_flat, opt.exp_avg_sq_flat]
    lists = [opt.buffers] if optimizer == "sgd" else [opt.exp_avg, opt.exp_avg_sq]
    for flat, views in zip(flats, lists, strict=True):
        assert flat.shape == (M, bank.num_params) and flat.is_contiguous()
        assert all(_shares(v, flat) for v in views)
        assert [v.shape for v in views] == [bank.params[n].shape for n in bank.trainable]
    # the optimizer sees the trainable parameters as one block of the buffer
    assert opt._flat is not None and _shares(opt._flat, bank.buffer)
    assert opt._flat.shape == bank.buffer.shape
    bank.step(None, *_batch(bank, M, 0))
    assert all(float(f.abs().sum()) > 0 for f in flats)
    bank.reset_optimizer(torch.tensor([2]))
    for flat in flats:
        assert float(flat[2].abs().sum()) == 0 and float(flat[3].abs().sum()) > 0


@pytest.mark.parametrize(("cls", "kw"), [
    (SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (Adam, {"lr": 0.1, "weight_decay": 0.1}),
])
@pytest.mark.parametrize("chunk", [None, 42])  # Adam's rows per pass: all, or two
def test_flat_optimizer_paths_equal_separate_tensors_bit_for_bit(cls, kw, chunk, monkeypatch):
    """Column views of one [m, T] tensor (the bank's case: one op per state) against
    separate contiguous tensors (the per-tensor path), full and subset steps."""
    if chunk is not None:
        monkeypatch.setattr(optim, "_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    shapes = [torch.Size([3, 5]), torch.Size([5]), torch.Size([])]
    flat = torch.randn(4, 21, generator=gen)
    views = column_views(flat, shapes)
    separate = [v.clone() for v in views]
    a, b = cls(views, **kw), cls(separate, **kw)
    assert a._flat is not None and b._flat is None
    for t, idx in enumerate([None, torch.tensor([3, 0]), None, torch.tensor([1])]):
        k = 4 if idx is None else len(idx)
        grads = [torch.randn(k, *s, generator=gen) for s in shapes]
        a.update(views, [g.clone() for g in grads], idx)
        b.update(separate, [g.clone() for g in grads], idx)
        for v, s in zip(views, separate, strict=True):
            assert torch.equal(v, s), t


def test_column_base_finds_column_blocks_only():
    buf = torch.zeros(3, 10)
    views = column_views(buf[:, 1:], [torch.Size([2, 2]), torch.Size([5])])
    base = column_base(views)
    assert base is not None and base.shape == (3, 9) and base.data_ptr() == buf[:, 1:].data_ptr()
    assert column_base([t.clone() for t in views]) is None  # separate tensors
    assert column_base(views[::-1]) is None  # blocks out of order
    assert column_base([views[0], buf[:, 6:8]]) is None  # a gap between blocks
    assert column_base([views[0].transpose(1, 2)]) is None  # not row-major within a row


def test_mean_sq_dist_divergence_equal_per_parameter_tensors():
    """The formulas over separate contiguous tensors, as the bank computed them before."""
    bank = _bank("cnn", m=7)
    bank.step([0, 3, 5], *_batch(bank, 3, 2))
    sep = {n: p.contiguous() for n, p in bank.params.items()}
    for idx in (None, torch.tensor([6, 2, 3])):
        rows = sep if idx is None else {n: p[idx] for n, p in sep.items()}
        mean = {n: p.mean(0) for n, p in rows.items()}
        got = bank.mean(idx)
        assert all(torch.equal(got[n], mean[n]) for n in bank.names)
        k = rows[bank.names[0]].shape[0]
        dist = torch.zeros(k)
        for n in bank.names:
            dist += torch.linalg.vector_norm((rows[n] - mean[n]).reshape(k, -1), dim=1).square_()
        assert torch.equal(bank.sq_dist(mean, idx), dist)
        assert bank.divergence(idx) == float(dist.mean())


class _Scalar(nn.Module):
    """A 0-dim parameter and a constant buffer: views and means of them too."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("shift", torch.tensor([1.0, -1.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x + self.shift) * self.scale


def test_zero_dim_parameter_and_buffers():
    bank = LearnerBank(_Scalar(), 3, init="given", init_noise=0.1, seed=2)
    assert bank.params["scale"].shape == (3,)
    mean = bank.mean()
    assert mean["scale"].shape == () and torch.equal(mean["scale"], bank.params["scale"].mean())
    gen = torch.Generator().manual_seed(0)
    bank.step(None, torch.randn(3, 4, 3, generator=gen), torch.randint(0, 2, (3, 4), generator=gen))
    bank.assign([1], mean)
    assert torch.equal(bank.params["scale"][1], mean["scale"])


def test_mixed_dtypes_are_refused():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="dtype"):
        LearnerBank(model, 2, init="given")


@pytest.mark.parametrize("kind", ["mlp", "rnn"])  # vmap(grad), and forward_stacked's autograd
def test_a_subset_step_equals_a_bank_of_those_rows(kind):
    big = _bank(kind, optimizer="adam", lr=0.01)
    rows = torch.tensor([4, 1])
    small = _bank(kind, m=2, optimizer="adam", lr=0.01)
    small.assign(None, small.unflatten(big.flat(rows)))
    for seed in range(3):
        x, y = _batch(big, 2, seed)
        a, b = big.step(rows, x, y), small.step(None, x, y)
        assert torch.equal(a.loss_sum, b.loss_sum)
    assert torch.equal(big.flat(rows), small.flat())


def test_frozen_parameters_get_no_gradient_and_stay():
    bank = _bank("cnn", trainable=["out.weight", "out.bias"], init_noise=0.0)
    before = bank.flat()
    bank.step(None, *_batch(bank, M, 0))
    assert sorted(bank._scratch) == ["out.bias", "out.weight"]  # no backbone gradients
    head = bank.offsets["out.weight"]
    assert torch.equal(bank.flat()[:, :head], before[:, :head])
    assert not torch.equal(bank.flat()[:, head:], before[:, head:])
    assert bank.finite().all()
