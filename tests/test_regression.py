"""Regression (seed 002's RNN task): the signal dataset, the stacked Elman RNN, squared-error
training in the bank, and MSE reported through a whole run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from netfl.build import build
from netfl.cli import main
from netfl.data.datasets import DataError, load_dataset
from netfl.learning.bank import LearnerBank
from netfl.learning.models import ModelError, build_model, last_layer
from netfl.run import run
from netfl.scenario import ScenarioError, from_dict
from netfl.sweep import format_table

from .conftest import BASE, merge

SIGNAL = {"dataset": "signal", "batch_size": 4, "test_fraction": 0.2,
          "params": {"n_samples": 90, "length": 12, "min_cycles": 2, "max_cycles": 5}}
RNN_MODEL = {"kind": "rnn", "hidden": [4, 3]}


def signal_scenario(**changes):
    base = merge(BASE, {"learners": {"count": 3}, "data": SIGNAL, "model": RNN_MODEL,
                        "optimizer": {"name": "adam", "lr": 0.01}, "horizon": {"rounds": 10},
                        "eval": {"every": 5}})
    return from_dict(merge(base, changes))


# --------------------------------------------------------------------------- the data


def test_signal_samples_are_scaled_shifted_standard_sources():
    d = load_dataset("signal", seed=4, n_samples=200, length=64, noise=0.0)
    assert d.task == "regression" and d.num_classes == 2
    assert d.x_train.shape == (160, 64, 1) and d.x_test.shape == (40, 64, 1)
    assert d.y_train.dtype == torch.float32 and d.y_train.shape == (160, 2)
    x = torch.cat([d.x_train, d.x_test])[..., 0].double()
    y = torch.cat([d.y_train, d.y_test]).double()
    shift, scale = y[:, 0], y[:, 1]
    assert shift.abs().max() <= 1.0 and scale.min() >= 0.5 and scale.max() <= 2.0
    # Without noise each sample is exactly scale * (zero-mean, unit-variance source) + shift.
    torch.testing.assert_close(x.mean(1), shift, atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(1, correction=0), scale, atol=1e-5, rtol=0)


def test_signal_is_deterministic_and_seeded():
    a, b = (load_dataset("signal", seed=1, n_samples=50) for _ in range(2))
    c = load_dataset("signal", seed=2, n_samples=50)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("params, needle", [
    ({"min_scale": 2.0, "max_scale": 1.0}, "max_scale"),
    ({"min_cycles": 5, "max_cycles": 2}, "max_cycles"),
    ({"length": 1}, "length"),
    ({"length": 20, "max_cycles": 12}, "Nyquist"),
    ({"period": 3}, "period"),
])
def test_signal_rejects_bad_parameters(params, needle):
    with pytest.raises(DataError, match=needle):
        load_dataset("signal", seed=0, **params)


# --------------------------------------------------------------------------- the model


def test_seed002_network_has_394_parameters():
    model = build_model("rnn", (64, 1), 2, hidden=[4] * 11)
    assert sum(p.numel() for p in model.parameters()) == 394
    assert model.activation == "tanh"  # Keras' SimpleRNN default
    x = torch.randn(5, 64, 1)
    assert model(x).shape == (5, 2) and model(x, features=True).shape == (5, 4)


def test_rnn_matches_a_handwritten_recurrence():
    model = build_model("rnn", (6, 2), 3, hidden=[4], activation="tanh", seed=7)
    x = torch.randn(2, 6, 2)
    w, b = model.inputs[0].weight, model.inputs[0].bias
    u = model.recurrent[0].weight
    h = torch.zeros(2, 4)
    for t in range(6):
        h = torch.tanh(x[:, t] @ w.T + b + h @ u.T)
    torch.testing.assert_close(model(x, features=True), h)
    torch.testing.assert_close(model(x), h @ model.out.weight.T + model.out.bias)


def test_rnn_starts_from_keras_initialization():
    state = torch.random.get_rng_state()
    model = build_model("rnn", (10, 1), 2, hidden=[4, 4, 4], seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    for layer in model.recurrent:  # orthogonal recurrent kernels
        torch.testing.assert_close(layer.weight @ layer.weight.T, torch.eye(4))
    for layer in [*model.inputs, model.out]:  # Glorot-uniform kernels, zero biases
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
        assert not layer.bias.any()
    again = build_model("rnn", (10, 1), 2, hidden=[4, 4, 4], seed=3)
    other = build_model("rnn", (10, 1), 2, hidden=[4, 4, 4], seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert not torch.equal(model.recurrent[0].weight, other.recurrent[0].weight)


def test_rnn_reads_images_row_by_row():
    model = build_model("rnn", (3, 5, 7), 4, hidden=[6], seed=1)
    assert model.steps == 5 and model.inputs[0].weight.shape == (6, 21)
    images = torch.rand(2, 3, 5, 7)
    w, b, u = model.inputs[0].weight, model.inputs[0].bias, model.recurrent[0].weight
    h = torch.zeros(2, 6)
    for row in range(5):  # step t sees row t of every channel
        h = torch.tanh(images[:, :, row, :].reshape(2, 21) @ w.T + b + h @ u.T)
    torch.testing.assert_close(model(images, features=True), h)
    torch.testing.assert_close(model(images.reshape(2, -1)), model(images))


def test_forward_stacked_equals_each_model_alone():
    model = build_model("rnn", (7, 2), 2, hidden=[3, 4], activation="tanh", seed=2)
    bank = LearnerBank(model, 3, seed=5, init_noise=0.3, loss="mse")
    params, x = bank.get(), torch.randn(3, 4, 7, 2)
    stacked = model.forward_stacked(params, x)
    for i in range(3):
        alone = torch.func.functional_call(model, {n: p[i] for n, p in params.items()}, (x[i],))
        torch.testing.assert_close(stacked[i], alone)


@pytest.mark.parametrize("shape, hidden, needle", [
    ((1, 2, 3, 4), [4], "input_shape"), ((8,), [], "hidden"),
])
def test_rnn_rejects_bad_specs(shape, hidden, needle):
    with pytest.raises(ModelError, match=needle):
        build_model("rnn", shape, 2, hidden=hidden)


# --------------------------------------------------------------------------- the bank


@pytest.mark.parametrize("loss, outputs, reduction, train, optimizer", [
    ("mse", 2, "mean", "all", "adam"),
    ("mse", 2, "sum", "last", "sgd"),
    ("cross_entropy", 3, "mean", "all", "sgd"),
    ("cross_entropy", 3, "sum", "last", "adam"),
])
def test_stacked_autograd_path_equals_vmap_path(loss, outputs, reduction, train, optimizer):
    model = build_model("rnn", (9, 2), outputs, hidden=[4, 3], activation="tanh")
    extra = {"momentum": 0.9, "weight_decay": 0.01} if optimizer == "sgd" else {}
    options = dict(optimizer=optimizer, lr=0.01, loss=loss, seed=3, init_noise=0.1,
                   reduction=reduction, trainable=last_layer(model) if train == "last" else None,
                   **extra)
    fast, slow = LearnerBank(model, 3, **options), LearnerBank(model, 3, **options)
    slow._stacked_forward = None  # force the generic vmap(grad) path
    start = fast.flat()
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        x = torch.randn(3, 5, 9, 2, generator=gen)
        if loss == "mse":
            y = torch.randn(3, 5, outputs, generator=gen)
        else:
            y = torch.randint(0, outputs, (3, 5), generator=gen)
        idx = None if step % 2 == 0 else [2, 0]  # a subset of learners, out of order
        if idx is not None:
            x, y = x[:2], y[:2]
        a, b = fast.step(idx, x, y), slow.step(idx, x, y)
        torch.testing.assert_close(a.loss_sum, b.loss_sum)
        assert torch.equal(a.correct, b.correct)
    torch.testing.assert_close(fast.flat(), slow.flat())
    if train == "last":  # frozen layers never move
        frozen = fast.flat()[:, : fast.num_params - sum(fast.params[n][0].numel()
                                                         for n in fast.trainable)]
        torch.testing.assert_close(frozen, start[:, : frozen.shape[1]], rtol=0, atol=0)


def test_stacked_path_gives_unused_parameters_a_zero_gradient():
    model = build_model("rnn", (1, 3), 2, hidden=[4])  # one step: U never acts
    bank = LearnerBank(model, 2, loss="mse", lr=0.1)
    before = bank.get()
    bank.step(None, torch.randn(2, 5, 1, 3), torch.randn(2, 5, 2))
    assert torch.equal(bank.params["recurrent.0.weight"], before["recurrent.0.weight"])
    assert not torch.equal(bank.params["out.weight"], before["out.weight"])


def test_regression_targets_need_their_trailing_dimension():
    bank = LearnerBank(build_model("linear", (3,), 1), 2, loss="mse")
    with pytest.raises(ValueError, match=r"\[k, B, T\]"):
        bank.step(None, torch.randn(2, 4, 3), torch.randn(2, 4))


def test_mse_step_reports_the_squared_error_before_the_update():
    model = build_model("mlp", (4,), 2, hidden=[3])
    bank = LearnerBank(model, 2, loss="mse", lr=0.05, seed=1)
    x, y = torch.randn(2, 6, 4), torch.randn(2, 6, 2)
    before = bank.get()
    expected = torch.stack([
        (torch.func.functional_call(model, {n: p[i] for n, p in before.items()}, (x[i],))
         - y[i]).square().mean(-1).sum()
        for i in range(2)])
    result = bank.step(None, x, y)
    torch.testing.assert_close(result.loss_sum, expected)
    assert result.correct.tolist() == [0, 0]
    after = bank.step(None, x, y).loss_sum  # the same batch again: gradient descent helps
    assert (after < expected).all()


def _squared_error(model, params, x, y):
    return (torch.func.functional_call(model, params, (x,)) - y).square().mean(-1).sum()


def test_mse_evaluate_shared_and_per_model_targets():
    model = build_model("rnn", (6, 1), 2, hidden=[3])
    bank = LearnerBank(model, 2, loss="mse", seed=2, init_noise=0.5)
    params = bank.get()
    one = [{n: p[i] for n, p in params.items()} for i in range(2)]
    x, y = torch.randn(7, 6, 1), torch.randn(7, 2)
    loss, correct = bank.evaluate(params, x, y, batch=4)  # chunked over samples
    manual = torch.stack([_squared_error(model, one[i], x, y) for i in range(2)])
    torch.testing.assert_close(loss, manual)
    assert correct.tolist() == [0, 0]
    xs, ys = torch.randn(2, 7, 6, 1), torch.randn(2, 7, 2)  # each model its own data
    each, _ = bank.evaluate(params, xs, ys, batch=6)
    torch.testing.assert_close(
        each, torch.stack([_squared_error(model, one[i], xs[i], ys[i]) for i in range(2)]))
    single, _ = bank.evaluate(bank.mean(), x, y)
    torch.testing.assert_close(single, _squared_error(model, bank.mean(), x, y))


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="loss"):
        LearnerBank(build_model("linear", (3,), 2), 2, loss="huber")


# --------------------------------------------------------------------------- whole runs


def test_regression_run_reports_mse_not_accuracy(tmp_path):
    summary = run(signal_scenario(), str(tmp_path / "r"), progress=False)
    assert summary["final_accuracy"] is None and summary["final_local_accuracy"] is None
    assert 0 < summary["final_mse"] < 5 and 0 < summary["final_local_mse"] < 5
    with (tmp_path / "r" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert "acc_mean_model" not in rows[0] and "mse_mean_model" in rows[0]
    assert rows[4]["mse_mean_model"] != "" and rows[3]["mse_mean_model"] == ""
    assert float(rows[-1]["mse_mean_model"]) == pytest.approx(summary["final_mse"])
    # Cumulative loss is the per-sample squared error summed over rounds and learners.
    assert sum(float(r["loss"]) for r in rows) == pytest.approx(summary["cumulative_loss"])
    assert int(rows[0]["samples"]) == 3 * 4


def test_regression_training_lowers_test_mse():
    s = signal_scenario(data={"params": {"n_samples": 300, "length": 8, "max_cycles": 4},
                                  "batch_size": 10},
                        model={"hidden": [8]}, protocol={"name": "periodic", "b": 2},
                        horizon={"rounds": 60})
    sim = build(s).simulation
    start = sim.evaluate()["mse_mean_model"]
    sim.run()
    assert sim.evaluate()["mse_mean_model"] < 0.6 * start


def test_regression_scenario_defaults_rnn_to_tanh():
    sim = build(signal_scenario()).simulation
    assert sim.bank.regression and sim.bank.model.activation == "tanh"
    assert build(signal_scenario(model={"activation": "relu"})).simulation.bank.model \
        .activation == "relu"


def test_class_partitions_are_refused_for_regression():
    with pytest.raises(ScenarioError, match="partition"):
        signal_scenario(data={"partition": "classes"})


def test_representation_probe_needs_class_labels():
    with pytest.raises(ScenarioError, match="probes.representation"):
        signal_scenario(probes={"representation": {"every": 5, "samples": 20}})


def test_augmenting_a_regression_dataset_is_refused():
    with pytest.raises(ScenarioError, match="augment"):
        signal_scenario(data={"augment": {"noise": 0.1}})


def test_resolved_scenario_names_the_activation_that_ran():
    assert signal_scenario().resolved()["model"]["activation"] == "tanh"
    assert from_dict(BASE).resolved()["model"]["activation"] == "relu"


def test_parameter_probe_runs_on_the_regression_task(tmp_path):
    probes = {"parameters": {"replicas": 3, "every": 5, "estimators": ["gaussian"],
                             "dims": 1}}
    run(signal_scenario(probes=probes), str(tmp_path / "p"), progress=False)
    with (tmp_path / "p" / "probes_parameters.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["round"]), int(r["learner_a"]), int(r["learner_b"])) for r in rows] == [
        (t, a, b) for t in (5, 10) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert all(float(r["dist_euclidean"]) > 0 for r in rows)


def test_cli_runs_a_regression_scenario(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(signal_scenario().model_dump(mode="json")))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["final_mse"] > 0


def test_sweep_table_shows_mse_for_regression_runs():
    rows = [{"protocol": "periodic", "setting": "b=2", "cumulative_loss": 1.0,
             "bytes_total": 10, "final_accuracy": None, "final_mse": 0.125}]
    table = format_table(rows)
    assert "final mse" in table and "0.125" in table


def test_serial_ships_regression_targets_as_float32(tmp_path):
    s = signal_scenario(protocol={"name": "serial"}, horizon={"rounds": 2})
    summary = run(s, str(tmp_path / "serial"), progress=False)
    # Per round each of 3 learners sends 4 samples of 12 floats and 2 float targets:
    # 8-byte count header + 4 * (12 + 2) * 4 bytes, plus the 17-byte message header.
    assert summary["bytes_up"] == 2 * 3 * (17 + 8 + 4 * (12 + 2) * 4)
    assert summary["final_mse"] > 0
    with (tmp_path / "serial" / "metrics.csv").open() as handle:
        assert [int(r["samples"]) for r in csv.DictReader(handle)] == [3 * 4, 3 * 4]
