"""Crafted share codes (issue 11, finding 3): every bad export is ``INVALID_SHARE_CODE``, and
an import never replaces a session or its stored conversation. A real LocalPortal and
reference host on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from langchain_fabstir import SessionManager
from langchain_fabstir.errors import ShareCodeError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.storage.conversations import S5ConversationStore
from tests.storage.conftest import ThreadedPortal

USER = "0xabc0000000000000000000000000000000000002"


@pytest.fixture
async def host() -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as h:
        yield h


def store(portal: ThreadedPortal, phrase: str) -> S5ConversationStore:
    return S5ConversationStore(portal_url=portal.url, seed_phrase=phrase, user_address=USER)


def export(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "fabstir-session-export",
        "version": 1,
        "session": {"id": "shared-1", "host_url": "", "model": "echo"},
        "messages": [{"role": "user", "content": "hi", "timestamp": 1700000000000}],
    }
    base.update(changes)
    return base


CRAFTED = {
    "message-not-an-object": export(messages=["hello", 7]),
    "message-without-content": export(messages=[{"role": "user"}]),
    "absurd-timestamp-as-string": export(
        messages=[{"role": "user", "content": "x", "timestamp": "soon"}]
    ),
    "missing-session-id": export(session={"model": "echo"}),
    "session-id-not-a-string": export(session={"id": {"x": 1}}),
    "session-id-with-a-slash": export(session={"id": "../other/x"}),
    "session-fields-of-the-wrong-type": export(
        session={"id": "s", "token_count": "many", "created_at": "not a date"}
    ),
    "proofs-not-a-list": export(checkpointProofs={"a": 1}),
    "proofs-of-garbage": export(checkpointProofs=[{"checkpointNumber": "one"}]),
}


@pytest.mark.parametrize("crafted", list(CRAFTED.values()), ids=list(CRAFTED))
async def test_crafted_exports_are_invalid_share_codes(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost, crafted: dict[str, Any]
) -> None:
    async with SessionManager(host_url=host.url, storage=store(portal, phrase)) as manager:
        code = await manager.generate_share_code(crafted)
        with pytest.raises(ShareCodeError) as info:
            await manager.import_session(code)
        assert info.value.code == "INVALID_SHARE_CODE"
        assert manager.sessions == []


async def test_absurd_timestamps_import_as_now(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost
) -> None:
    messages = [
        {"role": "user", "content": "far", "timestamp": 1e300},
        {"role": "assistant", "content": "past", "timestamp": -5},
    ]
    async with SessionManager(host_url=host.url, storage=store(portal, phrase)) as manager:
        imported = await manager.import_session(
            await manager.generate_share_code(export(messages=messages))
        )
        history = await manager.get_conversation_history(imported.id)
    assert [m.content for m in history] == ["far", "past"]


async def test_an_import_never_replaces_a_session_or_its_stored_conversation(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost
) -> None:
    s5 = store(portal, phrase)
    async with SessionManager(host_url=host.url, storage=s5, user_address=USER) as manager:
        mine = await manager.create_session()
        await manager.prompt(mine.id, "the original question")
        stale = await manager.export_session(mine.id)  # one exchange
        await manager.prompt(mine.id, "a second question")
        code = await manager.generate_share_code(stale)

        # The same manager: the live session stays as it is.
        twin = await manager.import_session(code)
        assert twin.id != mine.id
        await manager.resume_session(twin.id)
        await manager.prompt(twin.id, "on the twin")
        original = [m.content for m in await manager.get_conversation_history(mine.id)]
        assert original[-1] == "Echo: a second question" and len(original) == 4

    stored = await s5.load_conversation(mine.id)
    assert stored is not None and len(stored["messages"]) == 4

    # A new process of the same user (the session only in storage): the same holds.
    async with SessionManager(host_url=host.url, storage=s5, user_address=USER) as manager:
        again = await manager.import_session(code)
        assert again.id != mine.id
        await manager.resume_session(again.id)
        await manager.prompt(again.id, "overwrite?")
    stored = await s5.load_conversation(mine.id)
    assert stored is not None
    assert [m["content"] for m in stored["messages"]][-1] == "Echo: a second question"
    await s5.aclose()
