"""Canonical JSON and Ethereum ``personal_sign`` (EIP-191) signatures.

The few primitives every signed checkpoint object needs, built on **coincurve** (libsecp256k1)
and keccak256 (:mod:`langchain_fabstir._eth`); the signatures and addresses are byte for
byte those of eth-account (RFC 6979 nonces, low ``s``, ``v`` of 27/28), which the tests
check, but eth-account is not imported: it costs half a second and, through py_ecc,
raises the interpreter's recursion limit.

- :func:`canonical_json`: keys sorted at every depth, no spaces, non-ASCII kept as
  UTF-8 (Python's ``json.dumps(x, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)``), so that two parties serialise the same value to the same bytes.
- :func:`personal_sign` / :func:`recover_personal_signer`: EIP-191 over a text, with a
  65-byte ``r||s||v`` signature written as ``0x``-hex.

>>> canonical_json({"b": 1, "a": ["é", {"d": None, "c": True}]})
'{"a":["é",{"c":true,"d":null}],"b":1}'
>>> key = "0x" + "11" * 32
>>> sig = personal_sign("hello", key)
>>> len(sig), recover_personal_signer("hello", sig) == address_of(key)
(132, True)
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Union

import coincurve
from pydantic import SecretStr

from langchain_fabstir._eth import address_of_public_key, keccak256, to_checksum_address
from langchain_fabstir.errors import CheckpointError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = [
    "PrivateKey",
    "address_of",
    "canonical_json",
    "normalize_address",
    "normalize_signature",
    "personal_sign",
    "recover_personal_signer",
]

#: What a signing function accepts as a key: 32 raw bytes, a ``0x``-hex string, a
#: :class:`~pydantic.SecretStr` holding the hex, or an eth-account ``LocalAccount``.
PrivateKey = Union[str, bytes, SecretStr, "LocalAccount", "Signer"]

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SIGNATURE_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")


def canonical_json(value: Any) -> str:
    """Serialise ``value`` the one way every party agrees on (sorted keys, no spaces, UTF-8).

    >>> canonical_json([{"role": "user", "content": "Hi"}])
    '[{"content":"Hi","role":"user"}]'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalize_address(address: str, *, what: str = "address") -> str:
    """Return ``address`` in EIP-55 checksum form; a malformed one is a :class:`CheckpointError`.

    >>> normalize_address("0x" + "ab" * 20)
    '0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB'
    """
    if not isinstance(address, str) or not _ADDRESS_RE.match(address):
        raise CheckpointError(
            f"{what} is not a 20-byte 0x-hex Ethereum address: {str(address)[:60]!r}",
            details={"reason": "bad_address"},
        )
    return to_checksum_address(address)


def normalize_signature(signature: str | bytes, *, what: str = "signature") -> str:
    """Return a 65-byte ``r||s||v`` signature as lower-case ``0x``-hex, or raise.

    >>> normalize_signature(bytes(65)) == "0x" + "00" * 65
    True
    """
    if isinstance(signature, (bytes, bytearray)):
        if len(signature) != 65:
            raise CheckpointError(
                f"{what} must be 65 bytes (r||s||v), got {len(signature)}",
                details={"reason": "bad_signature_format"},
            )
        return "0x" + bytes(signature).hex()
    if not isinstance(signature, str) or not _SIGNATURE_RE.match(signature):
        raise CheckpointError(
            f"{what} must be 65 bytes (r||s||v) as 0x-hex: {str(signature)[:40]!r}",
            details={"reason": "bad_signature_format"},
        )
    return signature.lower()


class Signer:
    """A secp256k1 signing key and its address, made once (see :func:`_account`).

    Its ``repr`` names the address only; the key never appears in a ``repr`` or a log.
    """

    __slots__ = ("_key", "address")

    def __init__(self, key: coincurve.PrivateKey) -> None:
        self._key = key
        self.address = address_of_public_key(key.public_key)

    @property
    def key(self) -> bytes:
        """The 32 raw bytes of the key (what eth-account's ``LocalAccount.key`` gives)."""
        return bytes(self._key.secret)

    def sign_hash(self, digest: bytes) -> bytes:
        """A 65-byte ``r||s||v`` signature of a 32-byte hash (``v`` is 27 or 28)."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])

    def __repr__(self) -> str:
        return f"Signer(address={self.address!r})"


def _key_bytes(raw: str | bytes) -> bytes:
    if isinstance(raw, str):
        text = raw[2:] if raw[:2] in ("0x", "0X") else raw
        if len(text) % 2:
            text = "0" + text  # as eth-account (HexBytes) reads an odd-length hex string
        return bytes.fromhex(text)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    raise TypeError("a private key is bytes or hex")


def _account(private_key: PrivateKey) -> Signer:
    if isinstance(private_key, Signer):
        return private_key
    raw: Any = private_key.get_secret_value() if isinstance(private_key, SecretStr) else private_key
    if not isinstance(raw, (str, bytes, bytearray, memoryview)):
        raw = getattr(raw, "key", raw)  # an eth-account LocalAccount
    try:
        secret = _key_bytes(raw)
        if len(secret) != 32:
            raise ValueError("a private key is 32 bytes")
        return Signer(coincurve.PrivateKey(secret))
    except (ValueError, TypeError) as exc:
        # Never echo the key itself.
        raise CheckpointError(
            "the signing key is not a valid secp256k1 private key (32 bytes / 0x-hex)",
            details={"reason": "bad_private_key", "error": type(exc).__name__},
        ) from None


def address_of(private_key: PrivateKey) -> str:
    """The checksum address belonging to ``private_key``."""
    return _account(private_key).address


def _personal_hash(text: str) -> bytes:
    """EIP-191 version ``E``: keccak256 of the prefix, the byte length in decimal, the text."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(
            "cannot sign text that is not valid Unicode (lone surrogate)",
            details={"reason": "bad_text"},
        ) from None
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


def personal_sign(text: str, private_key: PrivateKey) -> str:
    """EIP-191 ``personal_sign`` of ``text``; returns the 65-byte signature as ``0x``-hex."""
    digest = _personal_hash(text)
    return "0x" + _account(private_key).sign_hash(digest).hex()


def recover_personal_signer(text: str, signature: str | bytes) -> str:
    """The checksum address whose key made ``signature`` over ``text`` (EIP-191).

    A malformed or unrecoverable signature raises :class:`CheckpointError`; note that a
    well-formed signature over *other* text recovers to some unrelated address, so
    callers compare the result with the address they expect.
    """
    sig = bytes.fromhex(normalize_signature(signature)[2:])
    digest = _personal_hash(text)
    v = sig[64]
    try:
        # As eth-account reads v: 0/1, 27/28, or EIP-155's 35+ (chain id folded in).
        if v in (27, 28):
            v -= 27
        elif v >= 35:
            v = (v - 35) % 2
        elif v not in (0, 1):
            raise ValueError(f"v {v} is invalid, must be one of: 0, 1, 27, 28, 35+")
        if not (0 < int.from_bytes(sig[:32], "big") and 0 < int.from_bytes(sig[32:64], "big")):
            raise ValueError("r and s must be positive")
        public_key = coincurve.PublicKey.from_signature_and_message(
            sig[:64] + bytes([v]), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises ValueError or a bare Exception
        raise CheckpointError(
            f"signature cannot be recovered: {exc}"[:200],
            details={"reason": "bad_signature", "error": type(exc).__name__},
        ) from None
    return address_of_public_key(public_key)
