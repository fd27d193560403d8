"""Corrupt payloads never crash a decoder (issue #13): every registered codec raises
CodecError, or decodes to a tensor of a size its header allows, on truncated, random and
hand-edited bytes, and checks claimed sizes before it allocates."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from netfl.compression import REGISTRY, CodecError, get
from netfl.compression import lossless as _lossless
from netfl.compression.bits import varint
from netfl.compression.codec import MAX_ENTRIES, MAX_NDIM

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is optional
    given = None

SHAPE = (8, 16)

#: one configuration per registered codec, plus sparse / fitted / lossless variants
CONFIGS: dict[str, tuple[str, dict]] = {name: (name, {}) for name in REGISTRY}
CONFIGS.update(
    {
        "topk": ("topk", {"k": 0.25}),
        "randk": ("randk", {"k": 0.25}),
        "countsketch": ("countsketch", {"cols": 16}),
        "m22": ("m22", {"min_size": 16, "k": 0.5}),
        "tinyscript": ("tinyscript", {"min_size": 16, "k": 0.5}),
        "m22-dense": ("m22", {"min_size": 16}),
        "topk-bitmap": ("topk", {"k": 0.9}),
        "fp8-sparse": ("fp8", {"k": 0.3}),
        "qsgd-sparse": ("qsgd", {"k": 0.3, "bucket": 8}),
        "uniform-zlib": ("uniform", {"R": 3, "lossless": "zlib"}),
        "randk-zlib": ("randk", {"k": 5, "lossless": "zlib"}),
    }
)
IDS = sorted(CONFIGS)
ALLOWED = (CodecError,)


def codec_of(cid: str):
    name, params = CONFIGS[cid]
    return get(name, **params)


def blob_of(cid: str) -> bytes:
    x = torch.from_numpy(np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32))
    return codec_of(cid).encode(x)


def decode_or_codec_error(codec, data: bytes) -> None:
    """Decoding either raises CodecError or returns a float32 tensor its header allows."""
    try:
        y = codec.decode(data)
    except ALLOWED:
        return
    assert y.dtype == torch.float32
    assert y.numel() <= MAX_ENTRIES and y.dim() <= MAX_NDIM


def test_every_registered_codec_is_fuzzed():
    assert set(REGISTRY) <= {name for name, _ in CONFIGS.values()}


@pytest.mark.parametrize("cid", IDS)
def test_round_trip_still_works(cid):
    blob = blob_of(cid)
    assert codec_of(cid).decode(blob).shape == SHAPE


@pytest.mark.parametrize("cid", IDS)
def test_truncated_payloads_raise_codec_error(cid):
    codec, blob = codec_of(cid), blob_of(cid)
    for length in range(len(blob)):
        with pytest.raises(CodecError):
            codec.decode(blob[:length])


@pytest.mark.parametrize("cid", IDS)
def test_random_bytes_raise_codec_error_or_decode(cid):
    codec = codec_of(cid)
    rng = np.random.default_rng(13)
    for _ in range(200):
        data = rng.integers(0, 256, size=int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
        decode_or_codec_error(codec, data)
        if codec.lossless:  # also past the flag: random bytes as the "uncompressed" stream
            decode_or_codec_error(codec, b"\x00" + data)


@pytest.mark.parametrize("cid", IDS)
def test_random_payloads_behind_plausible_headers(cid):
    """Random payloads behind a header of 1-2 random dimensions (up to 5-byte varints), so
    the payload decoder, not the header check, sees most of them."""
    codec = codec_of(cid)
    rng = np.random.default_rng(29)
    for _ in range(200):
        dims = tuple(int(rng.integers(0, 2 ** int(rng.integers(1, 36)))) for _ in
                     range(int(rng.integers(1, 3))))
        payload = rng.integers(0, 256, size=int(rng.integers(0, 60)), dtype=np.uint8).tobytes()
        data = _with_header(cid, dims, payload)
        if math.prod(dims) > MAX_ENTRIES:
            with pytest.raises(CodecError):
                codec.decode(data)
        else:
            decode_or_codec_error(codec, data)


@pytest.mark.parametrize("cid", IDS)
def test_flipped_bytes_raise_codec_error_or_decode(cid):
    codec, blob = codec_of(cid), bytearray(blob_of(cid))
    rng = np.random.default_rng(17)
    for _ in range(200):
        data = bytearray(blob)
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[i] = int(rng.integers(0, 256))
        decode_or_codec_error(codec, bytes(data))


def _with_header(cid: str, dims: tuple[int, ...], payload: bytes) -> bytes:
    codec = codec_of(cid)
    raw = bytes([len(dims)]) + b"".join(varint(d) for d in dims) + payload
    return _lossless.wrap(codec.lossless, raw) if codec.lossless else raw


@pytest.mark.parametrize("cid", IDS)
@pytest.mark.parametrize("dims", [(2**33,), (2**17, 2**16), (2**31 + 1,), (2**40, 2**40)])
def test_header_claiming_huge_count_raises_quickly(cid, dims):
    assert math.prod(dims) > MAX_ENTRIES
    codec = codec_of(cid)
    for payload in (b"\x00" * 5, b"\x05" + b"\x01" * 40, b"\x80" * 3 + b"\x01"):
        start = time.perf_counter()
        with pytest.raises(CodecError, match="entries"):
            codec.decode(_with_header(cid, dims, payload))
        assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("cid", IDS)
def test_count_not_backed_by_payload_raises_quickly(cid):
    """A header within MAX_ENTRIES whose payload claims far more kept values than it has
    bytes for (or trailing garbage behind a huge layer) fails before any allocation."""
    codec = codec_of(cid)
    for payload in (varint(2**30) + b"\x00" * 6, varint(2**30 - 1) + b"\x01\x00" + b"\x07" * 9):
        start = time.perf_counter()
        decode_or_codec_error(codec, _with_header(cid, (2**30,), payload))
        assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("cid", IDS)
def test_more_than_64_dimensions_refused(cid):
    codec = codec_of(cid)
    x = torch.ones((1,) * (MAX_NDIM + 1))
    with pytest.raises(CodecError, match="dimensions"):
        codec.encode(x)
    with pytest.raises(CodecError, match="dimensions"):
        codec.encode_update([x])
    with pytest.raises(CodecError, match="dimensions"):
        codec.decode(_with_header(cid, (1,) * (MAX_NDIM + 1), b"\x01" + b"\x00" * 8))
    y = codec.decode(codec.encode(torch.ones((1,) * MAX_NDIM)))  # 64 is still fine
    assert y.dim() == MAX_NDIM


if given is not None:

    @pytest.mark.parametrize("cid", ["topk", "randk", "countsketch", "m22", "tinyscript"])
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.binary(max_size=64))
    def test_hypothesis_bytes_raise_codec_error_or_decode(cid, data):
        codec = codec_of(cid)
        decode_or_codec_error(codec, data)
        decode_or_codec_error(codec, blob_of(cid)[:4] + data)
