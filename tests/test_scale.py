"""The scale scenarios (scenarios/scale): the 10k one validates (a full build), and both
estimate their bank from shapes alone, far inside the 24 GB machine they are meant for."""

from __future__ import annotations

from pathlib import Path

import pytest

from netfl import validation
from netfl.learning import memory
from netfl.scenario import load

SCALE = Path(__file__).resolve().parents[1] / "scenarios" / "scale"
FEATURES, CLASSES = 20, 10  # the gaussian_mixture both scenarios use
PARAMS = FEATURES * CLASSES + CLASSES  # a linear model: weight and bias


def test_the_10k_scenario_validates_with_a_full_build():
    scenario = load(SCALE / "10k.yaml")
    assert scenario.learners.count == 10_000
    validation.check(scenario)  # raises ScenarioError where a run would fail at build


@pytest.mark.parametrize(("name", "m"), [("10k.yaml", 10_000), ("100k.yaml", 100_000)])
def test_the_estimate_counts_every_learners_parameters_and_fits_24_gb(name, m):
    scenario = load(SCALE / name)
    assert scenario.learners.count == m
    assert scenario.model.kind == "linear" and scenario.optimizer.momentum == 0
    est = memory.scenario_estimate(scenario, (FEATURES,), CLASSES, m, dataset_bytes=0)
    assert est is not None
    assert est.parameters == memory.FLOAT * PARAMS * (m + 1)  # + the bank's template
    assert est.gradients == memory.FLOAT * PARAMS * m
    assert est.optimizer == 0  # plain SGD keeps no state
    assert est.total < 24 * 2**30 // 10  # a tenth of the machine, with room for Python
