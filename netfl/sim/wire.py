"""Real encodings of what learners and the coordinator send, so every byte charged exists.

A message is charged len(header) + len(payload). The header carries what a
real transport would need to route and match a message (kind, source,
destination, round, payload length); payload encodings carry their own shape.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

HEADER = struct.Struct("<BiiII")  # kind id, src, dst, round, payload length
HEADER_BYTES = HEADER.size

_VECTOR_HEAD = struct.Struct("<I")  # number of float32 entries


def message_size(payload: bytes | bytearray | memoryview) -> int:
    """Bytes a message costs on the wire: header plus payload."""
    return HEADER_BYTES + len(payload)


def encode_vectors(flat: torch.Tensor) -> list[bytes]:
    """Rows of a [k, P] tensor as float32 little-endian payloads, one conversion for all rows."""
    rows = np.ascontiguousarray(flat.detach().to("cpu", torch.float32).numpy(), dtype="<f4")
    head = _VECTOR_HEAD.pack(rows.shape[1])
    return [head + row.tobytes() for row in rows]


def encode_vector(vec: torch.Tensor) -> bytes:
    return encode_vectors(vec.reshape(1, -1))[0]


def decode_vectors(payloads: list[bytes], device: torch.device | str = "cpu") -> torch.Tensor:
    """Payloads of equal length back to a [k, P] float32 tensor (one copy, no per-row loop)."""
    (count,) = _VECTOR_HEAD.unpack_from(payloads[0])
    stride = _VECTOR_HEAD.size + 4 * count
    if any(len(p) != stride for p in payloads):
        raise ValueError("payloads of different lengths cannot be decoded together")
    raw = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(payloads), stride)
    data = raw[:, _VECTOR_HEAD.size :].copy().view("<f4")
    return torch.from_numpy(data).to(device)


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
