"""Memory bounds: the bank's estimate before a run, and countsketch decode in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import yaml

from netfl.build import build
from netfl.cli import main
from netfl.learning import memory
from netfl.scenario import ScenarioError

from .conftest import BASE, merge


def _write(tmp_path, changes):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, changes)))
    return path


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "momentum": 0.9}, {"name": "adam"}])
def test_the_estimate_counts_the_banks_parameters_and_optimizer_state_exactly(tiny, optimizer):
    scenario = tiny(optimizer=optimizer, learners={"count": 3})
    built = build(scenario)
    bank = built.simulation.bank
    est = memory.scenario_estimate(scenario, built.source.input_shape, built.source.num_classes,
                                   bank.m, memory.source_bytes(built.source))
    params = sum(p.nbytes for p in bank.params.values()) + sum(
        p.nbytes for p in bank.model.parameters())  # the stacked rows + the bank's template
    assert est.parameters == params == 4 * bank.num_params * 4  # MLP 64-16-10: 1210 floats
    assert bank.num_params == 64 * 16 + 16 + 16 * 10 + 10
    state = [t for name in ("buffers", "exp_avg", "exp_avg_sq") for t in
             getattr(bank.optimizer, name, [])]
    steps = getattr(bank.optimizer, "steps", None)
    opt_bytes = sum(t.nbytes for t in state) + (steps.nbytes if steps is not None else 0)
    assert est.optimizer == opt_bytes
    assert est.gradients == 4 * bank.num_params * bank.m
    dataset = built.source.dataset
    assert est.dataset == sum(t.nbytes for t in (dataset.x_train, dataset.y_train,
                                                 dataset.x_test, dataset.y_test))


def test_a_bank_that_cannot_fit_is_refused_with_the_estimate_and_the_keys(tmp_path, capsys):
    path = _write(tmp_path, {"model": {"hidden": [100000, 100000]}, "learners": {"count": 1000}})
    run = ["run", str(path), "--out", str(tmp_path / "r"), "--quiet"]
    for command in (["validate", str(path)], run):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
        assert "learners.count, model.hidden: the bank of 1000 models needs about" in err
        assert "TiB" in err and "more than the" in err and "on cpu" in err
    assert not (tmp_path / "r" / "summary.json").exists()


def test_the_limit_is_the_devices_and_names_the_largest_part(tiny, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device: (10_000, "test RAM"))
    with pytest.raises(ScenarioError, match=r"data\.batch_size, learners\.count, model\.hidden: "
                       r"the bank of 4 models needs about .* more than the 9\.8 KiB of test RAM"):
        build(tiny(data={"batch_size": 400}))


def test_a_synthetic_dataset_too_large_to_generate_is_refused_before_it_is(tiny):
    scenario = tiny(data={"dataset": "gaussian_mixture", "params": {"n_samples": 10**10}})
    with pytest.raises(ScenarioError, match="data.params.n_samples, data.params.n_features: "
                       "generating the gaussian_mixture dataset needs about"):
        build(scenario)


def test_available_memory_is_read_for_the_cpu():
    free, what = memory.available(torch.device("cpu"))
    assert free > 0 and "RAM" in what


# --------------------------------------------------------------------- countsketch


def _reference_decode(codec, blob: bytes, x: np.ndarray) -> np.ndarray:
    """The decoder as it was: whole [rows, n] hashes, a median over stacked rows."""
    from netfl.compression.codec import resolve_k

    n = x.size
    rng = np.random.default_rng([codec.seed, codec.rows, codec.cols, n])
    buckets = rng.integers(0, codec.cols, size=(codec.rows, n), dtype=np.int64)
    signs = (rng.integers(0, 2, size=(codec.rows, n), dtype=np.int8) * 2 - 1).astype(np.float32)
    sketch = np.zeros((codec.rows, codec.cols), dtype=np.float32)
    for j in range(codec.rows):
        sketch[j] = np.bincount(buckets[j], weights=signs[j] * x, minlength=codec.cols)
    estimate = np.median(np.stack([sketch[j][buckets[j]] * signs[j]
                                   for j in range(codec.rows)]), axis=0).astype(np.float32)
    k = resolve_k(codec.k, n) if codec.k is not None else max(1, codec.cols // 10)
    out = np.zeros(n, dtype=np.float32)
    keep = np.argpartition(np.abs(estimate), n - k)[n - k:]
    out[keep] = estimate[keep]
    return out


@pytest.mark.parametrize("chunked", [False, True])
def test_countsketch_results_are_unchanged_cached_or_streamed(monkeypatch, chunked):
    from netfl.compression import countsketch as cs

    codec = cs.CountSketch(rows=5, cols=64, k=40)
    x = np.random.default_rng(1).integers(-9, 9, 1001).astype(np.float32)  # exact sums
    if chunked:  # the large-layer path, at a size a test can compare
        monkeypatch.setattr(cs, "hashes", lambda *a: cs.Hashes(*a, chunk=64, cached=0))
    blob = codec.encode(x)
    out = codec.decode(blob).numpy()
    assert np.array_equal(out, _reference_decode(codec, blob, x))
    assert np.count_nonzero(out) <= 40


def test_countsketch_decodes_ten_million_entries_in_bounded_memory():
    from netfl.compression import countsketch as cs

    n = 10_000_000
    x = np.zeros(n, dtype=np.float32)
    x[::100_000] = np.arange(1, 101)  # 100 heavy hitters
    codec = cs.CountSketch(rows=3, cols=200_000, k=100)
    blob = codec.encode(x)
    tracemalloc.start()
    try:
        out = codec.decode(blob).numpy()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the output, |estimate| and argpartition's int64 indices: 4 output sizes, plus chunks
    assert peak < 4 * out.nbytes + 16 * 2**20
    assert np.count_nonzero(out) == 100
    assert np.sum(out[::100_000] == x[::100_000]) >= 90  # heavy hitters, most exactly
