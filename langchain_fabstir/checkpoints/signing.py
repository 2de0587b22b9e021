"""Canonical JSON and Ethereum ``personal_sign`` (EIP-191) signatures.

The few primitives every signed checkpoint object needs, built on **eth-account**:

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
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from pydantic import SecretStr

from langchain_fabstir.errors import CheckpointError

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
PrivateKey = str | bytes | SecretStr | LocalAccount

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
    return str(to_checksum_address(address))


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


def _account(private_key: PrivateKey) -> LocalAccount:
    if isinstance(private_key, LocalAccount):
        return private_key
    raw: str | bytes = (
        private_key.get_secret_value() if isinstance(private_key, SecretStr) else private_key
    )
    try:
        return Account.from_key(raw)
    except (ValueError, TypeError) as exc:
        # Never echo the key itself.
        raise CheckpointError(
            "the signing key is not a valid secp256k1 private key (32 bytes / 0x-hex)",
            details={"reason": "bad_private_key", "error": type(exc).__name__},
        ) from None


def address_of(private_key: PrivateKey) -> str:
    """The checksum address belonging to ``private_key``."""
    return str(_account(private_key).address)


def personal_sign(text: str, private_key: PrivateKey) -> str:
    """EIP-191 ``personal_sign`` of ``text``; returns the 65-byte signature as ``0x``-hex."""
    try:
        message = encode_defunct(text=text)
    except UnicodeEncodeError:
        raise CheckpointError(
            "cannot sign text that is not valid Unicode (lone surrogate)",
            details={"reason": "bad_text"},
        ) from None
    signed = Account.sign_message(message, _account(private_key).key)
    return "0x" + bytes(signed.signature).hex()


def recover_personal_signer(text: str, signature: str | bytes) -> str:
    """The checksum address whose key made ``signature`` over ``text`` (EIP-191).

    A malformed or unrecoverable signature raises :class:`CheckpointError`; note that a
    well-formed signature over *other* text recovers to some unrelated address, so
    callers compare the result with the address they expect.
    """
    sig = normalize_signature(signature)
    try:
        address = Account.recover_message(encode_defunct(text=text), signature=sig)
    except Exception as exc:  # eth-keys raises BadSignature/ValidationError (bare Exceptions)
        raise CheckpointError(
            f"signature cannot be recovered: {exc}"[:200],
            details={"reason": "bad_signature", "error": type(exc).__name__},
        ) from None
    return str(address)
