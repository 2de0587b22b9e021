"""The session layer under injected faults: a real reference host behind ``FaultProxy``.

Every scenario ends in a complete answer or a typed ``FabstirError`` within its deadline.
Answers are numbered tokens (``" 0 1 2 ..."``) from the deterministic echo engine, so a
lost or duplicated token shows up as a broken sequence. Compression is off, so a
corrupted frame reaches the client as garbage JSON (not as a deflate error).

The helpers here (:func:`proxied`, :func:`numbers`, :class:`GatedEcho`) are shared by the
other ``tests/faults/test_*.py`` files; a hand-written host is ``tests._support.wire.raw_host``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.errors import (
    HostDisconnectedError,
    ProtocolError,
    ResponseTimeoutError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.engines import EngineRequest, Generation
from tests._support.wire import raw_host
from tests.faults.proxy import CorruptFrame, CutAfterFrames, FaultProxy

SCRIPT = [f" {i}" for i in range(300)]
"""Numbered tokens: the answer to any prompt is ``" 0 1 2 ..."`` up to ``max_tokens``."""


def numbers(text: str) -> list[int]:
    """The token numbers of an answer made of :data:`SCRIPT` tokens.

    >>> numbers(" 0 1 2")
    [0, 1, 2]
    """
    return [int(t) for t in text.split()]


class GatedEcho(EchoEngine):
    """An :class:`EchoEngine` a test can steer: with ``hold_at=k`` a generation pauses
    after its ``k``-th token until :attr:`gate` is set; :attr:`done` is set once a
    generation has produced its last token (the host then holds the whole answer)."""

    def __init__(
        self, script: Sequence[str] | None = None, *, hold_at: int | None = None, **kw: Any
    ) -> None:
        super().__init__(script, **kw)
        self.hold_at = hold_at
        self.gate = asyncio.Event()
        self.done = asyncio.Event()

    def generate(self, request: EngineRequest) -> Generation:
        gen = super().generate(request)
        inner = gen.tokens

        async def tokens() -> AsyncIterator[str]:
            n = 0
            async for token in inner:
                if n == self.hold_at:
                    await self.gate.wait()
                yield token
                n += 1
            self.done.set()

        gen.tokens = tokens()
        return gen


@dataclass
class Rig:
    host: ReferenceHost
    proxy: FaultProxy
    manager: SessionManager

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"


@contextlib.asynccontextmanager
async def proxied(
    engine: EchoEngine, *, host_cls: type[ReferenceHost] = ReferenceHost, **config: Any
) -> AsyncIterator[Rig]:
    """A reference host (no rate limit) behind a fault proxy, and a manager using it
    with compression off and ``config`` (``SessionConfig`` fields)."""
    async with host_cls(engine, rate_limit_per_minute=None) as host:
        async with FaultProxy("127.0.0.1", host.port) as proxy:
            cfg = SessionConfig(compression_enabled=False, **config)
            url = f"http://127.0.0.1:{proxy.port}"
            async with SessionManager(cfg, host_url=url) as manager:
                yield Rig(host, proxy, manager)
            # Let connections finish closing (the proxy's aclose cancels live ones).
            proxy.release()
            with contextlib.suppress(TimeoutError):
                async with within(3):
                    await proxy.wait_for(lambda: not proxy.live)


async def send_answer(ws: ServerConnection, rid: str, tokens: Sequence[str]) -> None:
    """Stream ``tokens`` as a deployed host does: chunks, the empty chunk, ``stream_end``."""
    for tok in tokens:
        await ws.send(json.dumps({"type": "stream_chunk", "content": tok, "tokens": 1, "id": rid}))
    await ws.send(json.dumps({"type": "stream_chunk", "content": "", "tokens": 0, "id": rid}))
    end = {"type": "stream_end", "reason": "complete", "tokens_used": len(tokens), "id": rid}
    await ws.send(json.dumps(end))


# --- cuts -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("frames", "partial"),
    [(1, 0), (1, 7), (57, 0), (120, 3), (200, 0)],
    ids=["after-1", "inside-2nd", "after-57", "inside-121st", "before-stream-end"],
)
async def test_cut_mid_answer_resumes_to_the_same_answer(frames: int, partial: int) -> None:
    async with within(20), proxied(EchoEngine(SCRIPT, delay=0.001)) as rig:
        session = await rig.manager.create_session()
        clean = await rig.manager.prompt(session.id, "go", max_tokens=200)
        assert numbers(clean.text) == list(range(200)) and clean.resumed == 0

        rig.proxy.set_fault(CutAfterFrames(frames, partial), scope="current")
        result = await rig.manager.prompt(session.id, "go", max_tokens=200)

        assert rig.proxy.cut_happened.is_set() and len(rig.proxy.connections) == 2
        assert result.text == clean.text  # every token exactly once, in order
        assert result.finish_reason == "length" and result.reason == "complete"
        assert result.resumed == 1
        note = result.metadata["resumes"][0]
        # (offset < frames only if the client had not read frames when the RST came)
        assert note["mode"] == "exact" and note["offset"] <= frames
        assert rig.host.resumes == 1  # the host continued its job; nothing regenerated
        assert len(rig.host.requests) == 2
        history = await rig.manager.get_conversation_history(session.id)
        assert history[-1].content == clean.text


# --- stalls and garbage while the host holds the rest of the answer --------------------


async def _prompt_until(rig: Rig, session_id: str, chunks: int) -> asyncio.Task[Any]:
    """Start a 200-token prompt; return once ``chunks`` chunks reached the client."""
    task = asyncio.create_task(rig.manager.prompt(session_id, "go", max_tokens=200))
    conn = rig.proxy.connections[-1]
    await rig.proxy.wait_for(lambda: conn.data_frames_down >= 2 + chunks)  # + greeting, ack
    return task


@pytest.mark.timeout(30)
async def test_stall_mid_answer_reconnects_and_resumes() -> None:
    """The stall is noticed after ``chunk_timeout`` (not the longer first-token timeout)."""
    engine = GatedEcho(SCRIPT, hold_at=30)
    async with within(6), proxied(engine, chunk_timeout=0.5, first_token_timeout=8.0) as rig:
        session = await rig.manager.create_session()
        task = await _prompt_until(rig, session.id, 30)
        rig.proxy.stall(scope="current")
        engine.gate.set()
        await engine.done.wait()  # the rest of the answer is held by the stalled proxy
        result = await task
        assert rig.proxy.stall_holding.is_set()
        assert numbers(result.text) == list(range(200))
        assert result.resumed == 1
        assert result.metadata["resumes"][0] == {"mode": "exact", "offset": 30, "host_url": rig.url}
        assert rig.host.resumes == 1 and len(rig.proxy.connections) == 2


@pytest.mark.timeout(30)
async def test_corrupted_frame_is_a_protocol_error_that_resumes() -> None:
    engine = GatedEcho(SCRIPT)
    async with within(20), proxied(engine) as rig:
        session = await rig.manager.create_session()
        rig.proxy.stall(scope="current")  # hold the answer until the host generated it all
        task = asyncio.create_task(rig.manager.prompt(session.id, "go", max_tokens=200))
        await engine.done.wait()
        rig.proxy.set_fault(CorruptFrame(40), scope="current")  # also ends the stall
        result = await task
        assert rig.proxy.corrupt_happened.is_set()
        assert numbers(result.text) == list(range(200))
        assert result.resumed == 1
        # The 40th chunk was garbage (a ProtocolError inside): it is sent again.
        assert result.metadata["resumes"][0] == {"mode": "exact", "offset": 39, "host_url": rig.url}
        assert rig.host.resumes == 1


# --- the same while the host is still generating -----------------------------------------
# A broken answer must not send stream_cancel on its (still open) socket: the host would
# cancel the very job the client is about to resume.


@pytest.mark.timeout(30)
async def test_stall_while_the_host_is_still_generating_resumes() -> None:
    engine = GatedEcho(SCRIPT, hold_at=30)
    async with within(20), proxied(engine, chunk_timeout=0.5, first_token_timeout=2) as rig:
        session = await rig.manager.create_session()
        task = await _prompt_until(rig, session.id, 30)
        rig.proxy.stall(scope="current")
        await rig.proxy.wait_for(lambda: len(rig.proxy.connections) >= 2)  # reconnecting
        engine.gate.set()
        result = await task
        assert numbers(result.text) == list(range(200))
        assert result.resumed == 1 and result.metadata["resumes"][0]["mode"] == "exact"
        assert rig.host.received_cancels == 0 and rig.host.resumes == 1


@pytest.mark.timeout(30)
async def test_corrupted_frame_while_the_host_is_still_generating_resumes() -> None:
    engine = GatedEcho(SCRIPT, hold_at=100)
    async with within(20), proxied(engine, first_token_timeout=2) as rig:
        session = await rig.manager.create_session()
        rig.proxy.set_fault(CorruptFrame(30), scope="current")
        task = asyncio.create_task(rig.manager.prompt(session.id, "go", max_tokens=200))
        await rig.proxy.wait_for(lambda: len(rig.proxy.connections) >= 2)  # reconnecting
        engine.gate.set()
        result = await task
        assert numbers(result.text) == list(range(200))
        assert result.resumed == 1 and result.metadata["resumes"][0]["mode"] == "exact"
        assert rig.host.received_cancels == 0 and rig.host.resumes == 1


# --- hosts that fail on every try -------------------------------------------------------


@pytest.mark.timeout(20)
async def test_host_that_never_answers_is_a_response_timeout() -> None:
    async with within(10), proxied(EchoEngine(SCRIPT), first_token_timeout=0.3) as rig:
        session = await rig.manager.create_session()
        rig.proxy.stall(scope="current")  # the prompt goes up; nothing ever comes down
        with pytest.raises(ResponseTimeoutError) as info:
            await rig.manager.prompt(session.id, "hello?")
        assert info.value.code == "RESPONSE_TIMEOUT"
        assert len(rig.proxy.connections) == 1  # no answer started: nothing to resume
        history = await rig.manager.get_conversation_history(session.id)
        assert history == []


@pytest.mark.timeout(20)
async def test_host_that_answers_garbage_fails_after_the_reconnect_attempts() -> None:
    async def junk(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        await ws.send("this is not json")

    async with within(10), raw_host(junk) as seen:
        config = SessionConfig(reconnect_attempts=2)
        async with SessionManager(config, host_url=seen.url) as manager:
            session = await manager.create_session()
            with pytest.raises(ProtocolError) as info:
                await manager.prompt(session.id, "hello?")
    assert info.value.code == "PROTOCOL_ERROR"
    assert info.value.details["attempts"] == 2
    assert len(seen.prompts) == 3 and seen.connections == 3  # first try + 2 reconnects


@pytest.mark.timeout(20)
async def test_reconnect_exhausted_against_a_dead_host_is_host_disconnected() -> None:
    engine = EchoEngine(SCRIPT, delay=0.001)
    async with within(10), proxied(engine, reconnect_attempts=2) as rig:
        session = await rig.manager.create_session()
        rig.proxy.upstream_port = _dead_port()  # every new connection fails upstream
        rig.proxy.set_fault(CutAfterFrames(20), scope="current")
        got: list[str] = []
        with pytest.raises(HostDisconnectedError) as info:
            async for token in rig.manager.stream_prompt(session.id, "go", max_tokens=200):
                got.append(token)
    assert info.value.code == "HOST_DISCONNECTED"
    assert info.value.details["attempts"] == 2
    assert numbers("".join(got)) == list(range(20))
    assert len(rig.proxy.connections) == 3  # the cut one + 2 reconnect attempts


def _dead_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.timeout(20)
async def test_resuming_a_cancelled_answer_gets_an_answer_not_silence() -> None:
    engine = GatedEcho(SCRIPT, hold_at=5)
    async with within(10), ReferenceHost(engine, rate_limit_per_minute=None) as host:
        request = {"model": "echo", "prompt": "go", "max_tokens": 50}
        prompt = {"type": "prompt", "id": "r-1", "request": request}
        async with websockets.connect(host.ws_url, compression=None) as ws:
            await ws.recv()  # connected
            await ws.send(json.dumps(prompt))
            for _ in range(5):
                assert json.loads(await ws.recv())["type"] == "stream_chunk"
            await ws.send(json.dumps({"type": "stream_cancel", "reason": "user_cancelled"}))
            end = json.loads(await ws.recv())
            assert (end["type"], end["reason"]) == ("stream_end", "cancelled")
        resume = {**prompt, "id": "r-2"}
        resume["request"] = {**request, "resume": {"request_id": "r-1", "offset": 2}}
        async with websockets.connect(host.ws_url, compression=None) as ws:
            await ws.recv()
            await ws.send(json.dumps(resume))
            frames: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                async with within(1):
                    while not frames or frames[-1]["type"] != "stream_end":
                        frames.append(json.loads(await ws.recv()))
        assert frames and frames[-1]["type"] == "stream_end", frames


@pytest.mark.timeout(20)
async def test_response_timeout_is_raised_without_waiting_for_a_close_handshake() -> None:
    """The socket to a host that never answered is dropped, not closed politely (which
    would add the 2 s close timeout before the caller hears of it)."""
    async with proxied(EchoEngine(SCRIPT), first_token_timeout=0.3) as rig:
        session = await rig.manager.create_session()
        rig.proxy.stall(scope="current")
        with pytest.raises(ResponseTimeoutError):
            async with within(1.3):  # first_token_timeout + 1 s of slack
                await rig.manager.prompt(session.id, "hello?")
