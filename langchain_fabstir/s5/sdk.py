"""The S5 seed phrase and the second key the Fabstir TypeScript SDK derives for a user.

A Python user who holds the same phrase as the SDK sees the same S5 tree and opens the same
encrypted data. :func:`sdk_seed_phrase` gives the phrase the SDK (sdk-core 1.36) derives
for a private-key login, for a wallet (address + chain id) login, and from a wallet
signature; :func:`sdk_encryption_key` gives the secp256k1 key the SDK derives from that
phrase. Only :mod:`hashlib` and the S5 word list are used: nothing here imports an
Ethereum library.

>>> key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # public test key
>>> phrase = sdk_seed_phrase(key)
>>> phrase
SecretStr('**********')
>>> phrase.get_secret_value()
'often appear toll key magic tissue evident bullet topic push extend quality about object oak'
>>> sdk_encryption_key(phrase).get_secret_value()[:10]
'0x0bbb5341'
"""

from __future__ import annotations

import hashlib
import re

from pydantic import SecretStr

from langchain_fabstir.errors import InvalidKeyError
from langchain_fabstir.s5.seed import (
    SDK_PRIVATE_KEY_DOMAIN,
    SEED_LENGTH,
    entropy_to_phrase,
    sdk_private_key_entropy,
)

__all__ = [
    "SDK_ADDRESS_DOMAIN",
    "SDK_ENCRYPTION_KEY_DOMAIN",
    "SDK_PRIVATE_KEY_DOMAIN",
    "SDK_SEED_MESSAGE",
    "sdk_encryption_key",
    "sdk_entropy",
    "sdk_seed_phrase",
]

SDK_ADDRESS_DOMAIN = "fabstir-s5-seed-v2.1"
"""Text between the lower-case address and the chain id (``deriveEntropyFromAddress``)."""

SDK_SEED_MESSAGE = "Generate S5 seed for Fabstir LLM SDK v2.1 beta"
"""The text a wallet signs (EIP-191 ``personal_sign``) for the signature-based seed."""

SDK_ENCRYPTION_KEY_DOMAIN = "fabstir-encryption-key-from-s5-seed-v1"
"""Suffix appended to the phrase for the encryption key (``deriveEncryptionKeyFromSeed``)."""

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SIGNATURE_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{130})$")


def _secret_text(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _signature_text(signature: str | bytes) -> str:
    """The signature as ethers writes it: ``0x`` + 130 lower-case hex digits."""
    if isinstance(signature, (bytes, bytearray)):
        if len(signature) != 65:
            raise InvalidKeyError(f"a wallet signature is 65 bytes (r||s||v), got {len(signature)}")
        return "0x" + bytes(signature).hex()
    match = _SIGNATURE_RE.match(signature.strip()) if isinstance(signature, str) else None
    if match is None:
        raise InvalidKeyError("a wallet signature must be 65 bytes as 0x-hex (130 hex digits)")
    return "0x" + match.group(1).lower()


def sdk_entropy(
    private_key: SecretStr | str | bytes | None = None,
    *,
    address: str | None = None,
    chain_id: int | None = None,
    signature: str | bytes | None = None,
) -> bytes:
    """The 16 bytes of entropy behind :func:`sdk_seed_phrase` (same arguments)."""
    given = sum(x is not None for x in (private_key, address, signature))
    if given != 1:
        raise TypeError("pass exactly one of private_key, address= (with chain_id=), signature=")
    if private_key is not None:
        return sdk_private_key_entropy(private_key)
    if address is not None:
        if not isinstance(address, str) or not _ADDRESS_RE.match(address):
            raise InvalidKeyError(
                f"address must be 0x and 40 hex digits, got {str(address)[:60]!r}"
            )
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise InvalidKeyError("an address-based seed needs chain_id= (a positive integer)")
        text = address.lower() + SDK_ADDRESS_DOMAIN + str(chain_id)
        digest = hashlib.sha256(text.encode("utf-8")).digest()
    else:
        assert signature is not None
        digest = hashlib.sha256(_signature_text(signature).encode("utf-8")).digest()
    return digest[:SEED_LENGTH]


def sdk_seed_phrase(
    private_key: SecretStr | str | bytes | None = None,
    *,
    address: str | None = None,
    chain_id: int | None = None,
    signature: str | bytes | None = None,
) -> SecretStr:
    """The 15-word S5 seed phrase the Fabstir SDK derives for a user.

    Pass exactly one of:

    * ``private_key`` (``0x``-hex string, :class:`~pydantic.SecretStr` or 32 bytes): the
      SDK's private-key login (``authenticate("privatekey")``, and the EOA key of a smart
      account): ``SHA-256(SDK_PRIVATE_KEY_DOMAIN || key)[:16]``. Secret: the phrase of a key
      is as secret as the key.
    * ``address`` and ``chain_id``: the SDK's MetaMask/signer and Base-account logins,
      ``SHA-256(address.lower() + SDK_ADDRESS_DOMAIN + str(chain_id))[:16]``. Anyone who
      knows the address can compute this phrase (and write that user's S5 files): use it
      only to read or write what such an SDK user keeps, never as your own seed.
    * ``signature``: the SDK's ``generateS5SeedWithoutCache``: the wallet's EIP-191
      signature of :data:`SDK_SEED_MESSAGE` (65 bytes, or ``0x``-hex),
      ``SHA-256(utf8("0x" + lower-case hex))[:16]``.

    The 16 bytes become a phrase as s5.js does it (12 words of 10 bits, one of 8, two
    checksum words from BLAKE3). Returns a :class:`~pydantic.SecretStr` (never shown in
    ``repr`` or logs); :meth:`S5Identity.from_phrase` takes it as is. Malformed input
    raises :class:`~langchain_fabstir.errors.InvalidKeyError` (``INVALID_KEY``) without
    echoing a key.
    """
    entropy = sdk_entropy(private_key, address=address, chain_id=chain_id, signature=signature)
    return SecretStr(entropy_to_phrase(entropy))


def sdk_encryption_key(phrase: SecretStr | str) -> SecretStr:
    """The secp256k1 private key the SDK derives from a seed phrase, as ``0x``-hex.

    ``SHA-256(utf8(phrase + SDK_ENCRYPTION_KEY_DOMAIN))``, the phrase exactly as given (the
    SDK does not normalise it). The SDK uses this one key as its client key (it signs
    ``encrypted_session_init``, so a host sees its address as ``client_address``), as the
    ``recoveryPublicKey`` its hosts seal checkpoint deltas to, and as the key of its
    encrypted S5 records (session groups). Pass it as
    ``SessionManager(recovery_key=...)`` so a Python session uses the same recovery key as
    the SDK would, or wrap it: ``RecoveryKey(key.get_secret_value())``.
    """
    text = _secret_text(phrase)
    if not isinstance(text, str) or not text.strip():
        raise InvalidKeyError("a seed phrase is needed to derive the SDK's encryption key")
    digest = hashlib.sha256((text + SDK_ENCRYPTION_KEY_DOMAIN).encode("utf-8")).digest()
    return SecretStr("0x" + digest.hex())
