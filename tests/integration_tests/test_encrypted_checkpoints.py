"""Checkpoint deltas of encrypted sessions on S5 (PROTOCOL.md section 4.5), both sides.

A reference host with a key (so it speaks the encrypted mode) and an S5 store (a real
LocalPortal) seals each delta of an encrypted session to the client's
``recoveryPublicKey``; ``SessionManager.fetch_host_checkpoints`` opens and verifies them
with the session's recovery key. Lying hosts are aiohttp servers on 127.0.0.1 serving
doctored (re-signed) indexes over deltas uploaded to the same portal.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_utils import keccak

from langchain_fabstir.checkpoints import address_of, sign_host_delta, sign_host_index
from langchain_fabstir.checkpoints.published import encrypt_host_delta, fetch_host_checkpoints
from langchain_fabstir.checkpoints.signing import personal_sign
from langchain_fabstir.errors import (
    CheckpointError,
    DecryptionFailedError,
    DecryptionKeyRequiredError,
    EncryptionModeError,
    InvalidNonceSizeError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5PortalClient
from langchain_fabstir.sessions import SessionConfig, SessionManager
from langchain_fabstir.wire.encryption import (
    CHECKPOINT_ENVELOPE_FIELDS,
    RecoveryKey,
    open_checkpoint_delta,
)
from tests._support.s5 import IndexHost, upload

HOST_KEY = "0x" + "42" * 32
USER_KEY = "0x" + "6b" * 32
HOST = address_of(HOST_KEY)
PHRASE = (
    "sign weight spy quality sudden minute pizza great fear "
    "adapt nobody evident control alive crime"
)
WORDS = [f"zebra{i} " for i in range(37)]


def s5_host(portal: LocalPortal) -> ReferenceHost:
    engine = EchoEngine(WORDS, fill=True)
    return ReferenceHost(
        engine,
        rate_limit_per_minute=None,
        host_key=HOST_KEY,
        portal_url=portal.url,
        s5_seed_phrase=PHRASE,
    )


def pairs(messages: list[Any]) -> list[tuple[str, str]]:
    return [
        (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages
    ]


async def test_encrypted_session_deltas_are_sealed_and_read_back(portal: LocalPortal) -> None:
    async with s5_host(portal) as host, SessionManager(host_url=host.url) as manager:
        s = await manager.create_session(model="echo")
        await manager.prompt(s.id, "quokka question one", max_tokens=1200)
        await manager.prompt(s.id, "quokka question two", max_tokens=150)
        assert s.encrypted and s.recovery_key is not None
        history = await manager.get_conversation_history(s.id)

        result = await manager.fetch_host_checkpoints(s.id, portal=portal.url)
        assert pairs(result.messages) == pairs(history)
        assert result.token_count == 1350 and result.complete
        assert result.encrypted_deltas == 3 and result.host_address_source == "caller"
        assert all(e.encrypted for e in result.index.checkpoints)

        # What the portal holds: envelopes sealed to the session's recovery key, in which
        # neither a prompt nor the answer text appears.
        async with S5PortalClient(portal.url) as client:
            for entry in result.index.checkpoints:
                stored = await client.download(entry.delta_cid)
                for clear in (b"quokka", b"zebra", b"assistant", b"messages"):
                    assert clear not in stored
                envelope = json.loads(stored)
                assert tuple(envelope) == CHECKPOINT_ENVELOPE_FIELDS
                assert envelope["userRecoveryPubKey"] == s.recovery_key.public_key

        # Without the key: a typed error before any download; another key: refused.
        with pytest.raises(DecryptionKeyRequiredError) as need:
            await fetch_host_checkpoints(host.url, s.id, portal=portal.url)
        assert need.value.code == "DECRYPTION_KEY_REQUIRED"
        with pytest.raises(DecryptionFailedError) as wrong:
            await fetch_host_checkpoints(
                host.url, s.id, portal=portal.url, recovery_key=RecoveryKey()
            )
        assert wrong.value.details["reason"] == "wrong_key"
        assert wrong.value.details["checkpoint_index"] in (0, 1, 2)

        # The key is never shown with the session.
        secret = s.recovery_key.private_key().secret.hex()
        assert secret not in repr(s) and secret not in json.dumps(s.model_dump(mode="json"))


async def test_user_key_opens_the_deltas_later_and_plaintext_is_unchanged(
    portal: LocalPortal,
) -> None:
    async with s5_host(portal) as host:
        async with SessionManager(host_url=host.url, private_key=USER_KEY) as manager:
            s = await manager.create_session(model="echo")
            await manager.prompt(s.id, "ibis", max_tokens=150)
            assert s.recovery_key == RecoveryKey(USER_KEY)
        # Another process holding the user's key opens them.
        later = await fetch_host_checkpoints(
            host.url, s.id, portal=portal.url, host_address=HOST, recovery_key=RecoveryKey(USER_KEY)
        )
        assert pairs(later.messages)[0] == ("user", "ibis") and later.encrypted_deltas == 1

        plain = SessionConfig(encryption="off")
        async with SessionManager(plain, host_url=host.url, private_key=USER_KEY) as manager:
            p = await manager.create_session(model="echo")
            await manager.prompt(p.id, "ibis in clear", max_tokens=150)
            assert not p.encrypted and p.recovery_key is None
            clear = await manager.fetch_host_checkpoints(p.id, portal=portal.url)
        assert clear.encrypted_deltas == 0 and not clear.index.checkpoints[0].encrypted
        assert pairs(clear.messages)[0] == ("user", "ibis in clear")


def resign_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope with a valid host signature over its (changed) ciphertext."""
    digest = keccak(bytes.fromhex(envelope["ciphertext"])).hex()
    return {**envelope, "hostSignature": personal_sign(digest, HOST_KEY)}


async def test_doctored_encrypted_deltas_are_refused(portal: LocalPortal) -> None:
    key = RecoveryKey(USER_KEY)
    async with s5_host(portal) as host:
        async with SessionManager(host_url=host.url, private_key=USER_KEY) as manager:
            s = await manager.create_session(model="echo")
            await manager.prompt(s.id, "heron", max_tokens=150)
        assert host.s5_checkpoints is not None
        index = await host.s5_checkpoints.index(s.id)
    assert index is not None
    entry = index["checkpoints"][0]
    async with S5PortalClient(portal.url) as client:
        envelope = json.loads(await client.download(entry["deltaCid"]))
    plain_delta = json.loads(open_checkpoint_delta(envelope, key))

    async def serve_delta(fake: IndexHost, value: dict[str, Any], *, encrypted: bool) -> None:
        cid = await upload(portal, value)
        # The index with this entry, re-signed with the host's key.
        body = {k: v for k, v in index.items() if k != "hostSignature"}
        entries = [{**entry, "deltaCid": cid, "encrypted": encrypted}]
        fake.serve(sign_host_index({**body, "checkpoints": entries}, HOST_KEY))

    async def fetch(fake: IndexHost) -> Any:
        return await fetch_host_checkpoints(
            fake.url, s.id, portal=portal.url, host_address=HOST, recovery_key=key
        )

    async with IndexHost() as fake:
        await serve_delta(fake, envelope, encrypted=True)  # the genuine one
        assert pairs((await fetch(fake)).messages)[0] == ("user", "heron")

        # A flipped ciphertext byte, the host signature left as it was: not the host's.
        ct = bytearray(bytes.fromhex(envelope["ciphertext"]))
        ct[3] ^= 0x01
        tampered = {**envelope, "ciphertext": ct.hex()}
        await serve_delta(fake, tampered, encrypted=True)
        with pytest.raises(CheckpointError) as signer:
            await fetch(fake)
        assert signer.value.details["reason"] == "wrong_signer"
        # Re-signed with the host key itself: the AEAD tag still refuses it.
        await serve_delta(fake, resign_envelope(tampered), encrypted=True)
        with pytest.raises(DecryptionFailedError) as tag:
            await fetch(fake)
        assert tag.value.details == {
            "what": "checkpoint delta",
            "reason": "tampered",
            "checkpoint_index": 0,
        }
        assert "zebra" not in str(tag.value) and tag.value.session_id == s.id

        # A bad nonce length.
        await serve_delta(fake, resign_envelope({**envelope, "nonce": "00" * 12}), encrypted=True)
        with pytest.raises(InvalidNonceSizeError):
            await fetch(fake)

        # Marked encrypted, but the delta is plain (the host's genuine signed delta).
        await serve_delta(fake, plain_delta, encrypted=True)
        with pytest.raises(EncryptionModeError) as mode:
            await fetch(fake)
        assert mode.value.details["reason"] == "marking_mismatch"
        # And the reverse: an envelope the index calls plain.
        await serve_delta(fake, envelope, encrypted=False)
        with pytest.raises(EncryptionModeError):
            await fetch(fake)

        # An envelope sealed to someone else (by the host's key): the wrong recovery key.
        other = encrypt_host_delta(
            sign_host_delta(
                {k: v for k, v in plain_delta.items() if k != "hostSignature"}, HOST_KEY
            ),
            RecoveryKey().public_key,
            HOST_KEY,
        )
        await serve_delta(fake, other, encrypted=True)
        with pytest.raises(DecryptionFailedError) as wrong:
            await fetch(fake)
        assert wrong.value.details["reason"] == "wrong_key"
