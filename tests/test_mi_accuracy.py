"""Every MI estimator against the closed-form Gaussian truth, d = 1, 4, 8 (tools/mi_accuracy.py).

X ~ N(0, I_d), Y = rho X + sqrt(1 - rho^2) E: I = -d/2 log2(1 - rho^2) bits. Each test checks
the tolerance documented for an estimator where it is claimed to work (README "Probes", the
estimator docstrings), and that its known failure regions look as documented. The bounds hold
over seeds 0-19 (measured with the tool); the tests use seed 0 and N = 500 (the
representation probe's sample size) or N = 2000 in 1-D.
"""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

import pytest

from netfl.probes import mi

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mi_accuracy.py"
_spec = importlib.util.spec_from_file_location("mi_accuracy", TOOL)
assert _spec is not None and _spec.loader is not None
acc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(acc)

RHOS = [0.0, 0.6, 0.9]
SEED = 0


@cache
def est(name: str, d: int, rho: float, n: int) -> float:
    return acc.cell(name, d, rho, n, [SEED])[0]


def bias_gauss(d: int, n: int) -> float:
    """Uncorrected Gaussian estimator's sample bias, dx dy / (2 N ln 2) bits."""
    return d * d / (2 * n * math.log(2))


def test_truth_closed_form() -> None:
    assert acc.truth_bits(1, 0.0) == 0.0
    assert acc.truth_bits(4, 0.6) == pytest.approx(1.2877, abs=1e-4)  # the 1.29 bits
    assert acc.truth_bits(8, 0.9) == pytest.approx(-4 * math.log2(0.19))
    x, y = acc.correlated_gaussians(2, 0.6, 20000, 0)
    corr = [float(((x[:, k] - x[:, k].mean()) * (y[:, k] - y[:, k].mean())).mean()
                  / (x[:, k].std() * y[:, k].std())) for k in range(2)]
    assert corr == pytest.approx([0.6, 0.6], abs=0.02)
    assert abs(float((x[:, 0] * y[:, 1]).mean())) < 0.03, "pairs across coordinates independent"


@pytest.mark.parametrize("d, n", [(1, 2000), (4, 500), (8, 500)])
@pytest.mark.parametrize("rho", RHOS)
def test_gaussian_within_ten_percent_plus_its_bias(d: int, n: int, rho: float) -> None:
    truth = acc.truth_bits(d, rho)
    tol = 0.10 * truth + bias_gauss(d, n) + 0.1
    assert abs(est("gaussian", d, rho, n) - truth) < tol


@pytest.mark.parametrize("d", [1, 4, 8])
def test_gaussian_near_zero_on_independent_columns(d: int) -> None:
    x, y = acc.correlated_gaussians(d, 0.0, 500, SEED)
    raw = mi.gaussian(x, y)
    assert 0.0 <= raw < bias_gauss(d, 500) + 0.05  # 8-D: 0.09 bit, the documented bias
    assert mi.gaussian(x, y, bias_correction=True) < 0.05


@pytest.mark.parametrize("rho", RHOS)
def test_ksg_accurate_in_one_dimension(rho: float) -> None:
    assert abs(est("ksg", 1, rho, 2000) - acc.truth_bits(1, rho)) < 0.07
    assert abs(est("ksg", 1, rho, 500) - acc.truth_bits(1, rho)) < 0.15


@pytest.mark.parametrize("d, low, high", [(4, 0.5, 1.0), (8, 0.3, 0.65)])
def test_ksg_understates_in_several_dimensions_but_keeps_the_order(d, low, high) -> None:
    # documented: keeps 55-90% of the truth at d = 4, 35-60% at d = 8 (N = 500-2000)
    assert est("ksg", d, 0.0, 500) < 0.12
    for rho in (0.6, 0.9):
        truth = acc.truth_bits(d, rho)
        assert low * truth < est("ksg", d, rho, 500) < high * truth
    assert est("ksg", d, 0.0, 500) < est("ksg", d, 0.6, 500) < est("ksg", d, 0.9, 500)


@pytest.mark.parametrize("rho", RHOS)
def test_edge_within_a_quarter_bit_in_one_dimension(rho: float) -> None:
    assert abs(est("edge", 1, rho, 2000) - acc.truth_bits(1, rho)) < 0.25
    assert abs(est("edge", 1, rho, 500) - acc.truth_bits(1, rho)) < 0.25


@pytest.mark.parametrize("d", [4, 8])
def test_edge_failure_region_in_several_dimensions(d: int) -> None:
    # documented: below 0.75 bit and at most 30% of the truth in every d >= 4 cell, and at
    # d = 8 unable to tell rho = 0 from rho = 0.9 (9.6 bits apart)
    for rho in (0.6, 0.9):
        value = est("edge", d, rho, 500)
        assert value < 0.75 and value < 0.3 * acc.truth_bits(d, rho)
    if d == 8:
        assert abs(est("edge", 8, 0.9, 500) - est("edge", 8, 0.0, 500)) < 0.35


@pytest.mark.parametrize("rho", RHOS)
def test_binned_one_dimension_upward_bias(rho: float) -> None:
    truth = acc.truth_bits(1, rho)
    assert truth - 0.05 < est("binned", 1, rho, 2000) < truth + 0.3
    assert est("binned", 1, rho, 500) > truth + 0.1  # 30 x 30 bins on 500 points


@pytest.mark.parametrize("d", [4, 8])
@pytest.mark.parametrize("rho", RHOS)
def test_binned_saturates_at_log2_n_in_several_dimensions(d: int, rho: float) -> None:
    # every row is its own symbol: the estimate is H = log2 N whatever the dependence
    assert est("binned", d, rho, 500) > math.log2(500) - 0.1


def test_tool_prints_a_markdown_table(capsys: pytest.CaptureFixture[str]) -> None:
    acc.main(["--n", "200", "--d", "1", "--rho", "0.5", "--seeds", "2",
              "--estimators", "gaussian", "binned"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3] == "| d | rho | N | truth | `gaussian` | `binned` |"
    assert lines[-2] == "| --- | --- | --- | --- | --- | --- |"
    cells = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert cells[:4] == ["1", "0.5", "200", "0.21"]
    mean, spread = cells[4].split()
    assert abs(float(mean) - 0.21) < 0.15 and spread.startswith("(")
