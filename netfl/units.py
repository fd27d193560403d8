"""Human units in scenario files ("10 Mbit/s", "20 ms", "1.5 MB") parsed to SI numbers.

Scenario authors think in the units of their field; the simulator works in
seconds, bits per second and bytes. Plain numbers pass through unchanged.
"""

from __future__ import annotations

import re

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z/µ]*)\s*$")

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}

_BITRATE = {}
for _p, _f in _PREFIX.items():
    for _u in ("bit/s", "bps", "b/s", "bit"):
        _BITRATE[f"{_p}{_u}"] = _f
    _BITRATE[f"{_p}B/s"] = 8 * _f
    _BITRATE[f"{_p}Bps"] = 8 * _f
_BITRATE.update({k.lower(): v for k, v in list(_BITRATE.items()) if not k.endswith(("B/s", "Bps"))})

_DURATION = {
    "": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9,
    "min": 60.0, "h": 3600.0,
}

_SIZE = {"": 1.0, "B": 1.0, "bit": 1 / 8, "b": 1 / 8}
for _p, _f in _PREFIX.items():
    if _p:
        _SIZE[f"{_p}B"] = _f
        _SIZE[f"{_p}bit"] = _f / 8
for _p, _f in {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}.items():
    _SIZE[f"{_p}B"] = float(_f)


class UnitError(ValueError):
    """A quantity that could not be read; the message says what was expected."""


def _parse(value: object, table: dict[str, float], what: str, example: str) -> float:
    if isinstance(value, bool):
        raise UnitError(f"expected a {what} such as {example!r}, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise UnitError(f"expected a {what} such as {example!r}, got {value!r}")
    match = _PATTERN.match(value)
    if not match or match.group(2) not in table:
        raise UnitError(f"expected a {what} such as {example!r}, got {value!r}")
    return float(match.group(1)) * table[match.group(2)]


def bitrate(value: object) -> float:
    """Bits per second from a number or a string like '10 Mbit/s', '1 Gbps', '5 MB/s'."""
    return _parse(value, _BITRATE, "bit rate", "10 Mbit/s")


def duration(value: object) -> float:
    """Seconds from a number or a string like '20 ms', '1.5 s', '2 min'."""
    return _parse(value, _DURATION, "duration", "20 ms")


def size_bytes(value: object) -> float:
    """Bytes from a number or a string like '1.5 MB', '200 kbit', '4 KiB'."""
    return _parse(value, _SIZE, "size", "200 kbit")
