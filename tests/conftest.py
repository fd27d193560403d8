"""Small, fast scenarios shared by the tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from netfl.scenario import Scenario, from_dict

BASE: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "device": "cpu",
    "network": {"topology": {"generator": "star"}, "bandwidth": "10 Mbit/s", "latency": "5 ms"},
    "learners": {"count": 4, "compute_time": "10 ms"},
    "data": {"dataset": "digits", "batch_size": 5},
    "model": {"kind": "mlp", "hidden": [16]},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "protocol": {"name": "periodic", "b": 5},
    "horizon": {"rounds": 20},
    "eval": {"every": 10},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "protocol":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def tiny():
    """Factory: tiny(protocol={...}, learners={...}) -> Scenario."""

    def make(**changes: Any) -> Scenario:
        return from_dict(merge(BASE, changes))

    return make
