"""The divergence metric: exact wherever it is written, and only as costly as it must be."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import netfl.learning.bank as bank_mod
from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.observers import Observer
from netfl.scenario import ScenarioError


def make_bank(m: int, noise: float = 0.1, hidden: tuple[int, ...] = (8,)) -> LearnerBank:
    return LearnerBank(build_model("mlp", (6,), 3, hidden=list(hidden)), m, seed=2,
                       init_noise=noise)


def one_pass_sq_dist(bank: LearnerBank, ref: dict[str, torch.Tensor], idx=None) -> torch.Tensor:
    """The formula as it was before chunking: one pass over all rows at once."""
    rows = bank.get(idx)
    k = rows[bank.names[0]].shape[0]
    total = torch.zeros(k)
    for n in bank.names:
        d = (rows[n] - ref[n]).reshape(k, -1)
        total += torch.linalg.vector_norm(d, dim=1).square_()
    return total


def one_pass(bank: LearnerBank, idx=None) -> float:
    return float(one_pass_sq_dist(bank, bank.mean(idx), idx).mean())


def train(bank: LearnerBank, idx=None, seed: int = 0) -> None:
    k = bank.m if idx is None else len(idx)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(k, 4, 6, generator=gen), torch.randint(3, (k, 4), generator=gen)
    bank.step(None if idx is None else torch.tensor(idx), x, y)


@pytest.mark.parametrize("m, chunk", [(2, 1), (3, 2), (65, 4), (301, 4), (300, None)])
def test_chunked_pass_is_bit_identical_to_one_pass(monkeypatch, m, chunk):
    bank = make_bank(m)
    if chunk is not None:  # rows per chunk: chunk (a one-row tail joins the chunk before)
        monkeypatch.setattr(bank_mod, "_CHUNK_ELEMENTS", chunk * bank.num_params)
    else:  # the default: a [64, 64] MLP gives 116 rows per chunk, three chunks here
        bank = LearnerBank(build_model("mlp", (64,), 10, hidden=[64, 64]), m, seed=2,
                           init_noise=0.1)
        assert len(bank._row_chunks(m)) == 3
    chunks = bank._row_chunks(m)
    assert chunks[0][0] == 0 and chunks[-1][1] == m
    assert all(e - s >= 2 for s, e in chunks)
    assert bank.divergence() == one_pass(bank)
    sub = [m - 1, 0] if m > 2 else [1]
    assert bank.divergence(sub) == one_pass(bank, sub)
    stacked = {n: p.flip(0) for n, p in bank.params.items()}  # one reference per row
    assert torch.equal(bank.sq_dist(stacked), one_pass_sq_dist(bank, stacked))
    shared = bank.mean([0])
    assert torch.equal(bank.sq_dist(shared, sub), one_pass_sq_dist(bank, shared, sub))


def test_zero_while_every_row_holds_one_broadcast_model():
    bank = make_bank(7, noise=0.0)  # homogeneous init: every row the same model
    assert bank.divergence() == 0.0
    train(bank)
    assert bank.divergence() == one_pass(bank) > 1e-6
    bank.assign(None, bank.mean())  # a synchronization: one model to every row
    assert bank.divergence() == 0.0 and bank.divergence([2, 5]) == 0.0
    assert one_pass(bank) < 1e-10  # the full pass agrees up to rounding
    bank.assign([3], {n: p[0] + 1 for n, p in bank.get([0]).items()})  # one row changes
    assert bank.divergence() == one_pass(bank) > 0
    bank.assign(None, bank.get())  # stacked rows: not known equal, so computed
    assert bank.divergence() == one_pass(bank) > 0


def test_last_value_reused_only_while_no_parameter_changes():
    bank = make_bank(6)
    first = bank.divergence()
    assert bank.divergence() == first == one_pass(bank)
    name = bank.names[0]
    bank.params[name][1].add_(0.5)  # an in-place edit through a view of one row
    second = bank.divergence()
    assert second != first and second == one_pass(bank)
    train(bank, [0, 4])  # a step of a subset (index_copy path)
    assert bank.divergence() == one_pass(bank) != second
    bank.unflatten(bank.flat())  # views of a copy: the bank is untouched
    assert bank.divergence() == one_pass(bank)


class Rows(Observer):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_round(self, sim, row: dict[str, Any]) -> None:
        self.rows.append(row)


def run_rows(tiny, every: int) -> list[dict[str, Any]]:
    rows = Rows()
    built = build(tiny(protocol={"name": "periodic", "b": 3}, horizon={"rounds": 8},
                       eval={"every": 4, "divergence_every": every}), observers=[rows])
    built.simulation.divergence_every = every  # as build passes eval.divergence_every
    built.simulation.run()
    return rows.rows


def test_divergence_every_writes_exact_values_and_leaves_other_cells_empty(tiny):
    full, sparse = run_rows(tiny, 1), run_rows(tiny, 3)
    assert [r["round"] for r in sparse] == list(range(1, 9))
    assert all(r["divergence"] > 0 for r in full)
    written = [r["round"] for r in sparse if "divergence" in r]
    assert written == [3, 6, 8]  # every third row and the last
    for a, b in zip(full, sparse, strict=True):  # everything else is the same run
        if "divergence" in b:
            assert b["divergence"] == a["divergence"]
        assert {k: v for k, v in a.items() if k != "divergence"} == \
            {k: v for k, v in b.items() if k != "divergence"}


def test_divergence_follows_the_evaluations_by_default(tiny):
    """Unset, the divergence is written on the evaluation rows (eval.every) and the last."""
    rows = Rows()
    scenario = tiny(protocol={"name": "periodic", "b": 3}, horizon={"rounds": 9},
                    eval={"every": 4})
    assert scenario.eval.divergence_every is None
    built = build(scenario, observers=[rows])
    assert built.simulation.divergence_every == 4
    built.simulation.run()
    assert [r["round"] for r in rows.rows if "divergence" in r] == [4, 8, 9]
    assert [r["round"] for r in rows.rows if "acc_mean_model" in r] == [4, 8, 9]


def test_divergence_every_is_validated(tiny):
    assert tiny(eval={"divergence_every": 5}).eval.divergence_every == 5
    with pytest.raises(ScenarioError, match="eval.divergence_every"):
        tiny(eval={"divergence_every": 0})
