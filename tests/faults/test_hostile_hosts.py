"""Hostile hosts written for the test (raw websockets servers on 127.0.0.1): every promise
of the client holds. Issue 11, client findings 1, 2 and 5."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from langchain_fabstir import ChatFabstir, SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.errors import (
    AnswerTooLargeError,
    HostDisconnectedError,
    ResponseTimeoutError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost

from .proxy import CutAfterBytes, CutAfterFrames, FaultProxy, PassThrough

OnPrompt = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]


@contextlib.asynccontextmanager
async def hostile_host(
    on_prompt: OnPrompt,
    seen: list[dict[str, Any]] | None = None,
    cancelled: asyncio.Event | None = None,
) -> AsyncIterator[str]:
    """A host that greets, acks ``session_init``, and answers prompts with ``on_prompt``
    (in a task, so it keeps reading: ``seen`` gets every frame the client sent, and
    ``cancelled`` is set when a ``stream_cancel`` arrives)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connected", "features": ["resume"]}))
        tasks: list[asyncio.Task[None]] = []
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if seen is not None:
                    seen.append(msg)
                if cancelled is not None and msg["type"] == "stream_cancel":
                    cancelled.set()
                if msg["type"] == "session_init":
                    ack = {"type": "session_init_ack", "status": "success", "id": msg.get("id")}
                    await ws.send(json.dumps(ack))
                elif msg["type"] == "prompt":
                    tasks.append(asyncio.create_task(on_prompt(ws, msg)))
        except websockets.ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}"


def chunk(msg: dict[str, Any], content: str, tokens: int = 1) -> str:
    return json.dumps(
        {"type": "stream_chunk", "content": content, "tokens": tokens, "id": msg["id"]}
    )


async def endless(ws: ServerConnection, msg: dict[str, Any], content: str, pause: float) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await ws.send(chunk(msg, content))
            await asyncio.sleep(pause)


# --- 1. an answer that never ends ----------------------------------------------------------


async def test_a_host_past_max_tokens_is_stopped_and_told() -> None:
    cancelled = asyncio.Event()

    async def flood(ws: ServerConnection, msg: dict[str, Any]) -> None:
        await endless(ws, msg, "tok ", 0)

    async with within(20), hostile_host(flood, cancelled=cancelled) as url:
        async with SessionManager(host_url=url) as manager:
            s = await manager.create_session()
            result = await manager.prompt(s.id, "go", max_tokens=50)
            # The client stopped it: about max_tokens tokens, the host told, socket closed.
            assert 50 <= result.tokens_used <= 50 + 16
            assert result.finish_reason == "length"
            assert result.metadata["host_overran_max_tokens"] is True
            await asyncio.wait_for(cancelled.wait(), 5)  # the host was told
            # The session goes on, on a new socket (the old one had late frames in it).
            history = await manager.get_conversation_history(s.id)
            assert history[-1].content == result.text


async def test_huge_chunks_are_bounded_in_memory() -> None:
    big = "x" * (256 * 1024)

    async def flood(ws: ServerConnection, msg: dict[str, Any]) -> None:
        await endless(ws, msg, big, 0)

    config = SessionConfig(max_answer_chars=4 * 1024 * 1024, max_frame_size=1024 * 1024)
    tracemalloc.start()
    try:
        async with within(30), hostile_host(flood) as url:
            async with SessionManager(config, host_url=url) as manager:
                s = await manager.create_session()
                with pytest.raises(AnswerTooLargeError) as info:
                    await manager.prompt(s.id, "go", max_tokens=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "ANSWER_TOO_LARGE" and not info.value.is_retryable
    # 4 MiB of text allowed; the old client kept every chunk (hundreds of MiB).
    assert peak < 64 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


async def test_every_answer_has_an_overall_deadline() -> None:
    async def trickle(ws: ServerConnection, msg: dict[str, Any]) -> None:
        await endless(ws, msg, ".", 0.05)  # never silent long enough for chunk_timeout

    config = SessionConfig(answer_timeout=1.0, chunk_timeout=5.0)
    async with within(10), hostile_host(trickle) as url:
        async with SessionManager(config, host_url=url) as manager:
            s = await manager.create_session()
            started = time.monotonic()
            with pytest.raises(ResponseTimeoutError) as info:
                await manager.prompt(s.id, "go", max_tokens=1_000_000)
    assert time.monotonic() - started < 5.0
    assert "answer_timeout" in info.value.message and info.value.details["partial_text"]


# --- 2. frames that are not part of the answer do not reset the clock --------------------

IRRELEVANT = [
    {"type": "stream_chunk", "content": "not yours", "tokens": 1, "id": "someone-else"},
    {"type": "whatever_extension", "data": 1},
    {"type": "session_init_ack", "status": "success", "id": "stray"},
    {"type": "stream_end", "reason": "complete", "id": "someone-else"},
    {"type": "error", "message": "not about you", "id": "someone-else"},
]


def distractor(with_checkpoints: bool) -> OnPrompt:
    async def answer(ws: ServerConnection, msg: dict[str, Any]) -> None:
        n = 0
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frame = dict(IRRELEVANT[n % len(IRRELEVANT)])
                if with_checkpoints and n % 2:
                    frame = {
                        "type": "checkpoint",
                        "id": msg["id"],
                        "proof": {"checkpointNumber": n},
                    }
                await ws.send(json.dumps(frame))
                n += 1
                await asyncio.sleep(0.1)

    return answer


@pytest.mark.parametrize("with_checkpoints", [False, True])
async def test_irrelevant_frames_do_not_keep_a_prompt_waiting(with_checkpoints: bool) -> None:
    config = SessionConfig(first_token_timeout=0.8, reconnect_attempts=0)
    async with within(10), hostile_host(distractor(with_checkpoints)) as url:
        async with SessionManager(config, host_url=url) as manager:
            s = await manager.create_session()
            started = time.monotonic()
            with pytest.raises(ResponseTimeoutError):
                await manager.prompt(s.id, "hello?")
    assert time.monotonic() - started < 3.0


async def test_irrelevant_frames_do_not_keep_a_stalled_answer_alive() -> None:
    async def stall(ws: ServerConnection, msg: dict[str, Any]) -> None:
        await ws.send(chunk(msg, "partial"))
        await distractor(True)(ws, msg)

    config = SessionConfig(chunk_timeout=0.8, reconnect_attempts=0)
    async with within(10), hostile_host(stall) as url:
        async with SessionManager(config, host_url=url) as manager:
            s = await manager.create_session()
            with pytest.raises(ResponseTimeoutError) as info:
                await manager.prompt(s.id, "hello?")
    assert info.value.code == "STREAM_CHUNK_TIMEOUT"


async def test_chat_fabstir_is_not_kept_waiting_by_irrelevant_frames() -> None:
    async with within(10), hostile_host(distractor(True)) as url:
        llm = ChatFabstir(host_url=url, timeout=0.8, max_retries=0)
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError):
            await llm.ainvoke("hello?")
    assert time.monotonic() - started < 3.0


async def test_checkpoint_frames_do_not_pile_up() -> None:
    async def spam(ws: ServerConnection, msg: dict[str, Any]) -> None:
        for n in range(2000):
            proof = {"checkpointNumber": n}
            await ws.send(json.dumps({"type": "checkpoint", "id": msg["id"], "proof": proof}))
        await ws.send(chunk(msg, "done"))
        await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "id": msg["id"]}))

    async with within(10), hostile_host(spam) as url:
        async with SessionManager(host_url=url) as manager:
            s = await manager.create_session()
            async for stream, _text in manager.open_stream(s.id, "go"):
                assert len(stream.host_checkpoints) <= 64
            assert stream.result.text == "done"


# --- 5. a host that claims resume but starts the answer over -------------------------------


async def test_a_resume_that_restarts_the_answer_is_caught() -> None:
    words = [f"w{i} " for i in range(40)]

    async def restarts(ws: ServerConnection, msg: dict[str, Any]) -> None:
        # Whatever is asked (a prompt, a resume, a continuation), the answer from the top.
        with contextlib.suppress(websockets.ConnectionClosed):
            for word in words:
                await ws.send(chunk(msg, word))
                await asyncio.sleep(0.002)
            end = {"type": "stream_end", "reason": "complete", "id": msg["id"]}
            await ws.send(json.dumps(end))

    async with within(20), hostile_host(restarts) as url:
        host_port = int(url.rsplit(":", 1)[1])
        async with FaultProxy("127.0.0.1", host_port) as proxy:
            config = SessionConfig(compression_enabled=False)
            async with SessionManager(config, host_url=f"http://127.0.0.1:{proxy.port}") as m:
                s = await m.create_session()
                proxy.set_fault(CutAfterFrames(10), scope="current")  # 10 words, then cut
                result = await m.prompt(s.id, "go", max_tokens=100)
    # The first socket was cut: the exact resume got the answer's start again, which the
    # client refused; it went on by continuation. This host restarts that too: the
    # restatement of what the consumer already has is dropped, so every word comes once.
    notes = result.metadata["resumes"]
    assert notes[0]["mode"] == "exact" and notes[-1]["mode"] == "continuation"
    assert result.text == "".join(words)


# --- 6. a handshake cut is retried like any reconnect --------------------------------------


@pytest.mark.parametrize(
    "fault",
    [CutAfterBytes(20), CutAfterFrames(1)],
    ids=["during-handshake", "before-ack"],
)
async def test_create_session_retries_a_connection_cut_while_opening(fault: Any) -> None:
    async with within(20), ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with FaultProxy("127.0.0.1", host.port) as proxy:
            # The first connection is cut (inside the HTTP upgrade reply, or after the
            # greeting); later ones pass.
            proxy.set_fault(fault, scope="new")

            def first_cut() -> bool:
                if proxy.connections and proxy.connections[0].cut:
                    proxy.set_fault(PassThrough(), scope="new")
                    return True
                return False

            waiter = asyncio.ensure_future(proxy.wait_for(first_cut))
            config = SessionConfig(compression_enabled=False, reconnect_attempts=2)
            url = f"http://127.0.0.1:{proxy.port}"
            async with SessionManager(config, host_url=url) as manager:
                session = await manager.create_session()
                text = "".join([t async for t in manager.stream_prompt(session.id, "hi")])
            await waiter
    assert text == "Echo: hi"
    assert len(proxy.connections) == 2 and proxy.connections[0].cut


async def test_create_session_gives_up_after_reconnect_attempts() -> None:
    async with within(20), ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with FaultProxy("127.0.0.1", host.port) as proxy:
            proxy.set_fault(CutAfterFrames(1), scope="new")
            config = SessionConfig(compression_enabled=False, reconnect_attempts=2)
            url = f"http://127.0.0.1:{proxy.port}"
            async with SessionManager(config, host_url=url) as manager:
                with pytest.raises(HostDisconnectedError):
                    await manager.create_session()
            assert len(proxy.connections) == 3
            proxy.release()
