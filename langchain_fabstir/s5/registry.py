"""S5 registry entries: small signed, revisioned records that point at blobs.

* Registry key: ``0xed || ed25519_public_key`` (33 bytes).
* Signed message: ``0x07 || u64le(revision) || u8(len(data)) || data``.
* Wire form: ``0x07 || pk33 || u64le(revision) || u8(len) || data || signature64``.
* ``data`` is at most 64 bytes; a writer must use a revision above the stored one.

>>> kp = Ed25519KeyPair.from_seed(bytes(32))
>>> entry = RegistryEntry.create(kp, b"\\x1e" + bytes(32), revision=1)
>>> entry.verify()
True
>>> RegistryEntry.from_wire(entry.to_wire()) == entry
True
>>> RegistryEntry.from_json(entry.to_json()) == entry
True
>>> entry.with_signature(bytes(64)).verify()
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from langchain_fabstir.errors import IntegrityError, InvalidRegistryEntryError
from langchain_fabstir.s5.encoding import EncodingError, b64url_decode, b64url_encode

__all__ = [
    "MAX_DATA_LENGTH",
    "MAX_REVISION",
    "MKEY_ED25519",
    "RECORD_TYPE_REGISTRY_ENTRY",
    "Ed25519KeyPair",
    "InvalidRegistryEntryError",
    "RegistryEntry",
    "signed_message",
]

MKEY_ED25519 = 0xED
RECORD_TYPE_REGISTRY_ENTRY = 0x07
MAX_DATA_LENGTH = 64
MAX_REVISION = 2**64 - 1


class Ed25519KeyPair:
    """An ed25519 key pair derived from a 32-byte seed (pynacl).

    The seed is secret: it never appears in ``repr``.

    >>> kp = Ed25519KeyPair.from_seed(bytes(32))
    >>> len(kp.public_key), kp.registry_key[0] == 0xED
    (32, True)
    >>> "seed" in repr(kp)
    False
    """

    __slots__ = ("_signing_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519KeyPair:
        """Key pair whose private key is the 32-byte ``seed`` (as s5.js does)."""
        if len(seed) != 32:
            raise ValueError("an ed25519 seed must be 32 bytes")
        return cls(nacl.signing.SigningKey(bytes(seed)))

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return bytes(self._signing_key.verify_key)

    @property
    def registry_key(self) -> bytes:
        """``0xed || public_key``: the 33-byte key of this pair's registry entry."""
        return bytes([MKEY_ED25519]) + self.public_key

    def sign(self, message: bytes) -> bytes:
        """The detached 64-byte signature of ``message``."""
        return bytes(self._signing_key.sign(message).signature)

    def __repr__(self) -> str:
        return f"Ed25519KeyPair(public_key={self.public_key.hex()})"


def signed_message(revision: int, data: bytes) -> bytes:
    """``0x07 || u64le(revision) || u8(len(data)) || data``: what a registry signature covers."""
    return (
        bytes([RECORD_TYPE_REGISTRY_ENTRY])
        + revision.to_bytes(8, "little")
        + bytes([len(data)])
        + data
    )


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``message`` by ``public_key``."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class RegistryEntry:
    """One signed registry record.

    Attributes:
        pk: the 33-byte registry key (``0xed || ed25519 public key``).
        revision: unsigned 64-bit revision; a new write must exceed the stored one.
        data: up to 64 bytes (for directories: ``0x1e || blake3(directory blob)``).
        signature: ed25519 signature (64 bytes) of :func:`signed_message`.
    """

    pk: bytes
    revision: int
    data: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.pk) != 33 or self.pk[0] != MKEY_ED25519:
            raise InvalidRegistryEntryError("registry key must be 0xed followed by 32 bytes")
        if isinstance(self.revision, bool) or not isinstance(self.revision, int):
            raise InvalidRegistryEntryError("revision must be an integer")
        if not 0 <= self.revision <= MAX_REVISION:
            raise InvalidRegistryEntryError("revision must fit in an unsigned 64-bit integer")
        if len(self.data) > MAX_DATA_LENGTH:
            raise InvalidRegistryEntryError(
                f"registry data is {len(self.data)} bytes; at most {MAX_DATA_LENGTH} allowed"
            )
        if len(self.signature) != 64:
            raise InvalidRegistryEntryError("registry signature must be 64 bytes")

    @classmethod
    def create(cls, key_pair: Ed25519KeyPair, data: bytes, revision: int) -> RegistryEntry:
        """Sign ``data`` at ``revision`` with ``key_pair``."""
        if len(data) > MAX_DATA_LENGTH:
            raise InvalidRegistryEntryError(
                f"registry data is {len(data)} bytes; at most {MAX_DATA_LENGTH} allowed"
            )
        if not 0 <= revision <= MAX_REVISION:
            raise InvalidRegistryEntryError("revision must fit in an unsigned 64-bit integer")
        sig = key_pair.sign(signed_message(revision, data))
        return cls(key_pair.registry_key, revision, bytes(data), sig)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte ed25519 public key."""
        return self.pk[1:]

    def verify(self) -> bool:
        """True when the signature is valid for ``pk``, ``revision`` and ``data``."""
        return verify_ed25519(
            self.public_key, signed_message(self.revision, self.data), self.signature
        )

    def verified(self) -> RegistryEntry:
        """Return ``self`` if the signature verifies, else raise :class:`IntegrityError`."""
        if not self.verify():
            raise IntegrityError(
                "registry entry signature does not verify",
                details={"pk": b64url_encode(self.pk), "revision": self.revision},
            )
        return self

    def with_signature(self, signature: bytes) -> RegistryEntry:
        """A copy with another signature (for tests and tooling)."""
        return RegistryEntry(self.pk, self.revision, self.data, signature)

    # --- wire and JSON forms ------------------------------------------------------

    def to_wire(self) -> bytes:
        """``0x07 || pk33 || u64le(rev) || u8(len) || data || sig64``."""
        return (
            bytes([RECORD_TYPE_REGISTRY_ENTRY])
            + self.pk
            + self.revision.to_bytes(8, "little")
            + bytes([len(self.data)])
            + self.data
            + self.signature
        )

    @classmethod
    def from_wire(cls, raw: bytes) -> RegistryEntry:
        """Parse the wire form; raise :class:`InvalidRegistryEntryError` if malformed."""
        if len(raw) < 1 + 33 + 8 + 1 + 64 or raw[0] != RECORD_TYPE_REGISTRY_ENTRY:
            raise InvalidRegistryEntryError("not a registry entry in wire form")
        length = raw[42]
        if len(raw) != 43 + length + 64:
            raise InvalidRegistryEntryError("registry entry wire form has a wrong length")
        return cls(
            bytes(raw[1:34]),
            int.from_bytes(raw[34:42], "little"),
            bytes(raw[43 : 43 + length]),
            bytes(raw[43 + length :]),
        )

    def to_json(self) -> dict[str, Any]:
        """The portal's JSON form: ``{"pk", "revision", "data", "signature"}`` (base64url)."""
        return {
            "pk": b64url_encode(self.pk),
            "revision": self.revision,
            "data": b64url_encode(self.data),
            "signature": b64url_encode(self.signature),
        }

    @classmethod
    def from_json(cls, obj: Any) -> RegistryEntry:
        """Parse the portal's JSON form; raise :class:`InvalidRegistryEntryError` if malformed."""
        if not isinstance(obj, dict):
            raise InvalidRegistryEntryError("registry entry JSON must be an object")
        try:
            revision = obj["revision"]
            if isinstance(revision, bool) or not isinstance(revision, int):
                raise InvalidRegistryEntryError("registry entry revision must be an integer")
            return cls(
                b64url_decode(obj["pk"]),
                revision,
                b64url_decode(obj["data"]),
                b64url_decode(obj["signature"]),
            )
        except KeyError as exc:
            raise InvalidRegistryEntryError(f"registry entry JSON lacks {exc}") from exc
        except EncodingError as exc:
            raise InvalidRegistryEntryError(f"registry entry JSON: {exc}") from exc
