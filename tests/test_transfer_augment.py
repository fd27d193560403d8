"""Training only the last layer, and augmented image batches (seed 002's CNN setup)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model, last_layer
from netfl.scenario import ScenarioError


def test_last_layer_names():
    assert last_layer(build_model("cnn", (1, 8, 8), 10)) == ["out.weight", "out.bias"]
    assert last_layer(build_model("linear", (4,), 3)) == [n for n, _ in
                                                         build_model("linear", (4,), 3)
                                                         .named_parameters()]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_frozen_parameters_never_move(optimizer):
    model = build_model("mlp", (6,), 3, hidden=[5])
    opts = {"momentum": 0.9, "weight_decay": 0.01} if optimizer == "sgd" else {}
    bank = LearnerBank(model, 4, optimizer=optimizer, lr=0.1, seed=1,
                       trainable=last_layer(model), **opts)
    before = {n: t.clone() for n, t in bank.params.items()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        bank.step(torch.arange(4), torch.randn(4, 8, 6, generator=gen),
                  torch.randint(0, 3, (4, 8), generator=gen))
    for name in bank.names:
        moved = not torch.equal(bank.params[name], before[name])
        assert moved == (name in last_layer(model)), name


def test_unknown_trainable_name():
    with pytest.raises(ValueError, match="trainable"):
        LearnerBank(build_model("mlp", (6,), 3, hidden=[5]), 2, trainable=["nope"])


def test_scenario_trains_only_the_last_layer(tiny):
    sim = build(tiny(model={"kind": "mlp", "hidden": [16], "train": "last"})).simulation
    first = sim.bank.params["hidden.0.weight"].clone()
    sim.run()
    assert torch.equal(sim.bank.params["hidden.0.weight"], first)
    assert sim.bank.trainable == ["out.weight", "out.bias"]


def test_augmentation_is_deterministic_and_grouping_free(tiny):
    source = build(tiny(data={"augment": {"shift": 1, "noise": 0.05}})).source
    plain = build(tiny()).source
    x_all, y_all = source.batch(None, 3)
    x_sub, y_sub = source.batch(np.array([2, 0]), np.array([3, 3]))
    torch.testing.assert_close(x_sub, x_all[[2, 0]])
    assert torch.equal(y_sub, y_all[[2, 0]])
    x_plain, y_plain = plain.batch(None, 3)
    assert torch.equal(y_all, y_plain)  # same samples, only the images change
    assert not torch.allclose(x_all, x_plain)
    torch.testing.assert_close(source.batch(None, 3)[0], x_all)


def test_shift_only_moves_pixels(tiny):
    source = build(tiny(data={"augment": {"shift": 2}})).source
    plain = build(tiny()).source
    x, _ = source.batch(None, 0)
    x0, _ = plain.batch(None, 0)
    # a wrapped shift permutes pixels: every image keeps its multiset of values
    assert torch.equal(x.flatten(2).sort(-1).values, x0.flatten(2).sort(-1).values)
    assert not torch.equal(x, x0)


def test_augment_needs_a_fixed_dataset(tiny):
    with pytest.raises(ScenarioError, match="augment applies to fixed image datasets"):
        tiny(data={"dataset": "graphical", "augment": {"shift": 1}})


def test_pretraining_gives_every_learner_the_trained_start(tiny):
    cold = build(tiny(horizon={"rounds": 1})).simulation
    warm = build(tiny(model={"kind": "mlp", "hidden": [16], "pretrain_steps": 200},
                      horizon={"rounds": 1})).simulation
    assert warm.bank.divergence() == 0.0
    assert not torch.equal(warm.bank.flat(), cold.bank.flat())
    assert warm.evaluate()["acc_mean_model"] > cold.evaluate()["acc_mean_model"] + 0.3
    assert warm.network.bytes_total == 0 and warm.env.now == 0.0


def test_pretraining_needs_a_fixed_dataset(tiny):
    with pytest.raises(ScenarioError, match="pretrain_steps"):
        build(tiny(data={"dataset": "graphical"}, model={"kind": "mlp", "hidden": [8],
                                                         "pretrain_steps": 5}))


def test_shift_is_refused_for_flat_feature_vectors(tiny):
    """A shift rolls the last two axes of images; on [N, F] data it would roll the batch."""
    from netfl.build import build
    from netfl.scenario import ScenarioError

    sc = tiny(data={"dataset": "gaussian_mixture", "augment": {"shift": 1}})
    with pytest.raises(ScenarioError, match="data.augment.shift: shifts move pixels"):
        build(sc)
