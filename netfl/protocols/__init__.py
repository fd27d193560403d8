"""Synchronization protocols by scenario name: the one registry of this extension point.

A protocol is one module defining a ``Protocol`` subclass with its ``Config`` section
(``name: Literal[...]`` equal to its key here) and, if it needs more than one bank row
per learner, ``needs``; then one line below. Nothing else changes.
"""

from netfl.protocols.asynchronous import FedAsync, FedBuff
from netfl.protocols.base import Protocol
from netfl.protocols.decentralized import DPSGD, Gossip
from netfl.protocols.dynamic import Dynamic
from netfl.protocols.fedavg import FedAvg
from netfl.protocols.hierarchical import Hierarchical
from netfl.protocols.periodic import Continuous, Periodic
from netfl.protocols.scaffold import Scaffold
from netfl.protocols.serial import Serial

PROTOCOLS: dict[str, type[Protocol]] = {
    "nosync": Protocol,
    "serial": Serial,
    "continuous": Continuous,
    "periodic": Periodic,
    "fedavg": FedAvg,
    "scaffold": Scaffold,
    "dynamic": Dynamic,
    "fedasync": FedAsync,
    "fedbuff": FedBuff,
    "hierarchical": Hierarchical,
    "gossip": Gossip,
    "dpsgd": DPSGD,
}

__all__ = ["PROTOCOLS", "Protocol"]
