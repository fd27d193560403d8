"""netfl: federated and decentralized learning over simulated networks."""

__version__ = "0.1.0"
