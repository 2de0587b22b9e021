"""S5ChatMessageHistory against a real LocalPortal (own thread) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    ToolMessage,
)
from pydantic import SecretStr

from langchain_fabstir.chat_message_histories import S5ChatMessageHistory, history_path
from langchain_fabstir.errors import IntegrityError, StorageError
from langchain_fabstir.storage.access import S5Access, on_background

from .conftest import ThreadedPortal


def every_message_type() -> list[BaseMessage]:
    return [
        SystemMessage("be brief", id="s1"),
        HumanMessage(
            [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}],
            id="h1",
            name="ada",
        ),
        AIMessage(
            "",
            id="a1",
            tool_calls=[{"name": "search", "args": {"q": "s5", "n": 3}, "id": "call-1"}],
            invalid_tool_calls=[
                {"name": "bad", "args": "{oops", "id": "call-2", "error": "bad json"}
            ],
            usage_metadata={
                "input_tokens": 10,
                "output_tokens": 4,
                "total_tokens": 14,
                "input_token_details": {"cache_read": 2},
            },
            response_metadata={"model_name": "llama", "finish_reason": "tool_calls"},
            additional_kwargs={"extra": [1, 2]},
        ),
        ToolMessage("3 results", tool_call_id="call-1", artifact={"raw": [1]}, status="success"),
        FunctionMessage(content="42", name="answer"),
        ChatMessage(content="custom role", role="critic"),
        AIMessageChunk(
            content="partial ",
            id="run-1",
            tool_call_chunks=[{"name": "f", "args": '{"a": 1}', "id": "c3", "index": 0}],
            usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
            chunk_position="last",
        ),
        HumanMessageChunk(content="chunky"),
        AIMessage("unicode ✓ 日本語 \x00 nul", id="a2"),
    ]


def make(
    portal: ThreadedPortal, phrase: str, sid: str = "s-1", **kw: object
) -> S5ChatMessageHistory:
    return S5ChatMessageHistory(sid, portal_url=portal.url, seed_phrase=SecretStr(phrase), **kw)  # type: ignore[arg-type]


async def test_every_message_type_round_trips_losslessly(
    portal: ThreadedPortal, phrase: str
) -> None:
    history = make(portal, phrase)
    messages = every_message_type()
    await history.aadd_messages(messages[:3])
    for m in messages[3:]:
        await history.aadd_messages([m])
    again = make(portal, phrase)
    loaded = await again.aget_messages()
    assert loaded == messages
    assert [type(m) for m in loaded] == [type(m) for m in messages]
    ai = loaded[2]
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls[0]["args"] == {"q": "s5", "n": 3}
    assert ai.usage_metadata is not None and ai.usage_metadata["total_tokens"] == 14
    assert ai.response_metadata["finish_reason"] == "tool_calls"
    assert isinstance(loaded[6], AIMessageChunk) and loaded[6].tool_call_chunks
    assert await again.acount() == len(messages)
    await history.aclear()
    assert await again.aget_messages() == []
    await history.aadd_messages([HumanMessage("after clear")])
    assert [m.content for m in await again.aget_messages()] == ["after clear"]
    await history.aclose()
    await again.aclose()


async def test_sync_methods_work_inside_a_running_loop(portal: ThreadedPortal, phrase: str) -> None:
    asyncio.get_running_loop()  # we are inside one
    history = make(portal, phrase, "sync")
    history.add_user_message("hi")
    history.add_ai_message("hello")
    history.add_messages([HumanMessage("more"), AIMessage("sure")])
    assert [m.content for m in history.messages] == ["hi", "hello", "more", "sure"]
    assert "hello" in str(history)
    history.clear()
    assert history.messages == []
    history.close()


def test_sync_methods_from_plain_code(portal: ThreadedPortal, phrase: str) -> None:
    with make(portal, phrase, "plain") as history:
        history.add_messages(every_message_type())
        assert history.messages == every_message_type()


async def test_histories_are_isolated_by_session_and_user(
    portal: ThreadedPortal, phrase: str
) -> None:
    from langchain_fabstir.s5 import generate_phrase

    a, b = make(portal, phrase, "a/1"), make(portal, phrase, "a")
    stranger = make(portal, generate_phrase(), "a/1")
    await a.aadd_messages([HumanMessage("for a/1")])
    assert await b.aget_messages() == []
    assert await stranger.aget_messages() == []
    assert history_path("a/1") != history_path("a") and history_path("..").endswith("%2E%2E")
    for h in (a, b, stranger):
        await h.aclose()


async def test_two_concurrent_writers_lose_nothing(portal: ThreadedPortal, phrase: str) -> None:
    w1, w2 = make(portal, phrase, "busy"), make(portal, phrase, "busy")
    n = 100

    async def write(history: S5ChatMessageHistory, tag: str) -> None:
        for i in range(n):
            await history.aadd_messages([HumanMessage(f"{tag}{i}")])

    await asyncio.gather(write(w1, "a"), write(w2, "b"))
    texts = [str(m.content) for m in await make(portal, phrase, "busy").aget_messages()]
    assert len(texts) == 2 * n
    assert [t for t in texts if t.startswith("a")] == [f"a{i}" for i in range(n)]
    assert [t for t in texts if t.startswith("b")] == [f"b{i}" for i in range(n)]
    # Whether the two writers' appends interleave depends on scheduling (under CPU load
    # one may win every compare-and-swap for a while): not asserted, as it is not the claim.
    await w1.aclose()
    await w2.aclose()


def blob_bytes(data_dir: Path) -> tuple[int, int]:
    files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


async def test_append_cost_does_not_grow_with_history(portal: ThreadedPortal, phrase: str) -> None:
    history = make(portal, phrase, "long", seal_records=16)
    await history.aadd_messages([HumanMessage(f"message {i}") for i in range(10)])

    async def one_append_cost() -> tuple[int, int]:
        files0, bytes0 = blob_bytes(portal.data_dir)
        await history.aadd_messages([HumanMessage("one more message")])
        files1, bytes1 = blob_bytes(portal.data_dir)
        return files1 - files0, bytes1 - bytes0

    small = await one_append_cost()  # history of 10 -> 11 (no seal)
    await history.aadd_messages([HumanMessage(f"bulk {i}") for i in range(2000 - 12)])
    assert await history.acount() == 1999
    large = await one_append_cost()  # history of 1999 -> 2000: tail 15 -> 16 seals
    large2 = await one_append_cost()  # 2000 -> 2001: tail 0 -> 1
    assert small[0] == 1 and large2[0] == 1  # only a new head blob
    assert large[0] == 2  # the head plus one sealed segment of 16 messages
    assert large2[1] <= 2 * small[1]  # the head did not grow with the history
    loaded = await history.aget_messages()
    assert len(loaded) == 2001 and loaded[-1].content == "one more message"
    await history.aclose()


async def test_corrupt_record_raises_integrity_error(portal: ThreadedPortal, phrase: str) -> None:
    history = make(portal, phrase, "corrupt")
    await history.aadd_messages([HumanMessage("fine")])

    async def inject() -> None:
        log = await history._get_log()
        await log.extend([b'{"type": "nonsense", "data": {}}'])

    await on_background(inject())
    with pytest.raises(IntegrityError) as info:
        await history.aget_messages()
    assert info.value.code == "INTEGRITY_ERROR"

    async def inject_non_json() -> None:
        log = await history._get_log()
        await log.clear()
        await log.extend([b"\xff not json"])

    await on_background(inject_non_json())
    with pytest.raises(IntegrityError):
        await history.aget_messages()
    await history.aclose()


async def test_bad_arguments_and_secrets(portal: ThreadedPortal, phrase: str) -> None:
    with pytest.raises(ValueError):
        S5ChatMessageHistory("x")
    with pytest.raises(ValueError):
        S5ChatMessageHistory("", portal_url=portal.url, seed_phrase=phrase)
    history = make(portal, phrase)
    assert phrase.split()[0] not in repr(history) + repr(history._access)
    unreachable = S5ChatMessageHistory("x", portal_url="http://127.0.0.1:9", seed_phrase=phrase)
    with pytest.raises(StorageError) as info:
        await unreachable.aget_messages()
    assert info.value.code == "STORAGE_ERROR"


async def test_shared_access_and_given_fs(portal: ThreadedPortal, phrase: str) -> None:
    from langchain_fabstir.s5 import S5FileSystem, S5Identity, S5PortalClient

    identity = S5Identity.from_phrase(phrase)
    async with S5PortalClient(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        fs = S5FileSystem(client, identity)
        via_fs = S5ChatMessageHistory("shared", fs=fs)
        await via_fs.aadd_messages([HumanMessage("from fs")])
        access = S5Access(portal_url=portal.url, seed_phrase=phrase)
        via_access = S5ChatMessageHistory("shared", access=access)
        assert [m.content for m in await via_access.aget_messages()] == ["from fs"]
        await via_fs.aclose()
        await access.aclose()
        # the caller's own client is untouched by closing the history
        assert await client.registry_get(fs.directory_public_key("home")) is None


CHILD = textwrap.dedent(
    """
    import sys
    from langchain_core.messages import HumanMessage
    from langchain_fabstir.chat_message_histories import S5ChatMessageHistory

    phrase = sys.stdin.readline().strip()
    history = S5ChatMessageHistory(
        "crashy", portal_url=sys.argv[1], seed_phrase=phrase, seal_records=8
    )
    i = 0
    while True:
        history.add_messages([HumanMessage(f"m{i}"), HumanMessage(f"m{i}b")])
        print(i, flush=True)
        i += 1
    """
)


async def test_process_killed_mid_append_leaves_a_readable_history(
    portal: ThreadedPortal, phrase: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        portal.url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(phrase.encode() + b"\n")
    await proc.stdin.drain()
    seen = -1
    while seen < 25:  # several seals (8 records each) have happened
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, "child exited early"
        seen = int(line)
    proc.send_signal(signal.SIGKILL)  # most likely in the middle of append 26
    await proc.wait()
    history = make(portal, phrase, "crashy")
    texts = [str(m.content) for m in await history.aget_messages()]
    pairs = len(texts) // 2
    assert len(texts) % 2 == 0 and pairs >= seen + 1  # whole appends only
    assert texts == [t for i in range(pairs) for t in (f"m{i}", f"m{i}b")]
    await history.aadd_messages([HumanMessage("after the crash")])
    assert (await history.aget_messages())[-1].content == "after the crash"
    await history.aclose()


async def test_blocking_call_on_the_background_loop_is_refused(
    portal: ThreadedPortal, phrase: str
) -> None:
    history = make(portal, phrase, "guard")

    async def misuse() -> None:
        history.add_messages([HumanMessage("would deadlock")])

    with pytest.raises(RuntimeError, match="background loop"):
        await on_background(misuse())
    assert await history.aget_messages() == []
    await history.aclose()
