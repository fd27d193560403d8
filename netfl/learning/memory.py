"""The bank's memory, estimated from shapes before anything is allocated.

A scenario that cannot fit its device should fail at validate time with the figure and
the keys that drive it, not minutes later with an allocator's traceback. The estimate
counts what a run keeps at once: the dataset on the device, every learner's parameters,
gradients and optimizer state, the activations of one batched training step (saved for
the backward pass, and their gradients), one evaluation chunk, and the sample stream's
first schedule block. Parameter counts come from the model built on the meta device (no
storage), activations from one meta forward pass with hooks on the leaf modules.

The bank's layout makes the parameter and optimizer parts exact: one ``[m, P]`` parameter
buffer (the per-parameter tensors are views of it, no copies), one ``[m, T]`` tensor per
kind of optimizer state (T: the trainable values), and one gradient set of the trainable
parameters only, alive during a step (the previous step's is freed before the next one is
computed; frozen parameters get none).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from netfl.learning import models

if TYPE_CHECKING:
    from netfl.scenario import Scenario

FLOAT = 4  # bytes per float32
INDEX = 8  # bytes per int64 label or index
EVAL_ROWS = 4096  # LearnerBank.evaluate's default model-sample rows per forward pass
STREAM_ROUNDS = 16  # SampleStream's smallest first schedule block (rounds)
# Peak RSS grows by about 17 kB per learner beyond its tensors (measured at 10k and 100k
# learners on 2026-12-02: two link objects, a sample stream's generator, routes, graph
# entries, messages in flight during a broadcast); counted where the bank shares host RAM.
HOST_BYTES_PER_LEARNER = 16 * 1024


@dataclass(frozen=True)
class Estimate:
    """Bytes by component; ``total`` is what the device must hold at once."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    dataset: int
    stream: int
    simulator: int = 0  # host bookkeeping per learner (links, routes, streams), CPU only

    @property
    def total(self) -> int:
        return (self.parameters + self.gradients + self.optimizer + self.activations
                + self.dataset + self.stream + self.simulator)

    def parts(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations,
                "dataset": self.dataset, "stream": self.stream, "simulator": self.simulator}


def human(count: float) -> str:
    """Bytes in binary units: '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def meta_model(kind: str, input_shape: tuple[int, ...], num_classes: int,
               hidden: list[int], activation: str | None) -> nn.Module | None:
    """The scenario's model on the meta device (shapes, no storage); None where
    ``build_model`` would refuse the arguments (it then says why, itself)."""
    classes = {"linear": models.LinearModel, "mlp": models.MLP, "cnn": models.CNN,
               "rnn": models.RNN}
    if kind not in classes:
        return None
    act = activation or ("tanh" if kind == "rnn" else "relu")
    try:
        with torch.device("meta"):
            if kind == "linear":
                return None if hidden else models.LinearModel(tuple(input_shape), num_classes)
            return classes[kind](tuple(input_shape), num_classes, list(hidden), act)
    except Exception:  # noqa: BLE001  (build_model raises the user's error with its key)
        return None


def activation_numel(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floats one sample's forward pass produces in the model's leaf modules."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, tuple) else (output,)
        total += sum(o[0].numel() for o in outputs if isinstance(o, torch.Tensor) and o.dim())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.empty((1, *input_shape), device="meta"))
    except Exception:  # noqa: BLE001  (a model the hooks cannot follow: count parameters only)
        total = 0
    finally:
        for handle in handles:
            handle.remove()
    return total


def estimate(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    bank_size: int,
    learners: int,
    batch_size: int,
    optimizer: str,
    momentum: float,
    trainable: list[str] | None = None,
    dataset_bytes: int = 0,
) -> Estimate:
    """Bytes a run of ``bank_size`` models of ``model`` needs on its device."""
    named = dict(model.named_parameters())
    params = sum(p.numel() for p in named.values())
    train = sum(named[n].numel() for n in trainable) if trainable else params
    state = {"adam": 2, "sgd": 1 if momentum else 0}.get(optimizer, 2)
    per_sample = activation_numel(model, input_shape) + _numel(input_shape)
    train_rows = bank_size * batch_size
    eval_rows = max(EVAL_ROWS, bank_size)
    return Estimate(
        parameters=FLOAT * params * (bank_size + 1),  # + the bank's template model
        gradients=FLOAT * train * bank_size,
        optimizer=FLOAT * train * bank_size * state + (INDEX * bank_size if state == 2 else 0),
        # saved for backward + their gradients during one batched step (or one eval chunk)
        activations=FLOAT * per_sample * max(2 * train_rows, eval_rows),
        dataset=dataset_bytes,
        stream=4 * STREAM_ROUNDS * learners * batch_size,
    )


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def available(device: torch.device) -> tuple[int | None, str]:
    """(free bytes, what was measured) on ``device``; None where it cannot be read."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {torch.cuda.get_device_name(device)}"
    try:
        import psutil  # optional: the most faithful figure where installed

        return int(psutil.virtual_memory().available), "available RAM"
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available RAM"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


# ------------------------------------------------------------------- scenario level

# Synthetic datasets whose size the scenario sets: (loader, the params that multiply into
# float64 values generated at once, temporaries alive at the peak).
_SYNTHETIC = {
    "gaussian_mixture": ("_load_gaussian_mixture", ("n_samples", "n_features"), 3),
    "signal": ("_load_signal", ("n_samples", "length", "components"), 3),
}


def synthetic_bytes(dataset: str, params: dict[str, Any]) -> int | None:
    """Peak bytes a synthetic dataset takes while it is generated, from its params alone
    (None: not a synthetic set, or params the loader refuses itself)."""
    if dataset not in _SYNTHETIC:
        return None
    from netfl.data import datasets

    loader, keys, temporaries = _SYNTHETIC[dataset]
    defaults = inspect.signature(getattr(datasets, loader)).parameters
    size = 8 * temporaries
    for key in keys:
        value = params.get(key, defaults[key].default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return None
        size *= value
    return size


def _limit(device: torch.device) -> tuple[int | None, str]:
    try:
        return available(device)
    except (RuntimeError, AssertionError):  # CUDA asked for and absent: resolve_device says so
        return None, "unknown"


def refuse(what: str, need: int, device: torch.device, keys: str, detail: str = "") -> None:
    """A ScenarioError when ``need`` bytes exceed what ``device`` has free."""
    from netfl.scenario import ScenarioError

    limit, measured = _limit(device)
    if limit is None or need <= limit:
        return
    raise ScenarioError(
        f"{keys}: {what} needs about {human(need)}{detail}, more than the {human(limit)} of "
        f"{measured} on {device.type}")


def check_data(scenario: Scenario, device: torch.device) -> None:
    """Refuse a synthetic dataset too large to generate, before it is generated."""
    data = scenario.data
    need = synthetic_bytes(data.dataset, data.params)
    if need is not None:
        keys = ", ".join(f"data.params.{k}" for k in _SYNTHETIC[data.dataset][1][:2])
        refuse(f"generating the {data.dataset} dataset", need, torch.device("cpu"), keys)


def scenario_estimate(scenario: Scenario, input_shape: tuple[int, ...], num_classes: int,
                      bank_size: int, dataset_bytes: int) -> Estimate | None:
    """The estimate for this scenario's model and data (None: a model build_model refuses)."""
    spec, opt = scenario.model, scenario.optimizer
    model = meta_model(spec.kind, tuple(input_shape), num_classes, spec.hidden, spec.activation)
    if model is None:
        return None
    trainable = models.last_layer(model) if spec.train == "last" else None
    return estimate(model, tuple(input_shape), bank_size=bank_size,
                    learners=scenario.learners.count, batch_size=scenario.data.batch_size,
                    optimizer=opt.name, momentum=opt.momentum, trainable=trainable,
                    dataset_bytes=dataset_bytes)


def check_bank(scenario: Scenario, input_shape: tuple[int, ...], num_classes: int,
               bank_size: int, dataset_bytes: int, device: torch.device) -> Estimate | None:
    """Refuse a scenario whose bank cannot fit ``device``; the message gives the estimate,
    the limit, the largest parts and the keys that drive them."""
    est = scenario_estimate(scenario, input_shape, num_classes, bank_size, dataset_bytes)
    if est is None:
        return None
    if device.type == "cpu":
        est = dataclasses.replace(est, simulator=HOST_BYTES_PER_LEARNER
                                  * scenario.learners.count)
    parts = sorted(est.parts().items(), key=lambda kv: -kv[1])
    detail = " (" + ", ".join(f"{name} {human(b)}" for name, b in parts[:3] if b) + ")"
    refuse(f"the bank of {bank_size} models", est.total, device, DRIVERS[parts[0][0]], detail)
    return est


# The keys that drive each part of the estimate, named in the error for its largest part.
DRIVERS = {
    "parameters": "learners.count, model.hidden",
    "gradients": "learners.count, model.hidden",
    "optimizer": "learners.count, model.hidden, optimizer.name",
    "activations": "data.batch_size, learners.count, model.hidden",
    "dataset": "data.dataset, data.params",
    "stream": "data.batch_size, learners.count",
    "simulator": "learners.count",
}


def source_bytes(source: object) -> int:
    """Bytes of the tensors a batch source's dataset holds (0 for a generated stream)."""
    dataset = getattr(source, "dataset", None)
    if dataset is None:
        return 0
    return sum(t.nbytes for t in vars(dataset).values() if isinstance(t, torch.Tensor))
