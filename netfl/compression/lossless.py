"""Optional lossless stage (zlib or zstd) over any codec's bytes.

The stage writes one flag byte: 0 = the bytes follow as they are, 1 = compressed. It keeps
whichever is shorter, so it never costs more than that byte and a budget stays a budget.
zstd needs the `zstandard` package; it is imported only when asked for.
"""

from __future__ import annotations

import zlib

from netfl.compression.errors import CodecError

STAGES = ("zlib", "zstd")


def _zstd():
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CodecError(
            "lossless='zstd' needs the 'zstandard' package (pip install zstandard)"
        ) from exc
    return zstandard


def check(stage: str | None) -> None:
    """Validate the `lossless` parameter early, at construction."""
    if stage is None:
        return
    if stage not in STAGES:
        raise CodecError(f"lossless must be one of {STAGES} or None, got {stage!r}")
    if stage == "zstd":
        _zstd()


def wrap(stage: str | None, raw: bytes) -> bytes:
    """Flag byte + the shorter of raw and compressed(raw)."""
    if stage is None:
        return raw
    if stage == "zlib":
        packed = zlib.compress(raw, 6)
    else:
        packed = _zstd().ZstdCompressor(level=3).compress(raw)
    if len(packed) < len(raw):
        return b"\x01" + packed
    return b"\x00" + raw


def unwrap(stage: str | None, data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """Inverse of wrap; a bad flag or corrupt stream is a CodecError."""
    if stage is None:
        return data
    view = memoryview(data)
    if len(view) == 0:
        raise CodecError("undecodable bytes: empty message, expected a lossless-stage flag")
    flag, body = view[0], view[1:]
    if flag == 0:
        return body
    if flag != 1:
        raise CodecError(f"undecodable bytes: lossless-stage flag {flag}, expected 0 or 1")
    try:
        if stage == "zlib":
            return zlib.decompress(body)
        return _zstd().ZstdDecompressor().decompress(bytes(body))
    except CodecError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError
        raise CodecError(f"undecodable bytes: {stage} stream is corrupt ({exc})") from exc
