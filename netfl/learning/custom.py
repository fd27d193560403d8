"""A researcher's own ``torch.nn.Module`` as the learners' model: loaded, checked, prepared.

The bank trains every learner's copy of one template module at once with
``vmap(grad(functional_call(template, params, x)))``. That works for any module whose
forward is a pure function of its parameters and its input; ``check_model`` runs the
module on one batch of the data's shape and refuses, with one message naming the part,
what the bank cannot stack or batch: no parameters, parameters that are not float32 or
float64 (or of mixed dtypes), layers that change state in training (batch norm tracking
running statistics, any buffer the forward writes), random layers (dropout), a forward
that fails under ``vmap``, and outputs that are not ``[batch, num_classes]``. Constant
buffers are fine (shared by all learners); tied parameters are one parameter.

A module is used in the mode it is given: in ``eval()`` mode a batch norm applies its
frozen statistics and dropout is off, which is how a pretrained backbone is transferred.
Its parameters' values are every learner's start (``LearnerBank(init='given')``); a model
built from ``model.factory`` is built under a seeded CPU generator, so it is reproducible
from the scenario seed.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from netfl.learning.models import ModelError, last_layer

__all__ = [
    "DTYPES",
    "accepts_features",
    "check_model",
    "custom_model",
    "from_factory",
    "load_factory",
    "trainable_names",
]

DTYPES = (torch.float32, torch.float64)


def _short(exc: BaseException) -> str:
    """An exception as one line: type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (``function`` may be dotted,
    e.g. ``Class.build``); a ``ModelError`` naming ``model.factory`` otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f'model.factory: expected "package.module:function", got {spec!r}')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise ModelError(
                f"model.factory: no module named {exc.name!r} (install it, or put its folder "
                "on PYTHONPATH)") from None
        raise ModelError(f"model.factory: importing {module_name!r} failed: {_short(exc)}"
                         ) from exc
    except Exception as exc:  # the user's module failed while importing
        raise ModelError(f"model.factory: importing {module_name!r} failed: {_short(exc)}"
                         ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model.factory: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model.factory: {spec} is a {type(obj).__name__}, not a function "
                         "or class")
    return obj


def from_factory(spec: str, params: Mapping[str, Any], input_shape: Sequence[int],
                 num_classes: int, seed: int) -> nn.Module:
    """``factory(input_shape=(...), num_classes=N, **params)`` for the factory ``spec``.

    It runs with PyTorch's CPU generator seeded by ``seed`` (and restored afterwards), so
    the default initialisation of the layers it creates is reproducible from the scenario
    seed without touching the caller's random state."""
    factory = load_factory(spec)
    clash = sorted({"input_shape", "num_classes"} & set(params))
    if clash:
        raise ModelError(f"model.params: {', '.join(clash)} comes from the data; remove it")
    kwargs = {"input_shape": tuple(input_shape), "num_classes": int(num_classes), **params}
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ModelError(f"model.factory: {spec} cannot be called as factory(input_shape=..., "
                         f"num_classes=..., **model.params): {exc}") from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed) % 2**64)
        try:
            model = factory(**kwargs)
        except Exception as exc:
            raise ModelError(f"model.factory: {spec} raised {_short(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory: {spec} returned a {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model


def accepts_features(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``features`` (representation probes need it)."""
    try:
        return "features" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _where(name: str) -> str:
    return f"'{name}'" if name else "the top level"


def _check_parameters(model: nn.Module) -> torch.dtype:
    named = list(model.named_parameters())
    if not named:
        raise ModelError(f"model: {type(model).__name__} has no parameters to train")
    for name, p in named:
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ModelError(f"model: parameter {name!r} is uninitialized (a lazy module); "
                             "run one forward pass on a batch before passing the model")
        if p.is_meta:
            raise ModelError(f"model: parameter {name!r} is on the meta device and has no "
                             "values; call to_empty() and initialise the model first")
        if p.dtype not in DTYPES:
            raise ModelError(f"model: parameter {name!r} is {p.dtype}; the bank trains "
                             "float32 or float64 parameters only (call model.float())")
    dtypes = {p.dtype for _, p in named}
    if len(dtypes) > 1:
        mixed = ", ".join(f"{n} {p.dtype}" for n, p in named if p.dtype != named[0][1].dtype)
        raise ModelError(f"model: parameters mix dtypes ({named[0][0]} {named[0][1].dtype}, "
                         f"{mixed}); the bank stacks one dtype (call model.float())")
    return named[0][1].dtype


def _check_stateless_layers(model: nn.Module) -> None:
    for name, module in model.named_modules():
        kind = type(module).__name__
        if (isinstance(module, nn.modules.batchnorm._NormBase) and module.training
                and module.track_running_stats):
            raise ModelError(
                f"model: {kind} at {_where(name)} tracks running statistics, buffers that "
                "change in training; the bank keeps one set of buffers for all learners and "
                "the protocols exchange parameters only. Use GroupNorm or LayerNorm, "
                f"{kind}(..., track_running_stats=False) (batch statistics only), or put it "
                "in eval() mode to apply the statistics it has")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p:
            raise ModelError(
                f"model: {kind} at {_where(name)} draws random numbers in training, which "
                "the bank's batched (vmap) training does not support and its seeds would not "
                "cover; remove it, set p=0, or put it in eval() mode")


def check_model(model: object, input_shape: Sequence[int], num_classes: int,
                sample: Tensor | None = None) -> None:
    """Refuse, with one ``ModelError`` naming what is unsupported, a model the bank cannot
    train: see the module docstring. ``sample`` is a batch of real inputs ``[B, *in]``
    (default: zeros of ``input_shape``); the model itself is not modified."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    dtype = _check_parameters(model)
    _check_stateless_layers(model)
    template = copy.deepcopy(model).to("cpu")
    n = 2 if num_classes != 2 else 3  # a batch size that cannot pass for the class count
    x = torch.zeros(n, *input_shape) if sample is None else sample[:n].detach().cpu()
    if x.is_floating_point():
        x = x.to(dtype)
    before = {name: b.clone() for name, b in template.named_buffers()}
    try:
        with torch.no_grad():
            out = template(x)
    except Exception as exc:
        raise ModelError(f"model: forward fails on a batch of shape {tuple(x.shape)}: "
                         f"{_short(exc)}") from exc
    after = dict(template.named_buffers())
    changed = sorted(name for name in before.keys() | after.keys()
                     if name not in before or name not in after
                     or not torch.equal(before[name], after[name]))
    if changed:
        raise ModelError(f"model: forward changes buffer(s) {', '.join(changed)}; the bank "
                         "keeps one copy of the buffers for all learners, so the forward must "
                         "not write them (only parameters are per learner)")
    want = (x.shape[0], num_classes)
    if not isinstance(out, Tensor) or not out.is_floating_point():
        got = type(out).__name__ if not isinstance(out, Tensor) else f"a {out.dtype} tensor"
        raise ModelError(f"model: forward must return a float tensor {want} on inputs "
                         f"{tuple(x.shape)}, got {got}")
    if tuple(out.shape) != want:
        raise ModelError(f"model: output shape {tuple(out.shape)} on a batch of input shape "
                         f"{tuple(x.shape)}; expected {want} = [batch, num_classes] "
                         f"({num_classes} classes or targets of the data)")
    _check_batched(template, x)


def _check_batched(template: nn.Module, x: Tensor) -> None:
    """One gradient of two stacked copies through ``vmap``, as the bank takes it."""
    params = {name: p.detach().unsqueeze(0).repeat(2, *([1] * p.dim()))
              for name, p in template.named_parameters()}
    xs = x.unsqueeze(0).expand(2, *x.shape)

    def objective(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(template, p, (xb,)).square().sum()

    try:
        vmap(grad(objective))(params, xs)
    except Exception as exc:
        raise ModelError(
            "model: cannot be trained batched: torch.func.vmap(grad(...)) over learners "
            f"fails ({_short(exc)}); the forward must be a pure function of the parameters "
            "and the input (no .item() or data-dependent Python branches, no writes to "
            "buffers, no random draws)") from exc


def trainable_names(model: nn.Module, train: str = "all") -> list[str]:
    """The parameters the learners train: with ``train='all'`` every parameter that
    requires grad (a frozen backbone stays frozen), with 'last' those of ``last_layer``
    (the last submodule in registration order holding parameters of its own)."""
    wanted = {name for name, p in model.named_parameters() if p.requires_grad}
    names = last_layer(model) if train == "last" else [n for n, _ in model.named_parameters()]
    chosen = [name for name in names if name in wanted]
    if not chosen:
        which = f"last layer ({', '.join(names)})" if train == "last" else "model"
        raise ModelError(f"model: no trainable parameters: every parameter of the {which} "
                         "has requires_grad=False")
    return chosen


def custom_model(model: nn.Module | None, factory: str | None, params: Mapping[str, Any],
                 train: str, source: Any, seed: int, *, features: bool = False
                 ) -> tuple[nn.Module, list[str]]:
    """The checked model (``model``, else built by ``factory``) and its trainable names.

    ``source`` gives the data's ``input_shape`` and ``num_classes`` and, if it holds a
    fixed dataset, the sample batch the model is run on; ``features`` says that a
    representation probe will ask for ``forward(x, features=True)``."""
    shape, classes = tuple(source.input_shape), int(source.num_classes)
    if model is None:
        if factory is None:
            raise ModelError("model.factory: kind 'python' needs a factory")
        model = from_factory(factory, params, shape, classes, seed)
    check_model(model, shape, classes, sample=_sample(source))
    if features and not accepts_features(model):
        raise ModelError(f"probes.representation: {type(model).__name__}.forward takes no "
                         "'features' argument; the probe needs forward(x, features=True) to "
                         "return the last hidden layer [N, H]")
    return model, trainable_names(model, train)


def _sample(source: Any) -> Tensor | None:
    """A few training inputs when the source holds a fixed dataset (drifting streams draw
    theirs per round: zeros of the input shape stand in)."""
    x = getattr(getattr(source, "dataset", None), "x_train", None)
    return x[:3] if isinstance(x, Tensor) and len(x) else None
