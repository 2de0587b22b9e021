"""Regression tests for defects found in review: each failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve

from langchain_fabstir import SessionManager
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.engines import EngineRequest, Generation, GenerationResult


@contextlib.asynccontextmanager
async def dropping_host(seen: list[str]) -> AsyncIterator[str]:
    """A plain host (no extensions) that drops the first prompt before any token."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connected", "message": "ok"}))
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                f = json.loads(raw)
                if f["type"] == "session_init":
                    await ws.send(json.dumps({"type": "session_init_ack", "id": f.get("id")}))
                elif f["type"] == "prompt":
                    seen.append(f["request"]["prompt"])
                    if len(seen) == 1:
                        await ws.close()
                        return
                    for tok in ["Answer ", "to: ", f["request"]["prompt"]]:
                        await ws.send(
                            json.dumps(
                                {"type": "stream_chunk", "content": tok, "tokens": 1, "id": f["id"]}
                            )
                        )
                    await ws.send(
                        json.dumps(
                            {
                                "type": "stream_end",
                                "reason": "complete",
                                "tokens_used": 3,
                                "id": f["id"],
                            }
                        )
                    )

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"


async def test_a_drop_before_any_token_resends_the_question() -> None:
    seen: list[str] = []
    async with dropping_host(seen) as url, SessionManager(host_url=url) as manager:
        s = await manager.create_session(model="x")
        text = "".join([t async for t in manager.stream_prompt(s.id, "Capital of France?")])
    assert text == "Answer to: Capital of France?"
    assert seen == ["Capital of France?", "Capital of France?"]  # not a "continue" prompt


class Tagged(EchoEngine):
    """Each generation tags its tokens A0.., B0.., C0..: a lost or repeated token shows."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def generate(self, request: EngineRequest) -> Generation:
        max_tokens = request.max_tokens
        tag = "ABCDEF"[self.calls]
        self.calls += 1

        async def run() -> AsyncIterator[str]:
            for i in range(min(40, max_tokens)):
                await asyncio.sleep(0.005)
                yield f"{tag}{i} "

        return Generation(run(), GenerationResult())


async def test_exact_resume_after_a_continuation_loses_nothing() -> None:
    async with ReferenceHost(Tagged(), rate_limit_per_minute=None) as host:
        async with SessionManager(host_url=host.url) as manager:
            s = await manager.create_session(model="echo")
            got: list[str] = []
            stream: Any = None
            async for stream, text in manager.open_stream(s.id, "go", max_tokens=40):
                got.append(text.strip())
                if len(got) == 5:
                    host._jobs.clear()  # the answer expired on the host: a continuation
                    stream.transport.abort()
                elif len(got) == 12:
                    # Let the continuation run ahead of the client first.
                    # (answers are kept by their owner's resume token and request id)
                    job = next(j for k, j in host._jobs.items() if k[1] == stream.request_id)
                    while job.tokens < 20 and not job.finished.is_set():
                        await job.wait_beyond(len(job.frames))
                    stream.transport.abort()  # a second drop: an exact resume of it
    modes = [r["mode"] for r in stream.result.metadata["resumes"]]
    assert modes[-2:] == ["continuation", "exact"]
    b = [t for t in got if t.startswith("B")]
    assert b == [f"B{i}" for i in range(len(b))]  # contiguous: nothing lost or repeated
    assert got[:5] == [f"A{i}" for i in range(5)]


async def test_another_session_cannot_resume_someone_elses_answer() -> None:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with websockets.connect(host.ws_url) as victim:
            await victim.recv()
            await victim.send(json.dumps({"type": "session_init", "session_id": "alice"}))
            await victim.recv()
            await victim.send(json.dumps({"type": "prompt", "prompt": "my secret", "id": "r1"}))
            while json.loads(await victim.recv())["type"] != "stream_end":
                pass
        async with websockets.connect(host.ws_url) as thief:
            await thief.recv()
            await thief.send(json.dumps({"type": "session_init", "session_id": "mallory"}))
            await thief.recv()
            await thief.send(
                json.dumps(
                    {
                        "type": "prompt",
                        "id": "r2",
                        "request": {
                            "model": "m",
                            "prompt": "x",
                            "max_tokens": 5,
                            "resume": {"request_id": "r1", "offset": 0},
                        },
                    }
                )
            )
            reply = json.loads(await thief.recv())
    assert reply["type"] == "error" and reply["code"] == "RESUME_NOT_FOUND"
    assert "secret" not in json.dumps(reply)


async def test_a_cancel_right_after_its_prompt_is_not_lost() -> None:
    engine = EchoEngine(["tok "], fill=True, delay=0.002)
    async with ReferenceHost(engine, rate_limit_per_minute=None) as host:
        async with websockets.connect(host.ws_url) as ws:
            await ws.recv()
            await ws.send(
                json.dumps({"type": "prompt", "prompt": "go", "id": "p", "max_tokens": 500})
            )
            await ws.send(json.dumps({"type": "stream_cancel", "session_id": "s"}))
            chunks = 0
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if frame["type"] == "stream_end":
                    break
                chunks += 1
    assert frame["reason"] == "cancelled" and chunks < 500
    assert host.received_cancels == 1


async def test_malformed_tools_get_an_error_not_a_dead_socket() -> None:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with websockets.connect(host.ws_url) as ws:
            await ws.recv()
            for tools, choice in (([{}], None), ([{"name": "a"}], "zzz")):
                await ws.send(
                    json.dumps(
                        {
                            "type": "prompt",
                            "id": "t",
                            "request": {
                                "model": "m",
                                "prompt": "x",
                                "max_tokens": 5,
                                "tools": tools,
                                "tool_choice": choice,
                            },
                        }
                    )
                )
                err, end = json.loads(await ws.recv()), json.loads(await ws.recv())
                assert err["error"].startswith("Validation error for tools")
                assert end["reason"] == "error"
            await ws.send(json.dumps({"type": "prompt", "prompt": "still here", "id": "ok"}))
            while (frame := json.loads(await ws.recv()))["type"] != "stream_end":
                pass
            assert frame["id"] == "ok"


async def test_stopping_the_host_stops_generating() -> None:
    engine = EchoEngine(["tok "], fill=True, delay=0.01)
    host = await ReferenceHost(engine, rate_limit_per_minute=None).start()
    async with websockets.connect(host.ws_url) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "prompt", "prompt": "go", "id": "p", "max_tokens": 5000}))
        await ws.recv()
        job = next(iter(host._jobs.values()))
        await host.stop()
    await asyncio.wait_for(job.finished.wait(), 2)
    assert job.cancelled and job.tokens < 5000
