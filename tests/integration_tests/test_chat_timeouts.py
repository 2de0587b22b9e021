"""ChatFabstir's timeouts against a slow reference host: ``timeout`` is the total deadline
of a call (as in langchain-openai), ``first_token_timeout`` only the wait for the first
frame; and every field is described."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
import websockets
from langchain_core.exceptions import ModelTimeoutError
from websockets.asyncio.server import ServerConnection, serve

from langchain_fabstir import ChatFabstir
from langchain_fabstir._compat import timeout as bounded
from langchain_fabstir.errors import ResponseTimeoutError, StreamChunkTimeoutError
from langchain_fabstir.host import EchoEngine, ReferenceHost

TOKENS = 20
DELAY = 0.3  # a 20-token answer takes about 6 s


def slow_engine() -> EchoEngine:
    return EchoEngine([f"t{n} " for n in range(TOKENS)], delay=DELAY)


def test_every_field_has_a_description() -> None:
    missing = [name for name, field in ChatFabstir.model_fields.items() if not field.description]
    assert missing == []
    assert "Total deadline" in (ChatFabstir.model_fields["timeout"].description or "")
    assert "first frame" in (ChatFabstir.model_fields["first_token_timeout"].description or "")


async def test_timeout_bounds_the_whole_answer_of_invoke() -> None:
    async with ReferenceHost(slow_engine(), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, timeout=2)
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError) as info:
            async with bounded(10):
                await llm.ainvoke("go")
        elapsed = time.monotonic() - started
    err = info.value
    assert type(err) is ResponseTimeoutError  # not a (retried) STREAM_CHUNK_TIMEOUT
    assert err.code == "RESPONSE_TIMEOUT" and isinstance(err, ModelTimeoutError)
    assert 1.8 <= elapsed < 3.5, elapsed  # about 2 s, not the 6 s of the whole answer
    assert err.details["answer_timeout"] == 2
    assert err.details["partial_text"].startswith("t0 t1 ")


async def test_timeout_keeps_the_chunks_a_stream_already_yielded() -> None:
    async with ReferenceHost(slow_engine(), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, timeout=2)
        got: list[str] = []
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError) as info:
            async with bounded(10):
                async for chunk in llm.astream("go"):
                    got.append(str(chunk.content))
        elapsed = time.monotonic() - started
    assert not isinstance(info.value, StreamChunkTimeoutError)
    assert elapsed < 3.5, elapsed
    text = "".join(got)
    assert 3 <= len(text.split()) < TOKENS  # the first seconds' tokens, in order
    assert text == "".join(f"t{n} " for n in range(len(text.split())))


async def test_first_token_timeout_alone_does_not_bound_a_slow_answer() -> None:
    async with ReferenceHost(slow_engine(), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, first_token_timeout=2)
        started = time.monotonic()
        async with bounded(20):
            msg = await llm.ainvoke("go")
        elapsed = time.monotonic() - started
    assert msg.content == "".join(f"t{n} " for n in range(TOKENS))
    assert elapsed > 2  # longer than first_token_timeout: it only bounds the first frame
    assert llm._config().first_token_timeout == 2


def test_timeouts_map_to_the_session_config() -> None:
    config = ChatFabstir(
        host_url="http://127.0.0.1:1", timeout=5, first_token_timeout=1, stream_chunk_timeout=3
    )._config()
    assert (config.answer_timeout, config.first_token_timeout, config.chunk_timeout) == (5, 1, 3)
    default = ChatFabstir(host_url="http://127.0.0.1:1")._config()
    assert default.answer_timeout == 900 and default.first_token_timeout == 60
    with pytest.raises(ValueError):
        ChatFabstir(host_url="http://127.0.0.1:1", timeout=0)


@contextlib.asynccontextmanager
async def flaky_host(rate_limit_first: bool) -> AsyncIterator[tuple[str, list[str]]]:
    """A hand-written host. ``rate_limit_first``: the first prompt is refused with a 5 s
    rate limit, else answered. Otherwise: the first socket sends one token and is closed,
    and every later socket never greets (a reconnect that hangs)."""
    prompts: list[str] = []
    sockets = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal sockets
        sockets += 1
        if sockets > 1 and not rate_limit_first:
            await ws.wait_closed()  # never greets: until the client or the server closes
            return
        await ws.send(json.dumps({"type": "connected", "message": "hi", "features": []}))
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "session_init":
                    ack = {"type": "session_init_ack", "status": "success", "id": msg.get("id")}
                    await ws.send(json.dumps(ack))
                elif msg["type"] == "prompt":
                    prompts.append(msg["request"]["prompt"])
                    rid = msg["id"]
                    if rate_limit_first and len(prompts) == 1:
                        error = "Rate limit exceeded, retry after 5 seconds"
                        await ws.send(json.dumps({"type": "error", "error": error}))
                        end = {"type": "stream_end", "reason": "error", "id": rid}
                        await ws.send(json.dumps(end))
                        continue
                    frame = {"type": "stream_chunk", "content": "part ", "tokens": 1, "id": rid}
                    await ws.send(json.dumps(frame))
                    if not rate_limit_first:
                        await ws.close()
                        return
                    await ws.send(
                        json.dumps({"type": "stream_end", "reason": "complete", "id": rid})
                    )

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", prompts


async def test_timeout_bounds_a_reconnect_that_hangs() -> None:
    async with flaky_host(rate_limit_first=False) as (url, prompts):
        llm = ChatFabstir(host_url=url, timeout=1.5)
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError) as info:
            async with bounded(20):
                await llm.ainvoke("go")
        elapsed = time.monotonic() - started
    assert type(info.value) is ResponseTimeoutError
    assert elapsed < 3, elapsed  # not the 10 s open_timeout of each reconnect
    assert prompts == ["go"]


async def test_timeout_does_not_wait_a_rate_limit_past_it() -> None:
    async with flaky_host(rate_limit_first=True) as (url, prompts):
        llm = ChatFabstir(host_url=url, timeout=1)
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError):
            async with bounded(20):
                await llm.ainvoke("go")
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, elapsed  # the host asked for 5 s, more than the call has
    assert prompts == ["go"]
