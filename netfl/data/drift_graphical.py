"""Synthetic data from a random two-tier graphical model, one model per concept.

In the spirit of the synthetic stream of Kamp et al. 2018 (section 5, "a random graphical
model", after Bshouty and Long 2012, "Linear classifiers are nearly optimal when hidden
variables have diverse effects"): the class is drawn first, then a layer of hidden
variables that are conditionally independent given the class, then the observed features,
each depending on a few hidden variables. Precisely, for one concept:

- ``Y ~ Bernoulli(prior)``;
- ``H_j | Y=y ~ Bernoulli(q[j, y])`` independently for j < n_hidden, with every entry of the
  conditional probability table ``q`` drawn from U(cpt_low, cpt_high) (default 0.1..0.9), so
  the hidden variables have diverse, some weak, some strong, effects;
- feature k has ``fan_in`` distinct hidden parents pa(k) drawn uniformly, weights
  ``W[k, j] ~ N(0, 1)`` on its parents (0 elsewhere), bias ``b[k] ~ N(0, 0.5^2)``, and with
  spins ``s = 2H - 1``: ``Z_k = sum_j W[k, j] s_j + b[k] + noise * eps_k``, eps ~ N(0, 1);
  ``gaussian`` features are ``X_k = Z_k``, ``binary`` ones ``X_k = 1[Z_k > 0]`` (so
  ``P(X_k = 1 | h) = Phi(mu_k(h) / noise)``).

A drift draws a new model: concept c is drawn from its own generator
``default_rng(SeedSequence(seed, spawn_key=(3, c)))``, so a recurring concept is the same
model. ``bayes_error`` computes the error of the Bayes classifier: exact sums over the
2^n_hidden hidden configurations give the posterior P(Y | x); the expectation over x is
exact for binary features up to 16 of them (all 2^d inputs) and otherwise a Monte-Carlo
average of min(P(Y=0|x), P(Y=1|x)) over fresh samples (standard error at most
0.25 / sqrt(n_samples)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import product

import numpy as np
import torch
from scipy.special import log_ndtr

from netfl.data.datasets import DataError
from netfl.data.drift_base import (
    LRU,
    TAG_CONCEPT,
    DriftingSource,
    Noise,
    check_float,
    check_int,
    sub_seed,
)
from netfl.data.drift_schedule import DriftSchedule

FEATURES = ("gaussian", "binary")
MAX_HIDDEN = 16
MAX_EXACT_FEATURES = 16
_CHUNK_ENTRIES = 1 << 22  # rows x hidden configurations per block of log_joint
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True, eq=False)
class GraphicalModel:
    """One concept: ``Y -> H -> X`` as in the module docstring (float64 numpy arrays)."""

    prior: float  # P(Y = 1)
    cpt: np.ndarray  # [n_hidden, 2]: P(H_j = 1 | Y = y)
    weights: np.ndarray  # [n_features, n_hidden], zero off the parents
    bias: np.ndarray  # [n_features]
    noise: float  # std of the Gaussian noise on each feature
    binary: bool  # features thresholded at 0

    @property
    def n_hidden(self) -> int:
        return int(self.cpt.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.weights.shape[0])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples (x float64 ``[n, d]``, y int64 ``[n]``) drawn with ``rng``."""
        y = (rng.random(n) < self.prior).astype(np.int64)
        h = rng.random((n, self.n_hidden)) < self.cpt.T[y]
        z = (2.0 * h - 1.0) @ self.weights.T + self.bias
        z += self.noise * rng.standard_normal((n, self.n_features))
        return ((z > 0).astype(np.float64) if self.binary else z), y

    def log_joint(self, x: np.ndarray) -> np.ndarray:
        """``[n, 2]``: log p(x, Y=y) by exact enumeration of the hidden configurations (cost
        O(n 2^n_hidden n_features), in row chunks of at most 2^22 entries); for Gaussian
        features up to a term in x alone (the normalizer and -||x||^2 / 2 noise^2), which
        cancels in the posterior."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.n_features)
        spins, p_h = self._hidden_table
        mu = spins @ self.weights.T + self.bias  # [2^H, d]
        if self.binary:
            t = mu / self.noise
            log_on, log_off = log_ndtr(t).T, log_ndtr(-t).T
        step = max(1, _CHUNK_ENTRIES // len(spins))
        out = np.empty((len(x), 2))
        for start in range(0, len(x), step):
            xc = x[start:start + step]
            if self.binary:
                lik = xc @ log_on + (1.0 - xc) @ log_off  # [n, 2^H]
            else:
                lik = (xc @ mu.T - 0.5 * (mu * mu).sum(1)) / self.noise**2
            # log sum_h p(x|h) P(h|y), as max + log of a matrix product (a single exp)
            top = lik.max(axis=1, keepdims=True)
            np.exp(lik - top, out=lik)
            out[start:start + step] = np.log(np.maximum(lik @ p_h, _TINY)) + top
        return out + np.log([1.0 - self.prior, self.prior])

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """P(Y = 1 | x) for each row of ``x``."""
        lj = self.log_joint(x)
        return 1.0 / (1.0 + np.exp(np.clip(lj[:, 0] - lj[:, 1], -700, 700)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The Bayes classifier: int64 labels argmax_y P(y | x)."""
        lj = self.log_joint(x)
        return (lj[:, 1] > lj[:, 0]).astype(np.int64)

    @cached_property
    def _hidden_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All 2^H spin vectors ``[2^H, H]`` and P(h | y) ``[2^H, 2]``."""
        h = np.array(list(product((0.0, 1.0), repeat=self.n_hidden)))
        log_h = h @ np.log(self.cpt) + (1.0 - h) @ np.log1p(-self.cpt)
        return 2.0 * h - 1.0, np.exp(log_h)


def random_graphical_model(
    rng: np.random.Generator,
    *,
    n_hidden: int = 8,
    n_features: int = 20,
    fan_in: int = 2,
    noise: float = 1.0,
    prior: float = 0.5,
    binary: bool = False,
    cpt_low: float = 0.1,
    cpt_high: float = 0.9,
) -> GraphicalModel:
    """A random concept drawn with ``rng`` (see the module docstring for the distribution)."""
    cpt = rng.uniform(cpt_low, cpt_high, size=(n_hidden, 2))
    weights = np.zeros((n_features, n_hidden))
    for k in range(n_features):
        parents = rng.choice(n_hidden, size=fan_in, replace=False)
        weights[k, parents] = rng.standard_normal(fan_in)
    bias = 0.5 * rng.standard_normal(n_features)
    return GraphicalModel(float(prior), cpt, weights, bias, float(noise), bool(binary))


def bayes_error(model: GraphicalModel, *, n_samples: int = 200_000, seed: int = 0) -> float:
    """Error rate of the Bayes-optimal classifier of ``model``, in [0, 0.5].

    Exact for binary features when n_features <= 16 (sums over all 2^d inputs); otherwise
    the Monte-Carlo mean of min(P(0|x), P(1|x)) over ``n_samples`` samples drawn with
    ``default_rng(seed)`` (the posterior itself is exact), standard error <= 0.25/sqrt(n).
    Cost O(n 2^n_hidden n_features): about a second of CPU for the defaults.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    seed = check_int("seed", seed, 0)
    chunk = 1 << 14
    total = 0.0
    if model.binary and model.n_features <= MAX_EXACT_FEATURES:
        for start in range(0, 1 << model.n_features, chunk):
            codes = np.arange(start, min(start + chunk, 1 << model.n_features))
            x = ((codes[:, None] >> np.arange(model.n_features)) & 1).astype(np.float64)
            total += float(np.exp(model.log_joint(x).min(axis=1)).sum())
        return min(max(total, 0.0), 0.5)
    rng = np.random.default_rng(seed)
    for start in range(0, n_samples, chunk):
        x, _ = model.sample(min(chunk, n_samples - start), rng)
        p = model.posterior(x)
        total += float(np.minimum(p, 1.0 - p).sum())
    return total / n_samples


class GraphicalModelSource(DriftingSource):
    """Binary classification stream from random graphical models, a new model per concept.

    Per round, all m*B samples come from one ``torch.Generator`` draw seeded by (seed,
    round): uniforms for Y and H, Gaussians for the feature noise. Inputs ``[n_features]``
    float32 (0/1 for binary features), 2 classes. ``n_hidden`` is capped at 16 so that the
    exact posterior (and so ``bayes_error``) stays computable.
    """

    name = "graphical"

    def __init__(
        self,
        *,
        m: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        schedule: DriftSchedule | None = None,
        n_hidden: int = 8,
        n_features: int = 20,
        fan_in: int = 2,
        noise: float = 1.0,
        prior: float = 0.5,
        features: str = "gaussian",
        cpt_low: float = 0.1,
        cpt_high: float = 0.9,
        n_eval: int = 2000,
    ) -> None:
        super().__init__(m=m, batch_size=batch_size, seed=seed, device=device,
                         schedule=schedule, n_eval=n_eval)
        g = self.name
        self.n_hidden = check_int(f"{g}: n_hidden", n_hidden, 1, MAX_HIDDEN)
        self.n_features = check_int(f"{g}: n_features", n_features, 1)
        self.fan_in = check_int(f"{g}: fan_in", fan_in, 1, self.n_hidden)
        self.noise = check_float(f"{g}: noise", noise, 0.0, float("inf"), open_low=True,
                                 open_high=True)
        self.prior = check_float(f"{g}: prior", prior, 0.0, 1.0, open_low=True, open_high=True)
        if features not in FEATURES:
            raise DataError(f"{g}: features must be one of {', '.join(FEATURES)}, got "
                            f"{features!r}")
        self.features = features
        self.cpt_low = check_float(f"{g}: cpt_low", cpt_low, 0.0, 1.0, open_low=True,
                                   open_high=True)
        self.cpt_high = check_float(f"{g}: cpt_high", cpt_high, 0.0, 1.0, open_low=True,
                                    open_high=True)
        if self.cpt_high < self.cpt_low:
            raise DataError(f"{g}: cpt_high must be >= cpt_low, got {cpt_high} < {cpt_low}")
        self.input_shape = (self.n_features,)
        self.num_classes = 2
        self._models = LRU(64)
        self._tensors = LRU(64)

    def model(self, concept: int) -> GraphicalModel:
        """The graphical model of ``concept`` (a pure function of (seed, concept))."""
        concept = check_int("concept", concept, 0)
        return self._models.get_or(concept, lambda: random_graphical_model(
            np.random.default_rng(sub_seed(self.seed, TAG_CONCEPT, concept)),
            n_hidden=self.n_hidden, n_features=self.n_features, fan_in=self.fan_in,
            noise=self.noise, prior=self.prior, binary=self.features == "binary",
            cpt_low=self.cpt_low, cpt_high=self.cpt_high))

    def bayes_error(self, concept: int, **kwargs: int) -> float:
        """``bayes_error(self.model(concept), **kwargs)``."""
        return bayes_error(self.model(concept), **kwargs)

    def _draw(self, gen: torch.Generator, shape: tuple[int, ...]) -> Noise:
        u = torch.rand((*shape, 1 + self.n_hidden), generator=gen, device=self.device)
        eps = torch.randn((*shape, self.n_features), generator=gen, device=self.device)
        return u, eps

    def _apply(self, concept: int, noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
        prior, cpt_t, w2, b2 = self._tensors.get_or(concept, lambda: self._to_device(concept))
        u, eps = noise
        y = (u[..., 0] < prior).long()
        q = cpt_t.index_select(0, y.view(-1)).view(*y.shape, self.n_hidden)
        h = (u[..., 1:] < q).float()
        # W s + b with s = 2h - 1 is (2W) h + (b - W 1): one addmm on the 0/1 matrix
        z = torch.addmm(b2, h.view(-1, self.n_hidden), w2).view(eps.shape)
        z = z.add_(eps, alpha=self.noise)
        return ((z > 0).float() if self.features == "binary" else z), y

    def _to_device(self, concept: int) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        mdl = self.model(concept)

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32,
                                   device=self.device)

        w_t = mdl.weights.T
        return mdl.prior, put(mdl.cpt.T), put(2.0 * w_t), put(mdl.bias - w_t.sum(axis=0))
