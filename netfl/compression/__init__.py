"""Compression codecs: real, decodable bytes for every message.

    codec = get("m22", budget_bits=200_000, M=2)
    state = CodecState()                       # one per learner (error feedback, RNG)
    blobs = codec.encode_update(layers, state) # one bytes object per layer
    charged = message_bytes(blobs)             # + the message header
    layers_hat = codec.decode_update(blobs)

See codec.py for the interface and each codec module for its wire format.
"""

from __future__ import annotations

import inspect

from netfl.compression.codec import Codec, CodecState, message_bytes
from netfl.compression.countsketch import CountSketch
from netfl.compression.errors import CodecError
from netfl.compression.floats import Bf16, Fp4, Fp8, Fp16, NoneCodec, TopK
from netfl.compression.m22 import M22, choose_m
from netfl.compression.qsgd import QSGD
from netfl.compression.randk import RandK
from netfl.compression.tinyscript import TinyScript
from netfl.compression.uniform import Uniform

REGISTRY: dict[str, type[Codec]] = {
    cls.name: cls
    for cls in (
        NoneCodec, Fp16, Bf16, TopK, RandK, Uniform, QSGD, Fp8, Fp4, CountSketch, TinyScript, M22
    )
}


def available() -> list[str]:
    """Names accepted by get(), in registry order."""
    return list(REGISTRY)


def _accepted(cls: type[Codec]) -> set[str]:
    """Keyword parameters of a codec class, following **params up the class chain."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                names.add(p.name)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return names


def get(name: str, **params: object) -> Codec:
    """A codec by name with its parameters; unknown names or parameters are CodecErrors."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(available())}")
    accepted = _accepted(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise CodecError(
            f"{name}: unknown parameter {unknown[0]!r}; accepted: {', '.join(sorted(accepted))}"
        )
    return cls(**params)


__all__ = [
    "Codec",
    "CodecError",
    "CodecState",
    "available",
    "choose_m",
    "get",
    "message_bytes",
    "REGISTRY",
]
