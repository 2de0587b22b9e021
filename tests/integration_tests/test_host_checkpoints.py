"""Checkpoints as real hosts publish them to S5 (PROTOCOL.md section 3), both sides.

A reference host with a key and an S5 store (a real LocalPortal) writes signed deltas
and an index while a SessionManager talks to it; ``fetch_host_checkpoints`` gets them
back, verifies them and rebuilds the conversation. Lying hosts are plain aiohttp servers
on 127.0.0.1 serving doctored indexes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from langchain_fabstir import SessionManager
from langchain_fabstir.checkpoints import address_of, sign_host_delta, sign_host_index
from langchain_fabstir.checkpoints.published import (
    HostCheckpoints,
    delta_proof_hash,
    fetch_host_checkpoints,
    fetch_host_checkpoints_sync,
)
from langchain_fabstir.errors import (
    CheckpointError,
    ConnectionFailedError,
    IntegrityError,
    ProtocolError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.portal.store import BlobStore
from langchain_fabstir.s5 import CID, S5FileSystem, S5Identity, S5PortalClient
from langchain_fabstir.sessions import SessionConfig
from tests._support.s5 import IndexHost, upload

HOST_KEY = "0x" + "42" * 32
OTHER_KEY = "0x" + "77" * 32
HOST = address_of(HOST_KEY)
PHRASE = (
    "sign weight spy quality sudden minute pizza great fear "
    "adapt nobody evident control alive crime"
)
WORDS = [f"w{i} " for i in range(37)]
PLAIN = SessionConfig(encryption="off")
"""Plaintext sessions: their deltas are published in clear (encrypted sessions'
deltas are sealed to the client, see test_encrypted_checkpoints.py)."""


def s5_host(portal: LocalPortal, *, delay: float = 0.0, **kw: Any) -> ReferenceHost:
    """An echo host that repeats WORDS up to max_tokens and publishes to ``portal``."""
    kw.setdefault("portal_url", portal.url)
    kw.setdefault("s5_seed_phrase", PHRASE)
    engine = EchoEngine(WORDS, fill=True, delay=delay)
    return ReferenceHost(engine, rate_limit_per_minute=None, host_key=HOST_KEY, **kw)


def pairs(messages: list[Any]) -> list[tuple[str, str]]:
    return [
        (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages
    ]


async def run_session(host: ReferenceHost, answers: list[int]) -> tuple[str, list[Any]]:
    """One session with an answer of each length; returns its id and history."""
    async with SessionManager(PLAIN, host_url=host.url) as manager:
        s = await manager.create_session(model="echo")
        for n, max_tokens in enumerate(answers):
            await manager.prompt(s.id, f"question {n}", max_tokens=max_tokens)
        return s.id, await manager.get_conversation_history(s.id)


async def test_checkpoints_prove_the_session_history(portal: LocalPortal) -> None:
    async with s5_host(portal) as host:
        assert host.s5_checkpoints is not None
        sid, history = await run_session(host, [2500, 50, 120])
        result = await fetch_host_checkpoints(host.url, sid, portal=portal.url, host_address=HOST)

        # 1,000-token checkpoints inside the long answer, one at its end (500 unproven),
        # none after the 50-token answer (< 100), one after the next (170 unproven).
        assert [tuple(e.token_range) for e in result.index.checkpoints] == [
            (0, 1000),
            (1000, 2000),
            (2000, 2500),
            (2500, 2670),
        ]
        assert pairs(result.messages) == pairs(history)
        assert result.token_count == 2670 and result.complete
        assert result.host_address == HOST and result.host_address_source == "caller"
        assert result.proof_hashes_verified and host.s5_checkpoints.published == 4
        d0, d1, d2, d3 = result.deltas
        assert [m.role for m in d0.messages] == ["user", "assistant"]
        assert d0.messages[1].partial and len(d0.messages[1].content.split()) == 1000
        assert [(m.role, m.partial) for m in d1.messages] == [("assistant", True)]
        assert [(m.role, m.partial) for m in d2.messages] == [("assistant", False)]
        assert [m.content for m in d3.messages][::2] == ["question 1", "question 2"]
        for d in result.deltas:
            assert d.proof_hash == delta_proof_hash(d.model_dump(by_alias=True, exclude_unset=True))

        # Written where real hosts write them, as plain JSON anyone can read by CID.
        path = host.s5_checkpoints.path(sid, "delta_0.json")
        assert path == f"home/checkpoints/{HOST.lower()}/{sid}/delta_0.json"
        stored = await host.s5_checkpoints.fs.get(path)
        assert stored is not None
        assert CID.from_bytes(stored) == CID.parse(result.index.checkpoints[0].delta_cid)
        assert json.loads(stored)["hostSignature"] == d0.host_signature

        # A short answer after that is not proven yet: the index does not change.
        async with SessionManager(PLAIN, host_url=host.url) as manager:
            await manager.create_session(model="echo", session_id=sid)
            await manager.prompt(sid, "tail", max_tokens=30)
        again = await fetch_host_checkpoints(host.url, sid, portal=portal.url, host_address=HOST)
        assert again.index == result.index

    # A restarted host (same key, same S5 identity) serves the index from S5 and
    # continues its numbering; the 30 unproven tokens died with the first process.
    async with s5_host(portal) as host2:
        served = await fetch_host_checkpoints(host2.url, sid, portal=portal.url)
        assert served.index == result.index and served.host_address_source == "index"
        async with SessionManager(PLAIN, host_url=host2.url) as manager:
            await manager.create_session(model="echo", session_id=sid)
            await manager.prompt(sid, "more", max_tokens=150)
            more = await manager.get_conversation_history(sid)
        after = await fetch_host_checkpoints(host2.url, sid, portal=portal.url, host_address=HOST)
    assert [e.index for e in after.index.checkpoints] == [0, 1, 2, 3, 4]
    assert tuple(after.index.checkpoints[4].token_range) == (2670, 2820)
    assert pairs(after.messages) == pairs(history) + pairs(more)


async def test_sync_wrapper_and_ws_url(portal: LocalPortal) -> None:
    async with s5_host(portal) as host:
        sid, history = await run_session(host, [150])
        result = await asyncio.to_thread(
            fetch_host_checkpoints_sync, host.ws_url, sid, portal=portal.url, host_address=HOST
        )
    assert isinstance(result, HostCheckpoints)
    assert pairs(result.messages) == pairs(history) and result.token_count == 150


async def test_tampered_delta_on_the_portal_disk(portal: LocalPortal) -> None:
    async with s5_host(portal) as host:
        sid, _ = await run_session(host, [150])
        index = await fetch_host_checkpoints(host.url, sid, portal=portal.url, host_address=HOST)
        cid = CID.parse(index.index.checkpoints[0].delta_cid)
        blob = BlobStore(portal.config.data_dir).path_for(cid.hash)
        blob.write_bytes(blob.read_bytes().replace(b"w1 ", b"w9 ", 1))
        with pytest.raises(IntegrityError):
            await fetch_host_checkpoints(host.url, sid, portal=portal.url, host_address=HOST)


# --- lying hosts ----------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[IndexHost]:
    async with IndexHost() as f:
        yield f


@pytest.fixture
async def genuine(portal: LocalPortal) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A real host's index and deltas of a 2-checkpoint session (then the host is gone)."""
    async with s5_host(portal) as host:
        sid, _ = await run_session(host, [150, 150])
        assert host.s5_checkpoints is not None
        index = await host.s5_checkpoints.index(sid)
        assert index is not None
    async with S5PortalClient(portal.url) as client:
        deltas = [json.loads(await client.download(e["deltaCid"])) for e in index["checkpoints"]]
    return sid, index, deltas


def resign(index: dict[str, Any], key: str = HOST_KEY) -> dict[str, Any]:
    return sign_host_index({k: v for k, v in index.items() if k != "hostSignature"}, key)


async def test_doctored_delta_with_an_old_signature(
    portal: LocalPortal, fake: IndexHost, genuine: tuple[str, dict[str, Any], list[Any]]
) -> None:
    sid, index, deltas = genuine
    doctored = {**deltas[1], "messages": [{"role": "user", "content": "I never said this"}]}
    entries = [dict(e) for e in index["checkpoints"]]
    entries[1]["deltaCid"] = await upload(portal, doctored)
    # Pointing the index at it without the host's key breaks the index signature ...
    fake.serve({**index, "checkpoints": entries})
    with pytest.raises(CheckpointError) as err:
        await fetch_host_checkpoints(fake.url, sid, portal=portal.url, host_address=HOST)
    assert err.value.details["reason"] == "wrong_signer" and "index" in err.value.message
    # ... and even re-signed with it, the delta's own signature does not cover the text.
    fake.serve(resign({**index, "checkpoints": entries}))
    with pytest.raises(CheckpointError) as err:
        await fetch_host_checkpoints(fake.url, sid, portal=portal.url, host_address=HOST)
    assert err.value.details["reason"] == "wrong_signer" and "delta" in err.value.message


async def test_forged_index_signature(
    portal: LocalPortal, fake: IndexHost, genuine: tuple[str, dict[str, Any], list[Any]]
) -> None:
    sid, index, deltas = genuine
    fake.serve(resign(index, OTHER_KEY))  # claims to be HOST, signed by another key
    for expected in (HOST, None):
        with pytest.raises(CheckpointError) as err:
            await fetch_host_checkpoints(fake.url, sid, portal=portal.url, host_address=expected)
        assert err.value.details["reason"] == "wrong_signer"
        assert err.value.host_url == fake.url and err.value.code == "CHECKPOINT_FAILED"

    # Another key holder republishing everything under its own name verifies as
    # itself, and the result says the address came from the index.
    other = address_of(OTHER_KEY)
    entries = []
    for entry, delta in zip(index["checkpoints"], deltas, strict=True):
        signed = sign_host_delta(
            {k: v for k, v in delta.items() if k != "hostSignature"}, OTHER_KEY
        )
        entries.append({**entry, "deltaCid": await upload(portal, signed)})
    fake.serve(resign({**index, "hostAddress": other.lower(), "checkpoints": entries}, OTHER_KEY))
    result = await fetch_host_checkpoints(fake.url, sid, portal=portal.url)
    assert result.host_address == other and result.host_address_source == "index"
    with pytest.raises(CheckpointError) as err:
        await fetch_host_checkpoints(fake.url, sid, portal=portal.url, host_address=HOST)
    assert err.value.details["reason"] == "wrong_host"


async def test_proof_hash_and_token_ranges_are_checked(
    portal: LocalPortal, fake: IndexHost, genuine: tuple[str, dict[str, Any], list[Any]]
) -> None:
    sid, index, deltas = genuine
    # A host that signs a proofHash that is not the hash of the delta's content.
    wrong = "0x" + "ab" * 32
    delta = {**deltas[0], "proofHash": wrong}
    entries = [dict(e) for e in index["checkpoints"]]
    entries[0].update(proofHash=wrong, deltaCid=await upload(portal, delta))
    fake.serve(resign({**index, "checkpoints": entries}))
    lenient = await fetch_host_checkpoints(fake.url, sid, portal=portal.url, host_address=HOST)
    assert not lenient.proof_hashes_verified
    with pytest.raises(CheckpointError) as err:
        await fetch_host_checkpoints(
            fake.url, sid, portal=portal.url, host_address=HOST, require_proof_hash=True
        )
    assert err.value.details["reason"] == "proof_hash_mismatch"

    # Signed, but the token ranges leave a gap.
    entries = [dict(e) for e in index["checkpoints"]]
    entries[1]["tokenRange"] = [160, 310]
    fake.serve(resign({**index, "checkpoints": entries}))
    with pytest.raises(CheckpointError) as err:
        await fetch_host_checkpoints(fake.url, sid, portal=portal.url, host_address=HOST)
    assert err.value.details["reason"] == "token_gap"

    # A genuine index served for another session id.
    with pytest.raises(CheckpointError) as err:
        await fetch_host_checkpoints(fake.url, "other", portal=portal.url, host_address=HOST)
    assert err.value.details["reason"] == "wrong_session"

    fake.serve(index)
    assert (await fetch_host_checkpoints(fake.url, sid, portal=portal.url)).token_count == 300


@pytest.mark.parametrize(
    ("body", "status", "error", "reason"),
    [
        (b"<html>oops</html>", 200, ProtocolError, None),
        (b"[1, 2]", 200, ProtocolError, None),
        (b'{"sessionId": "s"}', 200, CheckpointError, "malformed_index"),
        (b"{}", 404, CheckpointError, "none"),
        (b"{}", 418, ProtocolError, None),
    ],
)
async def test_bad_replies_are_typed(
    fake: IndexHost, body: bytes, status: int, error: type[Exception], reason: str | None
) -> None:
    fake.body, fake.status = body, status
    with pytest.raises(error) as err:
        await fetch_host_checkpoints(fake.url, "s", portal="http://127.0.0.1:9", host_address=HOST)
    if reason is not None:
        assert getattr(err.value, "details", {}).get("reason") == reason


# --- hosts without checkpoints ----------------------------------------------------------


async def test_host_without_s5_and_unknown_sessions(portal: LocalPortal) -> None:
    async with ReferenceHost(EchoEngine(), host_key=HOST_KEY) as plain:
        assert plain.s5_checkpoints is None
        with pytest.raises(CheckpointError) as err:
            await fetch_host_checkpoints(plain.url, "123", portal=portal.url)
    assert err.value.details["reason"] == "unavailable" and err.value.details["status"] == 503
    async with s5_host(portal) as host:
        with pytest.raises(CheckpointError) as err:
            await fetch_host_checkpoints(host.url, "never-seen", portal=portal.url)
        assert err.value.details["reason"] == "none"
    with pytest.raises(ValueError, match="host key"):
        ReferenceHost(EchoEngine(), portal_url=portal.url, s5_seed_phrase=PHRASE)


async def test_host_down() -> None:
    host = ReferenceHost(EchoEngine())
    await host.start()
    url = host.url
    await host.stop()
    with pytest.raises(ConnectionFailedError) as err:
        await fetch_host_checkpoints(url, "123", portal="http://127.0.0.1:9")
    assert err.value.host_url == url and err.value.is_retryable


async def test_portal_outage_is_retried(tmp_path: Path) -> None:
    """Checkpoints cut while S5 is down are written later, in order, without gaps."""
    data = tmp_path / "portal"
    async with LocalPortal(data, port=0) as first:
        port = first.port
        identity = S5Identity.from_phrase(PHRASE)
        client = S5PortalClient(first.url, max_attempts=1, backoff_initial=0.01)
        await client.ensure_account(identity.portal_account_key_pair())
        fs = S5FileSystem(client, identity)
        host = s5_host(first, portal_url=None, s5_seed_phrase=None, s5_fs=fs)
        await host.start()
    try:
        assert host.s5_checkpoints is not None
        sid, history = await run_session(host, [150, 150])  # portal is down
        assert host.s5_checkpoints.published == 0 and host.s5_checkpoints.failures >= 1
        with pytest.raises(CheckpointError) as err:  # the host cannot read S5 either
            await fetch_host_checkpoints(host.url, sid, portal="http://127.0.0.1:9")
        assert err.value.details["reason"] == "unavailable"
        async with LocalPortal(data, port=port) as second:
            assert await host.s5_checkpoints.flush()
            result = await fetch_host_checkpoints(
                host.url, sid, portal=second.url, host_address=HOST
            )
    finally:
        await host.stop()
        await client.aclose()
    assert [tuple(e.token_range) for e in result.index.checkpoints] == [(0, 150), (150, 300)]
    assert pairs(result.messages) == pairs(history)


async def test_a_cancelled_answer_is_checkpointed_as_far_as_it_went(portal: LocalPortal) -> None:
    host = s5_host(portal, delay=0.002)
    async with host, SessionManager(PLAIN, host_url=host.url) as manager:
        s = await manager.create_session(model="echo")
        received = []
        async for piece in manager.stream_prompt(s.id, "go on", max_tokens=1000):
            received.append(piece)
            if len(received) == 150:
                break
        await asyncio.wait_for(host.cancel_seen.wait(), 10)
        result = await fetch_host_checkpoints(host.url, s.id, portal=portal.url, host_address=HOST)
    assert host.received_cancels == 1
    assert 150 <= result.token_count < 1000 and result.complete
    (user, answer) = result.messages
    assert user["content"] == "go on" and answer["content"].startswith("".join(received))
    assert len(answer["content"].split()) == result.token_count
