"""The encrypted mode of ``/v1/ws`` (PROTOCOL.md section 4), as pure functions. No I/O here.

Shared by the client (:mod:`langchain_fabstir.sessions`) and the reference host, so that the
two cannot drift apart. Every primitive comes from a well-kept library: secp256k1 (ECDH,
recoverable signatures) from ``coincurve``, HKDF-SHA256 from ``cryptography``,
XChaCha20-Poly1305 from PyNaCl (libsodium).

:func:`seal_session_init` / :func:`open_session_init` (the session init),
:class:`SessionCipher` (the frames under the session key, with a round trip),
:class:`SessionKeyLedger` (replayed inits), :class:`RecoveryKey`,
:func:`seal_checkpoint_delta` / :func:`open_checkpoint_delta` (S5 checkpoint deltas).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import nacl.bindings
import nacl.exceptions
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from langchain_fabstir._eth import keccak256 as keccak
from langchain_fabstir._eth import to_checksum_address
from langchain_fabstir._json import dumps_utf8, loads_untrusted
from langchain_fabstir.errors import (
    AnswerTruncatedError,
    ChunkOrderError,
    ChunkReplayError,
    DecryptionFailedError,
    EncryptionError,
    InvalidEncryptedPayloadError,
    InvalidHexError,
    InvalidNonceSizeError,
    MessageReplayError,
    MissingPayloadError,
    SessionKeyExhaustedError,
)

__all__ = [
    "ALG",
    "CHECKPOINT_ENVELOPE_FIELDS",
    "CHECKPOINT_INFO",
    "COUNT_AAD",
    "FINAL_AAD",
    "IMAGE_AAD",
    "KEY_SIZE",
    "NONCE_SIZE",
    "OpenedInit",
    "PrivateKey",
    "RecoveryKey",
    "SealedInit",
    "SessionCipher",
    "SessionKeyLedger",
    "address_of_public_key",
    "answer_challenge",
    "checkpoint_delta_key",
    "ciphertext_digest",
    "ecdh_x",
    "hkdf_sha256",
    "host_public_key",
    "open_checkpoint_delta",
    "open_session_init",
    "parse_private_key",
    "parse_public_key",
    "recover_challenge_key",
    "sdk_init_digest",
    "seal_checkpoint_delta",
    "seal_session_init",
    "xchacha_decrypt",
    "xchacha_encrypt",
]

ALG = "secp256k1-ecdh(ephemeral→static)+hkdf(sha256)+xchacha20-poly1305"
NONCE_SIZE = 24
KEY_SIZE = 32
FINAL_AAD = b"encrypted_response_final"
COUNT_AAD = b"encrypted_response_chunks"
"""AAD of the sealed chunk count (the ``chunk_count`` extension of the reference host)."""
IMAGE_AAD = b"encrypted_image_response"
"""AAD of the ``encrypted_response`` that answers with an image (PROTOCOL.md 6.3)."""
CHECKPOINT_INFO = b"checkpoint-delta-encryption-v1"
_ZERO_SALT = bytes(32)


# --- keys ---------------------------------------------------------------------------------


def parse_private_key(key: str | bytes | PrivateKey) -> PrivateKey:
    """A secp256k1 private key from 32 bytes or (``0x``-)hex.

    >>> parse_private_key("0x" + "01" * 32).public_key.format().hex()[:4]
    '031b'
    >>> parse_private_key("zz").public_key
    Traceback (most recent call last):
    ...
    langchain_fabstir.errors.EncryptionError: [ENCRYPTION_ERROR] the private key is not 32 ...
    """
    if isinstance(key, PrivateKey):
        return key
    raw = key if isinstance(key, bytes) else _unhex(key, "private key", quiet=True)
    if len(raw) != 32:
        raise EncryptionError("the private key is not 32 bytes of hex")
    try:
        return PrivateKey(raw)
    except ValueError:
        raise EncryptionError("the private key is out of range for secp256k1") from None


def parse_public_key(key: str | bytes) -> bytes:
    """The 33-byte compressed form of a secp256k1 public key given compressed or
    uncompressed, as bytes or (``0x``-)hex.

    >>> parse_public_key(host_public_key(PrivateKey(b"\\x01" * 32)))[:1].hex()
    '03'
    """
    raw = key if isinstance(key, bytes) else _unhex(key, "host public key")
    try:
        return PublicKey(raw).format(compressed=True)
    except (ValueError, TypeError):
        raise InvalidEncryptedPayloadError(
            f"not a secp256k1 public key ({len(raw)} bytes)",
            details={"field": "public_key"},
        ) from None


def host_public_key(key: PrivateKey) -> str:
    """The compressed public key as ``0x``-hex, as hosts announce it."""
    return "0x" + key.public_key.format(compressed=True).hex()


def address_of_public_key(key: str | bytes | PublicKey) -> str:
    """The checksum Ethereum address of a secp256k1 public key.

    >>> address_of_public_key(PrivateKey(b"\\x01" * 32).public_key)
    '0x1a642f0E3c3aF545E7AcBD38b07251B3990914F1'
    """
    pub = key if isinstance(key, PublicKey) else PublicKey(parse_public_key(key))
    return str(to_checksum_address(keccak(pub.format(compressed=False)[1:])[-20:]))


def ecdh_x(private: PrivateKey, public: bytes) -> bytes:
    """The 32-byte x-coordinate of ``private * public`` (not libsecp256k1's hashed ECDH)."""
    point = PublicKey(public).multiply(private.secret)
    return point.format(compressed=False)[1:33]


def hkdf_sha256(
    ikm: bytes, *, salt: bytes = _ZERO_SALT, info: bytes = b"", length: int = 32
) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def checkpoint_delta_key(shared_x: bytes) -> bytes:
    """The key of one encrypted checkpoint delta (section 4.5) from the x-coordinate of
    ``ephemeral * recoveryPublicKey``: ``HKDF-SHA256(sha256(x), salt = none (32 zero
    bytes), info = "checkpoint-delta-encryption-v1")``."""
    return hkdf_sha256(hashlib.sha256(shared_x).digest(), info=CHECKPOINT_INFO)


# --- AEAD ---------------------------------------------------------------------------------


# The AEAD runs once per streamed token on both sides. ``nacl.bindings``' wrappers spend
# more time checking and formatting their arguments than libsodium spends on a token, so
# the per-token path calls the same libsodium functions through PyNaCl's own cffi module,
# with the sizes checked here; the public wrappers are the fallback (and the reference the
# tests compare with).
try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without its cffi module
    _ffi = _lib = None
_TAG = 16


def _aead_open(ciphertext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """libsodium ``crypto_aead_xchacha20poly1305_ietf_decrypt``; ``CryptoError`` on failure."""
    size = len(ciphertext) - _TAG
    if _lib is None or size < 0 or len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        return bytes(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, aad or None, nonce, key
            )
        )
    out = _ffi.new("unsigned char[]", size or 1)
    status = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, _ffi.NULL, _ffi.NULL, ciphertext, len(ciphertext), aad, len(aad), nonce, key
    )
    if status != 0:
        raise nacl.exceptions.CryptoError("Decryption failed. Ciphertext failed verification")
    return bytes(_ffi.buffer(out, size))


def _aead_seal(plaintext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """libsodium ``crypto_aead_xchacha20poly1305_ietf_encrypt`` (tag appended)."""
    if _lib is None or len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        return bytes(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
                plaintext, aad or None, nonce, key
            )
        )
    size = len(plaintext) + _TAG
    out = _ffi.new("unsigned char[]", size)
    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, _ffi.NULL, plaintext, len(plaintext), aad, len(aad), _ffi.NULL, nonce, key
    )
    return bytes(_ffi.buffer(out, size))


def xchacha_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """XChaCha20-Poly1305 (IETF), the 16-byte tag appended."""
    return _aead_seal(plaintext, aad, nonce, key)


def xchacha_decrypt(
    key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"", *, what: str = "frame"
) -> bytes:
    """Decrypt and authenticate; a wrong key or any changed byte -> ``DECRYPTION_FAILED``."""
    if len(nonce) != NONCE_SIZE:
        raise InvalidNonceSizeError(
            f"the {what} has a {len(nonce)}-byte nonce (XChaCha20-Poly1305 takes 24)",
            details={"field": "nonceHex", "size": len(nonce)},
        )
    try:
        return _aead_open(ciphertext, aad, nonce, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptionFailedError(
            f"the {what} did not decrypt: a wrong session key, or the ciphertext, nonce or "
            "AAD was changed on the way",
            details={"what": what},
        ) from None


def _unhex(value: Any, field: str, *, quiet: bool = False) -> bytes:
    if not isinstance(value, str):
        raise InvalidEncryptedPayloadError(
            f"{field} is missing or not a hex string", details={"field": field}
        )
    text = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        return bytes.fromhex(text)
    except ValueError:
        if quiet:  # never quote a secret
            raise EncryptionError(f"the {field} is not 32 bytes of hex") from None
        raise InvalidHexError(f"{field} is not valid hex", details={"field": field}) from None


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> dict[str, str]:
    nonce = secrets.token_bytes(NONCE_SIZE)
    return {
        "ciphertextHex": xchacha_encrypt(key, nonce, plaintext, aad).hex(),
        "nonceHex": nonce.hex(),
        "aadHex": aad.hex(),
    }


def _open(key: bytes, payload: Any, aad: bytes, what: str) -> bytes:
    if not isinstance(payload, Mapping):
        raise MissingPayloadError(f"the {what} has no payload object", details={"field": "payload"})
    nonce = _unhex(payload.get("nonceHex"), "nonceHex")
    ciphertext = _unhex(payload.get("ciphertextHex"), "ciphertextHex")
    return xchacha_decrypt(key, nonce, ciphertext, aad, what=what)


# --- encrypted_session_init -----------------------------------------------------------------


def ciphertext_digest(ciphertext: bytes) -> bytes:
    """What deployed nodes recover the client's address from: ``sha256(ciphertext)``."""
    return hashlib.sha256(ciphertext).digest()


def sdk_init_digest(
    eph_pub: bytes, host_pub: bytes, salt: bytes, nonce: bytes, info: bytes = b"", aad: bytes = b""
) -> bytes:
    """The TypeScript SDK's digest: ``sha256("E2EEv1|" eph "|" host "|" salt "|" nonce "|"
    info ["|" aad])``."""
    parts = [b"E2EEv1", eph_pub, host_pub, salt, nonce, info]
    if aad:
        parts.append(aad)
    return hashlib.sha256(b"|".join(parts)).digest()


@dataclass(frozen=True)
class SealedInit:
    """An ``encrypted_session_init`` payload and what the client keeps of it."""

    payload: dict[str, Any]
    session_key: bytes
    client_address: str
    shared_x: bytes


@dataclass(frozen=True)
class OpenedInit:
    """What a host learns from an ``encrypted_session_init``."""

    data: dict[str, Any]
    session_key: bytes
    client_address: str | None
    digest: Literal["ciphertext", "sdk"] | None
    """Which digest the signature recovered over (``None``: no usable signature)."""
    shared_x: bytes


def seal_session_init(
    host_public: str | bytes,
    data: Mapping[str, Any],
    signer: str | bytes | PrivateKey | None = None,
    *,
    digest: Literal["ciphertext", "sdk"] = "ciphertext",
    session_key: bytes | None = None,
) -> SealedInit:
    """Build the ``payload`` of an ``encrypted_session_init`` for ``host_public``.

    ``data`` is the init JSON (``jobId``, ``modelName``...); a fresh random ``sessionKey`` is
    put in unless ``data`` has one or ``session_key`` is given. ``signer``: the user's key
    (an ephemeral identity when ``None``); ``digest`` which digest it signs (deployed nodes
    recover ``"ciphertext"``; the SDK signs ``"sdk"``).

    The payload: an ephemeral key agreed with the host's static key (the x-coordinate of
    the shared point), ``HKDF-SHA256(salt = 32 zero bytes, info = "")``, XChaCha20-Poly1305
    of the init JSON (which carries the random 32-byte ``sessionKey``), and a recoverable
    signature over ``sha256(ciphertext)`` (what deployed nodes recover) or the SDK's own
    digest (:func:`sdk_init_digest`); the host (:func:`open_session_init`) accepts both.
    """
    host_pub = parse_public_key(host_public)
    body = dict(data)
    if session_key is None:
        given = body.get("sessionKey")
        session_key = _unhex(given, "sessionKey") if given else secrets.token_bytes(KEY_SIZE)
    if len(session_key) != KEY_SIZE:
        raise EncryptionError("a session key is 32 bytes")
    body["sessionKey"] = session_key.hex()
    eph = PrivateKey()
    eph_pub = eph.public_key.format(compressed=True)
    shared = ecdh_x(eph, host_pub)
    salt = _ZERO_SALT
    key = hkdf_sha256(shared, salt=salt)
    nonce = secrets.token_bytes(NONCE_SIZE)
    plaintext = dumps_utf8(body, what="the encrypted session init", separators=(",", ":"))
    ciphertext = xchacha_encrypt(key, nonce, plaintext)
    who = parse_private_key(signer) if signer is not None else PrivateKey()
    if digest == "ciphertext":
        to_sign = ciphertext_digest(ciphertext)
    else:
        to_sign = sdk_init_digest(eph_pub, host_pub, salt, nonce)
    signature = who.sign_recoverable(to_sign, hasher=None)
    payload = {
        "ephPubHex": eph_pub.hex(),
        "saltHex": salt.hex(),
        "nonceHex": nonce.hex(),
        "ciphertextHex": ciphertext.hex(),
        "signatureHex": signature.hex(),
        "recid": signature[64],
        "alg": ALG,
        "info": "",
        "aadHex": "",
    }
    return SealedInit(payload, session_key, address_of_public_key(who.public_key), shared)


def _recover(signature: bytes, digest: bytes) -> PublicKey | None:
    if len(signature) != 65:
        return None
    recid = signature[64]
    if recid >= 27:
        recid -= 27
    if recid > 3:
        return None
    try:
        return PublicKey.from_signature_and_message(
            signature[:64] + bytes([recid]), digest, hasher=None
        )
    except (ValueError, TypeError):
        return None


def open_session_init(host_key: str | bytes | PrivateKey, payload: Any) -> OpenedInit:
    """Decrypt an ``encrypted_session_init`` payload with the host's key.

    The client's address is recovered from the signature over ``sha256(ciphertext)`` or,
    failing that, over the SDK's digest (:attr:`OpenedInit.digest` says which).

    Raises the typed errors of the node's init codes: ``MISSING_PAYLOAD``,
    ``INVALID_PAYLOAD``, ``INVALID_HEX_ENCODING``, ``INVALID_NONCE_SIZE``,
    ``DECRYPTION_FAILED``.
    """
    key = parse_private_key(host_key)
    if not isinstance(payload, Mapping):
        raise MissingPayloadError("encrypted_session_init has no payload")
    eph_pub = parse_public_key(_unhex(payload.get("ephPubHex"), "ephPubHex"))
    salt_hex = payload.get("saltHex")
    salt = _unhex(salt_hex, "saltHex") if salt_hex else _ZERO_SALT
    nonce = _unhex(payload.get("nonceHex"), "nonceHex")
    ciphertext = _unhex(payload.get("ciphertextHex"), "ciphertextHex")
    aad_hex = payload.get("aadHex")
    aad = _unhex(aad_hex, "aadHex") if aad_hex else b""
    info_text = payload.get("info")
    try:
        info = info_text.encode() if isinstance(info_text, str) else b""
    except UnicodeEncodeError:  # a lone surrogate from JSON
        raise InvalidEncryptedPayloadError(
            "info is not UTF-8 text", details={"field": "info"}
        ) from None
    shared = ecdh_x(key, eph_pub)
    plaintext = xchacha_decrypt(
        hkdf_sha256(shared, salt=salt, info=info), nonce, ciphertext, aad, what="session init"
    )
    try:
        data = loads_untrusted(plaintext)
    except ValueError:  # also a number of thousands of digits, or nesting too deep
        data = None
    if not isinstance(data, dict):
        raise InvalidEncryptedPayloadError("the session init is not a JSON object")
    session_key = _unhex(data.get("sessionKey"), "sessionKey")
    if len(session_key) != KEY_SIZE:
        raise InvalidEncryptedPayloadError(
            "sessionKey is not 32 bytes", details={"field": "sessionKey"}
        )
    sig_hex = payload.get("signatureHex")
    signature = _unhex(sig_hex, "signatureHex") if sig_hex else b""
    if len(signature) == 64 and isinstance(payload.get("recid"), int):
        signature += bytes([payload["recid"] & 0xFF])
    # Any signature recovers *some* key over any digest: the one the init names as the
    # client's (``recoveryPublicKey``) decides which digest was signed; without it, the
    # digest deployed nodes recover (sha256 of the ciphertext).
    claimed = data.get("recoveryPublicKey")
    try:
        claimed_pub = parse_public_key(claimed) if isinstance(claimed, str) else None
    except EncryptionError:
        claimed_pub = None
    host_pub = key.public_key.format(compressed=True)
    address: str | None = None
    which: Literal["ciphertext", "sdk"] | None = None
    candidates: list[tuple[Literal["ciphertext", "sdk"], bytes]] = [
        ("ciphertext", ciphertext_digest(ciphertext)),
        ("sdk", sdk_init_digest(eph_pub, host_pub, salt, nonce, info, aad)),
    ]
    for name, digest in candidates:
        pub = _recover(signature, digest)
        if pub is None:
            continue
        if claimed_pub is None or pub.format(compressed=True) == claimed_pub:
            address, which = address_of_public_key(pub), name
            break
    return OpenedInit(data, session_key, address, which, shared)


# --- the /v1/auth/challenge route (section 4.4) --------------------------------------------


def answer_challenge(host_key: str | bytes | PrivateKey, challenge: bytes) -> dict[str, Any]:
    """The host's answer: ``{"signature": r||s hex, "recid"}`` over ``sha256(challenge)``."""
    sig = parse_private_key(host_key).sign_recoverable(
        hashlib.sha256(challenge).digest(), hasher=None
    )
    return {"signature": sig[:64].hex(), "recid": sig[64]}


def recover_challenge_key(challenge: bytes, answer: Any) -> str:
    """The host's compressed public key (``0x``-hex) recovered from its challenge answer."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("recid"), int):
        raise InvalidEncryptedPayloadError("the challenge answer has no signature and recid")
    sig = _unhex(answer.get("signature"), "signature")[:64] + bytes([answer["recid"] & 0xFF])
    pub = _recover(sig, hashlib.sha256(challenge).digest())
    if pub is None:
        raise DecryptionFailedError("the challenge signature does not recover a key")
    return "0x" + pub.format(compressed=True).hex()


# --- the session key ------------------------------------------------------------------------

_MESSAGE_AAD = re.compile(rb"message_(0|[1-9][0-9]{0,17})")


class SessionCipher:
    """One session key and the state of its frames (section 4.2/4.3).

    A round trip (host key, client seals, host opens, then frames under the session key):

    >>> host = PrivateKey()
    >>> sealed = seal_session_init(host_public_key(host), {"jobId": "1", "sessionKey": "00" * 32})
    >>> opened = open_session_init(host, sealed.payload)
    >>> opened.data["jobId"], opened.digest, opened.client_address == sealed.client_address
    ('1', 'ciphertext', True)
    >>> client, server = SessionCipher(sealed.session_key), SessionCipher(sealed.session_key)
    >>> server.open_message(client.seal_message('{"prompt":"hi"}'))
    '{"prompt":"hi"}'
    >>> client.open_chunk(server.seal_chunk("Hel", 0))
    'Hel'
    >>> client.open_chunk(server.seal_chunk("lo", 1))
    'lo'
    >>> try:
    ...     client.open_chunk(server.seal_chunk("again", 1))  # a replay
    ... except ChunkOrderError as exc:
    ...     exc.code
    'CHUNK_OUT_OF_ORDER'

    Sending: :meth:`seal_message` numbers messages from 0 (AAD ``message_<n>``). Receiving
    messages (the host): :meth:`open_message` takes only counters that increase, so a
    message recorded and sent again is refused (``MESSAGE_REPLAYED``).

    Receiving chunks (the client): :meth:`open_chunk` expects indices in order from
    :attr:`next_chunk` (set it with :meth:`expect_chunk` at a new answer or a resume) and
    refuses a replayed, dropped or reordered one (``CHUNK_OUT_OF_ORDER``), or one whose
    AAD is not ``chunk_<i>``. The AAD restarts at 0 with every answer, so it cannot tell
    chunk 3 of answer 1 from chunk 3 of answer 2; every chunk has a fresh random nonce,
    though, so the cipher remembers the nonce of every chunk and final frame it opened
    and refuses one it has seen (``CHUNK_REPLAYED``): a relay cannot play an earlier
    answer, or part of it, as a new one.

    That memory is bounded, and the bound is safe because it covers the key's whole life:
    a relay can only replay frames sealed under this key (anything else does not
    decrypt), and this key is used for at most :attr:`max_chunks` frames. Past
    ``max_chunks // 2`` the key is :attr:`spent`: the client closes the socket when the
    answer ends, and the next prompt goes on a new socket with a fresh key (a re-init,
    which hosts accept for the same session, history kept); an answer that reaches
    ``max_chunks`` on one key is refused (``SESSION_KEY_EXHAUSTED``) rather than forgetting
    a nonce. So a key's memory holds at most 65,536 nonces (about 6 MB), and a socket is
    retired after the answer during which its key passed 32,768 frames.

    Truncation: :meth:`open_final` authenticates the finish reason, and :meth:`open_count`
    the number of chunks the host sent, when the host puts that count in its final frame
    (the ``chunk_count`` extension of the reference host; the transport checks it when the
    host announced it). Deployed nodes send no count: against them a relay that drops the
    last chunks of an answer and forwards the final frames cannot be detected.
    """

    __slots__ = ("key", "last_message", "messages_sent", "next_chunk", "seen")

    max_chunks = 1 << 16
    """The most chunk and final frames one key carries (see above)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise EncryptionError("a session key is 32 bytes")
        self.key = key
        self.messages_sent = 0
        self.last_message = -1  # the host side: the counter of the last message opened
        self.next_chunk = 0
        self.seen: set[bytes] = set()
        """Nonces of the chunks and final frames opened under this key."""

    @property
    def spent(self) -> bool:
        """This key carried half of :attr:`max_chunks`: use a fresh one for the next answer."""
        return len(self.seen) >= self.max_chunks // 2

    def seal_message(self, body: str) -> dict[str, str]:
        """An ``encrypted_message`` payload for ``body`` (UTF-8 JSON text)."""
        aad = f"message_{self.messages_sent}".encode()
        self.messages_sent += 1
        return _seal(self.key, body.encode(), aad)

    def open_message(self, payload: Any) -> str:
        """The host side: decrypt with the AAD the client sent (as deployed nodes do), which
        must be ``message_<n>`` with ``n`` above that of every earlier message under this
        key (clients count from 0 after each init). Else ``MESSAGE_REPLAYED``: a recorded
        message sent again, whose answer the client's job would pay for."""
        aad_hex = payload.get("aadHex") if isinstance(payload, Mapping) else None
        aad = _unhex(aad_hex, "aadHex") if aad_hex else b""
        text = _decode(_open(self.key, payload, aad, "encrypted message"), "encrypted message")
        counter = _MESSAGE_AAD.fullmatch(aad)
        number = int(counter.group(1)) if counter is not None else None
        if number is None or number <= self.last_message:
            said = "has no message_<n> counter" if number is None else f"is message_{number}"
            raise MessageReplayError(
                f"the encrypted message {said}, and this session key already carried "
                f"message_{self.last_message}: counters must increase (a replayed message "
                "is not run)",
                details={"counter": number, "last": self.last_message},
            )
        self.last_message = number
        return text

    def seal_chunk(self, text: str, index: int) -> dict[str, Any]:
        """An ``encrypted_chunk`` payload: the token's raw text, AAD ``chunk_<index>``."""
        sealed: dict[str, Any] = _seal(self.key, text.encode(), f"chunk_{index}".encode())
        sealed["index"] = index
        return sealed

    def expect_chunk(self, index: int) -> None:
        self.next_chunk = index

    def open_chunk(self, payload: Any) -> str:
        """Decrypt the next chunk of the answer (its index must be :attr:`next_chunk`, its
        nonce new under this key).

        This runs once per token: a well-formed chunk takes a short path (the same checks,
        fewer calls; the replay check is one set lookup and one insert); anything else goes
        through :meth:`_open_chunk_checked`, which names what failed.
        """
        expected = self.next_chunk
        if type(payload) is dict:
            index = payload.get("index")
            nonce_hex = payload.get("nonceHex")
            ciphertext_hex = payload.get("ciphertextHex")
            if (
                type(index) is int
                and index == expected
                and type(nonce_hex) is str
                and type(ciphertext_hex) is str
                and len(nonce_hex) == 2 * NONCE_SIZE
            ):
                aad = b"chunk_%d" % index
                aad_hex = payload.get("aadHex")
                seen = self.seen
                if (aad_hex is None or aad_hex == aad.hex()) and len(seen) < self.max_chunks:
                    try:
                        nonce = bytes.fromhex(nonce_hex)
                        if nonce not in seen:
                            text = _aead_open(
                                bytes.fromhex(ciphertext_hex), aad, nonce, self.key
                            ).decode("utf-8")
                            seen.add(nonce)
                            self.next_chunk = expected + 1
                            return text
                    except (ValueError, TypeError, nacl.exceptions.CryptoError):
                        pass  # the checked path says what failed
        return self._open_chunk_checked(payload)

    def _open_chunk_checked(self, payload: Any) -> str:
        index = payload.get("index") if isinstance(payload, Mapping) else None
        expected = self.next_chunk
        if type(index) is not int:
            raise InvalidEncryptedPayloadError(
                "an encrypted chunk has no index", details={"field": "index"}
            )
        if index != expected:
            raise ChunkOrderError(
                f"encrypted chunk {index} arrived where chunk {expected} was expected "
                "(replayed, dropped or reordered)",
                details={"index": index, "expected": expected},
            )
        aad = f"chunk_{index}".encode()
        if payload.get("aadHex", aad.hex()) != aad.hex():
            raise ChunkOrderError(
                f"encrypted chunk {index} is bound to another position (its AAD)",
                details={"index": index, "expected": expected},
            )
        text = _decode(self._open_once(payload, aad, f"encrypted chunk {index}"), "chunk")
        self.next_chunk = expected + 1
        return text

    def _open_once(self, payload: Any, aad: bytes, what: str) -> bytes:
        """Open a frame whose nonce must be new under this key, and remember the nonce."""
        if not isinstance(payload, Mapping):
            raise MissingPayloadError(
                f"the {what} has no payload object", details={"field": "payload"}
            )
        nonce = _unhex(payload.get("nonceHex"), "nonceHex")
        if nonce in self.seen:
            raise ChunkReplayError(
                f"the {what} was already received under this session key: a frame of an "
                "earlier answer played again (a relay on the way?)",
                details={"what": what, "index": payload.get("index")},
            )
        if len(self.seen) >= self.max_chunks:
            raise SessionKeyExhaustedError(
                f"this session key carried {len(self.seen)} frames, the most the client "
                "remembers for replay checks; the answer is refused. Ask again: the next "
                "answer runs on a fresh session key",
                details={"max_chunks": self.max_chunks},
            )
        plaintext = _open(self.key, payload, aad, what)
        self.seen.add(nonce)
        return plaintext

    def seal_final(self, finish_reason: str) -> dict[str, str]:
        """The ``encrypted_response`` payload (the finish reason)."""
        return _seal(self.key, finish_reason.encode(), FINAL_AAD)

    def open_final(self, payload: Any) -> str:
        """The finish reason of an ``encrypted_response`` (its nonce new under this key)."""
        return _decode(self._open_once(payload, FINAL_AAD, "encrypted response"), "response")

    def open_image(self, payload: Any) -> str:
        """The JSON text of an image reply (``encrypted_response`` with AAD
        :data:`IMAGE_AAD`; its nonce new under this key)."""
        return _decode(self._open_once(payload, IMAGE_AAD, "image response"), "image response")

    def seal_count(self, chunks: int) -> dict[str, str]:
        """The sealed chunk count of an answer (``chunk_count`` extension): the number of
        ``encrypted_chunk`` frames the answer had, final empty chunk included."""
        return _seal(self.key, str(chunks).encode(), COUNT_AAD)

    def open_count(self, payload: Any) -> int:
        """The chunk count sealed by :meth:`seal_count` (its nonce new under this key)."""
        text = _decode(self._open_once(payload, COUNT_AAD, "chunk count"), "chunk count")
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise InvalidEncryptedPayloadError(
                "the sealed chunk count is not a number", details={"field": "count"}
            )
        return int(text)

    def check_count(self, payload: Any) -> None:
        """Raise ``ANSWER_TRUNCATED`` unless the sealed count equals the chunks opened."""
        count = self.open_count(payload)
        if count != self.next_chunk:
            raise AnswerTruncatedError(
                f"the host sealed {count} chunks for this answer and {self.next_chunk} "
                "arrived: chunks were dropped on the way (the answer is refused)",
                details={"sealed_count": count, "received": self.next_chunk},
            )


class SessionKeyLedger:
    """The host side: the session keys this process has accepted, so that a recorded
    ``encrypted_session_init`` sent again (on any socket) is refused
    (``SESSION_KEY_REUSED``) instead of re-opening the victim's session and billing its
    job. Clients make a fresh random key for every init, so a key seen again is a replay.

    Only a 16-byte digest of each key is kept (never the key). Memory is bounded: at most
    ``max_used`` keys that carried a message and ``max_idle`` keys that did not (a flood
    of inits pushes out only keys that carried nothing, whose replay would bill nothing).
    Pushing a used key out takes ``max_used`` newer keys that each carried a prompt, and
    every prompt counts against the host's rate limit. Full, the defaults take about 10 MB.

    >>> ledger = SessionKeyLedger()
    >>> ledger.claim(b"k" * 32), ledger.claim(b"k" * 32)
    (True, False)
    """

    def __init__(self, max_used: int = 1 << 16, max_idle: int = 1 << 12) -> None:
        self.max_used = max_used
        self.max_idle = max_idle
        self._used: OrderedDict[bytes, None] = OrderedDict()
        self._idle: OrderedDict[bytes, None] = OrderedDict()

    @staticmethod
    def _digest(key: bytes) -> bytes:
        return hashlib.blake2b(key, digest_size=16, person=b"fabstir-sesskey").digest()

    def claim(self, key: bytes) -> bool:
        """Record a key from an init; ``False`` if it was seen before (refuse the init)."""
        digest = self._digest(key)
        if digest in self._used or digest in self._idle:
            return False
        self._idle[digest] = None
        while len(self._idle) > self.max_idle:
            self._idle.popitem(last=False)
        return True

    def used(self, key: bytes) -> None:
        """The key carried a message: keep it among the keys that matter most."""
        digest = self._digest(key)
        self._idle.pop(digest, None)
        self._used[digest] = None
        while len(self._used) > self.max_used:
            self._used.popitem(last=False)

    def __len__(self) -> int:
        return len(self._used) + len(self._idle)


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEncryptedPayloadError(f"the decrypted {what} is not UTF-8 text") from None


# --- encrypted checkpoint deltas (section 4.5) ------------------------------------------------

CHECKPOINT_ENVELOPE_FIELDS = (
    "encrypted",
    "version",
    "userRecoveryPubKey",
    "ephemeralPublicKey",
    "nonce",
    "ciphertext",
    "hostSignature",
)
"""The fields of an encrypted delta on S5, as deployed nodes write them: ``encrypted``
(``true``), ``version`` (1), ``userRecoveryPubKey`` and ``ephemeralPublicKey`` (compressed,
``0x``-hex), ``nonce`` (24 bytes) and ``ciphertext`` (tag appended) in hex without ``0x``,
and ``hostSignature`` (EIP-191 over the hex of ``keccak256(ciphertext)``; added by the
checkpoints layer, which signs)."""


class RecoveryKey:
    """The secp256k1 key an encrypted session's checkpoint deltas are sealed to.

    The client names its public half as ``recoveryPublicKey`` in every
    ``encrypted_session_init``; the host seals each S5 delta to it, so only the holder of
    this key reads them. The secret is never shown: ``repr`` and ``str`` give the public
    key only, and pickling is refused.

    Each S5 checkpoint delta of an encrypted session (section 4.5) is sealed by the host
    to it as deployed nodes (v8.12+) write them (:func:`seal_checkpoint_delta`): a fresh
    ephemeral key per delta, ``HKDF-SHA256(ikm = sha256(x-coordinate), salt = none,
    info = "checkpoint-delta-encryption-v1")``, XChaCha20-Poly1305 without AAD.

    >>> key = RecoveryKey("0x" + "01" * 32)
    >>> key
    RecoveryKey(public_key='0x031b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f')
    >>> envelope = seal_checkpoint_delta(b'{"messages":[]}', key.public_key)
    >>> open_checkpoint_delta(envelope, key)
    b'{"messages":[]}'
    """

    __slots__ = ("_key",)

    def __init__(self, key: str | bytes | PrivateKey | None = None) -> None:
        self._key = parse_private_key(key) if key is not None else PrivateKey()

    @property
    def public_key(self) -> str:
        """The compressed public key, ``0x``-hex (what ``recoveryPublicKey`` carries)."""
        return host_public_key(self._key)

    def private_key(self) -> PrivateKey:
        """The secret itself (to sign with it, or to keep it somewhere safe). Never log it."""
        return self._key

    def delta_key(self, ephemeral_public: str | bytes) -> bytes:
        """The key of the delta sealed with ``ephemeral_public``
        (:func:`checkpoint_delta_key` of ``self * ephemeral_public``)."""
        return checkpoint_delta_key(ecdh_x(self._key, parse_public_key(ephemeral_public)))

    def __repr__(self) -> str:
        return f"RecoveryKey(public_key={self.public_key!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecoveryKey) and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __reduce__(self) -> Any:
        raise TypeError("a RecoveryKey is not pickled (it holds a secret key)")


def seal_checkpoint_delta(plaintext: bytes, recovery_public: str | bytes) -> dict[str, Any]:
    """Seal a delta's JSON bytes to ``recovery_public`` (a fresh ephemeral key and nonce
    each time). Returns the envelope without ``hostSignature``."""
    recipient = parse_public_key(recovery_public)
    eph = PrivateKey()
    key = checkpoint_delta_key(ecdh_x(eph, recipient))
    nonce = secrets.token_bytes(NONCE_SIZE)
    return {
        "encrypted": True,
        "version": 1,
        "userRecoveryPubKey": "0x" + recipient.hex(),
        "ephemeralPublicKey": "0x" + eph.public_key.format(compressed=True).hex(),
        "nonce": nonce.hex(),
        "ciphertext": xchacha_encrypt(key, nonce, plaintext).hex(),
    }


def open_checkpoint_delta(envelope: Any, key: RecoveryKey) -> bytes:
    """The JSON bytes of an encrypted delta (see :data:`CHECKPOINT_ENVELOPE_FIELDS`).

    Raises:
        InvalidEncryptedPayloadError: not an envelope of version 1 (``INVALID_PAYLOAD``),
            bad hex (``INVALID_HEX_ENCODING``), a nonce that is not 24 bytes
            (``INVALID_NONCE_SIZE``).
        DecryptionFailedError: sealed to another recovery key (``details["reason"]`` is
            ``"wrong_key"``), or changed after sealing (``"tampered"``).
    """
    if not isinstance(envelope, Mapping) or envelope.get("encrypted") is not True:
        raise InvalidEncryptedPayloadError(
            "not an encrypted checkpoint delta", details={"field": "encrypted"}
        )
    if envelope.get("version") != 1:
        raise InvalidEncryptedPayloadError(
            f"encrypted checkpoint delta version {str(envelope.get('version'))[:20]!r} is not 1",
            details={"field": "version"},
        )
    recipient = parse_public_key(_unhex(envelope.get("userRecoveryPubKey"), "userRecoveryPubKey"))
    ephemeral = parse_public_key(_unhex(envelope.get("ephemeralPublicKey"), "ephemeralPublicKey"))
    nonce = _unhex(envelope.get("nonce"), "nonce")
    ciphertext = _unhex(envelope.get("ciphertext"), "ciphertext")
    mine = key.public_key
    if "0x" + recipient.hex() != mine:
        raise DecryptionFailedError(
            f"the checkpoint delta is sealed to recovery key 0x{recipient.hex()}, not to this "
            f"session's ({mine}): pass the recovery key of the session that made it",
            details={"reason": "wrong_key", "what": "checkpoint delta"},
        )
    try:
        return xchacha_decrypt(key.delta_key(ephemeral), nonce, ciphertext, what="checkpoint delta")
    except DecryptionFailedError as exc:
        exc.details["reason"] = "tampered"
        raise
