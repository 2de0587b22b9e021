"""SessionManager against real reference hosts (echo engine) and raw servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    HostDisconnectedError,
    InvalidRequestError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    SessionNotFoundError,
    SessionTimeoutError,
    StreamChunkTimeoutError,
    TokenLimitExceededError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests._support.wire import raw_host


async def collect(it: AsyncIterator[str]) -> str:
    return "".join([t async for t in it])


async def test_multi_turn_sends_history_as_context(echo_host: ReferenceHost) -> None:
    async with SessionManager(host_url=echo_host.url) as manager:
        session = await manager.create_session(system_prompt="You are terse.", max_tokens=50)
        assert session.status == "active" and session.model == "echo"
        assert await collect(manager.stream_prompt(session.id, "first")) == "Echo: first"
        assert await collect(manager.stream_prompt(session.id, "second")) == "Echo: second"
        context = echo_host.requests[-1].conversation_context
        assert [(m.role, m.content) for m in context] == [
            ("system", "You are terse."),
            ("user", "first"),
            ("assistant", "Echo: first"),
        ]
        history = await manager.get_conversation_history(session.id)
        assert [m.role for m in history] == ["system", "user", "assistant", "user", "assistant"]
        assert history[-1].content == "Echo: second" and history[-1].token_count == 2
        assert session.token_count > 0
        summary = await manager.end_session(session.id)
        assert summary.final_token_count == session.token_count
        assert summary.conversation_id == session.id
        assert session.status == "ended"
        with pytest.raises(SessionNotFoundError):
            await collect(manager.stream_prompt(session.id, "again"))


async def test_context_keeps_system_prompt_within_the_host_window(
    echo_host: ReferenceHost,
) -> None:
    config = SessionConfig(max_context_messages=4)
    async with SessionManager(config, host_url=echo_host.url) as manager:
        s = await manager.create_session(system_prompt="SYS")
        for i in range(4):
            await collect(manager.stream_prompt(s.id, f"q{i}"))
        context = [m.content for m in echo_host.requests[-1].conversation_context]
        assert context == ["SYS", "Echo: q1", "q2", "Echo: q2"]


async def test_one_socket_per_session_and_session_init_once(echo_host: ReferenceHost) -> None:
    async with SessionManager(host_url=echo_host.url) as manager:
        s = await manager.create_session(job_id=42)
        for q in ("a", "b", "c"):
            await collect(manager.stream_prompt(s.id, q))
        assert len(echo_host.connections) == 1
        req = echo_host.requests[-1]
        assert (req.job_id, req.session_id) == (42, "42")


async def test_buffered_stream_and_inference_request(echo_host: ReferenceHost) -> None:
    async with SessionManager(host_url=echo_host.url) as manager:
        s = await manager.create_session()
        prompt = " ".join(f"w{i}" for i in range(24))  # 25 tokens with "Echo: "
        pieces = [p async for p in manager.buffered_stream(s.id, prompt, buffer_size=10)]
        assert [len(p.split()) for p in pieces] == [10, 10, 5]
        assert "".join(pieces) == f"Echo: {prompt}"
        await manager.send_inference_request(
            s.id,
            {
                "type": "inference",
                "request": {
                    "prompt": "queued",
                    "max_tokens": 500,
                    "temperature": 0.7,
                    "stream": True,
                },
            },
        )
        assert await collect(manager.stream_response(s.id)) == "Echo: queued"
        with pytest.raises(InvalidRequestError):
            await collect(manager.stream_response(s.id))


async def test_prompt_returns_usage(echo_host: ReferenceHost) -> None:
    async with SessionManager(host_url=echo_host.url) as manager:
        s = await manager.create_session()
        result = await manager.prompt(s.id, "count these words", max_tokens=3)
        assert result.text == "Echo: count these "
        assert result.finish_reason == "length"
        assert result.usage is not None and result.usage.completion_tokens == 3


async def test_breaking_out_sends_stream_cancel_and_socket_stays_usable() -> None:
    engine = EchoEngine(["tok "], fill=True, delay=0.002)
    async with ReferenceHost(engine, rate_limit_per_minute=None) as host:
        async with SessionManager(host_url=host.url) as manager:
            s = await manager.create_session()
            got = []
            async with contextlib.aclosing(
                manager.stream_prompt(s.id, "go", max_tokens=5000)
            ) as it:
                async for token in it:
                    got.append(token)
                    if len(got) == 5:
                        break
            await asyncio.wait_for(host.cancel_seen.wait(), 5)
            assert host.received_cancels == 1
            # The stale end of the cancelled answer is skipped; the next answer is clean.
            host.engine = EchoEngine()
            assert await collect(manager.stream_prompt(s.id, "next")) == "Echo: next"
            assert len(host.connections) == 1


# --- errors -------------------------------------------------------------------------


async def test_error_mapping_from_real_host_errors() -> None:
    engine = EchoEngine(context_window=30)
    async with ReferenceHost(engine, rate_limit_per_minute=2) as host:
        async with SessionManager(host_url=host.url) as manager:
            s = await manager.create_session()
            with pytest.raises(TokenLimitExceededError) as overflow:
                await collect(manager.stream_prompt(s.id, "word " * 60))
            assert overflow.value.details["context_window_size"] == 30
            assert overflow.value.code == "TOKEN_LIMIT_EXCEEDED"
            assert await collect(manager.stream_prompt(s.id, "fine")) == "Echo: fine"
            with pytest.raises(RateLimitedError) as limited:
                await collect(manager.stream_prompt(s.id, "too many"))
            assert limited.value.retry_after is not None and limited.value.retry_after > 1
            assert limited.value.is_retryable
    with pytest.raises(InvalidRequestError):
        async with SessionManager(host_url=host.url) as manager:
            await collect(manager.stream_prompt("nope", " "))


async def test_unknown_session_and_idle_timeout(echo_host: ReferenceHost) -> None:
    now = [1000.0]
    config = SessionConfig(session_timeout=60)
    async with SessionManager(config, host_url=echo_host.url, clock=lambda: now[0]) as manager:
        with pytest.raises(SessionNotFoundError) as missing:
            await collect(manager.stream_prompt("missing", "hi"))
        assert missing.value.code == "SESSION_NOT_FOUND"
        s = await manager.create_session()
        now[0] += 59
        await collect(manager.stream_prompt(s.id, "still fresh"))
        now[0] += 61
        with pytest.raises(SessionTimeoutError) as expired:
            await collect(manager.stream_prompt(s.id, "too late"))
        assert expired.value.code == "SESSION_TIMEOUT"
        assert s.status == "paused"


async def test_unreachable_host_is_typed() -> None:
    async with SessionManager(SessionConfig(open_timeout=2), host_url="http://127.0.0.1:9") as m:
        with pytest.raises(ConnectionFailedError) as info:
            await m.create_session()
    assert info.value.code == "HOST_UNREACHABLE" and info.value.is_retryable


async def test_host_that_never_answers_ends_in_response_timeout() -> None:
    async def silent(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        return None

    async with raw_host(silent, features=None) as raw:
        url = raw.url
        config = SessionConfig(first_token_timeout=0.3)
        async with SessionManager(config, host_url=url) as manager:
            s = await manager.create_session()
            with pytest.raises(ResponseTimeoutError) as info:
                await collect(manager.stream_prompt(s.id, "hello?"))
    assert info.value.code == "RESPONSE_TIMEOUT"


async def test_host_that_stalls_mid_answer_ends_in_chunk_timeout() -> None:
    async def stall(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        await ws.send(
            json.dumps({"type": "stream_chunk", "content": "partial", "tokens": 1, "id": msg["id"]})
        )

    async with raw_host(stall, features=None) as raw:
        url = raw.url
        config = SessionConfig(chunk_timeout=0.3, reconnect_attempts=0)
        async with SessionManager(config, host_url=url) as manager:
            s = await manager.create_session()
            got: list[str] = []
            with pytest.raises(StreamChunkTimeoutError) as info:
                async for t in manager.stream_prompt(s.id, "hello?"):
                    got.append(t)
    assert got == ["partial"]
    assert info.value.code == "STREAM_CHUNK_TIMEOUT"
    assert isinstance(info.value, TimeoutError)


@pytest.mark.parametrize(
    "garbage",
    ["not json at all", "[1,2]", '{"no":"type"}', '{"type":"stream_chunk","content":7}'],
)
async def test_host_that_answers_garbage_is_a_protocol_error(garbage: str) -> None:
    async def junk(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        await ws.send(garbage)

    async with raw_host(junk, features=None) as raw:
        url = raw.url
        async with SessionManager(host_url=url) as manager:
            s = await manager.create_session()
            with pytest.raises(ProtocolError) as info:
                await collect(manager.stream_prompt(s.id, "hello?"))
    assert info.value.code == "PROTOCOL_ERROR"
    assert "excerpt" in info.value.details or "content" in info.value.message


async def test_engine_failure_chunk_becomes_host_error() -> None:
    async def failing(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        rid = msg["id"]
        await ws.send(json.dumps({"type": "stream_chunk", "content": "Hi", "tokens": 1, "id": rid}))
        await ws.send(
            json.dumps(
                {"type": "stream_chunk", "content": "Error: CUDA OOM", "tokens": 0, "id": rid}
            )
        )
        await ws.send(
            json.dumps({"type": "stream_end", "reason": "complete", "tokens_used": 1, "id": rid})
        )

    async with raw_host(failing, features=None) as raw:
        url = raw.url
        async with SessionManager(host_url=url) as manager:
            s = await manager.create_session()
            with pytest.raises(FabstirError) as info:
                await collect(manager.stream_prompt(s.id, "hello?"))
    assert info.value.code == "HOST_ERROR"
    assert "CUDA OOM" in info.value.message
    assert info.value.details["partial_text"] == "Hi"


async def test_minimal_stream_end_without_usage_is_fine() -> None:
    async def plain(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        rid = msg["id"]
        for tok in ("a", "b"):
            await ws.send(
                json.dumps({"type": "stream_chunk", "content": tok, "tokens": 1, "id": rid})
            )
        await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "tokens_used": 2}))

    async with raw_host(plain, features=None) as raw:
        url = raw.url
        async with SessionManager(host_url=url) as manager:
            s = await manager.create_session()
            result = await manager.prompt(s.id, "x")
    assert result.text == "ab" and result.usage is None
    assert result.output_tokens == 2 and result.finish_reason == "stop"


async def test_host_dropping_the_socket_is_host_disconnected() -> None:
    async def drop(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        await ws.send(
            json.dumps({"type": "stream_chunk", "content": "a", "tokens": 1, "id": msg["id"]})
        )
        await ws.close(1011, "engine crashed")

    async with raw_host(drop, features=None) as raw:
        url = raw.url
        config = SessionConfig(reconnect_attempts=0)
        async with SessionManager(config, host_url=url) as manager:
            s = await manager.create_session()
            with pytest.raises(HostDisconnectedError) as info:
                await collect(manager.stream_prompt(s.id, "x"))
    assert info.value.code == "HOST_DISCONNECTED"
    assert "1011" in info.value.message
