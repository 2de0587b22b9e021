"""Ethereum primitives (keccak256, addresses, EIP-55 checksums) without eth-account.

eth-account imports eth-keyfile, which imports py_ecc, which raises the interpreter's
recursion limit to 100,000 and costs half a second of import time. What this package needs
of it is small: keccak256 (``eth_hash``, whose backend loads on first use), addresses of
secp256k1 keys (coincurve) and their EIP-55 spelling. The results are the same as
eth-account's and eth-utils' (the tests compare them).

>>> keccak256(b"").hex()[:16]
'c5d2460186f7233c'
>>> to_checksum_address("0x" + "ab" * 20)
'0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB'
"""

from __future__ import annotations

import re

from coincurve import PublicKey
from eth_hash.auto import keccak as _keccak

__all__ = ["address_of_public_key", "is_address", "keccak256", "to_checksum_address"]

_ADDRESS_RE = re.compile(r"(0x)?[0-9a-f]{40}", re.IGNORECASE | re.ASCII)


def keccak256(data: bytes | bytearray | memoryview) -> bytes:
    """The Keccak-256 digest Ethereum uses (not NIST SHA3-256)."""
    return _keccak(bytes(data))


def is_address(value: object) -> bool:
    """Whether ``value`` is a 20-byte address, hex (``0x`` optional, any case, checksum not
    checked) or raw bytes, as ``eth_utils.is_address`` says."""
    if isinstance(value, (bytes, bytearray)):
        return len(value) == 20
    return isinstance(value, str) and _ADDRESS_RE.fullmatch(value) is not None


def to_checksum_address(address: str | bytes | bytearray) -> str:
    """The EIP-55 spelling of a 20-byte address (hex with or without ``0x``, or bytes).

    A value that is not an address raises ``ValueError``.
    """
    if isinstance(address, (bytes, bytearray)):
        if len(address) != 20:
            raise ValueError(f"an address is 20 bytes, got {len(address)}")
        digits = bytes(address).hex()
    elif isinstance(address, str) and _ADDRESS_RE.fullmatch(address):
        digits = address[-40:].lower()
    else:
        raise ValueError(f"not a 20-byte hex address: {str(address)[:60]!r}")
    mask = keccak256(digits.encode("ascii")).hex()
    pairs = zip(digits, mask[:40], strict=True)
    return "0x" + "".join(c.upper() if int(m, 16) >= 8 else c for c, m in pairs)


def address_of_public_key(public_key: PublicKey) -> str:
    """The checksum address of a secp256k1 public key: last 20 bytes of the keccak256 of
    its uncompressed point (without the ``04`` prefix)."""
    return to_checksum_address(keccak256(public_key.format(compressed=False)[1:])[-20:])
