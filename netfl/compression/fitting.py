"""Fits of the two gradient models the fitted quantizers use, centred at 0 (callers
standardize first): generalized normal (M22) and double Weibull (TinyScript).

"moments" (the default in the codecs) matches the ratio E|x| / sqrt(E x^2), a monotone
function of the shape alone, then the variance:
  gennorm(beta, scale a):  ratio = G(2/b) / sqrt(G(1/b) G(3/b)),  E x^2 = a^2 G(3/b) / G(1/b)
  dweibull(c, scale a):    ratio = G(1+1/c) / sqrt(G(1+2/c)),     E x^2 = a^2 G(1+2/c)
(G the gamma function). It costs two passes over the data, where scipy's maximum likelihood
(method "mle", as the reference code uses) runs an optimizer over the whole sample; the tests
check that both agree on generalized normal samples.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from scipy import stats
from scipy.special import gammaln

METHODS = ("moments", "mle")


def _ratio(family: str, shape: np.ndarray) -> np.ndarray:
    if family == "gennorm":
        return np.exp(gammaln(2 / shape) - 0.5 * (gammaln(1 / shape) + gammaln(3 / shape)))
    return np.exp(gammaln(1 + 1 / shape) - 0.5 * gammaln(1 + 2 / shape))


@cache
def _ratio_table(family: str) -> tuple[np.ndarray, np.ndarray]:
    log_shape = np.linspace(math.log(0.02), math.log(100.0), 8000)
    return _ratio(family, np.exp(log_shape)), log_shape


def second_moment_scale(family: str, shape: float, second_moment: float) -> float:
    """Scale parameter giving the model a given E x^2 at this shape."""
    if family == "gennorm":
        return math.sqrt(second_moment * math.exp(gammaln(1 / shape) - gammaln(3 / shape)))
    return math.sqrt(second_moment * math.exp(-gammaln(1 + 2 / shape)))


def fit(x: np.ndarray, family: str = "gennorm", method: str = "moments") -> tuple[float, float]:
    """(shape, scale) of a zero-centred gennorm or dweibull fitted to x."""
    x = np.asarray(x, dtype=np.float64)
    if method == "mle":
        dist = stats.gennorm if family == "gennorm" else stats.dweibull
        shape, _, scale = dist.fit(x, floc=0.0)
        return float(shape), float(scale)
    if method != "moments":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return fit_moments(float(np.mean(np.abs(x))), float(np.einsum("i,i->", x, x)) / x.size, family)


def fit_moments(m1: float, m2: float, family: str = "gennorm") -> tuple[float, float]:
    """(shape, scale) from m1 = E|x| and m2 = E x^2 of zero-centred data."""
    if not m2 > 0:
        return 2.0, 0.0
    ratios, log_shape = _ratio_table(family)
    shape = float(np.exp(np.interp(m1 / math.sqrt(m2), ratios, log_shape)))
    return shape, second_moment_scale(family, shape, m2)
