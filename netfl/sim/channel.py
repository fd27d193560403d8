"""How models become bytes: full float32 models, or codec-coded differences from a shared base.

Without codecs a model travels whole (float32 + a count). With an uplink codec a
learner sends its update, the difference between its model and the last base it
received (the global model, or dynamic averaging's reference), coded layer by
layer with its own codec state (error feedback); the payload names the base's
version so the coordinator subtracts the same base the learner did. With a
downlink codec the coordinator sends the difference between the new base and the
previous one, and both ends keep the same reconstruction, so lossy downlinks
never let learners and coordinator drift apart. Every payload is decodable from
its bytes and the codec's parameters alone; its length is what is charged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from netfl.compression import Codec, CodecState
from netfl.sim import wire

if TYPE_CHECKING:
    from netfl.learning.bank import LearnerBank
    from netfl.observers import Observers

_FRAME = struct.Struct("<II")  # base version, number of layer blobs
_LENGTH = struct.Struct("<I")


def frame(version: int, blobs: list[bytes]) -> bytes:
    lengths = b"".join(_LENGTH.pack(len(b)) for b in blobs)
    return _FRAME.pack(version, len(blobs)) + lengths + b"".join(blobs)


def unframe(payload: bytes) -> tuple[int, list[bytes]]:
    version, count = _FRAME.unpack_from(payload)
    offset = _FRAME.size
    lengths = [_LENGTH.unpack_from(payload, offset + 4 * i)[0] for i in range(count)]
    offset += 4 * count
    blobs = []
    for length in lengths:
        blobs.append(payload[offset : offset + length])
        offset += length
    if offset != len(payload):
        raise ValueError("undecodable payload: frame lengths do not match its size")
    return version, blobs


class Channel:
    """Encodes and decodes the models one protocol sends, up (to the coordinator) and down."""

    def __init__(self, bank: LearnerBank, *, uplink: Codec | None = None,
                 downlink: Codec | None = None, base: torch.Tensor | None = None,
                 seed: int = 0, observers: Observers | None = None) -> None:
        self.bank = bank
        self.observers = observers  # told each update sent up (Observer.on_upload)
        self.uplink, self.downlink = uplink, downlink
        device = bank.device
        start = bank.flat([0])[0] if base is None else base.to(device)  # one row, not all m
        self.bases: dict[int, torch.Tensor] = {0: start}
        self.version = 0  # newest base the coordinator has sent
        self.learner_version = np.zeros(bank.m, dtype=np.int64)
        seeds = np.random.SeedSequence(seed).generate_state(bank.m)
        # one codec state per learner only where an uplink codec keeps state (error feedback,
        # its own draws): full models need none, and 100k idle states cost ~70 MB
        self.states = [] if uplink is None else [CodecState(seed=int(s)) for s in seeds]
        self.down_state = CodecState(seed=seed)
        self._decoded: tuple[bytes, torch.Tensor] | None = None  # the last payload sent down

    # ------------------------------------------------------------------- uplink

    def encode_up(self, learners: np.ndarray, models: torch.Tensor,
                  lend: Callable[[wire.RowSet], None] | None = None) -> list[bytes]:
        """Payloads for the rows of models [k, P], one per learner. Full models read
        ``models`` in place where ``lend`` (the bank's) guards them (``wire.encode_vectors``)."""
        if self.observers is not None and self.observers.listening("on_upload"):
            for learner, model in zip(learners, models):
                base = self.bases[int(self.learner_version[learner])]
                self.observers.upload(int(learner), model - base)
        if self.uplink is None:
            return wire.encode_vectors(models, lend)
        payloads = []
        for learner, model in zip(learners, models):
            version = int(self.learner_version[learner])
            update = model - self.bases[version]
            blobs = self.uplink.encode_update(self._layers(update), self.states[int(learner)])
            payloads.append(frame(version, blobs))
        return payloads

    def decode_up(self, payloads: list[bytes], in_place: bool = False) -> torch.Tensor:
        """The models the coordinator reconstructs, [k, P]; ``in_place``: for a reader done
        with them at once (a mean), which may then read lent rows in place."""
        if self.uplink is None:
            return wire.decode_vectors(payloads, self.bank.device, in_place)
        if not payloads:
            return torch.stack([])  # refuses, as ever
        out: torch.Tensor | None = None
        for i, payload in enumerate(payloads):  # into one [k, P] tensor: no list + stack copy
            version, blobs = unframe(payload)
            update = torch.cat([t.reshape(-1) for t in self.uplink.decode_update(blobs)])
            row = self.bases[version] + update.to(self.bases[version].device)
            if out is None:
                out = torch.empty((len(payloads), *row.shape), dtype=row.dtype,
                                  device=row.device)
            out[i] = row
        assert out is not None
        return out

    # ----------------------------------------------------------------- downlink

    def encode_down(self, model: torch.Tensor, *, new_base: bool = True) -> tuple[bytes, int]:
        """Payload for a model sent down, and the version it becomes when it is a new base."""
        if self.downlink is None:
            payload = wire.encode_vector(model)
            reconstructed = model
        else:
            previous = self.bases[self.version]
            blobs = self.downlink.encode_update(self._layers(model - previous), self.down_state)
            payload = frame(self.version, blobs)
            reconstructed = self._decode_down(payload)
        if not new_base:
            return payload, self.version
        self.version += 1
        self.bases[self.version] = reconstructed
        self._forget_old()
        return payload, self.version

    def decode_down(self, payload: bytes) -> torch.Tensor:
        """The model a learner reconstructs; decoded once per payload however many receive it."""
        if self._decoded is not None and self._decoded[0] is payload:
            return self._decoded[1]
        model = self._decode_down(payload)
        self._decoded = (payload, model)
        return model

    def received(self, learner: int, version: int) -> None:
        """A learner now holds base `version` (it arrived down the FIFO path in order)."""
        self.learner_version[learner] = max(self.learner_version[learner], version)

    def received_many(self, learners: np.ndarray, version: int) -> None:
        """``received`` for each of ``learners``."""
        np.maximum.at(self.learner_version, learners, version)

    def _decode_down(self, payload: bytes) -> torch.Tensor:
        if self.downlink is None:
            return wire.decode_vector(payload, self.bank.device)
        version, blobs = unframe(payload)
        delta = torch.cat([t.reshape(-1) for t in self.downlink.decode_update(blobs)])
        return self.bases[version] + delta.to(self.bases[version].device)

    # ------------------------------------------------------------------ helpers

    def _layers(self, flat: torch.Tensor) -> list[np.ndarray]:
        return [t.detach().cpu().numpy() for t in self.bank.unflatten(flat).values()]

    def _forget_old(self) -> None:
        oldest = int(self.learner_version.min())
        for version in [v for v in self.bases if v < oldest and v < self.version - 1]:
            del self.bases[version]
