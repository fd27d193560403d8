"""TinyScript (Fu et al., ICML 2020) as seed 003 compares it: fit a double Weibull to the
(standardized, kept) values and quantize with the L2 Lloyd-Max quantizer of that model
(M = 0), designs cached by the rounded shape (the scale is factored out, so the reference's
cache by (shape, scale) reduces to shape). Wire format as M22 without M (fitted.py).
"""

from __future__ import annotations

from netfl.compression.fitted import FittedQuantCodec


class TinyScript(FittedQuantCodec):
    """Top-k (optional) + double-Weibull-fitted L2 Lloyd-Max quantizer with R bits."""

    name = "tinyscript"
    family = "dweibull"
    sends_m = False
