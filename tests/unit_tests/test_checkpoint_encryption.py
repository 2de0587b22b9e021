"""Encrypted checkpoint deltas (PROTOCOL.md section 4.5), checked against an independent
implementation written here with the libraries directly (coincurve for the point,
``hashlib``, ``cryptography``'s HKDF, PyNaCl's XChaCha20-Poly1305, eth-account for EIP-191),
not with the package's functions. The envelope is the one deployed nodes (v8.12+) write."""

from __future__ import annotations

import hashlib
import json
import pickle

import nacl.bindings as sodium
import pytest
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from langchain_fabstir.checkpoints import canonical_json, sign_host_delta
from langchain_fabstir.checkpoints.published import decrypt_host_delta, encrypt_host_delta
from langchain_fabstir.errors import (
    CheckpointError,
    DecryptionFailedError,
    InvalidEncryptedPayloadError,
    InvalidHexError,
    InvalidNonceSizeError,
)
from langchain_fabstir.wire.encryption import (
    CHECKPOINT_ENVELOPE_FIELDS,
    RecoveryKey,
    open_checkpoint_delta,
)

USER = PrivateKey(bytes.fromhex("1234567890abcdef" * 4))
EPHEMERAL = PrivateKey(bytes.fromhex("fedcba0987654321" * 4))
HOST_KEY = "0x" + "42" * 32
HOST = Account.from_key(HOST_KEY).address


def independent_key(private: PrivateKey, public: bytes) -> bytes:
    """sha256(x of private*public) -> HKDF-SHA256(salt none, info checkpoint-...-v1)."""
    x = PublicKey(public).multiply(private.secret).format(compressed=False)[1:33]
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"checkpoint-delta-encryption-v1",
    )
    return hkdf.derive(hashlib.sha256(x).digest())


def delta() -> dict[str, object]:
    return sign_host_delta(
        {
            "checkpointIndex": 0,
            "startToken": 0,
            "endToken": 2,
            "sessionId": "s1",
            "proofHash": "0x" + "00" * 32,
            "messages": [
                {"role": "user", "content": "Où est la clé?", "timestamp": 1},
                {"role": "assistant", "content": "Sous le paillasson", "timestamp": 2},
            ],
        },
        HOST_KEY,
    )


def test_kdf_vector_both_sides() -> None:
    user_pub = USER.public_key.format(compressed=True)
    eph_pub = EPHEMERAL.public_key.format(compressed=True)
    expected = independent_key(EPHEMERAL, user_pub)  # the host's side
    assert expected == independent_key(USER, eph_pub)  # the client's side agrees
    # Fixed once from the independent implementation above (a regression anchor).
    assert expected.hex() == "fc6c736eb11fd38ae7daee18d3a17b2c3357103f1767dc9ff53c9a079a4eccca"
    assert RecoveryKey(USER.secret).delta_key(eph_pub) == expected
    assert RecoveryKey(USER.secret).delta_key("0x" + eph_pub.hex()) == expected


def test_host_envelope_opens_independently() -> None:
    signed = delta()
    user = RecoveryKey(USER.secret)
    envelope = encrypt_host_delta(signed, user.public_key, HOST_KEY)
    assert tuple(envelope) == CHECKPOINT_ENVELOPE_FIELDS
    assert envelope["encrypted"] is True and envelope["version"] == 1
    assert envelope["userRecoveryPubKey"] == "0x" + USER.public_key.format().hex()
    eph = bytes.fromhex(envelope["ephemeralPublicKey"][2:])
    nonce = bytes.fromhex(envelope["nonce"])
    ciphertext = bytes.fromhex(envelope["ciphertext"])
    assert len(eph) == 33 and len(nonce) == 24 and not envelope["nonce"].startswith("0x")
    plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        ciphertext, None, nonce, independent_key(USER, eph)
    )
    assert plain == canonical_json(signed).encode()  # sorted keys, no spaces, UTF-8 kept
    assert b"Sous le paillasson" not in json.dumps(envelope).encode()
    # hostSignature: EIP-191 over the lowercase hex (no 0x) of keccak256(ciphertext).
    signer = Account.recover_message(
        encode_defunct(text=keccak(ciphertext).hex()), signature=envelope["hostSignature"]
    )
    assert signer == HOST
    # A fresh ephemeral key and nonce for every delta.
    again = encrypt_host_delta(signed, user.public_key, HOST_KEY)
    assert again["ephemeralPublicKey"] != envelope["ephemeralPublicKey"]
    assert again["nonce"] != envelope["nonce"]


def test_independent_envelope_opens_with_the_package() -> None:
    signed = delta()
    nonce = bytes(range(24))
    key = independent_key(EPHEMERAL, USER.public_key.format())
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        json.dumps(signed).encode(), None, nonce, key
    )
    signature = Account.sign_message(
        encode_defunct(text=keccak(ciphertext).hex()), private_key=HOST_KEY
    ).signature
    envelope = {
        "encrypted": True,
        "version": 1,
        "userRecoveryPubKey": "0x" + USER.public_key.format().hex(),
        "ephemeralPublicKey": "0x" + EPHEMERAL.public_key.format().hex(),
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
        "hostSignature": "0x" + bytes(signature).hex(),
    }
    assert decrypt_host_delta(envelope, RecoveryKey(USER.secret), HOST) == signed

    # Bad input: each a typed error with a stable code, never a crash.
    other = RecoveryKey()
    with pytest.raises(DecryptionFailedError) as err:
        decrypt_host_delta(envelope, other, HOST)
    assert err.value.code == "DECRYPTION_FAILED" and err.value.details["reason"] == "wrong_key"
    flipped = bytearray(ciphertext)
    flipped[5] ^= 1
    with pytest.raises(DecryptionFailedError) as err:
        open_checkpoint_delta({**envelope, "ciphertext": flipped.hex()}, RecoveryKey(USER.secret))
    assert err.value.details["reason"] == "tampered"
    with pytest.raises(CheckpointError) as cp:  # the host signature no longer covers it
        decrypt_host_delta(
            {**envelope, "ciphertext": flipped.hex()}, RecoveryKey(USER.secret), HOST
        )
    assert cp.value.details["reason"] == "wrong_signer"
    user = RecoveryKey(USER.secret)
    with pytest.raises(InvalidNonceSizeError):
        open_checkpoint_delta({**envelope, "nonce": "00" * 12}, user)
    with pytest.raises(InvalidHexError):
        open_checkpoint_delta({**envelope, "nonce": "zz"}, user)
    with pytest.raises(InvalidEncryptedPayloadError):
        open_checkpoint_delta({**envelope, "version": 2}, user)
    with pytest.raises(InvalidEncryptedPayloadError):
        open_checkpoint_delta({**envelope, "encrypted": False}, user)
    with pytest.raises(InvalidEncryptedPayloadError):
        open_checkpoint_delta({k: v for k, v in envelope.items() if k != "ciphertext"}, user)


def test_recovery_key_never_shows_its_secret() -> None:
    key = RecoveryKey(USER.secret)
    secret = USER.secret.hex()
    assert secret not in repr(key) and secret not in str(key) and secret not in f"{key!r}"
    assert key.public_key in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert key == RecoveryKey("0x" + secret) and key != RecoveryKey()
