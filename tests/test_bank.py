"""LearnerBank, stacked optimizers and the model zoo against plain PyTorch references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from netfl.learning.bank import LearnerBank, StepResult
from netfl.learning.models import ModelError, build_model
from netfl.learning.optim import SGD, Adam

SHAPES = {"linear": (12,), "mlp": (12,), "cnn": (1, 8, 8)}
CLASSES = 4


def _data(k: int, b: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, b, *shape, generator=g)
    y = torch.randint(0, CLASSES, (k, b), generator=g)
    return x, y


def _model(kind: str, **kw: object) -> torch.nn.Module:
    hidden = {"linear": None, "mlp": [16, 8], "cnn": [20, 12]}[kind]
    return build_model(kind, SHAPES[kind], CLASSES, hidden=hidden, **kw)


def _module_of(kind: str, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    module = _model(kind)
    module.load_state_dict({n: p.clone() for n, p in params.items()})
    return module


def _unstack(params: dict[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
    return {n: p[j] for n, p in params.items()}


SCHEDULE = [[0, 2, 3], [0, 1, 2, 3, 4], [3, 1], [4, 0, 2], [0, 1, 2, 3, 4], [2]]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize(
    ("optimizer", "opts", "reduction"),
    [
        ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}, "mean"),
        ("sgd", {"lr": 0.01}, "sum"),
        ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 1e-2}, "mean"),
    ],
)
def test_step_matches_torch_optim_per_learner(kind, optimizer, opts, reduction):
    m, b = 5, 6
    bank = LearnerBank(
        _model(kind), m, optimizer=optimizer, reduction=reduction, seed=3, init_noise=0.05, **opts
    )
    start = bank.get()
    modules = [_module_of(kind, _unstack(start, i)) for i in range(m)]
    if optimizer == "sgd":
        optims = [torch.optim.SGD(mod.parameters(), **opts) for mod in modules]
    else:
        optims = [torch.optim.Adam(mod.parameters(), **opts) for mod in modules]
    for t, learners in enumerate(SCHEDULE):
        x, y = _data(len(learners), b, SHAPES[kind], seed=100 + t)
        res = bank.step(torch.tensor(learners), x, y)
        assert isinstance(res, StepResult)
        for j, i in enumerate(learners):
            optims[i].zero_grad()
            logits = modules[i](x[j])
            loss = F.cross_entropy(logits, y[j], reduction=reduction)
            expected_sum = F.cross_entropy(logits, y[j], reduction="sum").item()
            expected_correct = int((logits.argmax(-1) == y[j]).sum())
            loss.backward()
            optims[i].step()
            assert res.loss_sum[j].item() == pytest.approx(expected_sum, rel=1e-5, abs=1e-5)
            assert int(res.correct[j]) == expected_correct
    final = bank.get()
    for i, mod in enumerate(modules):
        for n, p in mod.named_parameters():
            # compare the total change of each parameter: a tight test of the updates
            moved = p.detach() - start[n][i]
            torch.testing.assert_close(final[n][i] - start[n][i], moved, rtol=1e-3, atol=1e-6)
    if optimizer == "adam":
        counts = [sum(i in s for s in SCHEDULE) for i in range(m)]
        assert bank.steps.tolist() == counts


def test_optimizer_state_survives_assign_and_reset_forgets_it():
    m = 3
    kind = "mlp"
    opts = {"lr": 0.1, "momentum": 0.5}
    bank = LearnerBank(_model(kind), m, **opts)
    x, y = _data(m, 4, SHAPES[kind], seed=1)
    bank.step(torch.arange(m), x, y)
    # Replace every model by learner 0's; learner 0's buffer must carry over into the next step.
    new = _unstack(bank.get(0), 0)
    bank.assign(torch.arange(m), new)
    module = _module_of(kind, new)
    opt = torch.optim.SGD(module.parameters(), **opts)
    # torch.optim.SGD continuing from learner 0's momentum buffer
    for p, buf in zip(module.parameters(), bank.optimizer.buffers, strict=True):
        opt.state[p]["momentum_buffer"] = buf[0].clone()
    x2, y2 = _data(1, 4, SHAPES[kind], seed=2)
    bank.step(torch.tensor([0]), x2, y2)
    opt.zero_grad()
    F.cross_entropy(module(x2[0]), y2[0]).backward()
    opt.step()
    for n, p in module.named_parameters():
        torch.testing.assert_close(bank.params[n][0], p.detach())
    bank.reset_optimizer(torch.tensor([1]))
    assert all(float(b[1].abs().sum()) == 0.0 for b in bank.optimizer.buffers)
    assert all(float(b[0].abs().sum()) > 0.0 for b in bank.optimizer.buffers)


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_proposition_3_averaging_equals_serial_large_batch(kind, reduction):
    """Seed 004, Prop. 3: mean of m one-step SGD models == one SGD step on the mB batch."""
    m, b, eta = 4, 5, 0.05
    x, y = _data(m, b, SHAPES[kind], seed=7)
    bank = LearnerBank(_model(kind), m, lr=eta, reduction=reduction, seed=11)
    bank.step(torch.arange(m), x, y)
    averaged = bank.mean()
    serial_lr = eta / m if reduction == "sum" else eta
    serial = LearnerBank(_model(kind), 1, lr=serial_lr, reduction=reduction, seed=11)
    serial.step(torch.arange(1), x.reshape(1, m * b, *SHAPES[kind]), y.reshape(1, m * b))
    for n in bank.names:
        start = serial.model.get_parameter(n)  # the common init
        torch.testing.assert_close(
            averaged[n] - start, serial.params[n][0] - start, rtol=1e-4, atol=1e-7
        )
    # not vacuous: the learners moved apart, and the step was large against the tolerance
    assert bank.divergence() > 1e-6
    assert float((averaged["out.weight"] - serial.model.out.weight).abs().max()) > 1e-4


def test_loss_sum_is_before_update_and_correct_counts():
    kind, m, b = "mlp", 3, 8
    bank = LearnerBank(_model(kind), m, lr=0.5, init_noise=0.1, seed=5)
    x, y = _data(m, b, SHAPES[kind], seed=9)
    before = bank.get()
    res = bank.step(torch.arange(m), x, y)
    for i in range(m):
        logits = functional_call(bank.model, _unstack(before, i), (x[i],))
        assert res.loss_sum[i].item() == pytest.approx(
            F.cross_entropy(logits, y[i], reduction="sum").item(), rel=1e-6
        )
        assert int(res.correct[i]) == int((logits.argmax(1) == y[i]).sum())
    assert res.correct.dtype == torch.int64
    # evaluate() on the old parameters reports the same figures.
    loss, correct = bank.evaluate(before, x, y)
    torch.testing.assert_close(loss, res.loss_sum)
    assert correct.tolist() == res.correct.tolist()


def test_init_identical_by_default_and_noisy_reproducible():
    model = _model("mlp")
    a = LearnerBank(model, 4, seed=1).flat()
    assert torch.equal(a, a[:1].expand_as(a))
    assert torch.equal(a, LearnerBank(model, 4, seed=1).flat())
    assert not torch.equal(a, LearnerBank(model, 4, seed=2).flat())
    assert LearnerBank(model, 4, seed=1).divergence() == 0.0
    noisy = LearnerBank(model, 4, seed=1, init_noise=0.01).flat()
    assert torch.equal(noisy, LearnerBank(model, 4, seed=1, init_noise=0.01).flat())
    assert not torch.equal(noisy[0], noisy[1])
    # noise of std eps around the common init: E||noise||^2 = P eps^2
    spread = ((noisy - a) ** 2).sum(1) / a.shape[1]
    assert torch.all((spread > 0.5e-4) & (spread < 2e-4))
    # the global RNG is neither used nor advanced
    state = torch.random.get_rng_state()
    LearnerBank(model, 4, seed=1, init_noise=0.01)
    assert torch.equal(state, torch.random.get_rng_state())


def test_mean_assign_get_flat_unflatten_round_trips():
    bank = LearnerBank(_model("cnn"), 5, seed=0, init_noise=0.1)
    flat = bank.flat()
    assert flat.shape == (5, bank.num_params) and flat.dtype == torch.float32
    assert bank.num_params == sum(p.numel() for p in bank.model.parameters())
    # unflatten inverts flat, stacked and unstacked
    stacked = bank.unflatten(flat)
    for n in bank.names:
        assert torch.equal(stacked[n], bank.params[n])
        assert torch.equal(bank.unflatten(flat[2])[n], bank.params[n][2])
    # mean of a subset
    idx = torch.tensor([4, 1, 3])
    mean = bank.mean(idx)
    torch.testing.assert_close(
        torch.cat([mean[n].reshape(-1) for n in bank.names]), flat[idx].mean(0)
    )
    # get returns copies
    got = bank.get(idx)
    got[bank.names[0]].zero_()
    assert torch.equal(bank.flat(), flat)
    # assign unstacked broadcasts; others untouched
    bank.assign(idx, mean)
    after = bank.flat()
    for i in (4, 1, 3):
        torch.testing.assert_close(after[i], flat[idx].mean(0))
    assert torch.equal(after[[0, 2]], flat[[0, 2]])
    # assign stacked rows, in idx order
    bank.assign(torch.tensor([2, 0]), bank.unflatten(flat[[0, 2]]))
    assert torch.equal(bank.flat(torch.tensor([0, 2])), flat[[2, 0]])
    # assign to all learners in order (fast path) and flat of an int
    bank.assign(torch.arange(5), bank.unflatten(flat))
    assert torch.equal(bank.flat(), flat)
    assert torch.equal(bank.flat(3), flat[3:4])
    with pytest.raises(ValueError):
        bank.assign(idx, bank.unflatten(flat[:2]))
    with pytest.raises(KeyError):
        bank.assign(idx, {})


def test_sq_dist_and_divergence_match_numpy_eq2():
    bank = LearnerBank(_model("mlp"), 6, seed=4, init_noise=0.2)
    w = bank.flat().double().numpy()
    div = np.mean(np.sum((w - w.mean(0)) ** 2, axis=1))
    assert bank.divergence() == pytest.approx(div, rel=1e-5)
    sub = [5, 0, 2]
    ws = w[sub]
    assert bank.divergence(torch.tensor(sub)) == pytest.approx(
        np.mean(np.sum((ws - ws.mean(0)) ** 2, axis=1)), rel=1e-5
    )
    ref = bank.unflatten(torch.from_numpy(w[1]).float())
    d = bank.sq_dist(ref, torch.tensor(sub)).double().numpy()
    np.testing.assert_allclose(d, np.sum((ws - w[1]) ** 2, axis=1), rtol=1e-5)
    assert bank.sq_dist(ref)[1].item() == 0.0


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
def test_features_shapes_and_mean_model(kind):
    k, n = 3, 7
    bank = LearnerBank(_model(kind), k, seed=2, init_noise=0.05)
    hidden = {"linear": 12, "mlp": 8, "cnn": 12}[kind]
    x, y = _data(k, n, SHAPES[kind], seed=3)
    shared = x[0]
    assert bank.features(bank.params, shared).shape == (k, n, hidden)
    per = bank.features(bank.params, x)
    assert per.shape == (k, n, hidden)
    mean = bank.mean()
    f = bank.features(mean, shared, batch=2)  # several chunks
    assert f.shape == (n, hidden)
    module = _module_of(kind, mean)
    with torch.no_grad():
        torch.testing.assert_close(f, module(shared, features=True))
        torch.testing.assert_close(
            per[1], _module_of(kind, _unstack(bank.params, 1))(x[1], features=True)
        )
        logits = module(shared)
    loss, correct = bank.evaluate(mean, shared, y[0], batch=3)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits, y[0], reduction="sum").item(), rel=1e-5
    )
    assert int(correct) == int((logits.argmax(1) == y[0]).sum())
    # through functional_call directly, as probes do
    h = functional_call(module, dict(module.named_parameters()), (shared,), {"features": True})
    assert h.shape == (n, hidden)


def test_stacked_evaluate_shared_and_per_model_data():
    kind, k, n = "mlp", 4, 9
    bank = LearnerBank(_model(kind), k, seed=8, init_noise=0.3)
    x, y = _data(k, n, SHAPES[kind], seed=4)
    loss, correct = bank.evaluate(bank.params, x[0], y[0], batch=8)
    loss_each, correct_each = bank.evaluate(bank.params, x, y)
    for i in range(k):
        p = _unstack(bank.params, i)
        li, ci = bank.evaluate(p, x[0], y[0])
        assert loss[i].item() == pytest.approx(li.item(), rel=1e-5)
        assert int(correct[i]) == int(ci)
        le, ce = bank.evaluate(p, x[i], y[i])
        assert loss_each[i].item() == pytest.approx(le.item(), rel=1e-5)
        assert int(correct_each[i]) == int(ce)


def test_stacked_optimizers_direct():
    """Full and subset paths agree with each other and with torch.optim on every row
    (including Nesterov momentum, which the bank does not expose)."""
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(4, 3, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(3)]
    cases = (
        (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
        (Adam, torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.1}),
    )
    for cls, ref_cls, kw in cases:
        full, part = [p0.clone()], [p0.clone()]
        a, b = cls(full, **kw), cls(part, **kw)
        rows = [p0[i].clone().requires_grad_(True) for i in range(4)]
        refs = [ref_cls([r], **kw) for r in rows]
        for g in grads:
            a.update(full, [g.clone()])
            b.update(part, [g[[3, 1]].clone()], torch.tensor([3, 1]))
            b.update(part, [g[[0, 2]].clone()], torch.tensor([0, 2]))
            for i, (r, opt) in enumerate(zip(rows, refs, strict=True)):
                r.grad = g[i].clone()
                opt.step()
        torch.testing.assert_close(full[0], part[0])
        torch.testing.assert_close(full[0], torch.stack([r.detach() for r in rows]))
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p0], nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([p0], betas=(1.0, 0.9))


def test_bank_argument_errors():
    model = _model("mlp")
    with pytest.raises(ValueError, match="optimizer"):
        LearnerBank(model, 2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="reduction"):
        LearnerBank(model, 2, reduction="max")
    with pytest.raises(ValueError, match="m:"):
        LearnerBank(model, 0)
    bank = LearnerBank(model, 2)
    x, y = _data(3, 2, SHAPES["mlp"], seed=0)
    with pytest.raises(ValueError, match="leading size"):
        bank.step(torch.arange(2), x, y)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("resnet", (12,), 4), {}, "kind"),
        (("mlp", (12,), 4), {"hidden": [16, 0]}, r"hidden\[1\]"),
        (("mlp", (12,), 4), {"hidden": [16, 2.5]}, r"hidden\[1\]"),
        (("mlp", (12,), 4), {"hidden": "64"}, "hidden"),
        (("mlp", (12,), 4), {"hidden": []}, "hidden"),
        (("linear", (12,), 4), {"hidden": [8]}, "hidden"),
        (("mlp", (12,), 4), {"activation": "swishy"}, "activation"),
        (("mlp", (12,), 0), {}, "num_classes"),
        (("cnn", (64,), 4), {}, "input_shape"),
        (("mlp", (0,), 4), {}, "input_shape"),
    ],
)
def test_build_model_errors(args, kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model(*args, **kwargs)
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_cnn_shapes_and_flat_inputs(shape):
    model = build_model("cnn", shape, 10)
    x = torch.zeros(2, *shape)
    assert model(x).shape == (2, 10)
    assert model(x, features=True).shape == (2, 84)
    assert model(x.reshape(2, -1)).shape == (2, 10)  # flat vectors are reshaped
    names = [n for n, _ in model.named_parameters()]
    assert names[:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert model.conv1.weight.shape == (6, shape[0], 5, 5)
    assert model.conv2.weight.shape == (16, 6, 5, 5)


def test_build_model_seeded_like_torch_default():
    torch.manual_seed(0)
    ref = torch.nn.Linear(12, 4)
    model = build_model("linear", (12,), 4, seed=0)
    assert torch.equal(model.out.weight, ref.weight)
    assert torch.equal(model.out.bias, ref.bias)


def test_cnn_flat_inputs_shared_and_per_learner():
    """Digits come as 64-vectors; the CNN reshapes them, and the bank tells [N,64] from [k,N,64]."""
    k, n = 2, 5
    bank = LearnerBank(_model("cnn"), k, seed=1, init_noise=0.1, device="auto")
    x, y = _data(k, n, (64,), seed=2)
    shared = bank.features(bank.params, x[0])
    per = bank.features(bank.params, x)
    assert shared.shape == per.shape == (k, n, 12)
    torch.testing.assert_close(per[0], shared[0])
    torch.testing.assert_close(per[1], bank.features(_unstack(bank.params, 1), x[1]))
    loss, correct = bank.evaluate(bank.params, x, y)
    assert loss.shape == correct.shape == (k,)
    loss64, _ = bank.evaluate(bank.params, x.double(), y.int())  # numpy dtypes are accepted
    torch.testing.assert_close(loss64, loss)
    res = bank.step([0, 1], x, y)  # indices as a list, flat inputs
    torch.testing.assert_close(res.loss_sum, loss)


def test_big_seed_and_optimizer_mismatch():
    bank = LearnerBank(_model("linear"), 2, seed=2**70 + 5)
    assert torch.equal(bank.flat(), LearnerBank(_model("linear"), 2, seed=2**70 + 5).flat())
    with pytest.raises(ValueError, match="momentum"):
        LearnerBank(_model("linear"), 2, optimizer="adam", momentum=0.9)
