"""Synchronization protocols by scenario name."""

from netfl.protocols.base import Protocol
from netfl.protocols.dynamic import Dynamic
from netfl.protocols.fedavg import FedAvg
from netfl.protocols.periodic import Continuous, Periodic
from netfl.protocols.serial import Serial

PROTOCOLS: dict[str, type[Protocol]] = {
    "nosync": Protocol,
    "serial": Serial,
    "continuous": Continuous,
    "periodic": Periodic,
    "fedavg": FedAvg,
    "dynamic": Dynamic,
}

__all__ = ["PROTOCOLS", "Protocol"]
