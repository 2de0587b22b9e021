"""Which key a session trusts (issue 20, items 5, 6, 15): a key the caller gives makes
encryption required, a relay that swaps the greeting's key or forges
``ENCRYPTION_NOT_SUPPORTED`` gets a typed error and never a prompt in clear, and
``ChatFabstir(encryption=...)`` is honoured (unknown arguments are refused).

A hostile relay written for these tests (``tests/trust_relay.py``) sits between the client
and a keyed reference host on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from coincurve import PrivateKey
from pydantic import ValidationError

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.discovery import HostInfo
from langchain_fabstir.errors import EncryptionUnavailableError, HostIdentityError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.sessions import SessionConfig, SessionManager
from langchain_fabstir.sessions.trust import challenge_key
from langchain_fabstir.wire.encryption import host_public_key
from tests.conftest import KEYED_HOST_KEY as HOST_KEY
from tests.trust_relay import TrustRelay

HOST_PUB = host_public_key(PrivateKey(bytes.fromhex(HOST_KEY[2:])))
SECRET = "pineapple-secret-prompt"
FAST = SessionConfig(open_timeout=5, ack_timeout=5, reconnect_attempts=0)


@pytest.fixture
async def keyless_host() -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(EchoEngine()) as host:
        yield host


async def test_a_forged_not_supported_with_a_caller_key_is_an_error(
    keyed_host: ReferenceHost,
) -> None:
    """Item 6: create_session(host_public_key=K) in "auto" and a relay answering
    ENCRYPTION_NOT_SUPPORTED: ENCRYPTION_UNAVAILABLE, nothing in clear (the old client
    fell back to plaintext and sent the prompt)."""
    async with (
        TrustRelay(keyed_host.url, refuse_encryption=True) as relay,
        SessionManager(FAST, host_url=relay.url) as manager,
    ):
        session = await manager.create_session(host_public_key=HOST_PUB, connect=False)
        with pytest.raises(EncryptionUnavailableError) as err:
            await manager.prompt(session.id, SECRET)
        assert "ENCRYPTION_NOT_SUPPORTED" in err.value.message
        assert relay.refused_inits >= 1
        assert SECRET not in relay.sent_text()
        assert "session_init" not in relay.sent_types()  # no plaintext init either
    assert not keyed_host.requests


async def test_chat_fabstir_with_a_key_never_downgrades(keyed_host: ReferenceHost) -> None:
    """Item 6 through ChatFabstir(host_public_key=K) in "auto"."""
    async with TrustRelay(keyed_host.url, refuse_encryption=True) as relay:
        llm = ChatFabstir(host_url=relay.url, host_public_key=HOST_PUB, max_retries=0)
        try:
            with pytest.raises(EncryptionUnavailableError):
                await llm.ainvoke(SECRET)
        finally:
            await llm.aclose()
        assert SECRET not in relay.sent_text()
    assert not keyed_host.requests


async def test_a_relay_swapping_the_greeting_key_gets_nothing(keyed_host: ReferenceHost) -> None:
    """Item 5: the greeting's key and address replaced by the relay's. With a trusted key
    (the caller's) that is HOST_IDENTITY_MISMATCH before anything is sent; the client never
    seals to the relay's key."""
    async with (
        TrustRelay(keyed_host.url, swap_greeting=True) as relay,
        SessionManager(FAST, host_url=relay.url) as manager,
    ):
        session = await manager.create_session(host_public_key=HOST_PUB, connect=False)
        with pytest.raises(HostIdentityError) as err:
            await manager.prompt(session.id, SECRET)
        assert err.value.code == "HOST_IDENTITY_MISMATCH"
        assert relay.up == []  # not even an init
    assert not keyed_host.requests


async def test_a_relay_forging_not_supported_to_a_proven_key_is_an_error(
    keyed_host: ReferenceHost,
) -> None:
    """A key the greeting announces for the address the session trusts (a paid job's
    host) is trusted: a forged ENCRYPTION_NOT_SUPPORTED is then an error in "auto" too."""
    async with (
        TrustRelay(keyed_host.url, refuse_encryption=True) as relay,
        SessionManager(FAST, host_url=relay.url) as manager,
    ):
        session = await manager.create_session(connect=False)
        state = manager._sessions[session.id]
        assert keyed_host.host_address is not None
        state.host_addresses[relay.url] = keyed_host.host_address  # as a paid session has
        with pytest.raises(EncryptionUnavailableError):
            await manager.prompt(session.id, SECRET)
        assert SECRET not in relay.sent_text()


async def test_chat_fabstir_encryption_required_is_honoured(keyless_host: ReferenceHost) -> None:
    """Item 15: ChatFabstir(encryption="required") against a host that cannot encrypt
    fails before any prompt (it ran in "auto", in clear, before)."""
    llm = ChatFabstir(host_url=keyless_host.url, encryption="required", max_retries=0)
    assert llm._config().encryption == "required"
    try:
        with pytest.raises(EncryptionUnavailableError):
            await llm.ainvoke(SECRET)
    finally:
        await llm.aclose()
    assert not keyless_host.requests


def test_chat_fabstir_refuses_unknown_arguments() -> None:
    """Item 15: a misspelt setting is an error naming the nearest field, never ignored;
    the error does not echo the arguments (a private key among them)."""
    with pytest.raises(ValidationError) as err:
        ChatFabstir(
            host_url="http://127.0.0.1:1", encrypton="required", private_key="0x" + "ab" * 32
        )
    assert "'encrypton'" in str(err.value) and "'encryption'" in str(err.value)
    assert "abab" not in str(err.value)
    with pytest.raises(ValidationError, match="host_public_key"):
        ChatFabstir(host_url="http://127.0.0.1:1", host_publickey=HOST_PUB)
    with pytest.raises(ValidationError, match="conflicts"):
        ChatFabstir(
            host_url="http://127.0.0.1:1",
            encryption="off",
            session_config=SessionConfig(encryption="required"),
        )
    assert (
        ChatFabstir(host_url="http://127.0.0.1:1", encryption="off")._config().encryption == "off"
    )


@pytest.mark.parametrize("answer", ["huge", "garbage", "deep", "stall", "404"])
async def test_a_hostile_challenge_answer_proves_nothing(answer: str) -> None:
    """/v1/auth/challenge answered with too many bytes, garbage, deep JSON, silence or
    404: no key (and no crash, no wait past the timeout)."""
    release = asyncio.Event()

    async def challenge(request: web.Request) -> web.StreamResponse:
        if answer == "huge":
            return web.Response(body=b"{" + b" " * 1_000_000 + b"}", content_type="text/json")
        if answer == "garbage":
            return web.json_response({"signature": "zz", "recid": "x"})
        if answer == "deep":
            return web.Response(text="[" * 5000 + "]" * 5000, content_type="application/json")
        if answer == "stall":
            await release.wait()
        return web.json_response({"error": "not found"}, status=404)

    app = web.Application()
    app.router.add_post("/v1/auth/challenge", challenge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        assert await asyncio.wait_for(challenge_key(url, timeout=0.5), 5) is None
    finally:
        release.set()
        await runner.cleanup()


async def test_a_key_from_the_callers_host_list_is_trusted(keyed_host: ReferenceHost) -> None:
    """A public key the caller declares in its host list (discovery) is a trusted key: a
    forged ENCRYPTION_NOT_SUPPORTED is an error, not a plaintext session."""
    async with (
        TrustRelay(keyed_host.url, refuse_encryption=True) as relay,
        SessionManager(FAST, hosts=[HostInfo(url=relay.url, public_key=HOST_PUB)]) as manager,
    ):
        with pytest.raises(EncryptionUnavailableError):
            await manager.create_session()
        assert relay.sent_types() == ["encrypted_session_init"]
    assert not keyed_host.requests
