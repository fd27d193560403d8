"""The seam between the engine and the protocols: names, what a protocol may call, its hooks.

The engine (netfl.sim.engine) implements ``SimulationAPI``; protocols
(netfl.protocols) implement ``ProtocolHooks`` and say what they need from the
build with ``Needs``. Neither side imports the other, so a new protocol is one
module plus one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import simpy
    import torch

    from netfl.learning.bank import LearnerBank
    from netfl.sim.channel import Channel
    from netfl.sim.network import Message, Network

COORDINATOR = "coordinator"  # the endpoint id of the coordinator (learners are ints)


@dataclass(frozen=True)
class Needs:
    """What a protocol asks of the build."""

    bank_size: int  # rows of the learner bank (m; 1 for a single central learner)
    batches_per_step: int = 1  # batches one bank row takes per step (serial: m)
    one_machine: bool = False  # every learner's step runs in turn on one machine
    local_models: bool = True  # one model per learner (probes, local accuracy)
    models_on_wire: bool = True  # it sends models, so compression codecs apply


class SimulationAPI(Protocol):
    """What a protocol may read and call on the simulation it runs in."""

    env: simpy.Environment
    network: Network
    bank: LearnerBank
    source: Any
    m: int
    counters: dict[str, int]
    blocked: np.ndarray
    rounds_done: np.ndarray
    online: np.ndarray  # False while a learner is unavailable (learners.availability)

    def send(self, kind: str, src: Any, dst: Any, rnd: int, payload: bytes) -> simpy.Event: ...
    def send_many(self, kind: str, srcs: Any, dsts: Any, rnd: int, payloads: Any,
                  on_arrival: Callable[[list[Message]], None]) -> None: ...
    def make_channel(self, *, base: torch.Tensor | None = None, seed: int = 0) -> Channel: ...
    def deliver(self, learner: int, model: torch.Tensor) -> None: ...
    def deliver_many(self, learners: np.ndarray, model: torch.Tensor) -> None: ...
    def block(self, learners: np.ndarray) -> None: ...
    def unblock(self, learner: int) -> None: ...
    def unblock_many(self, learners: np.ndarray) -> None: ...
    def index(self, learners: np.ndarray) -> torch.Tensor: ...
    def apply_pending(self) -> None: ...


class ProtocolHooks(Protocol):
    """What the engine calls on a protocol."""

    name: str
    counters: tuple[str, ...]  # extra per-round counters it keeps in sim.counters
    message_kinds: tuple[str, ...]  # kinds it sends; metrics get a bytes_<kind> column each

    def start(self) -> None: ...
    def after_step(self, learners: np.ndarray, rounds: np.ndarray) -> None: ...
    def on_lost(self, msg: Message) -> None: ...
    def on_offline(self, learners: np.ndarray) -> None: ...
    def on_online(self, learners: np.ndarray) -> None: ...
    def summary(self) -> dict[str, Any]: ...
