"""A step in row chunks (bounded memory for many learners) gives, bit for bit, the step of
all rows at once: parameters, optimizer state, losses and correct counts."""

from __future__ import annotations

import pytest
import torch

from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.learning.optim import SGD

M = 11  # odd: unequal chunks


def _bank(kind: str, step_bytes: int, **kw: object) -> LearnerBank:
    shape = {"mlp": (12,), "cnn": (1, 8, 8), "rnn": (5, 2)}[kind]
    hidden = {"mlp": [16, 8], "cnn": [6, 12], "rnn": [4, 3]}[kind]
    outputs = kw.pop("outputs", 4)
    bank = LearnerBank(build_model(kind, shape, outputs, hidden=hidden), M, seed=3,
                       init_noise=0.1, **kw)
    bank.step_bytes = step_bytes
    return bank


def _batch(bank: LearnerBank, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, 5, *bank.input_shape, generator=gen)
    if bank.regression:
        return x, torch.randn(k, 5, 2, generator=gen)
    return x, torch.randint(0, 4, (k, 5), generator=gen)


def _state(bank: LearnerBank) -> list[torch.Tensor]:
    opt = bank.optimizer
    if isinstance(opt, SGD):
        return [] if opt.momentum_flat is None else [opt.momentum_flat]
    return [opt.exp_avg_flat, opt.exp_avg_sq_flat, opt.steps]


def _run(bank: LearnerBank, steps: list[object], terms: bool) -> list[torch.Tensor]:
    out = []
    if terms:
        bank.set_proximal(0.3)
        bank.set_correction(torch.randn(M, bank.num_params,
                                        generator=torch.Generator().manual_seed(9)) * 0.01)
    for t, idx in enumerate(steps):
        k = M if idx is None else len(idx)
        x, y = _batch(bank, k, seed=t)
        res = bank.step(idx, x, y)
        out += [res.loss_sum, res.correct]
    return [*out, bank.buffer, *_state(bank)]


CASES = [
    ("mlp", {"optimizer": "sgd"}, False),
    ("mlp", {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3}, True),
    ("mlp", {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3}, True),
    ("mlp", {"optimizer": "adam", "loss": "mse", "outputs": 2}, False),
    ("cnn", {"optimizer": "sgd", "momentum": 0.5, "reduction": "sum", "lr": 0.01}, True),
    ("cnn", {"optimizer": "adam", "trainable": ["out.weight", "out.bias"]}, True),
    ("rnn", {"optimizer": "adam", "lr": 1e-2}, True),  # forward_stacked: plain autograd
]


@pytest.mark.parametrize(("kind", "opts", "terms"), CASES)
def test_chunked_steps_are_bit_identical_to_one_pass(kind, opts, terms):
    subset = torch.tensor([9, 2, 5, 0, 7, 3, 10])
    plan = [None, subset, None, [4, 8], None, subset]
    whole = _bank(kind, 2**40, **dict(opts))
    assert whole._step_chunks(M, _batch(whole, M, 0)[0]) == [(0, M)]
    chunked = _bank(kind, 1, **dict(opts))  # the smallest chunks there are: 2 or 3 rows
    chunks = chunked._step_chunks(M, _batch(chunked, M, 0)[0])
    assert len(chunks) == M // 2 and all(e - s in (2, 3) for s, e in chunks)
    for a, b in zip(_run(whole, plan, terms), _run(chunked, plan, terms), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_chunks_are_balanced_cover_the_rows_and_follow_the_bound():
    bank = _bank("mlp", 2**40)
    x = torch.zeros(1000, 5, 12)
    row = bank.optimizer.width * 4 + x[0].nbytes  # gradient + input bytes of one row
    bank.step_bytes = 300 * row  # 1000 rows: 4 chunks of 250
    assert bank._step_chunks(1000, x) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    bank.step_bytes = 500 * row  # up to twice the bound: one pass
    assert bank._step_chunks(1000, x) == [(0, 1000)]
    bank.step_bytes = 499 * row
    assert len(bank._step_chunks(1000, x)) == 3
    bank.step_bytes = 1
    assert bank._step_chunks(3, x[:3]) == [(0, 3)]  # never a one-row chunk
    assert bank._step_chunks(1, x[:1]) == [(0, 1)]


def test_chunked_step_holds_one_chunk_of_gradients():
    bank = _bank("mlp", 1)
    x, y = _batch(bank, M, 0)
    bank.step(None, x, y)
    assert bank._scratch is not None
    assert {g.shape[0] for g in bank._scratch.values()} == {3}  # the last chunk: rows 8..11


def test_row_range_update_is_the_full_update_of_those_rows():
    gen = torch.Generator().manual_seed(0)
    p_full = [torch.randn(6, 3, 2, generator=gen), torch.randn(6, 4, generator=gen)]
    p_rows = [p.clone() for p in p_full]
    g = [torch.randn(6, 3, 2, generator=gen), torch.randn(6, 4, generator=gen)]
    full = SGD(p_full, lr=0.1, momentum=0.9, weight_decay=0.01)
    rows = SGD(p_rows, lr=0.1, momentum=0.9, weight_decay=0.01)
    full.update(p_full, [t.clone() for t in g])
    rows.update(p_rows, [t[:4].clone() for t in g], rows=(0, 4))
    rows.update(p_rows, [t[4:].clone() for t in g], rows=(4, 6))
    for a, b in zip([*p_full, full.momentum_flat], [*p_rows, rows.momentum_flat], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="rows"):
        rows.update(p_rows, g, torch.tensor([0, 1]), rows=(0, 2))
    with pytest.raises(ValueError, match="rows"):
        rows.update(p_rows, g, rows=(4, 7))


@pytest.mark.parametrize("step_bytes", [1, 10**9])  # chunks of two or three rows; one pass
def test_the_steps_own_finite_check_is_that_of_the_rows_after_the_update(step_bytes):
    bank = _bank("mlp", step_bytes, optimizer="sgd", lr=1e38)  # huge steps overflow
    x, y = _batch(bank, M, seed=0)
    first = bank.step(None, x, y)
    assert first.finite is not None and first.finite.dtype == torch.bool
    assert first.finite.tolist() == bank.finite().tolist()
    bank.params[bank.trainable[0]].data[4].fill_(float("nan"))
    second = bank.step(None, x, y)
    assert second.finite.tolist() == bank.finite().tolist()
    assert not second.finite[4]
    assert bank.step([1, 4], x[:2], y[:2]).finite is None  # a subset: the engine asks finite()
