"""The reference host against hostile peers (issue 11, findings 13 to 15).

Real hosts on 127.0.0.1 (in-process, or a subprocess for memory figures); the hostile
peers are raw WebSocket / HTTP clients.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from aiohttp import web

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.checkpoints import CheckpointProof
from langchain_fabstir.checkpoints.published import fetch_host_checkpoints
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.errors import CheckpointError, ResponseTimeoutError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests._support.wire import read_answer, recv_json

HOST_KEY = "0x" + "42" * 32


async def init(ws: Any, session_id: str) -> None:
    msg = {"type": "session_init", "session_id": session_id, "id": "i"}
    if session_id.isdigit():
        msg["jobId"] = session_id
    await ws.send(json.dumps(msg))
    assert (await recv_json(ws))["type"] == "session_init_ack"


def prompt(rid: str, text: str = "tell me a secret", **request: Any) -> str:
    body = {"model": "echo", "prompt": text, "max_tokens": 8, **request}
    return json.dumps({"type": "prompt", "id": rid, "request": body})


def resume(rid: str, offset: int = 0, **spec: Any) -> str:
    return prompt(rid, resume={"request_id": rid, "offset": offset, **spec})


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f.get("content", "") for f in frames if f["type"] == "stream_chunk")


def refused(frames: list[dict[str, Any]]) -> bool:
    """No text, and an error answer."""
    return text_of(frames) == "" and frames[-1] == {
        "type": "stream_end",
        "reason": "error",
        "tokens_used": 0,
        "id": frames[-1].get("id"),
    }


# --- 13: another client's answer ---------------------------------------------------


@pytest.mark.parametrize("claim", [None, "42"])
async def test_a_stranger_cannot_resume_an_answer(claim: str | None) -> None:
    """Neither side sent session_init (claim None), or the stranger claims the victim's
    public session id: the stranger still gets nothing of the victim's answer."""
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with websockets.connect(host.ws_url) as victim:
            await recv_json(victim)
            if claim is not None:
                await init(victim, claim)
            await victim.send(prompt("req-1"))
            answer = text_of(await read_answer(victim))
            assert "secret" in answer
        async with websockets.connect(host.ws_url) as stranger:
            own = (await recv_json(stranger)).get("resume_token", "own")
            if claim is not None:
                await init(stranger, claim)
            await stranger.send(resume("req-1"))
            frames = await read_answer(stranger)
            assert refused(frames), frames
            error = next(f for f in frames if f["type"] == "error")
            assert error["code"] == "RESUME_NOT_FOUND"
            # Nor with a token of its own, or a made-up one.
            for token in (own, "x" * 32):
                await stranger.send(resume("req-1", token=token))
                assert refused(await read_answer(stranger))
        assert host.resumes == 0


async def test_the_owner_resumes_with_its_token_and_the_answer_changes_hands() -> None:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with websockets.connect(host.ws_url) as first:
            greeting = await recv_json(first)
            assert "resume_token" in greeting["features"]
            token_a = greeting["resume_token"]
            await first.send(prompt("req-1"))
            whole = text_of(await read_answer(first))
        async with websockets.connect(host.ws_url) as second:
            token_b = (await recv_json(second))["resume_token"]
            assert token_b != token_a
            await second.send(resume("req-1", offset=2, token=token_a))
            frames = await read_answer(second)
            assert frames[-1]["reason"] == "complete"
            assert whole.endswith(text_of(frames)) and text_of(frames) != whole
            # The answer now belongs to the second socket: the old token opens nothing.
            async with websockets.connect(host.ws_url) as third:
                await recv_json(third)
                await third.send(resume("req-1", token=token_a))
                assert refused(await read_answer(third))
            await second.send(resume("req-1", token=token_b))
            assert text_of(await read_answer(second)) == whole
    assert host.resumes == 2


async def test_a_new_socket_of_the_same_client_keeps_the_session_checkpoints() -> None:
    """A client whose socket dropped between prompts presents its old token at
    ``session_init``: the host hands the new socket the old one's session state, so the
    next co-signed checkpoint verifies (and a stranger cannot do this without the token)."""
    key = "0x" + "44" * 32
    config = SessionConfig(checkpoint_interval=4, require_verified_checkpoints=True)
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None, host_key=key) as host:
        async with SessionManager(config, host_url=host.url) as manager:
            s = await manager.create_session(session_id="kept")
            await manager.prompt(s.id, "one two three four five six")
            before = len(manager.get_checkpoint_proofs(s.id))
            socket = await manager.connect(s.id)
            for conn in list(host.connections):
                await conn.ws.close()  # the host drops the idle socket
            await asyncio.wait_for(socket.ws.wait_closed(), 5)
            assert not manager.is_connected(s.id)
            await manager.prompt(s.id, "seven eight nine ten eleven twelve")
            proofs = manager.get_checkpoint_proofs(s.id)
    assert len(proofs) > before and all(p.host_signature for p in proofs)


async def test_resume_attempts_are_rate_limited_and_guessers_cut_off() -> None:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=3) as host:
        async with websockets.connect(host.ws_url) as ws:
            await recv_json(ws)
            errors = []
            for i in range(4):
                await ws.send(resume(f"guess-{i}", token="x"))
                frames = await read_answer(ws)
                errors.append(next(f for f in frames if f["type"] == "error"))
            assert [e.get("code") for e in errors[:3]] == ["RESUME_NOT_FOUND"] * 3
            assert errors[3]["error"].startswith("Rate limit exceeded")
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with websockets.connect(host.ws_url) as ws:
            await recv_json(ws)
            answered = 0
            with pytest.raises(websockets.ConnectionClosed):
                for i in range(100):
                    await ws.send(resume(f"guess-{i}", token="x"))
                    await read_answer(ws)
                    answered += 1
            assert answered < 10
            assert ws.close_code == 1008


async def test_a_stranger_cannot_disturb_a_sessions_cosigned_checkpoints() -> None:
    tokens = [f" {i}" for i in range(1000)]
    host = ReferenceHost(EchoEngine(tokens), rate_limit_per_minute=None, host_key=HOST_KEY)
    async with host:
        config = SessionConfig(checkpoint_interval=5, require_verified_checkpoints=True)
        async with SessionManager(config, host_url=host.url) as manager:
            failures: list[CheckpointError] = []
            manager.on("checkpoint_failed", failures.append)
            session = await manager.create_session(system_prompt="count")
            await manager.prompt(session.id, "first", max_tokens=7)
            # A stranger claims the victim's session id and asks for session-scope
            # checkpoints: it must not touch the victim's checkpoint state.
            async with websockets.connect(host.ws_url) as stranger:
                await recv_json(stranger)
                await init(stranger, session.id)
                await stranger.send(
                    prompt(
                        "evil",
                        "noise",
                        session_id=session.id,
                        checkpoint={"interval": 5, "scope": "session"},
                    )
                )
                await read_answer(stranger)
            await manager.prompt(session.id, "second", max_tokens=7)
            proofs: list[CheckpointProof] = manager.get_checkpoint_proofs(session.id)
        assert failures == []
        assert [p.token_count for p in proofs] == [5, 10]
        assert all(p.host_signature for p in proofs)


# --- 14: memory pinned by requests ------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_finished_large_prompts_do_not_pin_memory() -> None:
    """20 compressed prompts of 3.9 MB each (too long for the context window): the host
    process keeps none of them once answered (it kept +75 MiB before the fix)."""
    proc, url = await asyncio.to_thread(start_host_process, "--engine", "echo")
    try:
        ws_url = url.replace("http://", "ws://") + "/v1/ws"
        async with websockets.connect(ws_url, max_size=None) as ws:
            await recv_json(ws)

            async def ask(text: str, rid: str) -> None:
                await ws.send(prompt(rid, text))
                await read_answer(ws)

            for i in range(3):
                await ask("hello", f"warm-{i}")
            before = _rss_mib(proc.pid)
            for i in range(20):
                await ask(f"w{i} " * 975_000, f"big-{i}")
            for i in range(3):
                await ask("hello", f"cool-{i}")
            grown = _rss_mib(proc.pid) - before
        assert grown < 30, f"host RSS grew by {grown:.1f} MiB"
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


async def test_a_peer_that_never_answers_pings_is_disconnected() -> None:
    async with ReferenceHost(EchoEngine(), heartbeat=0.5) as host:
        # websockets answers pings by itself; a raw peer does the handshake and then
        # reads nothing and answers nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(
            b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        # The host closes the TCP connection within a few heartbeats.
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
        writer.close()
        assert not host.connections


# --- 15: malformed tools on POST /v1/inference -------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"tools": [{}]},
        {"tools": [{"type": "function", "function": "nope"}]},
        {"tools": [{"type": "function"}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": 5},
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "missing"}},
        },
    ],
)
async def test_inference_with_malformed_tools_is_a_validation_error(
    echo_host: ReferenceHost, bad: dict[str, Any]
) -> None:
    body = {"model": "echo", "prompt": "hi", "max_tokens": 5, **bad}
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(f"{echo_host.url}/v1/inference", json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error_type"] == "validation_error"
        assert reply.json()["details"] == {"field": "tools"}, reply.text
        # The host is still fine.
        ok = await client.post(
            f"{echo_host.url}/v1/inference",
            json={"model": "echo", "prompt": "hi", "max_tokens": 5},
        )
        assert ok.status_code == 200


async def test_a_host_that_trickles_its_checkpoint_index_is_a_timeout() -> None:
    """A small index sent one byte every 0.2 s: ``ResponseTimeoutError`` within the
    whole-reply deadline, not after every byte (each well within the 0.5 s read timeout)."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        body = json.dumps({"sessionId": "1", "hostAddress": "0x" + "00" * 20, "pad": "x" * 200})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        for byte in body.encode():
            await response.write(bytes([byte]))
            await asyncio.sleep(0.2)
        return response

    app = web.Application()
    app.router.add_get("/v1/checkpoints/{session_id}", trickle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ResponseTimeoutError):
            await asyncio.wait_for(
                fetch_host_checkpoints(url, "1", portal="http://127.0.0.1:9", timeout=0.5), 30
            )
    finally:
        await runner.cleanup()
    assert loop.time() - started < 15  # 0.5 + 0.5 + 256 KiB at 64 KiB/s, not 50 s


async def test_a_resume_while_the_answer_waits_for_its_reader_gets_all_of_it() -> None:
    """After a drop the answer pauses ``unread_limit`` tokens ahead; a resume within
    ``unread_wait`` continues it to the end, with nothing lost."""
    engine = EchoEngine(script=["w "], fill=True, delay=0.005)
    async with ReferenceHost(
        engine, rate_limit_per_minute=None, unread_limit=5, unread_wait=30.0
    ) as host:
        first = await websockets.connect(host.ws_url)
        token = (await recv_json(first))["resume_token"]
        await first.send(prompt("req-1", max_tokens=200))
        got = [await recv_json(first) for _ in range(2)]
        first.transport.abort()  # the socket drops mid-answer
        (job,) = host._jobs.values()
        async with within(10):
            while not job.paused:  # noqa: ASYNC110 (the job has no event for it)
                await asyncio.sleep(0.01)
        assert job.tokens < 200
        async with websockets.connect(host.ws_url) as second:
            await recv_json(second)
            await second.send(resume("req-1", offset=len(got), token=token))
            frames = await read_answer(second)
    assert frames[-1]["reason"] == "complete"
    assert text_of(got) + text_of(frames) == "w " * 200
    assert not job.stopped_unread
