"""The one exception of netfl.compression, in its own module so every codec can raise it."""

from __future__ import annotations


class CodecError(ValueError):
    """Unknown codec, bad parameter (named in the message) or undecodable bytes."""
