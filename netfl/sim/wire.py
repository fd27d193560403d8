"""Real encodings of what learners and the coordinator send, so every byte charged exists.

A message is charged len(header) + len(payload). The header carries what a
real transport would need to route and match a message (kind, source,
destination, round, payload length); payload encodings carry their own shape.
"""

from __future__ import annotations

import ctypes
import functools
import struct

import numpy as np
import torch

HEADER = struct.Struct("<BiiII")  # kind id, src, dst, round, payload length
HEADER_BYTES = HEADER.size

_VECTOR_HEAD = struct.Struct("<I")  # number of float32 entries


def message_size(payload: bytes | bytearray | memoryview) -> int:
    """Bytes a message costs on the wire: header plus payload."""
    return HEADER_BYTES + len(payload)


class RowPayload:
    """A payload that is one row of a buffer shared by the payloads of one
    ``encode_vectors`` call, not a copy of its own: the m uploads of a round take the
    model bytes once (not once per row and again to decode them), and the coordinator
    reads them in place (``decode_vectors``).

    Bytes-like where a payload is used: the buffer protocol (``len``, ``b"".join``,
    ``struct.unpack_from``, ``np.frombuffer``), slices and ``+`` give ``bytes``, it equals
    (and hashes as) the bytes it holds, and it pickles (checkpoints) as those ``bytes``.
    Each row is its own object (identity), and keeps the shared buffer alive."""

    _owner: np.ndarray  # [k, stride] uint8: every row of the encoding
    _row: int

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return bytes, (bytes(self),)

    def __add__(self, other: object) -> bytes:
        return b"".join((self, other))  # type: ignore[arg-type]

    def __radd__(self, other: object) -> bytes:
        return b"".join((other, self))  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (bytes, bytearray, memoryview, RowPayload)):
            return NotImplemented
        return bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        return f"<RowPayload row {self._row} of {self._owner.shape[0]}, {len(self)} bytes>"


@functools.lru_cache(maxsize=32)
def _row_type(size: int) -> type:
    """The ctypes char-array type of ``size``-byte row payloads (one per model size)."""
    return type(f"RowPayload{size}", (RowPayload, ctypes.c_char * size), {})


def encode_vectors(flat: torch.Tensor) -> list[bytes]:
    """Rows of a [k, P] tensor as float32 little-endian payloads, one conversion for all rows:
    several rows are ``RowPayload`` views of one buffer (``head | row`` each), one is bytes."""
    rows = np.ascontiguousarray(flat.detach().to("cpu", torch.float32).numpy(), dtype="<f4")
    head = _VECTOR_HEAD.pack(rows.shape[1])
    k, stride = rows.shape[0], _VECTOR_HEAD.size + 4 * rows.shape[1]
    if k <= 1:
        return [head + row.tobytes() for row in rows]
    owner = np.empty((k, stride), dtype=np.uint8)
    owner[:, : _VECTOR_HEAD.size] = np.frombuffer(head, dtype=np.uint8)
    owner[:, _VECTOR_HEAD.size :].view("<f4")[...] = rows
    kind = _row_type(stride)
    payloads = []
    for i in range(k):
        payload = kind.from_buffer(owner, i * stride)
        payload._owner, payload._row = owner, i
        payloads.append(payload)
    return payloads


def encode_vector(vec: torch.Tensor) -> bytes:
    return encode_vectors(vec.reshape(1, -1))[0]


def _shared_rows(payloads: list[bytes], stride: int) -> np.ndarray | None:
    """The float32 rows ``[k, P]`` of ``payloads`` read in place when they are all rows of
    one ``encode_vectors`` buffer: a view for consecutive rows in order, else one gather;
    None for any other payloads."""
    first = payloads[0]
    if not isinstance(first, RowPayload) or first._owner.shape[1] != stride:
        return None
    owner, start = first._owner, first._row
    rows = []
    for p in payloads:
        if not isinstance(p, RowPayload) or p._owner is not owner:
            return None
        rows.append(p._row)
    values = owner[:, _VECTOR_HEAD.size :].view("<f4")
    if rows == list(range(start, start + len(rows))):
        return values[start : start + len(rows)]
    return values[np.asarray(rows)]


def decode_vectors(payloads: list[bytes], device: torch.device | str = "cpu") -> torch.Tensor:
    """Payloads of equal length back to a [k, P] float32 tensor, without a join.

    Several consecutive rows of one ``encode_vectors`` buffer (a round's uploads, in order)
    are read in place: the tensor is a strided view of the payloads' memory (a reader
    must not write to it; its mean reduces the same columns in the same order as a
    contiguous copy's, bit for bit); other payloads are joined and copied once. A tensor of
    one row, or of one column, is always a copy: a row then pins no shared buffer, and a
    column reduces (``mean``) as a contiguous one does."""
    (count,) = _VECTOR_HEAD.unpack_from(payloads[0])
    stride = _VECTOR_HEAD.size + 4 * count
    if any(len(p) != stride for p in payloads):
        raise ValueError("payloads of different lengths cannot be decoded together")
    rows = _shared_rows(payloads, stride)
    if rows is None:  # one join, one copy: no Python loop over the payloads
        raw = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(payloads), stride)
        rows = raw[:, _VECTOR_HEAD.size :].copy().view("<f4")
    elif len(payloads) == 1 or count == 1:
        rows = rows.copy()
    return torch.from_numpy(rows).to(device)


def decode_vector(payload: bytes, device: torch.device | str = "cpu") -> torch.Tensor:
    return decode_vectors([payload], device)[0]


def encode_samples(x: torch.Tensor, y: torch.Tensor) -> bytes:
    """A batch of raw samples (float32 features; int64 labels, or float32 regression
    targets): what centralizing data costs."""
    xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f4")
    ys = np.ascontiguousarray(y.detach().cpu().numpy(),
                              dtype="<f4" if y.is_floating_point() else "<i8")
    head = struct.pack("<II", ys.shape[0], int(np.prod(xs.shape[1:], dtype=np.int64)))
    return head + xs.tobytes() + ys.tobytes()
