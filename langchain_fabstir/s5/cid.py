"""S5 blob identifiers (CIDs): BLAKE3 hash plus size, in any multibase form.

Byte layout of the current ("blob") form::

    0x5b 0x82 | 0x1e | blake3(content)[32] | size, little-endian, trailing zeros trimmed

(size 0 is written as one ``00`` byte, like s5.js; an empty size field is accepted.) The
legacy raw form that the Dart node's upload returns, ``0x26 | 0x1f | hash32 | size``, is
accepted by :meth:`CID.parse` and :meth:`CID.from_cid_bytes` and converted to the blob form.

>>> cid = CID.from_bytes(b"Hello, world!")
>>> str(cid)
'blobb53pfycyq6lwes6ogtnjpmhsc75nucnizzye34dyu2cmnz7s7n6mnbu'
>>> cid.size, cid.to_string("f")[:8]
(13, 'f5b821ee')
>>> CID.parse(cid.to_string("z")) == cid
True
>>> cid.matches(b"Hello, world!"), cid.matches(b"Hello, world?")
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import blake3

from langchain_fabstir.errors import InvalidCIDError
from langchain_fabstir.s5.encoding import Base, EncodingError, multibase_decode, multibase_encode

__all__ = [
    "BLOB_PREFIX",
    "CID",
    "LEGACY_RAW_PREFIX",
    "MULTIHASH_BLAKE3",
    "InvalidCIDError",
    "blake3_hash",
]

MULTIHASH_BLAKE3 = 0x1E
MULTIHASH_BLAKE3_DEFAULT = 0x1F
BLOB_PREFIX = b"\x5b\x82"
LEGACY_RAW_PREFIX = 0x26
_MAX_SIZE = 2**64 - 1


def blake3_hash(data: bytes) -> bytes:
    """The 32-byte BLAKE3 digest of ``data``."""
    return blake3.blake3(data).digest()


def _size_to_le(size: int) -> bytes:
    raw = size.to_bytes(8, "little").rstrip(b"\x00")
    return raw or b"\x00"


@dataclass(frozen=True)
class CID:
    """An immutable S5 blob identifier.

    Attributes:
        hash: the 32-byte BLAKE3 digest of the content (without the ``0x1e`` prefix).
        size: the content length in bytes.
    """

    hash: bytes
    size: int

    multihash_prefix: ClassVar[int] = MULTIHASH_BLAKE3

    def __post_init__(self) -> None:
        if not isinstance(self.hash, bytes) or len(self.hash) != 32:
            raise InvalidCIDError("a CID hash must be 32 bytes")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise InvalidCIDError("a CID size must be an int")
        if not 0 <= self.size <= _MAX_SIZE:
            raise InvalidCIDError(f"CID size {self.size} is out of range")

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> CID:
        """The CID of ``data`` (hash it locally with BLAKE3)."""
        return cls(blake3_hash(data), len(data))

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse any multibase form (``b``, ``z``, ``u``, ``f``) of a blob or legacy raw CID."""
        if not isinstance(text, str):
            raise InvalidCIDError("a CID must be a string")
        try:
            raw = multibase_decode(text.strip())
        except EncodingError as exc:
            raise InvalidCIDError(
                f"not a multibase CID: {exc}", details={"excerpt": text[:80]}
            ) from exc
        return cls.from_cid_bytes(raw)

    @classmethod
    def from_cid_bytes(cls, raw: bytes) -> CID:
        """Decode the binary form: the blob form or the legacy raw form (``0x26 0x1f ...``)."""
        if raw[:2] == BLOB_PREFIX:
            body = raw[2:]
        elif raw[:1] == bytes([LEGACY_RAW_PREFIX]):
            body = raw[1:]
        else:
            raise InvalidCIDError("unknown CID type byte", details={"excerpt": raw[:4].hex()})
        if len(body) < 33 or body[0] not in (MULTIHASH_BLAKE3, MULTIHASH_BLAKE3_DEFAULT):
            raise InvalidCIDError("CID does not hold a BLAKE3 multihash of 32 bytes")
        size_bytes = body[33:]
        if len(size_bytes) > 8:
            raise InvalidCIDError("CID size field is longer than 8 bytes")
        return cls(bytes(body[1:33]), int.from_bytes(size_bytes, "little"))

    @classmethod
    def coerce(cls, value: CID | str) -> CID:
        """Accept a :class:`CID` or its string form."""
        return value if isinstance(value, CID) else cls.parse(value)

    # --- encoding -----------------------------------------------------------------

    @property
    def multihash(self) -> bytes:
        """``0x1e || hash``: the 33-byte form used in registry entries and directory links."""
        return bytes([MULTIHASH_BLAKE3]) + self.hash

    def to_bytes(self) -> bytes:
        """The binary blob form ``5b 82 1e hash size``."""
        return BLOB_PREFIX + self.multihash + _size_to_le(self.size)

    def to_legacy_bytes(self) -> bytes:
        """The legacy raw form ``26 1f hash size`` (what the Dart node's upload returns)."""
        return (
            bytes([LEGACY_RAW_PREFIX, MULTIHASH_BLAKE3_DEFAULT])
            + self.hash
            + _size_to_le(self.size)
        )

    def to_string(self, base: Base = "b") -> str:
        """Multibase string of the blob form; ``base`` is one of ``b``, ``z``, ``u``, ``f``."""
        try:
            return multibase_encode(self.to_bytes(), base)
        except EncodingError as exc:
            raise InvalidCIDError(str(exc)) from exc

    def matches(self, data: bytes) -> bool:
        """True when ``data`` has exactly this hash and size."""
        return len(data) == self.size and blake3_hash(data) == self.hash

    def __str__(self) -> str:
        return self.to_string("b")

    def __repr__(self) -> str:
        return f"CID({self.to_string('b')!r})"
