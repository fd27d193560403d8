"""netfl: federated and decentralized learning over simulated networks.

    import netfl
    scenario = netfl.load("scenarios/quickstart.yaml", overrides={"horizon.rounds": 20})
    result = netfl.simulate(scenario)          # result.metrics is a pandas DataFrame

The API is imported on first use, so ``import netfl`` (and the ``netfl`` command) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Observer", "Result", "Scenario", "load", "resume", "simulate"]

if TYPE_CHECKING:
    from netfl.api import Result, load, resume, simulate
    from netfl.observers import Observer
    from netfl.scenario import Scenario

_WHERE = {"Observer": "netfl.observers", "Result": "netfl.api", "Scenario": "netfl.scenario",
          "load": "netfl.api", "resume": "netfl.api", "simulate": "netfl.api"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'netfl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
