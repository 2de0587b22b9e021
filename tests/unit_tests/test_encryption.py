"""The encrypted wire format (PROTOCOL.md section 4) against an independent implementation.

Every expected value here is computed in the test itself: HKDF with the standard library's
``hmac`` (RFC 5869), XChaCha20-Poly1305 with PyNaCl's bindings directly, secp256k1 with
coincurve directly. The package's functions are only the thing under test.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import nacl.bindings as sodium
import pytest
from coincurve import PrivateKey, PublicKey
from eth_utils import keccak, to_checksum_address

from langchain_fabstir.errors import (
    AnswerTruncatedError,
    ChunkOrderError,
    ChunkReplayError,
    DecryptionFailedError,
    EncryptionError,
    InvalidHexError,
    InvalidNonceSizeError,
    MessageReplayError,
    MissingPayloadError,
)
from langchain_fabstir.wire import encryption as enc

HOST = PrivateKey(bytes.fromhex("11" * 32))
CLIENT = PrivateKey(bytes.fromhex("22" * 32))


def rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def x_coordinate(priv: PrivateKey, pub: bytes) -> bytes:
    return PublicKey(pub).multiply(priv.secret).format(compressed=False)[1:33]


def address(pub: PublicKey) -> str:
    return str(to_checksum_address(keccak(pub.format(compressed=False)[1:])[-20:]))


def test_kdf_and_aead_vectors() -> None:
    shared = bytes(range(32))
    expected = rfc5869(shared, bytes(32), b"")
    assert enc.hkdf_sha256(shared) == expected
    nonce, aad = bytes(range(24)), b"chunk_3"
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(b"Hello", aad, nonce, expected)
    assert enc.xchacha_encrypt(expected, nonce, b"Hello", aad) == sealed
    assert enc.xchacha_decrypt(expected, nonce, sealed, aad) == b"Hello"
    assert len(sealed) == 5 + 16
    assert enc.ecdh_x(CLIENT, HOST.public_key.format()) == x_coordinate(
        HOST, CLIENT.public_key.format()
    )
    delta_key = rfc5869(
        hashlib.sha256(shared).digest(), bytes(32), b"checkpoint-delta-encryption-v1"
    )
    assert enc.checkpoint_delta_key(shared) == delta_key


def test_client_init_opens_independently_and_signs_sha256_of_ciphertext() -> None:
    sealed = enc.seal_session_init(
        enc.host_public_key(HOST), {"jobId": "7", "modelName": "m"}, CLIENT
    )
    p = sealed.payload
    assert p["alg"] == enc.ALG and p["saltHex"] == "00" * 32 and p["aadHex"] == ""
    eph = bytes.fromhex(p["ephPubHex"])
    assert len(eph) == 33 and len(bytes.fromhex(p["nonceHex"])) == 24
    key = rfc5869(x_coordinate(HOST, eph), bytes(32), b"")
    ciphertext = bytes.fromhex(p["ciphertextHex"])
    plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        ciphertext, None, bytes.fromhex(p["nonceHex"]), key
    )
    data = json.loads(plain)
    assert data["jobId"] == "7" and bytes.fromhex(data["sessionKey"]) == sealed.session_key
    sig = bytes.fromhex(p["signatureHex"])
    assert len(sig) == 65 and sig[64] == p["recid"] in (0, 1)
    signer = PublicKey.from_signature_and_message(
        sig, hashlib.sha256(ciphertext).digest(), hasher=None
    )
    assert address(signer) == address(CLIENT.public_key) == sealed.client_address


def _sdk_style_init(session_key: bytes, aad: bytes = b"") -> dict[str, object]:
    """An init built as the TypeScript SDK builds it, without the package."""
    eph = PrivateKey(bytes.fromhex("33" * 32))
    eph_pub = eph.public_key.format()
    host_pub = HOST.public_key.format()
    salt, nonce = bytes(32), bytes.fromhex("44" * 24)
    key = rfc5869(x_coordinate(eph, host_pub), salt, b"")
    body = {
        "sessionKey": session_key.hex(),
        "jobId": "9",
        "modelName": "m",
        "pricePerToken": 0,
        "recoveryPublicKey": "0x" + CLIENT.public_key.format().hex(),
    }
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        json.dumps(body).encode(), aad or None, nonce, key
    )
    digest = hashlib.sha256(
        b"|".join([b"E2EEv1", eph_pub, host_pub, salt, nonce, b""] + ([aad] if aad else []))
    ).digest()
    sig = CLIENT.sign_recoverable(digest, hasher=None)
    return {
        "ephPubHex": eph_pub.hex(),
        "saltHex": salt.hex(),
        "nonceHex": nonce.hex(),
        "ciphertextHex": ct.hex(),
        "signatureHex": sig.hex(),
        "recid": sig[64],
        "alg": enc.ALG,
        "info": "",
        "aadHex": aad.hex(),
    }


@pytest.mark.parametrize("aad", [b"", b"extra"])
def test_host_opens_the_sdk_init_and_recovers_its_digest(aad: bytes) -> None:
    opened = enc.open_session_init(HOST, _sdk_style_init(b"\x05" * 32, aad))
    assert opened.session_key == b"\x05" * 32 and opened.data["jobId"] == "9"
    assert opened.digest == "sdk" and opened.client_address == address(CLIENT.public_key)
    # 27/28 recids (the node takes them too) and r||s with a separate recid.
    p = _sdk_style_init(b"\x05" * 32)
    sig = bytes.fromhex(str(p["signatureHex"]))
    p["signatureHex"] = (sig[:64] + bytes([sig[64] + 27])).hex()
    assert enc.open_session_init(HOST, p).client_address == address(CLIENT.public_key)
    p["signatureHex"] = sig[:64].hex()
    assert enc.open_session_init(HOST, p).digest == "sdk"


def test_session_frames_match_section_4() -> None:
    key = bytes(range(32))
    cipher = enc.SessionCipher(key)
    for n in range(2):
        payload = cipher.seal_message('{"prompt":"hi"}')
        assert bytes.fromhex(payload["aadHex"]) == f"message_{n}".encode()
        plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes.fromhex(payload["ciphertextHex"]),
            f"message_{n}".encode(),
            bytes.fromhex(payload["nonceHex"]),
            key,
        )
        assert plain == b'{"prompt":"hi"}'
    client = enc.SessionCipher(key)
    for i, text in enumerate(["Hé", "llo"]):
        nonce = bytes([i]) * 24
        ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            text.encode(), f"chunk_{i}".encode(), nonce, key
        )
        chunk = {
            "ciphertextHex": ct.hex(),
            "nonceHex": nonce.hex(),
            "aadHex": f"chunk_{i}".encode().hex(),
            "index": i,
        }
        assert client.open_chunk(chunk) == text
    final = cipher.seal_final("stop")
    assert final["aadHex"] == b"encrypted_response_final".hex()
    assert client.open_final(final) == "stop"


def test_bad_input_is_a_typed_error_naming_what_failed() -> None:
    key, other = b"\x01" * 32, b"\x02" * 32
    host = enc.SessionCipher(key)
    chunk = host.seal_chunk("secret", 0)
    with pytest.raises(DecryptionFailedError) as wrong:
        enc.SessionCipher(other).open_chunk(chunk)
    assert "secret" not in str(wrong.value)
    tampered = dict(
        chunk,
        ciphertextHex=("00" if chunk["ciphertextHex"][:2] != "00" else "01")
        + chunk["ciphertextHex"][2:],
    )
    with pytest.raises(DecryptionFailedError):
        enc.SessionCipher(key).open_chunk(tampered)
    with pytest.raises(InvalidNonceSizeError):
        enc.SessionCipher(key).open_chunk(dict(chunk, nonceHex="00" * 12))
    with pytest.raises(InvalidHexError):
        enc.SessionCipher(key).open_chunk(dict(chunk, nonceHex="zz"))
    with pytest.raises(MissingPayloadError):
        enc.SessionCipher(key).open_message(None)
    client = enc.SessionCipher(key)
    assert client.open_chunk(chunk) == "secret"
    with pytest.raises(ChunkOrderError):  # replayed
        client.open_chunk(chunk)
    with pytest.raises(ChunkOrderError):  # skipped ahead
        client.open_chunk(host.seal_chunk("x", 2))
    moved = dict(host.seal_chunk("x", 0), index=1)  # relabelled: its AAD says 0
    with pytest.raises(ChunkOrderError):
        client.open_chunk(moved)
    sealed = enc.seal_session_init(enc.host_public_key(HOST), {"jobId": "1"})
    with pytest.raises(DecryptionFailedError):
        enc.open_session_init(CLIENT, sealed.payload)  # not the host's key
    with pytest.raises(EncryptionError) as bad_key:
        enc.parse_private_key("0x" + "zz" * 32)
    assert "zz" not in str(bad_key.value)


def test_challenge_route_recovers_the_host_key() -> None:
    challenge = bytes(range(32))
    answer = enc.answer_challenge(HOST, challenge)
    assert len(bytes.fromhex(answer["signature"])) == 64
    sig = bytes.fromhex(answer["signature"]) + bytes([answer["recid"]])
    pub = PublicKey.from_signature_and_message(sig, hashlib.sha256(challenge).digest(), hasher=None)
    assert pub.format() == HOST.public_key.format()
    assert enc.recover_challenge_key(challenge, answer) == enc.host_public_key(HOST)


def test_a_chunk_nonce_is_refused_the_second_time_under_a_key() -> None:
    """A chunk of answer 1 at the same index of answer 2 (the AAD cannot tell them apart)
    and a replayed final frame are refused, whichever path (short or checked) opens them;
    an uppercase copy of the nonce is the same nonce."""
    key = bytes(range(32))
    host, client = enc.SessionCipher(key), enc.SessionCipher(key)
    first = host.seal_chunk("one", 0)
    final = host.seal_final("stop")
    assert client.open_chunk(first) == "one" and client.open_final(final) == "stop"
    for replay in (first, dict(first, nonceHex=first["nonceHex"].upper()), {**first, "x": 1}):
        client.expect_chunk(0)
        with pytest.raises(ChunkReplayError):
            client.open_chunk(replay)
    with pytest.raises(ChunkReplayError):
        client.open_final(final)
    count = host.seal_count(3)
    client.expect_chunk(2)
    with pytest.raises(AnswerTruncatedError):
        client.check_count(count)


def test_message_counters_must_increase_under_a_key() -> None:
    key = bytes(range(32))
    client, host = enc.SessionCipher(key), enc.SessionCipher(key)
    m0, m1 = client.seal_message("a"), client.seal_message("b")
    assert host.open_message(m1) == "b"
    for replay in (m1, m0):
        with pytest.raises(MessageReplayError):
            host.open_message(replay)
    unnumbered = enc._seal(key, b"c", b"")
    with pytest.raises(MessageReplayError):
        host.open_message(unnumbered)
    assert host.open_message(client.seal_message("d")) == "d"


def test_a_flood_of_inits_does_not_push_out_a_key_that_carried_a_prompt() -> None:
    ledger = enc.SessionKeyLedger(max_used=4, max_idle=2)
    victim = b"v" * 32
    assert ledger.claim(victim)
    ledger.used(victim)
    for i in range(100):  # inits that never carry a message
        assert ledger.claim(i.to_bytes(32, "big"))
    assert not ledger.claim(victim) and len(ledger) == 3
    for i in range(4):  # keys that carried a prompt do push it out, in order
        ledger.used((1000 + i).to_bytes(32, "big"))
    assert ledger.claim(victim)
