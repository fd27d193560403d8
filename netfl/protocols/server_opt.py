"""Server optimizers of star averaging: FedAvgM (Hsu et al. 2019) and FedOpt (Reddi et al. 2021).

The coordinator treats the averaged update as a pseudo-gradient,
``Delta = mean(uploaded) - x`` with ``x`` its previous global model, and takes one
optimizer step on ``x`` (Reddi et al. 2021, "Adaptive Federated Optimization",
Algorithm 2, exactly: no bias correction, ``m_{-1} = 0``, ``v_{-1} = tau^2``):

* sgd:      ``x + lr * Delta``  (lr = 1 is plain averaging)
* momentum: ``m = beta1 m + Delta``; ``x + lr * m``  (FedAvgM)
* adagrad:  ``m = beta1 m + (1-beta1) Delta``; ``v = v + Delta^2``
* adam:     ``m`` as adagrad; ``v = beta2 v + (1-beta2) Delta^2``
* yogi:     ``m`` as adagrad; ``v = v - (1-beta2) Delta^2 sign(v - Delta^2)``

and for the three adaptive ones ``x + lr * m / (sqrt(v) + tau)``. With ``beta1 = 0``
adagrad is the momentum-free form ``x + lr Delta / (sqrt(v) + tau)``.

Everything works on flat parameter vectors ``[P]``; the functions are pure (they
return new tensors and never change their arguments), ``ServerOptimizer`` keeps the
state ``m, v`` between rounds.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import AliasChoices, Field
from torch import Tensor

from netfl.schema import Section

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer", "ServerOptimizerConfig", "adagrad", "adam",
           "momentum", "sgd", "yogi"]


class ServerOptimizerConfig(Section):
    """``protocol.server_optimizer``: how the coordinator applies the averaged update."""

    name: Literal["sgd", "momentum", "adagrad", "adam", "yogi"]
    lr: float = Field(default=1.0, gt=0, description="server learning rate eta")
    beta1: float = Field(default=0.9, ge=0, lt=1,
                         validation_alias=AliasChoices("beta1", "momentum"),
                         description="momentum (FedAvgM) or first-moment decay (also 'momentum')")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="second-moment decay (adam, yogi)")
    eps: float = Field(default=1e-3, gt=0, description="tau, the adaptivity (adagrad, adam, yogi)")


def sgd(x: Tensor, delta: Tensor, lr: float) -> Tensor:
    """``x + lr * Delta``."""
    return x + lr * delta


def momentum(x: Tensor, m: Tensor, delta: Tensor, lr: float, beta: float) -> tuple[Tensor, Tensor]:
    """FedAvgM: ``m = beta m + Delta``, ``x + lr m``. Returns (x, m)."""
    m = beta * m + delta
    return x + lr * m, m


def _first_moment(m: Tensor, delta: Tensor, beta1: float) -> Tensor:
    return beta1 * m + (1 - beta1) * delta


def _adaptive_step(x: Tensor, m: Tensor, v: Tensor, lr: float, tau: float) -> Tensor:
    return x + lr * m / (v.sqrt() + tau)


def adagrad(x: Tensor, m: Tensor, v: Tensor, delta: Tensor, lr: float, beta1: float,
            tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """FedAdagrad: ``v = v + Delta^2``. Returns (x, m, v)."""
    m = _first_moment(m, delta, beta1)
    v = v + delta.square()
    return _adaptive_step(x, m, v, lr, tau), m, v


def adam(x: Tensor, m: Tensor, v: Tensor, delta: Tensor, lr: float, beta1: float, beta2: float,
         tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """FedAdam: ``v = beta2 v + (1-beta2) Delta^2``. Returns (x, m, v)."""
    m = _first_moment(m, delta, beta1)
    v = beta2 * v + (1 - beta2) * delta.square()
    return _adaptive_step(x, m, v, lr, tau), m, v


def yogi(x: Tensor, m: Tensor, v: Tensor, delta: Tensor, lr: float, beta1: float, beta2: float,
         tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """FedYogi: ``v = v - (1-beta2) Delta^2 sign(v - Delta^2)``. Returns (x, m, v)."""
    m = _first_moment(m, delta, beta1)
    sq = delta.square()
    v = v - (1 - beta2) * sq * torch.sign(v - sq)
    return _adaptive_step(x, m, v, lr, tau), m, v


SERVER_OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam", "yogi")


class ServerOptimizer:
    """One server optimizer with its state; ``step(x, delta)`` returns the new global model."""

    def __init__(self, config: ServerOptimizerConfig) -> None:
        self.name = config.name
        self.lr, self.beta1, self.beta2 = config.lr, config.beta1, config.beta2
        self.tau = config.eps
        self.m: Tensor | None = None  # m_{-1} = 0
        self.v: Tensor | None = None  # v_{-1} = tau^2 (Reddi et al. Algorithm 2: v_{-1} >= tau^2)
        self.steps = 0

    def step(self, x: Tensor, delta: Tensor) -> Tensor:
        self.steps += 1
        if self.name == "sgd":
            return sgd(x, delta, self.lr)
        if self.m is None:
            self.m = torch.zeros_like(x)
        if self.name == "momentum":
            x, self.m = momentum(x, self.m, delta, self.lr, self.beta1)
            return x
        if self.v is None:
            self.v = torch.full_like(x, self.tau**2)
        if self.name == "adagrad":
            x, self.m, self.v = adagrad(x, self.m, self.v, delta, self.lr, self.beta1, self.tau)
        elif self.name == "adam":
            x, self.m, self.v = adam(x, self.m, self.v, delta, self.lr, self.beta1, self.beta2,
                                     self.tau)
        else:
            x, self.m, self.v = yogi(x, self.m, self.v, delta, self.lr, self.beta1, self.beta2,
                                     self.tau)
        return x
