"""Real encodings of what learners and the coordinator send, so every byte charged exists.

A message is charged len(header) + len(payload). The header carries what a
real transport would need to route and match a message (kind, source,
destination, round, payload length); payload encodings carry their own shape.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import torch

HEADER = struct.Struct("<BiiII")  # kind id, src, dst, round, payload length
HEADER_BYTES = HEADER.size

_VECTOR_HEAD = struct.Struct("<I")  # number of float32 entries


def message_size(payload: bytes | bytearray | memoryview) -> int:
    """Bytes a message costs on the wire: header plus payload."""
    return HEADER_BYTES + len(payload)


class RowSet:
    """The float32 rows ``[k, P]`` that the payloads of one ``encode_vectors`` call hold:
    their own copy, or (``lent``) the sender's memory itself, read in place until the
    sender calls ``detach`` before it writes there (``LearnerBank.lend``). A lent set also
    keeps the sender's in-place version counter at lending (``guard``): a write that did
    not detach it first (a bug) is an error when the rows are next read, not a silent
    change of bytes already sent."""

    __slots__ = ("values", "guard", "__weakref__")

    def __init__(self, values: np.ndarray, guard: tuple[torch.Tensor, int] | None = None):
        self.values = values
        self.guard = guard

    @property
    def lent(self) -> bool:
        return self.guard is not None

    def lend_from(self, owner: torch.Tensor) -> bool:
        """Guard the rows if they lie in ``owner``'s memory (the sender's); whether they do."""
        if owner.device.type != "cpu":
            return False
        lo, at = owner.data_ptr(), self.values.ctypes.data
        if not lo <= at < lo + owner.nbytes:
            return False
        self.guard = (owner, owner._version)
        return True

    def detach(self) -> None:
        """Copy the rows out of the sender's memory (it is about to change)."""
        if self.guard is not None:
            self.values, self.guard = self.values.copy(), None

    def read(self) -> np.ndarray:
        """The rows, checked unchanged since lending."""
        if self.guard is not None and self.guard[0]._version != self.guard[1]:
            raise RuntimeError("models sent as payloads were overwritten in place before "
                               "they were delivered (a bank write that did not detach them)")
        return self.values


class RowPayload:
    """One row of a ``RowSet``: the m uploads of a round hold the model bytes once, not a
    copy each (and none at all while lent: the bank's own rows), and the coordinator reads
    them in place (``decode_vectors``).

    Bytes-like where a payload is used: ``len`` (what is charged), ``bytes()``, slices and
    ``+`` give ``bytes`` (``head | row``), it equals (and hashes as) the bytes it stands for,
    and it pickles (checkpoints) and copies as those ``bytes``. It has no buffer protocol
    (a pure-Python class cannot export one before Python 3.12): ``wire.as_bytes`` gives
    what a reader of raw bytes needs. Each row is its own object (identity)."""

    __slots__ = ("_set", "_row")

    def __init__(self, rows: RowSet, row: int):
        self._set, self._row = rows, row

    def __len__(self) -> int:
        return _VECTOR_HEAD.size + 4 * self._set.values.shape[1]

    def __bytes__(self) -> bytes:
        values = self._set.read()
        return _VECTOR_HEAD.pack(values.shape[1]) + values[self._row].tobytes()

    def __getitem__(self, key: int | slice) -> int | bytes:
        return bytes(self)[key]

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return bytes, (bytes(self),)

    def __add__(self, other: object) -> bytes:
        return bytes(self) + as_bytes(other)  # type: ignore[arg-type]

    def __radd__(self, other: object) -> bytes:
        return as_bytes(other) + bytes(self)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (bytes, bytearray, memoryview, RowPayload)):
            return NotImplemented
        return bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        kind = "lent" if self._set.lent else "own"
        return (f"<RowPayload row {self._row} of {self._set.values.shape[0]} ({kind}), "
                f"{len(self)} bytes>")


Bytes = bytes | bytearray | memoryview


def as_bytes(payload: Bytes | RowPayload) -> Bytes:
    """A payload as an object with the buffer protocol (a ``RowPayload`` as its bytes)."""
    return bytes(payload) if isinstance(payload, RowPayload) else payload


def encode_vectors(flat: torch.Tensor,
                   lend: Callable[[RowSet], None] | None = None) -> list[bytes]:
    """Rows of a [k, P] tensor as float32 little-endian payloads (``head | row`` each), one
    conversion for all rows: several rows are ``RowPayload``s of one ``RowSet``, one is
    bytes. Rows already float32 in CPU memory are copied once, or, given ``lend`` (the
    sender: ``LearnerBank.lend``), not at all: the set reads ``flat`` in place and the
    sender detaches it before it writes there."""
    t = flat.detach()
    values = np.ascontiguousarray(t.to("cpu", torch.float32).numpy(), dtype="<f4")
    if values.shape[0] <= 1:
        head = _VECTOR_HEAD.pack(values.shape[1])
        return [head + row.tobytes() for row in values]
    aliased = t.device.type == "cpu" and values.ctypes.data == t.data_ptr()
    rows = RowSet(values.copy() if aliased and lend is None else values)
    if aliased and lend is not None:
        lend(rows)
    return [RowPayload(rows, i) for i in range(values.shape[0])]


def encode_vector(vec: torch.Tensor) -> bytes:
    return encode_vectors(vec.reshape(1, -1))[0]


def _shared_rows(payloads: list[bytes]) -> tuple[np.ndarray, bool] | None:
    """The float32 rows ``[k, P]`` of ``payloads`` read in place when they are all rows of
    one ``RowSet`` (a view for consecutive rows in order, else one gather), and whether
    that view is of lent memory; None for any other payloads."""
    first = payloads[0]
    if not isinstance(first, RowPayload):
        return None
    shared = first._set
    rows = []
    for p in payloads:
        if not isinstance(p, RowPayload) or p._set is not shared:
            return None
        rows.append(p._row)
    values, start = shared.read(), rows[0]
    if rows == list(range(start, start + len(rows))):
        return values[start : start + len(rows)], shared.lent
    return values[np.asarray(rows)], False


def decode_vectors(payloads: list[bytes], device: torch.device | str = "cpu",
                   in_place: bool = False) -> torch.Tensor:
    """Payloads of equal length back to a [k, P] float32 tensor, without a join.

    Several consecutive rows of one ``RowSet`` (a round's uploads, in order) are read in
    place: the tensor is a strided view of the payloads' memory (a reader must not write
    to it; its mean reduces the same columns in the same order as a contiguous copy's, bit
    for bit). Where that memory is lent (the sender's own rows), only for a reader that is
    done with the tensor at once (``in_place``: a mean); else, and for any other payloads,
    one copy. A tensor of one row, or of one column, is always a copy: a row then pins no
    shared buffer, and a column reduces (``mean``) as a contiguous one does."""
    first = payloads[0]
    if isinstance(first, RowPayload):
        count = first._set.values.shape[1]
    else:
        (count,) = _VECTOR_HEAD.unpack_from(first)
    stride = _VECTOR_HEAD.size + 4 * count
    shared = _shared_rows(payloads)  # rows of one set: equal lengths by construction
    if shared is None and any(len(p) != stride for p in payloads):
        raise ValueError("payloads of different lengths cannot be decoded together")
    if shared is None:  # one join, one copy: no Python loop over the payloads' values
        joined = b"".join(map(as_bytes, payloads))
        raw = np.frombuffer(joined, dtype=np.uint8).reshape(len(payloads), stride)
        rows = raw[:, _VECTOR_HEAD.size :].copy().view("<f4")
    else:
        rows, lent = shared
        if len(payloads) == 1 or count == 1 or (lent and not in_place):
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
