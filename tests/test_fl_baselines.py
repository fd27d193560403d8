"""FL baselines on the star protocols: FedProx, server optimizers (FedAvgM, FedOpt), SCAFFOLD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.observers import Tables
from netfl.protocols import server_opt
from netfl.protocols.server_opt import ServerOptimizer, ServerOptimizerConfig
from netfl.scenario import ScenarioError
from netfl.sim import wire

SHAPE, CLASSES = (12,), 4


def _bank(m: int = 4, **kw) -> LearnerBank:
    return LearnerBank(build_model("mlp", SHAPE, CLASSES, hidden=[8]), m, seed=1, init_noise=0.1,
                       **kw)


def _data(k: int, b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, b, *SHAPE, generator=g), torch.randint(0, CLASSES, (k, b), generator=g)


def _grads(bank: LearnerBank, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain autograd gradients of the batch-mean loss, flat ``[k, P]``, one module per row."""
    out = []
    for j, i in enumerate(rows):
        module = build_model("mlp", SHAPE, CLASSES, hidden=[8])
        module.load_state_dict({n: p[i].clone() for n, p in bank.get().items()})
        F.cross_entropy(module(x[j]), y[j]).backward()
        out.append(torch.cat([dict(module.named_parameters())[n].grad.reshape(-1)
                              for n in bank.names]))
    return torch.stack(out)


def run(tiny, **changes):
    sim = build(tiny(**changes)).simulation
    tables = Tables(learners=False, messages=False)
    sim.observers.append(tables)
    sim.run()
    return sim, tables.rows["metrics"]


# --------------------------------------------------------------------------- FedProx


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [2, 0]])
def test_proximal_step_is_sgd_on_grad_plus_mu_times_distance_to_anchor(rows):
    lr, mu = 0.1, 0.7
    bank = _bank(lr=lr)
    anchor = bank.flat() + 0.05 * torch.randn(bank.m, bank.num_params,
                                              generator=torch.Generator().manual_seed(5))
    bank.set_proximal(mu, anchor)
    w = bank.flat()
    x, y = _data(len(rows))
    g = _grads(bank, rows, x, y)
    bank.step(torch.tensor(rows), x, y)
    want = w[rows] - lr * (g + mu * (w[rows] - anchor[rows]))
    torch.testing.assert_close(bank.flat()[rows], want, atol=1e-6, rtol=1e-5)
    others = [i for i in range(bank.m) if i not in rows]
    torch.testing.assert_close(bank.flat()[others], w[others], atol=0, rtol=0)


def test_mu_zero_is_the_plain_step_and_assign_moves_the_anchor():
    plain, prox = _bank(), _bank()
    prox.set_proximal(0.0)
    x, y = _data(4)
    plain.step(None, x, y)
    prox.step(None, x, y)
    assert prox.anchor is None
    torch.testing.assert_close(prox.flat(), plain.flat(), atol=0, rtol=0)
    prox.set_proximal(0.5)  # anchors: the current models
    torch.testing.assert_close(torch.cat([prox.anchor[n].reshape(4, -1) for n in prox.names], 1),
                               prox.flat())
    model = prox.unflatten(torch.full((prox.num_params,), 0.25))
    prox.assign(torch.tensor([1, 3]), model)
    for n in prox.names:
        assert torch.equal(prox.anchor[n][[1, 3]], prox.params[n][[1, 3]])
        assert not torch.equal(prox.anchor[n][0], model[n])


def test_fedprox_in_a_run_pulls_learners_to_the_global_model(tiny):
    # 22 rounds with b = 5: the last two rounds are local steps from the round-20 average
    free, _ = run(tiny, protocol={"name": "periodic", "b": 5}, horizon={"rounds": 22})
    prox, _ = run(tiny, protocol={"name": "periodic", "b": 5, "mu": 5.0}, horizon={"rounds": 22})
    assert prox.bank.prox_mu == 5.0
    assert 0 < prox.bank.divergence() < free.bank.divergence()
    assert prox.network.bytes_total == free.network.bytes_total  # mu costs no bytes


# ------------------------------------------------------------------ server optimizers

DELTA = torch.tensor([0.5, -2.0, 0.0, 1e-3])
X = torch.tensor([1.0, 2.0, -3.0, 0.25])
M = torch.tensor([0.1, -0.1, 0.2, 0.0])
V = torch.tensor([0.04, 5.0, 1e-6, 2e-6])


def test_server_sgd_and_momentum_formulas():
    torch.testing.assert_close(server_opt.sgd(X, DELTA, 0.5), X + 0.5 * DELTA)
    x, m = server_opt.momentum(X, M, DELTA, lr=0.5, beta=0.9)
    torch.testing.assert_close(m, 0.9 * M + DELTA)
    torch.testing.assert_close(x, X + 0.5 * (0.9 * M + DELTA))


@pytest.mark.parametrize("name", ["adagrad", "adam", "yogi"])
def test_server_adaptive_formulas_follow_reddi_algorithm_2(name):
    lr, b1, b2, tau = 0.3, 0.9, 0.99, 1e-3
    d, x0, m0, v0 = (t.double().tolist() for t in (DELTA, X, M, V))
    m = [b1 * a + (1 - b1) * g for a, g in zip(m0, d, strict=True)]
    if name == "adagrad":
        v = [a + g * g for a, g in zip(v0, d, strict=True)]
        x, mt, vt = server_opt.adagrad(X, M, V, DELTA, lr, b1, tau)
    elif name == "adam":
        v = [b2 * a + (1 - b2) * g * g for a, g in zip(v0, d, strict=True)]
        x, mt, vt = server_opt.adam(X, M, V, DELTA, lr, b1, b2, tau)
    else:
        sign = [math.copysign(1.0, a - g * g) if a != g * g else 0.0
                for a, g in zip(v0, d, strict=True)]
        v = [a - (1 - b2) * g * g * s for a, g, s in zip(v0, d, sign, strict=True)]
        x, mt, vt = server_opt.yogi(X, M, V, DELTA, lr, b1, b2, tau)
    want = [a + lr * mm / (math.sqrt(vv) + tau) for a, mm, vv in zip(x0, m, v, strict=True)]
    torch.testing.assert_close(mt, torch.tensor(m, dtype=torch.float32))
    torch.testing.assert_close(vt, torch.tensor(v, dtype=torch.float32))
    torch.testing.assert_close(x, torch.tensor(want, dtype=torch.float32))
    torch.testing.assert_close(X, torch.tensor([1.0, 2.0, -3.0, 0.25]))  # pure: inputs unchanged


def test_server_optimizer_state_starts_at_zero_and_tau_squared():
    opt = ServerOptimizer(ServerOptimizerConfig(name="adam", lr=0.1, eps=0.01))
    x1 = opt.step(X, DELTA)
    want, m, v = server_opt.adam(X, torch.zeros(4), torch.full((4,), 1e-4), DELTA, 0.1, 0.9,
                                 0.99, 0.01)
    torch.testing.assert_close(x1, want)
    x2 = opt.step(x1, -DELTA)
    torch.testing.assert_close(x2, server_opt.adam(x1, m, v, -DELTA, 0.1, 0.9, 0.99, 0.01)[0])
    avgm = ServerOptimizer(ServerOptimizerConfig(name="momentum", momentum=0.5))
    assert avgm.beta1 == 0.5
    torch.testing.assert_close(avgm.step(avgm.step(X, DELTA), DELTA), X + DELTA + 1.5 * DELTA)


@pytest.mark.parametrize("protocol", [{"name": "periodic", "b": 5},
                                      {"name": "fedavg", "b": 5, "fraction": 0.5}])
def test_server_sgd_with_lr_one_is_plain_averaging(tiny, protocol):
    plain, rows = run(tiny, protocol=protocol)
    opt, opt_rows = run(tiny, protocol={**protocol, "server_optimizer": {"name": "sgd"}})
    assert len(rows) == len(opt_rows) == 20
    for a, b in zip(rows, opt_rows, strict=True):
        assert a.keys() == b.keys()
        for key in a:  # x + (mean - x) is mean up to float32 rounding
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(opt.bank.flat(), plain.bank.flat(), atol=1e-6, rtol=1e-5)


def test_server_optimizers_run_and_track_the_global_model(tiny):
    for name in server_opt.SERVER_OPTIMIZERS:
        sim, rows = run(tiny, protocol={"name": "periodic", "b": 5,
                                        "server_optimizer": {"name": name, "lr": 0.5}})
        assert sim.counters["syncs"] == 4
        assert all(math.isfinite(r["loss"]) for r in rows)
        assert sim.protocol.server_optimizer.steps == 4
        torch.testing.assert_close(sim.bank.flat(), sim.protocol.global_model.expand(4, -1))


def test_server_optimizer_with_lossy_codecs_steps_from_what_learners_hold(tiny):
    sim, _ = run(tiny, protocol={"name": "periodic", "b": 5,
                                 "server_optimizer": {"name": "adam", "lr": 0.1}},
                 compression={"uplink": {"name": "uniform", "R": 4},
                              "downlink": {"name": "uniform", "R": 6}})
    channel = sim.protocol.channel
    assert sim.protocol.global_model is channel.bases[channel.version]
    torch.testing.assert_close(sim.bank.flat(), channel.bases[channel.version].expand(4, -1))


def test_server_optimizer_schema_errors_name_the_key(tiny):
    with pytest.raises(ScenarioError, match="protocol.server_optimizer.name"):
        tiny(protocol={"name": "periodic", "server_optimizer": {"name": "lamb"}})
    with pytest.raises(ScenarioError, match="protocol.mu"):
        tiny(protocol={"name": "fedavg", "mu": -1})


# --------------------------------------------------------------------------- SCAFFOLD


def test_bank_correction_is_added_to_the_gradient():
    lr = 0.2
    bank = _bank(lr=lr)
    corr = torch.randn(bank.m, bank.num_params, generator=torch.Generator().manual_seed(2))
    bank.set_correction(corr)
    rows = [3, 1]
    w = bank.flat()
    x, y = _data(2, seed=4)
    g = _grads(bank, rows, x, y)
    bank.step(torch.tensor(rows), x, y)
    torch.testing.assert_close(bank.flat()[rows], w[rows] - lr * (g + corr[rows]),
                               atol=1e-6, rtol=1e-5)
    bank.set_correction(torch.ones(bank.num_params), torch.tensor([0]))
    assert torch.equal(bank.correction[0], torch.ones(bank.num_params))
    assert torch.equal(bank.correction[1], corr[1])
    bank.set_correction(None)
    assert bank.correction is None


def test_scaffold_control_update_is_option_two(tiny):
    sim = build(tiny(protocol={"name": "scaffold", "b": 3}, optimizer={"lr": 0.05})).simulation
    proto, bank = sim.protocol, sim.bank
    gen = torch.Generator().manual_seed(7)
    x = proto.channel.bases[0]
    y = x + 0.1 * torch.randn(4, bank.num_params, generator=gen)
    ci = 0.01 * torch.randn(4, bank.num_params, generator=gen)
    c = 0.01 * torch.randn(bank.num_params, generator=gen)
    bank.assign(None, bank.unflatten(y))
    proto.ci.copy_(ci)
    proto.c = proto.controls[0] = c
    sim.rounds_done[:] = 3
    senders = np.array([0, 2, 3])
    payloads = proto._uploads(senders, 3)
    ci_plus = ci[senders] - c + (x - y[senders]) / (3 * 0.05)
    torch.testing.assert_close(proto.ci[senders], ci_plus)
    torch.testing.assert_close(proto.ci[1], ci[1])
    torch.testing.assert_close(bank.correction[senders], c - ci_plus)
    cut = proto.vector_bytes
    dy = wire.decode_vectors([p[:-cut] for p in payloads])
    dc = wire.decode_vectors([p[-cut:] for p in payloads])
    torch.testing.assert_close(dy, y[senders] - x)
    torch.testing.assert_close(dc, ci_plus - ci[senders])
    # the coordinator: x + lr_global mean(dy), c + |S|/N mean(dc)
    proto._average(payloads)
    torch.testing.assert_close(proto.global_model, x + (y[senders] - x).mean(0))
    torch.testing.assert_close(proto.c, c + 3 / 4 * (ci_plus - ci[senders]).mean(0))


def test_scaffold_charges_two_vectors_each_way(tiny):
    periodic, _ = run(tiny, protocol={"name": "periodic", "b": 5})
    scaffold, _ = run(tiny, protocol={"name": "scaffold", "b": 5})
    for kind in ("model", "broadcast"):
        count = periodic.network.messages_by_kind[kind]
        assert scaffold.network.messages_by_kind[kind] == count == 16
        header = count * wire.HEADER_BYTES
        plain_payloads = periodic.network.bytes_by_kind[kind] - header
        assert plain_payloads == count * (4 + 4 * periodic.bank.num_params)
        assert scaffold.network.bytes_by_kind[kind] - header == 2 * plain_payloads


def test_scaffold_run_learns_and_keeps_c_the_mean_of_client_controls(tiny):
    sim, rows = run(tiny, protocol={"name": "scaffold", "b": 5}, optimizer={"lr": 0.3},
                    horizon={"rounds": 60})
    losses = np.array([r["loss"] for r in rows])
    assert losses[-10:].mean() < 0.6 * losses[:10].mean()
    assert sim.counters["syncs"] == 12
    assert float(sim.protocol.c.norm()) > 0
    # all learners upload and nothing is lost: c stays the mean of the c_i
    torch.testing.assert_close(sim.protocol.c, sim.protocol.ci.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sim.bank.correction, sim.protocol.c - sim.protocol.ci)
    assert sim.bank.divergence() == pytest.approx(0.0, abs=1e-12)


def test_scaffold_with_a_lossless_uplink_codec_matches_full_vectors(tiny):
    plain, _ = run(tiny, protocol={"name": "scaffold", "b": 5})
    coded, _ = run(tiny, protocol={"name": "scaffold", "b": 5},
                   compression={"uplink": {"name": "none"}})
    torch.testing.assert_close(coded.bank.flat(), plain.bank.flat(), atol=1e-5, rtol=0)
    torch.testing.assert_close(coded.protocol.c, plain.protocol.c, atol=1e-5, rtol=0)


def test_scaffold_fraction_and_server_optimizer(tiny):
    sim, rows = run(tiny, learners={"count": 6},
                    protocol={"name": "scaffold", "b": 5, "fraction": 0.5,
                              "server_optimizer": {"name": "momentum", "lr": 1.0}})
    assert sim.network.messages_by_kind["model"] == 4 * 3
    assert sim.network.messages_by_kind["broadcast"] == 4 * 6
    assert all(math.isfinite(r["loss"]) for r in rows)
    with pytest.raises(ScenarioError, match="lr_global"):
        tiny(protocol={"name": "scaffold", "lr_global": 0.5,
                       "server_optimizer": {"name": "sgd"}})
