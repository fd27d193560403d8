"""A researcher's own nn.Module: trained batched like a per-learner loop, run through build()
and YAML ``kind: python``, and refused with one clear message where the bank cannot."""

from __future__ import annotations

import copy
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.custom import check_model, trainable_names
from netfl.learning.models import ModelError, last_layer
from netfl.scenario import ScenarioError, from_dict
from tests.conftest import BASE, merge

SHAPE, CLASSES = (1, 6, 6), 5


class ConvNet(nn.Module):
    """Conv -> GroupNorm -> linear -> LayerNorm -> head, with a constant buffer."""

    def __init__(self, input_shape=SHAPE, num_classes=CLASSES, width=8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * input_shape[1] * input_shape[2], width)
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *SHAPE)
        h = F.relu(self.norm(self.conv(x))).flatten(1)
        return self.head(torch.tanh(self.ln(self.fc(h)))) * self.scale


class TiedNet(nn.Module):
    """Two branches sharing one weight (``b.weight`` is ``a.weight``), their own biases."""

    def __init__(self) -> None:
        super().__init__()
        d = SHAPE[1] * SHAPE[2]
        self.a = nn.Linear(d, 7)
        self.b = nn.Linear(d, 7)
        self.b.weight = self.a.weight
        self.head = nn.Linear(7, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(torch.tanh(self.a(x)) * torch.sigmoid(self.b(x.square())))


def _data(k: int, b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, b, *SHAPE, generator=g), torch.randint(0, CLASSES, (k, b), generator=g)


def _copy_with(module: nn.Module, row: dict[str, torch.Tensor]) -> nn.Module:
    out = copy.deepcopy(module)  # keeps ties: named_parameters lists a tied tensor once
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.copy_(row[name])
    return out


@pytest.mark.parametrize("cls", [ConvNet, TiedNet])
def test_batched_training_equals_a_per_learner_torch_loop(cls):
    torch.manual_seed(0)
    module = cls()
    original = copy.deepcopy(module.state_dict())
    m, steps, lr, momentum = 3, 4, 0.1, 0.9
    bank = LearnerBank(module, m, lr=lr, momentum=momentum, seed=7, init_noise=0.05,
                       init="given")
    start = bank.get()
    loops = [_copy_with(module, {n: p[i] for n, p in start.items()}) for i in range(m)]
    opts = [torch.optim.SGD(x.parameters(), lr=lr, momentum=momentum) for x in loops]
    for step in range(steps):
        x, y = _data(m, 6, seed=step)
        res = bank.step(None, x, y)
        for i, (net, opt) in enumerate(zip(loops, opts, strict=True)):
            opt.zero_grad()
            loss = F.cross_entropy(net(x[i]), y[i])
            loss.backward()
            opt.step()
            torch.testing.assert_close(res.loss_sum[i], loss.detach() * 6)
    end = bank.get()
    for i, net in enumerate(loops):
        for name, p in net.named_parameters():
            torch.testing.assert_close(end[name][i], p.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(end[bank.names[0]], start[bank.names[0]])
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in original.items())  # untouched
    if cls is TiedNet:  # one parameter under its first name, trained for both uses
        assert bank.names == ["a.weight", "a.bias", "b.bias", "head.weight", "head.bias"]


def test_given_init_is_the_module_on_every_learner_plus_seeded_noise():
    torch.manual_seed(1)
    module = ConvNet()
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    bank = LearnerBank(module, 4, seed=3, init="given")
    assert torch.equal(bank.flat(), flat.expand(4, -1))
    state = torch.random.get_rng_state()
    noisy = LearnerBank(module, 4, seed=3, init="given", init_noise=0.01).flat()
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(noisy, LearnerBank(module, 4, seed=3, init="given", init_noise=0.01).flat())
    assert not torch.equal(noisy, LearnerBank(module, 4, seed=4, init="given",
                                              init_noise=0.01).flat())
    with pytest.raises(ValueError, match="init: must be 'reset' or 'given'"):
        LearnerBank(module, 2, init="random")


def _scenario(**model: object):
    data = merge(BASE, {"horizon": {"rounds": 2}, "eval": {"every": 1}})
    if model:
        data["model"] = model
    return from_dict(data)


class DigitsNet(nn.Module):
    def __init__(self, input_shape=(1, 8, 8), num_classes=10, width=12) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.LayerNorm(width),
                                  nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_build_with_a_module_runs_two_rounds_from_its_weights():
    torch.manual_seed(2)
    module = DigitsNet()
    weights = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    runs = []
    for _ in range(2):
        sim = build(_scenario(), model=module).simulation
        assert sim.bank.names == [n for n, _ in module.named_parameters()]
        assert torch.equal(sim.bank.flat(), weights.expand(4, -1))  # the module, every learner
        x, y = sim.source.eval_set(0)  # stacked evaluation works before any step
        loss, _ = sim.bank.evaluate(sim.bank.get(), x[:5], y[:5])
        torch.testing.assert_close(loss, F.cross_entropy(module(x[:5]), y[:5], reduction="sum")
                                   .detach().expand(4))
        sim.run()
        runs.append(sim.bank.flat())
    assert torch.equal(runs[0], runs[1])  # deterministic
    assert torch.isfinite(runs[0]).all() and not torch.equal(runs[0], weights.expand(4, -1))
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in module.parameters()]), weights)


def test_build_train_last_trains_the_last_registered_parameterized_submodule():
    module = DigitsNet()
    sim = build(_scenario(kind="mlp", train="last"), model=module).simulation
    assert sim.bank.trainable == ["head.weight", "head.bias"]
    before = sim.bank.get()
    sim.run()
    after = sim.bank.get()
    assert torch.equal(after["body.1.weight"], before["body.1.weight"])
    assert not torch.equal(after["head.weight"], before["head.weight"])
    # A LayerNorm registered after the head would be "last"; a root parameter counts too.
    odd = nn.Module()
    odd.head, odd.ln = nn.Linear(3, 2), nn.LayerNorm(2)
    assert last_layer(odd) == ["ln.weight", "ln.bias"]
    tied = TiedNet()
    tied.head.weight = tied.a.weight  # a final layer tied to an earlier one: its first name
    assert last_layer(tied) == ["a.weight", "head.bias"]


FACTORY = '''
import torch
from torch import nn

def make(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width),
                         nn.Tanh(), nn.Linear(width, num_classes))

def not_a_module(input_shape, num_classes):
    return 3

def no_shape(num_classes):
    return nn.Linear(64, num_classes)
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = "netfl_test_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_yaml_python_factory_runs_and_is_seeded(factory_module):
    scenario = _scenario(kind="python", factory=f"{factory_module}:make", params={"width": 6})
    assert scenario.model.hidden == [] and scenario.model.activation is None
    assert from_dict(scenario.resolved()) == scenario  # the run directory's copy reloads
    state = torch.random.get_rng_state()
    sim = build(scenario).simulation
    assert torch.equal(state, torch.random.get_rng_state())
    assert sim.bank.shapes["1.weight"] == (6, 64) and sim.bank.shapes["3.weight"] == (10, 6)
    start = sim.bank.flat()
    assert torch.equal(start, build(scenario).simulation.bank.flat())  # same seed, same init
    other = scenario.model_copy(update={"seed": scenario.seed + 1})
    assert not torch.equal(start, build(other).simulation.bank.flat())
    sim.run()
    assert torch.isfinite(sim.bank.flat()).all() and not torch.equal(sim.bank.flat(), start)


@pytest.mark.parametrize(("factory", "message"), [
    ("netfl_no_such_module:make", "model.factory: no module named 'netfl_no_such_module'"),
    ("{mod}:missing", "model.factory: module '{mod}' has no attribute 'missing'"),
    ("{mod}:not_a_module", "model.factory: {mod}:not_a_module returned a int, not a torch.nn"),
    ("{mod}:no_shape", "model.factory: {mod}:no_shape cannot be called as factory(input_shape"),
])
def test_yaml_factory_errors_name_the_key(factory_module, factory, message):
    spec = factory.format(mod=factory_module)
    with pytest.raises(ScenarioError) as err:
        build(_scenario(kind="python", factory=spec))
    assert str(err.value).startswith(message.format(mod=factory_module))


@pytest.mark.parametrize(("model", "message"), [
    ({"kind": "python"}, "model.factory: kind 'python' needs factory"),
    ({"kind": "python", "factory": "no colon"}, 'model.factory: expected "package.module:func'),
    ({"kind": "mlp", "factory": "a:b"}, "model.factory: only for kind 'python'"),
    ({"kind": "mlp", "params": {"width": 3}}, "model.params: only for kind 'python'"),
    ({"kind": "python", "factory": "a:b", "hidden": [3]}, "model: kind 'python' takes no hidden"),
    ({"kind": "python", "factory": "a:b", "params": {"num_classes": 3}},
     "model.params: num_classes comes from the data"),
])
def test_model_section_errors(model, message):
    with pytest.raises(ScenarioError) as err:
        build(_scenario(**model))
    assert message in str(err.value)


class BufferWriter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(36, CLASSES)
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return self.lin(x.flatten(1))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(36, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        return out if out.sum() > 0 else -out  # data-dependent Python branch


class IntParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(36, CLASSES)
        self.steps = nn.Parameter(torch.zeros(1, dtype=torch.int64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _seq(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Flatten(), *layers)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: _seq(nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES)),
     "model: BatchNorm1d at '2' tracks running statistics, buffers that change in training"),
    (lambda: _seq(nn.Linear(36, 8), nn.Dropout(0.2), nn.Linear(8, CLASSES)),
     "model: Dropout at '2' draws random numbers in training"),
    (BufferWriter, "model: forward changes buffer(s) count"),
    (IntParam, "model: parameter 'steps' is torch.int64"),
    (lambda: _seq(nn.Linear(36, 8), nn.Linear(8, CLASSES).double()),
     "model: parameters mix dtypes (1.weight torch.float32, 2.weight torch.float64"),
    (lambda: _seq(nn.Linear(36, 3)),
     "model: output shape (2, 3) on a batch of input shape (2, 1, 6, 6); expected (2, 5)"),
    (lambda: nn.Flatten(), "model: Flatten has no parameters to train"),
    (Branchy, "model: cannot be trained batched: torch.func.vmap(grad(...)) over learners"),
    (lambda: "resnet", "model: expected a torch.nn.Module, got str"),
])
def test_unsupported_models_are_refused_with_one_message(make, message):
    with pytest.raises(ModelError) as err:
        check_model(make(), SHAPE, CLASSES)
    assert str(err.value).startswith(message)


def test_batch_norm_message_suggests_the_alternatives_and_they_are_accepted():
    with pytest.raises(ModelError) as err:
        check_model(_seq(nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES)),
                    SHAPE, CLASSES)
    for hint in ("GroupNorm", "LayerNorm", "track_running_stats=False", "eval()"):
        assert hint in str(err.value)
    batch_stats = _seq(nn.Linear(36, 8), nn.BatchNorm1d(8, track_running_stats=False),
                       nn.Linear(8, CLASSES))
    frozen = _seq(nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES)).eval()
    for ok in (batch_stats, frozen):
        check_model(ok, SHAPE, CLASSES)
        bank = LearnerBank(ok, 2, init="given")
        bank.step(None, *_data(2, 4, seed=0))
    assert frozen[2].num_batches_tracked == 0  # eval mode: the statistics stay frozen


def test_frozen_parameters_stay_frozen_and_all_frozen_is_refused():
    module = DigitsNet()
    module.body.requires_grad_(False)
    assert trainable_names(module) == ["head.weight", "head.bias"]
    module.head.requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable parameters: every parameter of the model"):
        trainable_names(module)
    with pytest.raises(ScenarioError, match="model: no trainable parameters"):
        build(_scenario(), model=module)


def test_build_checks_the_output_against_the_real_data():
    with pytest.raises(ScenarioError) as err:
        build(_scenario(), model=_seq(nn.Linear(64, 7)))
    assert str(err.value) == ("model: output shape (2, 7) on a batch of input shape (2, 1, 8, 8); "
                              "expected (2, 10) = [batch, num_classes] (10 classes or targets "
                              "of the data)")


def test_representations_need_a_features_argument():
    probed = from_dict(merge(BASE, {"probes": {"representation": {"every": 1}}}))
    with pytest.raises(ScenarioError, match="probes.representation: DigitsNet.forward takes no"):
        build(probed, model=DigitsNet())
    bank = LearnerBank(DigitsNet(), 2, init="given")
    with pytest.raises(ValueError, match="forward takes no 'features' argument"):
        bank.features(bank.get(), torch.zeros(3, 1, 8, 8))
