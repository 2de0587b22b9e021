"""One owner of retries: ``ChatFabstir`` asks the session layer for an answer and counts no
attempts of its own, so a host that fails every try sees the documented total, never a
product of two retry loops. And a host that restarts an answer it was asked to resume
does not make the consumer see the start twice."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from langchain_fabstir import ChatFabstir, SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.errors import HostDisconnectedError
from langchain_fabstir.sessions.recovery import CONTINUE_PROMPT
from tests._support.wire import RawHost, raw_host
from tests.faults.test_resilience import send_answer

ANSWER = ["A ", "B ", "C ", "D ", "E "]


async def drop(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
    await ws.close()  # acked session_init; drops the socket on every prompt


@pytest.mark.timeout(30)
@pytest.mark.parametrize("max_retries", [0, 2, 3])
async def test_sockets_of_one_call_to_a_host_that_drops_every_socket(max_retries: int) -> None:
    async with within(20), raw_host(drop) as seen:
        llm = ChatFabstir(host_url=seen.url, max_retries=max_retries)
        with pytest.raises(HostDisconnectedError) as info:
            await llm.ainvoke("hello")
        await llm.aclose()
    assert info.value.code == "HOST_DISCONNECTED" and info.value.is_retryable
    # The documented total: 1 + max_retries sockets and prompts, not a product.
    assert seen.connections == 1 + max_retries
    assert len(seen.prompts) == 1 + max_retries
    assert info.value.details["attempts"] == max_retries


@pytest.mark.timeout(30)
async def test_a_list_of_hosts_shares_one_budget() -> None:
    async with within(20), raw_host(drop) as first, raw_host(drop) as second:
        llm = ChatFabstir(host_url=[first.url, second.url], max_retries=3)
        with pytest.raises(HostDisconnectedError):
            await llm.ainvoke("hello")
        await llm.aclose()
    assert first.connections + second.connections == 1 + 3
    assert second.connections >= 1  # failover within the budget


def restarting_host(confirm: bool) -> Any:
    """Announces ``resume``; the first answer drops after three tokens; asked to resume
    (or to continue), it starts the answer over from the beginning (``confirm``: after
    confirming the offset with ``stream_resumed``, as if it had resumed)."""

    async def on_prompt(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        rid = msg["id"]
        if n == 0:
            for tok in ANSWER[:3]:
                frame = {"type": "stream_chunk", "content": tok, "tokens": 1, "id": rid}
                await ws.send(json.dumps(frame))
            await ws.close()
            return
        resume = msg["request"].get("resume")
        if confirm and resume:
            await ws.send(json.dumps({"type": "stream_resumed", "id": rid, "offset": 3}))
        await send_answer(ws, rid, ANSWER)

    return on_prompt


@pytest.mark.timeout(30)
@pytest.mark.parametrize("confirm", [True, False], ids=["confirmed", "unconfirmed"])
async def test_a_restarted_answer_is_not_delivered_twice(confirm: bool) -> None:
    async with within(20), raw_host(restarting_host(confirm), features=["resume"]) as seen:
        async with SessionManager(SessionConfig(), host_url=seen.url) as manager:
            session = await manager.create_session()
            got = [t async for t in manager.stream_prompt(session.id, "go")]
    assert "".join(got) == "A B C D E "
    if not confirm:
        assert seen.prompts[2]["request"]["prompt"] == CONTINUE_PROMPT
    async with within(20), raw_host(restarting_host(confirm), features=["resume"]) as seen:
        llm = ChatFabstir(host_url=seen.url)
        chunks = [str(c.content) async for c in llm.astream("go")]
        await llm.aclose()
    assert "".join(chunks) == "A B C D E "


@contextlib.asynccontextmanager
async def init_dropping_host() -> AsyncIterator[RawHost]:
    """Greets, then drops the socket when ``session_init`` comes (on every socket)."""
    seen = RawHost()

    async def handler(ws: ServerConnection) -> None:
        seen.connections += 1
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "connected", "message": "hi", "features": []}))
            await ws.recv()
            await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        seen.url = f"http://127.0.0.1:{port}"
        yield seen


@pytest.mark.timeout(30)
async def test_hosts_that_drop_during_session_init_share_one_budget() -> None:
    async with within(20), init_dropping_host() as first, init_dropping_host() as second:
        llm = ChatFabstir(host_url=[first.url, second.url], max_retries=2)
        with pytest.raises(HostDisconnectedError):
            await llm.ainvoke("hello")
        await llm.aclose()
    # Each host once, plus max_retries retries shared by both (not 1 + 2 per host).
    assert first.connections + second.connections == 2 + 2
    assert second.connections >= 1
