"""SessionManager keeps conversations on S5: history, resume from a new process,
export and share codes, save/load by CID (a real LocalPortal and reference host)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir.errors import SessionNotFoundError, ShareCodeError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.storage.conversations import S5ConversationStore
from tests.storage.conftest import ThreadedPortal

USER = "0xabc0000000000000000000000000000000000001"


@pytest.fixture
async def host() -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as h:
        yield h


def store(portal: ThreadedPortal, phrase: str, **kw: object) -> S5ConversationStore:
    return S5ConversationStore(portal_url=portal.url, seed_phrase=phrase, user_address=USER, **kw)  # type: ignore[arg-type]


async def test_conversation_is_kept_on_s5_in_the_sdk_shape(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost
) -> None:
    s5 = store(portal, phrase)
    async with SessionManager(host_url=host.url, storage=s5, user_address=USER) as manager:
        session = await manager.create_session(system_prompt="Be brief.", job_id=77)
        assert session.conversation_id == f"home/sessions/{USER}/77/conversation.json"
        await manager.prompt(session.id, "first question")
        await manager.prompt(session.id, "second question")
        await manager.end_session(session.id)
    stored = await s5.load_conversation("77")
    assert stored is not None
    assert [m["role"] for m in stored["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert stored["messages"][2]["content"] == "Echo: first question"
    assert isinstance(stored["messages"][0]["timestamp"], int)
    meta = stored["metadata"]
    assert (meta["jobId"], meta["status"], meta["endpoint"]) == ("77", "ended", host.url)
    assert meta["totalTokens"] > 0 and meta["encryption"] is True
    # A second manager (another process, same seed phrase) reads the same history.
    async with SessionManager(host_url=host.url, storage=store(portal, phrase)) as other:
        history = await other.get_conversation_history("77")
    assert [m.content for m in history][-1] == "Echo: second question"
    await s5.aclose()


async def test_portal_never_sees_the_conversation_in_clear(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost
) -> None:
    secret = "my-very-private-question-" + phrase.split()[0]
    s5 = store(portal, phrase)
    async with SessionManager(host_url=host.url, storage=s5) as manager:
        s = await manager.create_session()
        await manager.prompt(s.id, secret)

    def contents() -> list[bytes]:
        return [p.read_bytes() for p in Path(portal.data_dir).rglob("*") if p.is_file()]

    blobs = await asyncio.to_thread(contents)
    assert blobs
    assert all(secret.encode() not in blob for blob in blobs)
    await s5.aclose()


async def test_resume_session_from_storage_in_a_new_manager(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost
) -> None:
    async with SessionManager(host_url=host.url, storage=store(portal, phrase)) as first:
        s = await first.create_session(system_prompt="sys", session_id="resume-me")
        await first.prompt(s.id, "remember this")
    async with SessionManager(host_url=host.url, storage=store(portal, phrase)) as second:
        resumed = await second.resume_session("resume-me")
        assert resumed.status == "active"
        result = await second.prompt(resumed.id, "Where were we?")
        assert result.text == "Echo: Where were we?"
        sent = [m.content for m in host.requests[-1].conversation_context]
        assert sent == ["sys", "remember this", "Echo: remember this"]
        with pytest.raises(SessionNotFoundError):
            await second.resume_session("never-existed")


async def test_resume_with_given_context_needs_no_storage(host: ReferenceHost) -> None:
    async with SessionManager(host_url=host.url) as manager:
        context = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        s = await manager.resume_session("from-elsewhere", context)
        await manager.prompt(s.id, "c")
        assert [m.content for m in host.requests[-1].conversation_context] == ["a", "b"]
        history = await manager.get_conversation_history(s.id)
        assert [m.content for m in history] == ["a", "b", "c", "Echo: c"]


async def test_save_to_s5_and_load_from_s5(
    portal: ThreadedPortal, phrase: str, host: ReferenceHost
) -> None:
    async with SessionManager(host_url=host.url, storage=store(portal, phrase)) as manager:
        s = await manager.create_session()
        data = {"messages": ["x"], "metadata": {"model": "echo", "tokenCount": 3}}
        cid = await manager.save_to_s5(s.id, data)
        assert cid.startswith(("z", "b", "u"))
        assert await manager.load_from_s5(cid) == data


SHARE_IMPORT = """
import asyncio, json, sys
from langchain_fabstir import SessionManager
from langchain_fabstir.storage.conversations import S5ConversationStore
from langchain_fabstir.s5 import generate_phrase

async def main(portal_url, host_url, code):
    store = S5ConversationStore(portal_url=portal_url, seed_phrase=generate_phrase(),
                                user_address="0xdevice-b")
    async with SessionManager(host_url=host_url, storage=store) as manager:
        imported = await manager.import_session(code)
        resumed = await manager.resume_session(imported.id)
        result = await manager.prompt(resumed.id, "Continue on device B")
        history = await manager.get_conversation_history(resumed.id)
        print(json.dumps({"id": resumed.id, "text": result.text,
                          "history": [m.content for m in history]}))
    await store.aclose()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_share_code_imports_on_a_second_manager_in_a_fresh_process(
    portal: ThreadedPortal, phrase: str
) -> None:
    from tests.conftest import ThreadedHost

    th = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None))
    try:
        s5 = store(portal, phrase)
        async with SessionManager(host_url=th.host.url, storage=s5) as device_a:
            s = await device_a.create_session(system_prompt="shared")
            await device_a.prompt(s.id, "hello from A")
            export = await device_a.export_session(s.id)
            code = await device_a.generate_share_code(export)
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", SHARE_IMPORT, portal.url, th.host.url, code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["id"] == s.id
        assert result["text"] == "Echo: Continue on device B"
        assert result["history"][:3] == ["shared", "hello from A", "Echo: hello from A"]
        # Without its key part the code is useless.
        with pytest.raises(ShareCodeError):
            await device_a.import_session(code[:-12])
        await s5.aclose()
    finally:
        th.stop()


async def test_storage_down_keeps_the_answer_and_the_history(
    tmp_path: Path, phrase: str, host: ReferenceHost
) -> None:
    portal = ThreadedPortal(tmp_path / "p")
    s5 = store(portal, phrase)
    failures: list[object] = []
    config = SessionConfig(persistence_enabled=True)
    async with SessionManager(config, host_url=host.url, storage=s5) as manager:
        manager.on("persistence_failed", lambda session, exc: failures.append(exc))
        s = await manager.create_session()
        portal.stop()
        result = await manager.prompt(s.id, "still works")
        assert result.text == "Echo: still works"
        assert [m.content for m in await manager.get_conversation_history(s.id)] == [
            "still works",
            "Echo: still works",
        ]
    assert failures and getattr(failures[0], "code", None) == "STORAGE_ERROR"
