"""Model zoo for the learners: linear, MLP, LeNet-5 style CNN and a stacked Elman RNN.

Every model's ``forward(x, features=False)`` returns outputs ``[N, num_classes]`` (logits
of a classifier, or the regression targets' predictions), or
with ``features=True`` the last hidden layer's activations ``[N, H]`` (for the linear
model: the flattened input). Probes call it through
``torch.func.functional_call(model, params, (x,), {"features": True})`` so that the
representation of any learner's parameters can be read without touching the bank.

Models are built on the meta device and initialised with a local, seeded
``torch.Generator`` (PyTorch's default initialisation, reproduced), so building a
model never reads or advances the global random generator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "KINDS",
    "RNN",
    "LinearModel",
    "ModelError",
    "build_model",
    "init_parameters",
    "last_layer",
]


class ModelError(ValueError):
    """A model specification that cannot be built; the message names the parameter."""


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
    "identity": lambda t: t,
}


def _flatten(x: torch.Tensor) -> torch.Tensor:
    # reshape, not view: inputs gathered from a stream need not be contiguous.
    return x.reshape(x.shape[0], -1)


class LinearModel(nn.Module):
    """Multinomial logistic regression on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.feature_dim = math.prod(self.input_shape)
        self.out = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        h = _flatten(x)
        return h if features else self.out(h)


class _HiddenNet(nn.Module):
    """What the models with hidden layers share: shape, outputs, activation and the head.

    ``_add_head`` is called after the hidden layers, so the head's parameters are
    registered last (``last_layer`` and the parameter order depend on it)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, activation: str) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.activation = activation
        self._act = ACTIVATIONS[activation]

    def _add_head(self, width: int) -> None:
        self.feature_dim = width
        self.out = nn.Linear(width, self.num_classes)


class MLP(_HiddenNet):
    """Fully connected network; the representation is the last hidden layer."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: Sequence[int],
        activation: str = "relu",
    ) -> None:
        super().__init__(input_shape, num_classes, activation)
        widths = [math.prod(self.input_shape), *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self._add_head(widths[-1])

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        h = _flatten(x)
        for layer in self.hidden:
            h = self._act(layer(h))
        return h if features else self.out(h)


class CNN(_HiddenNet):
    """LeNet-5 style: conv(6,5x5)-pool-conv(16,5x5)-pool-fc(120)-fc(84)-out.

    Both convolutions are padded by 2 and pooling uses ``ceil_mode``, so the spatial
    size never collapses (works for 1x8x8 digits as well as 1x28x28 and 3x32x32).
    The flattened size is found by a dummy forward pass at construction.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: Sequence[int] = (120, 84),
        activation: str = "relu",
        channels: tuple[int, int] = (6, 16),
    ) -> None:
        if len(input_shape) == 2:
            input_shape = (1, *input_shape)
        super().__init__(input_shape, num_classes, activation)
        c_in = self.input_shape[0]
        self.conv1 = nn.Conv2d(c_in, channels[0], kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], kernel_size=5, padding=2)
        # Dummy forward on the weights' device (meta when built by build_model: free).
        with torch.no_grad():
            dummy = torch.zeros(1, *self.input_shape, device=self.conv1.weight.device)
            flat = self._conv(dummy).shape[1]
        widths = [flat, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self._add_head(widths[-1])

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        x = F.max_pool2d(self._act(self.conv1(x)), 2, ceil_mode=True)
        x = F.max_pool2d(self._act(self.conv2(x)), 2, ceil_mode=True)
        return _flatten(x)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        h = self._conv(x)
        for layer in self.hidden:
            h = self._act(layer(h))
        return h if features else self.out(h)


class RNN(_HiddenNet):
    """Stacked Elman (simple) RNN reading a sequence; a linear head on the last hidden state.

    Input ``[N, T, F]`` is T steps of F features: a 1-D signal ``(T,)`` is read as ``(T, 1)``
    and an image ``(C, H, W)`` row by row as ``(H, C*W)``. Each layer is
    ``h_t = act(W x_t + b + U h_{t-1})`` with one bias, the Keras ``SimpleRNN`` layout, so
    eleven 4-unit layers on a scalar signal with 2 outputs give seed 002's 394 parameters.
    The recurrence is written out step by step (no cuDNN kernel); the input projection of
    every step is one matmul per layer. ``forward_stacked`` runs k learners' parameters at
    once, which the bank uses for training. Seed 002 wraps each layer in dropout; the bank
    keeps models stateless, so there is none here (replicas differ by sampling noise only).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: Sequence[int] = (4,),
        activation: str = "tanh",
    ) -> None:
        super().__init__(input_shape, num_classes, activation)
        shape = self.input_shape
        self.steps, features = (shape[0], 1) if len(shape) == 1 else (
            shape[-2], shape[-1] * (shape[0] if len(shape) == 3 else 1))
        widths = [features, *hidden]
        self.inputs = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.recurrent = nn.ModuleList(nn.Linear(b, b, bias=False) for b in widths[1:])
        self._add_head(widths[-1])

    @torch.no_grad()
    def initialize(self, generator: torch.Generator) -> None:
        """Keras' SimpleRNN initialisation: Glorot-uniform input kernels, orthogonal
        recurrent kernels, zero biases (the framework of seed 002's network).

        PyTorch's default (uniform +-1/sqrt(fan_in)) shrinks the signal layer after layer;
        measured on the 11-layer, 4-unit stack, it never left the mean prediction in 1500
        Adam steps, where this initialisation learned the shift within 400."""
        for layer in self.inputs:
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
        for layer in self.recurrent:
            nn.init.orthogonal_(layer.weight, generator=generator)
        nn.init.xavier_uniform_(self.out.weight, generator=generator)
        nn.init.zeros_(self.out.bias)

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.input_shape) == 3:  # (C, H, W) -> rows of C*W features
            x = x.reshape(x.shape[0], *self.input_shape).transpose(1, 2)
        return x.reshape(x.shape[0], self.steps, -1)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        # One model is a stack of one. named_parameters() sees the tensors that
        # torch.func.functional_call substitutes, so vmap over this works as for any model.
        params = {name: p.unsqueeze(0) for name, p in self.named_parameters()}
        return self.forward_stacked(params, x.unsqueeze(0), features)[0]

    def forward_stacked(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, features: bool = False
    ) -> torch.Tensor:
        """Outputs ``[k, N, outputs]`` (or the last hidden states ``[k, N, H]``) of k models
        at once (``params`` stacked ``[k, ...]``, ``x [k, N, *input_shape]``), written with
        batched matmuls.

        The bank differentiates this with plain autograd instead of ``vmap(grad(...))``: a
        recurrence is hundreds of tiny ops, and vmap's per-op cost made a step 3 to 6 times
        slower (tools/bench/bench_rnn.py, the 394-parameter seed 002 network)."""
        k, n = x.shape[:2]
        seq = self._sequence(x.reshape(k * n, *x.shape[2:])).reshape(k, n * self.steps, -1)
        h = seq
        for i in range(len(self.inputs)):
            weight, bias = params[f"inputs.{i}.weight"], params[f"inputs.{i}.bias"]
            recur_t = params[f"recurrent.{i}.weight"].transpose(1, 2)
            drive = torch.baddbmm(bias.unsqueeze(1), seq, weight.transpose(1, 2))
            steps = drive.reshape(k, n, self.steps, -1).unbind(2)
            h = self._act(steps[0])
            outs = [h]
            for t in range(1, self.steps):
                h = self._act(torch.baddbmm(steps[t], h, recur_t))
                outs.append(h)
            seq = torch.stack(outs, dim=2).reshape(k, n * self.steps, -1)
        if features:
            return h
        head = params["out.weight"].transpose(1, 2)
        return torch.baddbmm(params["out.bias"].unsqueeze(1), h, head)


KINDS = ("linear", "mlp", "cnn", "rnn")


def _check_widths(hidden: object, name: str = "hidden") -> list[int]:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ModelError(f"{name}: expected a list of positive integers, got {hidden!r}")
    widths = list(hidden)
    for i, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
            raise ModelError(f"{name}[{i}]: must be a positive integer, got {w!r}")
    return widths


def build_model(
    kind: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: list[int] | None = None,
    activation: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """Build a model of ``kind`` ('linear', 'mlp', 'cnn' or 'rnn').

    ``input_shape`` is one sample's shape without the batch dimension (e.g. ``(64,)``,
    ``(1, 8, 8)``); inputs are flattened or reshaped to it, so flat vectors are fine
    for the CNN too. ``hidden`` gives the hidden widths: MLP layers (default
    ``[64, 64]``), the CNN's fully connected layers (default ``[120, 84]``) or the RNN's
    stacked recurrent layers (default ``[4]``); it must be empty or None for 'linear'.
    ``num_classes`` is the number of outputs: classes, or regression targets (>= 1).
    ``activation`` defaults to tanh for 'rnn' (Keras' SimpleRNN) and relu otherwise.
    Parameters are initialised like PyTorch's defaults from a local generator seeded by
    ``seed`` (the global RNG is untouched).
    Raises ``ModelError`` naming the offending parameter.
    """
    if kind not in KINDS:
        raise ModelError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    shape = _check_widths(input_shape, "input_shape")
    if not shape:
        raise ModelError("input_shape: must have at least one dimension, got ()")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes: must be a positive integer, got {num_classes!r}")
    if activation is None:
        activation = "tanh" if kind == "rnn" else "relu"
    if activation not in ACTIVATIONS:
        raise ModelError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    widths = None if hidden is None else _check_widths(hidden)
    with torch.device("meta"):
        if kind == "linear":
            if widths:
                raise ModelError(f"hidden: kind 'linear' has no hidden layers, got {hidden!r}")
            model: nn.Module = LinearModel(tuple(shape), num_classes)
        elif kind == "mlp":
            widths = [64, 64] if widths is None else widths
            if not widths:
                raise ModelError("hidden: kind 'mlp' needs at least one width (or use 'linear')")
            model = MLP(tuple(shape), num_classes, widths, activation)
        elif kind == "rnn":
            if len(shape) > 3:
                raise ModelError(
                    f"input_shape: kind 'rnn' needs (T,), (T, F) or (C, H, W), got {tuple(shape)}"
                )
            widths = [4] if widths is None else widths
            if not widths:
                raise ModelError("hidden: kind 'rnn' needs at least one recurrent layer width")
            model = RNN(tuple(shape), num_classes, widths, activation)
        else:
            if len(shape) not in (2, 3):
                raise ModelError(
                    f"input_shape: kind 'cnn' needs (C, H, W) or (H, W), got {tuple(shape)}"
                )
            widths = [120, 84] if widths is None else widths
            model = CNN(tuple(shape), num_classes, widths, activation)
    model.to_empty(device="cpu")
    init_parameters(model, torch.Generator().manual_seed(int(seed) % 2**64))
    return model


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """(Re)initialise ``model`` in place like PyTorch's defaults, drawing from ``generator``.

    Linear and convolution layers get Kaiming-uniform weights (a=sqrt(5)) and
    uniform(+-1/sqrt(fan_in)) biases, exactly as ``reset_parameters`` would; norm
    layers get ones/zeros; embeddings N(0, 1). A module with an ``initialize(generator)``
    method (the RNN) initialises all of its own parameters that way instead. Parameters of
    other module types are left as they are, with a warning, because their default init
    is unknown here.
    """
    done: set[int] = set()
    for module in model.modules():
        if hasattr(module, "initialize") and not done.intersection(map(id, module.parameters())):
            module.initialize(generator)
            done.update(map(id, module.parameters()))
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in done]
        if not own:
            continue
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)):
            weight = module.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            if getattr(module, "bias", None) is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, generator=generator)
        else:
            warnings.warn(
                f"init_parameters: no seeded initialisation for {type(module).__name__}; "
                "its parameters keep their current values",
                stacklevel=2,
            )
    return model


def last_layer(model: nn.Module) -> list[str]:
    """Names of the final layer's parameters: what transfer learning trains (seed 002).

    The final layer is the last submodule in registration order (as ``named_modules()``
    lists them) that holds parameters of its own: the head ``out`` of the built-in models.
    A parameter tied to an earlier module goes by that module's name, the one
    ``named_parameters()`` (and so the bank) knows it by."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    for _, module in reversed(list(model.named_modules())):
        own = dict.fromkeys(canonical[id(p)] for p in module.parameters(recurse=False))
        if own:
            return list(own)
    raise ModelError("model: has no parameters")
