"""S5 key derivation and the "mutable" encryption format (pynacl XChaCha20-Poly1305).

Key derivation (S5 spec, ``key-derivation``):

* ``derive_hash_int(b, t) = blake3(b || u32 t little-endian, zero-padded to 32 bytes)``
* ``derive_hash_string(b, s) = blake3(b || blake3(utf8(s)))``

Mutable encryption (s5.js ``encryptMutableBytes``)::

    8d 01 | nonce[24] | XChaCha20-Poly1305(key, nonce, u32le(len) || data || zero padding)

with the padding chosen so that the whole blob is a valid padded size (multiples of 4 KiB up to
80 KiB, then coarser; see :func:`pad_file_size`).

>>> key = derive_hash_int(bytes(32), 1)
>>> blob = encrypt_mutable(b"secret", key)
>>> blob[:2].hex(), len(blob) % 4096
('8d01', 0)
>>> decrypt_mutable(blob, key)
b'secret'
"""

from __future__ import annotations

import os

import nacl.bindings
import nacl.exceptions

from langchain_fabstir.errors import IntegrityError
from langchain_fabstir.s5.cid import blake3_hash

__all__ = [
    "ENCRYPTION_HEADER",
    "check_padded_block",
    "decrypt_mutable",
    "derive_hash_int",
    "derive_hash_string",
    "encrypt_mutable",
    "pad_file_size",
]

ENCRYPTION_HEADER = b"\x8d\x01"
_NONCE = 24
_TAG = 16
_KIB = 1024
# 16-byte tag + 4-byte length + 24-byte nonce + 2-byte header
_OVERHEAD = _TAG + 4 + _NONCE + 2


def derive_hash_int(base: bytes, tweak: int) -> bytes:
    """``blake3(base || tweak as 32-byte little-endian)`` (S5 ``deriveHashInt``)."""
    if len(base) != 32:
        raise ValueError("derivation base must be 32 bytes")
    return blake3_hash(base + tweak.to_bytes(32, "little"))


def derive_hash_string(base: bytes, tweak: str | bytes) -> bytes:
    """``blake3(base || blake3(tweak))`` with ``tweak`` UTF-8 encoded (S5 ``deriveHashString``)."""
    if len(base) != 32:
        raise ValueError("derivation base must be 32 bytes")
    raw = tweak.encode("utf-8") if isinstance(tweak, str) else tweak
    return blake3_hash(base + blake3_hash(raw))


def pad_file_size(size: int) -> int:
    """Round ``size`` up to the next S5 pad block (4 KiB blocks up to 80 KiB, then doubling).

    >>> pad_file_size(1), pad_file_size(4096), pad_file_size(5 * 1024), pad_file_size(105 * 1024)
    (4096, 4096, 8192, 114688)
    """
    for n in range(53):
        if size <= (1 << n) * 80 * _KIB:
            block = (1 << n) * 4 * _KIB
            return size if size % block == 0 else size - size % block + block
    raise ValueError("size too large to pad")


def check_padded_block(size: int) -> bool:
    """True when ``size`` is exactly a pad-block size (see :func:`pad_file_size`)."""
    return size > 0 and pad_file_size(size) == size


def encrypt_mutable(data: bytes, key: bytes, *, nonce: bytes | None = None) -> bytes:
    """Encrypt ``data`` in the S5 mutable format with a fresh random 24-byte nonce."""
    if len(key) != 32:
        raise ValueError("encryption key must be 32 bytes")
    nonce = os.urandom(_NONCE) if nonce is None else nonce
    final_size = pad_file_size(len(data) + _OVERHEAD) - _OVERHEAD
    plaintext = len(data).to_bytes(4, "little") + data + bytes(final_size - len(data))
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, None, nonce, key)
    return ENCRYPTION_HEADER + nonce + sealed


def decrypt_mutable(blob: bytes, key: bytes) -> bytes:
    """Decrypt an S5 mutable-format blob; raise :class:`IntegrityError` if it does not open."""
    if len(key) != 32:
        raise ValueError("encryption key must be 32 bytes")
    if len(blob) < _OVERHEAD or blob[:2] != ENCRYPTION_HEADER:
        raise IntegrityError("not an S5 mutable-encrypted blob (bad header)")
    try:
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[2 + _NONCE :], None, blob[2 : 2 + _NONCE], key
        )
    except nacl.exceptions.CryptoError as exc:
        raise IntegrityError(
            "encrypted blob failed authentication (wrong key or tampered)"
        ) from exc
    length = int.from_bytes(plain[:4], "little")
    if length > len(plain) - 4:
        raise IntegrityError("encrypted blob declares a length beyond its contents")
    return plain[4 : 4 + length]
