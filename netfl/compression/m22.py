"""M22 (seed 003; Liu et al., arXiv:2301.09269): per layer, top-k, standardize the kept
values, fit a generalized normal, quantize with the 2**R-level quantizer that minimizes the
M-magnitude weighted L2 distortion E[|g|^M (g - Q(g))^2] (lloyd.py), send bit-packed level
indices, the kept positions (bitmap or gap-coded, whichever is shorter) and the per-layer
parameters (mean, scale, beta, R, M). Wire format: see sparse.py and fitted.py.

Rate control: under budget_bits the split between kept fraction and bits per kept value is
k = the largest count with k*R bits of codes + positions + parameters within the budget
(the reference's kept fraction P / (R * 100) is the same trade at a fixed R).
`choose_m` picks M by a short calibration run the caller supplies, as the seed suggests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from netfl.compression.codec import check_float
from netfl.compression.fitted import FittedQuantCodec


class M22(FittedQuantCodec):
    """M22 with exponent M of the distortion weight (M = 0 is plain L2 Lloyd-Max)."""

    name = "m22"
    family = "gennorm"
    sends_m = True

    def __init__(self, *, M: float = 2.0, **params) -> None:
        super().__init__(**params)
        # float32 so that the encoder's design key is the value the decoder reads back
        self.M = float(np.float32(check_float(self.name, "M", M, 0.0, 64.0)))

    def params(self) -> dict[str, object]:
        return {"M": self.M, **super().params()}


def choose_m(
    evaluate: Callable[[M22], float],
    candidates: Iterable[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    **params,
) -> tuple[float, dict[float, float]]:
    """M minimizing `evaluate(codec)`, the loss of accuracy (lower is better) of a short
    calibration run with an M22 codec built from `params` and that M.

    Returns (best M, {M: score}); ties go to the smaller M. `evaluate` owns the run (data,
    model, seeds), so this helper stays independent of the simulator.
    """
    scores: dict[float, float] = {}
    for m in candidates:
        scores[float(m)] = float(evaluate(M22(M=m, **params)))
    if not scores:
        raise ValueError("choose_m needs at least one candidate M")
    best = min(sorted(scores), key=lambda m: scores[m])
    return best, scores
