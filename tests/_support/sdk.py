"""An ``encrypted_session_init`` built as sdk-core builds it, by hand (no package code),
so that the tests check the host against the SDK's own encoding."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import nacl.bindings as sodium
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALG = "secp256k1-ecdh(ephemeral→static)+hkdf(sha256)+xchacha20-poly1305"


def sdk_sealed_init(
    host_pub33: bytes,
    plaintext: bytes,
    session_id: str,
    *,
    client: PrivateKey | None = None,
    frame_id: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """The ``encrypted_session_init`` frame sealing ``plaintext`` as it is to the host's
    33-byte key (an ephemeral ECDH key, HKDF-SHA256, XChaCha20-Poly1305), signed by
    ``client`` (a fresh key by default) over sdk-core's own digest; and the AEAD key."""
    client = client or PrivateKey()
    eph = PrivateKey()
    eph_pub = eph.public_key.format()
    shared = PublicKey(host_pub33).multiply(eph.secret).format(compressed=False)[1:33]
    salt, nonce = bytes(32), secrets.token_bytes(24)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"").derive(shared)
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, None, nonce, key)
    digest = hashlib.sha256(b"|".join([b"E2EEv1", eph_pub, host_pub33, salt, nonce, b""])).digest()
    sig = client.sign_recoverable(digest, hasher=None)
    payload = {
        "ephPubHex": eph_pub.hex(),
        "saltHex": salt.hex(),
        "nonceHex": nonce.hex(),
        "ciphertextHex": ct.hex(),
        "signatureHex": sig.hex(),
        "recid": sig[64],
        "alg": ALG,
        "info": "",
        "aadHex": "",
    }
    frame: dict[str, Any] = {
        "type": "encrypted_session_init",
        "chain_id": 84532,
        "session_id": session_id,
        "job_id": session_id,
    }
    if frame_id is not None:
        frame["id"] = frame_id
    frame["payload"] = payload
    return frame, key
