"""Codec interface: a tensor to bytes and back, a model update layer by layer.

netfl charges every message the length of a real, decodable encoding, so a codec is a pair
of functions over bytes and nothing else guesses sizes. Layout of one encoded tensor::

    [flag u8, only with a lossless stage] then (maybe compressed):
    ndim u8 | dims as varints | codec payload

`decode` restores shape and float32 dtype from those bytes and the codec's constructor
parameters alone. Error-feedback residuals live in a per-learner `CodecState`, never in the
codec, so one codec object can serve every learner of a run. Stochastic codecs (randk,
qsgd) draw from the state's generator when it has one (`CodecState(seed=...)`), else from
the codec's own, seeded by its `seed` parameter; never from a global generator.

Non-finite input: `none` sends NaN/Inf bit-exactly; every other codec raises CodecError
(a NaN update means a diverged learner, and quantizers would silently spread it).

Budgets: `budget_bits` bounds 8*len(encode(x)) for one tensor. In `encode_update` it bounds
the whole update (the message payload, sum of 8*len over the layers): it is split over the
layers in proportion to their sizes after each layer got its minimum encoding (M22 instead
allocates the rest by its own distortion estimate: `layer_budgets`, `allocate_bits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from netfl.compression import lossless as _lossless
from netfl.compression.bits import Reader, varint
from netfl.compression.errors import CodecError

#: Largest tensor a codec encodes or decodes, in entries (2**31 float32 = 8 GiB). Sparse
#: and sketch payloads legitimately decode to far more entries than they have bytes, so a
#: header's claimed size cannot be bounded by the payload length alone; this cap keeps a
#: corrupt header from asking for an absurd allocation (it is checked before any).
MAX_ENTRIES = 2**31
#: Most dimensions of a tensor (numpy's own limit); more is a CodecError on encode and decode.
MAX_NDIM = 64

Tensor = torch.Tensor


@dataclass
class CodecState:
    """Per-learner codec state.

    residuals: error-feedback memory per layer index (float32, flat), kept between rounds.
    seed: when given, stochastic codecs (randk, qsgd) draw from this learner's own generator
    instead of the codec's, so a learner's draws do not depend on the order learners encode.
    """

    seed: int | None = None
    residuals: dict[int, np.ndarray] = field(default_factory=dict)
    rng: np.random.Generator | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.rng = np.random.default_rng(self.seed)

    def reset(self) -> None:
        """Forget the residuals (for example when a learner receives a fresh model)."""
        self.residuals.clear()


def as_array(tensor: Tensor | np.ndarray) -> np.ndarray:
    """A flat float32 numpy view or copy of a tensor (any device, any real dtype)."""
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach()
        if t.is_complex():
            raise CodecError("codecs take real tensors, got a complex one")
        return t.to(device="cpu", dtype=torch.float32).contiguous().numpy().reshape(-1)
    arr = np.asarray(tensor)
    if np.iscomplexobj(arr):
        raise CodecError("codecs take real tensors, got a complex one")
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)


def shape_of(tensor: Tensor | np.ndarray) -> tuple[int, ...]:
    """The shape of a tensor to encode; CodecError beyond MAX_NDIM or MAX_ENTRIES."""
    return check_shape(tuple(int(d) for d in tensor.shape))


def check_shape(shape: tuple[int, ...], what: str = "tensor") -> tuple[int, ...]:
    """`shape` when it has at most MAX_NDIM dimensions and MAX_ENTRIES entries."""
    if len(shape) > MAX_NDIM:
        raise CodecError(f"{what} has {len(shape)} dimensions; codecs take at most {MAX_NDIM}")
    entries = math.prod(shape)
    if entries > MAX_ENTRIES:
        raise CodecError(
            f"{what} of shape {shape} has {entries} entries; codecs take at most "
            f"{MAX_ENTRIES} (netfl.compression.codec.MAX_ENTRIES)"
        )
    return shape


def shape_header(shape: tuple[int, ...]) -> bytes:
    check_shape(shape)
    return bytes([len(shape)]) + b"".join(varint(d) for d in shape)


def read_shape(reader: Reader) -> tuple[int, ...]:
    """The shape written by shape_header, checked before the payload is decoded."""
    ndim = reader.u8()
    if ndim > MAX_NDIM:
        raise CodecError(
            f"undecodable bytes: header claims {ndim} dimensions, at most {MAX_NDIM}"
        )
    shape = tuple(reader.varint() for _ in range(ndim))
    return check_shape(shape, "undecodable bytes: header's tensor")


# ---- parameter validation (every message names the parameter) -------------------------


def check_int(codec: str, name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CodecError(f"{codec}: {name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise CodecError(f"{codec}: {name} must be {span}, got {value}")
    return int(value)


def check_float(codec: str, name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise CodecError(f"{codec}: {name} must be a number, got {value!r}")
    if not (lo <= float(value) <= hi):
        raise CodecError(f"{codec}: {name} must be in [{lo}, {hi}], got {value}")
    return float(value)


def check_k(codec: str, value: object) -> int | float | None:
    """k as a count (int >= 0) or a fraction (float in (0, 1]) of a layer's entries."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise CodecError(f"{codec}: k must be a count (int) or a fraction (float), got {value!r}")
    if isinstance(value, (int, np.integer)):
        return check_int(codec, "k", value, 0)
    if isinstance(value, (float, np.floating)):
        if not 0.0 < float(value) <= 1.0:
            raise CodecError(f"{codec}: k as a fraction must be in (0, 1], got {value}")
        return float(value)
    raise CodecError(f"{codec}: k must be a count (int) or a fraction (float), got {value!r}")


def resolve_k(k: int | float | None, n: int) -> int:
    """Entries to keep out of n: a count is capped at n, a fraction rounds up."""
    if k is None:
        return n
    if isinstance(k, float):
        return min(n, math.ceil(k * n))
    return min(n, k)


class Codec:
    """Base of every codec. Subclasses implement the three `_payload` hooks on flat arrays.

    Common parameters:
      budget_bits: most bits one encoded tensor may take (lossy codecs adapt to it, fixed-rate
        ones raise CodecError when they cannot fit);
      lossless: None, "zlib" or "zstd", a stage over the payload (never longer by more than
        one flag byte);
      error_feedback: keep residuals in the CodecState given to `encode_update`.
    """

    name: ClassVar[str] = "codec"
    lossy: ClassVar[bool] = True
    #: codecs that pass NaN/Inf through (only the exact float32 one); others raise CodecError
    allows_nonfinite: ClassVar[bool] = False

    def __init__(
        self,
        *,
        budget_bits: int | None = None,
        lossless: str | None = None,
        error_feedback: bool = False,
    ) -> None:
        if budget_bits is not None:
            budget_bits = check_int(self.name, "budget_bits", budget_bits, 1)
        _lossless.check(lossless)
        if not isinstance(error_feedback, bool):
            raise CodecError(f"{self.name}: error_feedback must be a bool, got {error_feedback!r}")
        self.budget_bits = budget_bits
        self.lossless = lossless
        self.error_feedback = error_feedback
        self._rng = np.random.default_rng(0)

    # ---- hooks ------------------------------------------------------------------------
    def _encode_payload(
        self, x: np.ndarray, budget: int | None, rng: np.random.Generator
    ) -> bytes:
        """Payload for flat float32 x; at most `budget` bits when a budget is given."""
        raise NotImplementedError

    def _decode_payload(self, reader: Reader, n: int) -> np.ndarray:
        """Flat float32 values of a tensor of n entries, read from the payload.

        n <= MAX_ENTRIES is checked; anything whose size the payload bounds (counts of
        values) must be checked against `reader.remaining()` before allocating."""
        raise NotImplementedError

    def _min_payload_bits(self, n: int) -> int:
        """Bits of the shortest payload this codec can write for n entries."""
        raise NotImplementedError

    # ---- tensors ----------------------------------------------------------------------
    def encode(
        self, tensor: Tensor | np.ndarray, *, rng: np.random.Generator | None = None
    ) -> bytes:
        """Bytes for one tensor; within budget_bits when set. `rng` overrides the codec's."""
        shape = shape_of(tensor)  # before as_array: numpy refuses > 64 dims with ValueError
        return self._encode(as_array(tensor), shape, self.budget_bits, rng)

    def decode(self, data: bytes | bytearray | memoryview) -> Tensor:
        """The float32 tensor (CPU) of the shape written in `data`."""
        flat, shape = self._decode(data)
        return torch.from_numpy(flat).reshape(shape)

    def min_bits(self, shape: Sequence[int]) -> int:
        """Bits of the shortest encoding of a tensor of this shape (budgets below fail)."""
        shape = tuple(int(d) for d in shape)
        fixed = 8 * len(shape_header(shape)) + (8 if self.lossless else 0)
        return fixed + 8 * math.ceil(self._min_payload_bits(math.prod(shape)) / 8)

    def _encode(
        self,
        x: np.ndarray,
        shape: tuple[int, ...],
        budget: int | None,
        rng: np.random.Generator | None,
    ) -> bytes:
        if not self.allows_nonfinite and not np.isfinite(x).all():
            raise CodecError(
                f"{self.name}: tensor of shape {shape} contains NaN or Inf; only 'none' "
                "passes non-finite values (a NaN update usually means a diverged learner)"
            )
        header = shape_header(shape)
        payload_budget = None
        if budget is not None:
            need = self.min_bits(shape)
            if budget < need:
                raise CodecError(
                    f"{self.name}: budget_bits={budget} cannot fit a tensor of shape {shape}; "
                    f"the shortest encoding takes {need} bits"
                )
            payload_budget = budget - 8 * len(header) - (8 if self.lossless else 0)
        payload = self._encode_payload(x, payload_budget, rng if rng is not None else self._rng)
        if payload_budget is not None and 8 * len(payload) > payload_budget:
            raise RuntimeError(  # a bug in a codec's rate control, never a user error
                f"{self.name}: payload of {8 * len(payload)} bits exceeds {payload_budget}"
            )
        return _lossless.wrap(self.lossless, header + payload)

    def _decode(self, data: bytes | bytearray | memoryview) -> tuple[np.ndarray, tuple]:
        reader = Reader(_lossless.unwrap(self.lossless, data))
        shape = read_shape(reader)
        n = math.prod(shape)
        flat = self._decode_payload(reader, n)
        reader.finish()
        if flat.size != n:
            raise CodecError(f"undecodable bytes: {flat.size} values for shape {shape}")
        return np.ascontiguousarray(flat, dtype=np.float32), shape

    # ---- model updates ----------------------------------------------------------------
    def split_budget(self, shapes: Sequence[Sequence[int]]) -> list[int] | None:
        """Per-layer budgets summing to at most budget_bits: each layer's minimum encoding
        plus a share of the rest proportional to its number of entries."""
        if self.budget_bits is None:
            return None
        mins = [self.min_bits(s) for s in shapes]
        if sum(mins) > self.budget_bits:
            raise CodecError(
                f"{self.name}: budget_bits={self.budget_bits} cannot fit an update of "
                f"{len(mins)} layers; the shortest encoding takes {sum(mins)} bits"
            )
        sizes = [math.prod(tuple(s)) for s in shapes]
        total = sum(sizes)
        extra = self.budget_bits - sum(mins)
        if total == 0:
            return [m + extra // max(1, len(mins)) for m in mins]
        return [m + extra * size // total for m, size in zip(mins, sizes, strict=True)]

    def layer_budgets(
        self, xs: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]
    ) -> list[int] | None:
        """Per-layer budgets of one update, given the flat values each layer will encode
        (error-feedback memory included). The default ignores the values: split_budget.
        A codec that can estimate its own distortion (M22) allocates by it instead."""
        return self.split_budget(shapes)

    def encode_update(
        self, layers: Sequence[Tensor | np.ndarray], state: CodecState | None = None
    ) -> list[bytes]:
        """One blob per layer. With error_feedback, each layer sends input + memory and the
        memory becomes (input + memory) - decoded: the residual is added exactly once."""
        if self.error_feedback and state is None:
            raise CodecError(f"{self.name}: error_feedback=True needs a CodecState")
        shapes = [shape_of(t) for t in layers]
        xs = []
        for i, layer in enumerate(layers):
            x = as_array(layer)
            if self.error_feedback:
                memory = state.residuals.get(i)
                if memory is not None:
                    if memory.size != x.size:
                        raise CodecError(
                            f"{self.name}: layer {i} has {x.size} entries but its residual "
                            f"has {memory.size}; reset the CodecState when the model changes"
                        )
                    x = x + memory
            xs.append(x)
        budgets = self.layer_budgets(xs, shapes) or [None] * len(layers)
        rng = state.rng if state is not None and state.rng is not None else None
        blobs = []
        for i, (x, shape, budget) in enumerate(zip(xs, shapes, budgets, strict=True)):
            blob = self._encode(x, shape, budget, rng)
            if self.error_feedback:
                decoded, _ = self._decode(blob)
                state.residuals[i] = x - decoded.reshape(-1)
            blobs.append(blob)
        return blobs

    def decode_update(self, blobs: Sequence[bytes]) -> list[Tensor]:
        """Inverse of encode_update: one float32 tensor per blob."""
        return [self.decode(b) for b in blobs]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict[str, object]:
        """Constructor parameters (what a decoder must share with the encoder)."""
        return {
            "budget_bits": self.budget_bits,
            "lossless": self.lossless,
            "error_feedback": self.error_feedback,
        }


def allocate_bits(curves: Sequence[tuple[np.ndarray, np.ndarray]], extra: int) -> list[int]:
    """Bits per layer, summing to at most `extra`, that greedily minimize the sum of the
    layers' distortion estimates. curves[i] = (bits, distortion) of layer i's options, bits
    beyond its minimum encoding (a point at 0 bits included).

    Marginal-gain allocation on each curve's lower convex hull: hull segments of every layer
    are taken in order of distortion saved per bit while they fit (the Lagrangian solution at
    the hull's vertices). The bits left over go to the layer whose next segment was the best
    one that did not fit, or, when every layer reached its hull's end, to the layer with the
    most estimated distortion left."""
    hulls = [_lower_hull(np.asarray(b, float), np.asarray(d, float)) for b, d in curves]
    segments = []
    for i, (bits, dist) in enumerate(hulls):
        steps = np.diff(bits)
        gains = -np.diff(dist) / steps
        segments += [(float(g), i, int(s)) for g, s in zip(gains, steps, strict=True)]
    segments.sort(key=lambda seg: -seg[0])  # stable: a layer's segments stay in hull order
    given = [0] * len(curves)
    blocked: list[int] = []
    left = int(extra)
    for _, i, step in segments:
        if i in blocked:
            continue
        if step <= left:
            given[i] += step
            left -= step
        else:
            blocked.append(i)
    if curves:
        if blocked:
            given[blocked[0]] += left
        else:
            given[max(range(len(hulls)), key=lambda i: hulls[i][1][-1])] += left
    return given


def _lower_hull(bits: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the lower convex hull of the points no cheaper point beats (bits strictly
    increasing, distortion strictly decreasing), from the cheapest point."""
    order = np.lexsort((dist, bits))
    bits, dist = bits[order], dist[order]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(dist)[:-1]])
    keep = dist < best_before
    hull: list[tuple[float, float]] = []
    for point in zip(bits[keep].tolist(), dist[keep].tolist(), strict=True):
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (point[1] - y0) - (y1 - y0) * (point[0] - x0) > 0:
                break  # a left turn: hull[-1] stays a vertex
            hull.pop()
        hull.append(point)
    xs, ys = zip(*hull, strict=True)
    return np.array(xs), np.array(ys)


def message_bytes(blobs: Sequence[bytes]) -> int:
    """Charged payload size of an encoded update, in bytes (add the message header)."""
    return sum(len(b) for b in blobs)
