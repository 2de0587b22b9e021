"""Byte encodings used by S5: base64url without padding and multibase strings.

Multibase strings carry their encoding in the first character:

============  =====================================  ===========================
prefix        encoding                               used for
============  =====================================  ===========================
``b``         base32, RFC 4648, lowercase, no pad    CIDs (default, ``blob...``)
``z``         base58btc (Bitcoin alphabet)           the Dart node's upload reply
``u``         base64url, no padding                  keys in URLs
``f``         lowercase hex                          debugging
============  =====================================  ===========================

>>> multibase_encode(b"hi", "b"), multibase_encode(b"hi", "f")
('bnbuq', 'f6869')
>>> multibase_decode("u_w") == b"\\xff"
True
>>> b64url_encode(b"\\xfb\\xff"), b64url_decode("-_8")
('-_8', b'\\xfb\\xff')
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import base58

__all__ = [
    "MULTIBASE_PREFIXES",
    "Base",
    "EncodingError",
    "b64url_decode",
    "b64url_encode",
    "multibase_decode",
    "multibase_encode",
]

Base = Literal["b", "z", "u", "f"]
MULTIBASE_PREFIXES: tuple[Base, ...] = ("b", "z", "u", "f")


class EncodingError(ValueError):
    """A string is not valid in the encoding it claims (internal; callers wrap it)."""


def b64url_encode(data: bytes) -> str:
    """base64url without ``=`` padding, as S5 uses in JSON and query strings."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raise :class:`EncodingError` if invalid."""
    if not isinstance(text, str):
        raise EncodingError("expected a base64url string")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise EncodingError("base64url text has an impossible length")
    try:
        return base64.b64decode(
            stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError) as exc:
        raise EncodingError(f"invalid base64url: {exc}") from exc


def multibase_encode(data: bytes, base: Base = "b") -> str:
    """Encode ``data`` as a multibase string with the given prefix (``b``, ``z``, ``u``, ``f``)."""
    if base == "b":
        return "b" + base64.b32encode(data).decode("ascii").rstrip("=").lower()
    if base == "z":
        return "z" + base58.b58encode(data).decode("ascii")
    if base == "u":
        return "u" + b64url_encode(data)
    if base == "f":
        return "f" + data.hex()
    raise EncodingError(f"unsupported multibase prefix {base!r}")


def multibase_decode(text: str) -> bytes:
    """Decode a multibase string; raise :class:`EncodingError` on anything malformed."""
    if not isinstance(text, str) or len(text) < 2:
        raise EncodingError("multibase text is empty or too short")
    prefix, body = text[0], text[1:]
    try:
        if prefix == "b":
            if len(body) % 8 in (1, 3, 6):
                raise EncodingError("base32 text has an impossible length")
            return base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        if prefix == "z":
            return base58.b58decode(body.encode("ascii"))
        if prefix == "u":
            return b64url_decode(body)
        if prefix == "f":
            return bytes.fromhex(body)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        if isinstance(exc, EncodingError):
            raise
        raise EncodingError(f"invalid multibase {prefix!r} text: {exc}") from exc
    raise EncodingError(f"unsupported multibase prefix {prefix!r}")
