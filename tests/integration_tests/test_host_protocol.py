"""The reference host speaks the protocol of deployed hosts (PROTOCOL.md section 1 and 2).

Raw WebSocket clients on 127.0.0.1, no SessionManager: what a third-party client sees.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as sync_connect

from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.wire.frames import parse_frame
from tests._support.wire import read_answer, recv_json


async def test_greeting_ack_and_streamed_answer(echo_host: ReferenceHost) -> None:
    async with websockets.connect(echo_host.ws_url) as ws:
        greeting = await recv_json(ws)
        assert greeting["type"] == "connected"
        assert greeting["message"] == "WebSocket connected successfully"
        assert "features" in greeting  # announced extras
        await ws.send(
            json.dumps(
                {
                    "type": "session_init",
                    "session_id": "7",
                    "jobId": "7",
                    "chain_id": 84532,
                    "id": "init-1",
                }
            )
        )
        ack = await recv_json(ws)
        assert ack == {
            "type": "session_init_ack",
            "status": "success",
            "session_id": "7",
            "job_id": 7,
            "chain_id": 84532,
            "message": "Session initialized successfully",
            "id": "init-1",
        }
        await ws.send(json.dumps({"type": "prompt", "prompt": "one two three", "id": "p-1"}))
        frames = await read_answer(ws)
    chunks = [f for f in frames if f["type"] == "stream_chunk"]
    assert [c["content"] for c in chunks] == ["Echo: ", "one ", "two ", "three", ""]
    assert [c["tokens"] for c in chunks] == [1, 1, 1, 1, 0]
    assert all(c["id"] == "p-1" for c in chunks)
    end = frames[-1]
    assert end["reason"] == "complete" and end["finish_reason"] == "stop"
    assert end["tokens_used"] == 4 and end["id"] == "p-1"
    assert end["usage"]["completion_tokens"] == 4
    assert end["usage"]["total_tokens"] == end["usage"]["prompt_tokens"] + 4
    # Top-level prompt without `request`: the host's defaults, session fields merged in.
    req = echo_host.requests[-1]
    assert (req.model, req.max_tokens, req.temperature) == ("tiny-vicuna", 4000, 0.7)
    assert (req.session_id, req.job_id) == ("7", 7)


async def test_typescript_sdk_style_client_is_served(echo_host: ReferenceHost) -> None:
    """session_init before every prompt, string jobId, nested request, id on every message."""
    history: list[dict[str, str]] = [{"role": "system", "content": "be brief"}]
    async with websockets.connect(echo_host.ws_url) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        for n, question in enumerate(["first question", "second question"]):
            init_id = f"1700000000000-i{n}"
            await ws.send(
                json.dumps(
                    {
                        "type": "session_init",
                        "chain_id": 84532,
                        "session_id": "123",
                        "jobId": "123",
                        "user_address": "0xabc",
                        "id": init_id,
                    }
                )
            )
            ack = await recv_json(ws)
            assert ack["type"] == "session_init_ack" and ack["id"] == init_id
            pid = f"1700000000001-p{n}"
            await ws.send(
                json.dumps(
                    {
                        "type": "prompt",
                        "chain_id": 84532,
                        "jobId": "123",
                        "prompt": question,
                        "request": {
                            "model": "llama-2-13b-chat",
                            "prompt": question,
                            "max_tokens": 500,
                            "temperature": 0.7,
                            "stream": True,
                            "conversation_context": history,
                        },
                        "id": pid,
                    }
                )
            )
            frames = await read_answer(ws)
            assert all(f.get("id") == pid for f in frames)
            text = "".join(f["content"] for f in frames if f["type"] == "stream_chunk")
            assert text == f"Echo: {question}"
            req = echo_host.requests[-1]
            assert req.job_id == 123 and req.session_id == "123"
            assert [m.content for m in req.conversation_context] == [m["content"] for m in history]
            history += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": text},
            ]


async def test_inference_type_uses_request_as_is(echo_host: ReferenceHost) -> None:
    async with websockets.connect(echo_host.ws_url) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "session_init", "session_id": "9", "job_id": 9}))
        await recv_json(ws)
        await ws.send(
            json.dumps(
                {
                    "type": "inference",
                    "id": "i1",
                    "request": {"model": "m", "prompt": "abc def", "max_tokens": 2},
                }
            )
        )
        frames = await read_answer(ws)
    assert frames[-1]["finish_reason"] == "length"
    assert frames[-1]["tokens_used"] == 2
    assert echo_host.requests[-1].session_id is None  # nothing merged for `inference`


async def test_host_uses_only_the_last_ten_context_messages(echo_host: ReferenceHost) -> None:
    context = [{"role": "user", "content": f"m{i}"} for i in range(15)]
    async with websockets.connect(echo_host.ws_url) as ws:
        await recv_json(ws)
        await ws.send(
            json.dumps(
                {
                    "type": "prompt",
                    "id": "c",
                    "request": {
                        "model": "m",
                        "prompt": "q",
                        "max_tokens": 5,
                        "conversation_context": context,
                    },
                }
            )
        )
        await read_answer(ws)
    # The request is recorded as received; the engine saw the last 10 plus the prompt.
    messages = echo_host._messages(echo_host.requests[-1])
    assert [m["content"] for m in messages] == [f"m{i}" for i in range(5, 15)] + ["q"]


async def test_errors_are_followed_by_stream_end_error() -> None:
    engine = EchoEngine(context_window=20)
    async with ReferenceHost(engine, rate_limit_per_minute=2) as host:
        async with websockets.connect(host.ws_url) as ws:
            await recv_json(ws)
            # 1. empty prompt: a bare-string validation error
            await ws.send(json.dumps({"type": "prompt", "prompt": "  ", "id": "e1"}))
            err, end = await recv_json(ws), await recv_json(ws)
            assert err == {
                "type": "error",
                "id": "e1",
                "error": "Validation error for prompt: Prompt cannot be empty",
            }
            assert end == {"type": "stream_end", "reason": "error", "tokens_used": 0, "id": "e1"}
            # 2. context overflow: the coded shape
            await ws.send(json.dumps({"type": "prompt", "prompt": "word " * 50, "id": "e2"}))
            err, end = await recv_json(ws), await recv_json(ws)
            assert err["code"] == "TOKEN_LIMIT_EXCEEDED"
            assert err["context_window_size"] == 20 and err["prompt_tokens"] > 20
            assert end["reason"] == "error"
            # 3. rate limit (2 a minute; two prompts were counted already)
            await ws.send(json.dumps({"type": "prompt", "prompt": "hi", "id": "e3"}))
            err, end = await recv_json(ws), await recv_json(ws)
            assert err["error"].startswith("Rate limit exceeded, retry after ")
            assert end["reason"] == "error" and end["id"] == "e3"


async def test_stream_cancel_mid_stream_and_when_idle() -> None:
    async with ReferenceHost(EchoEngine(["tok "], fill=True, delay=0.005)) as host:
        async with websockets.connect(host.ws_url) as ws:
            await recv_json(ws)
            # Idle cancel: no answer at all; the next prompt is answered normally.
            await ws.send(json.dumps({"type": "stream_cancel", "session_id": "1"}))
            await ws.send(json.dumps({"type": "prompt", "prompt": "x", "id": "a", "max_tokens": 3}))
            frames = await read_answer(ws)
            assert frames[0]["type"] == "stream_chunk" and frames[-1]["reason"] == "complete"
            await ws.send(
                json.dumps({"type": "prompt", "prompt": "x", "id": "b", "max_tokens": 10_000})
            )
            for _ in range(3):
                assert (await recv_json(ws))["type"] == "stream_chunk"
            await ws.send(
                json.dumps({"type": "stream_cancel", "session_id": "1", "reason": "user_cancelled"})
            )
            frames = await read_answer(ws)
    end = frames[-1]
    assert end["reason"] == "cancelled" and end["finish_reason"] == "cancelled"
    assert "id" not in end
    assert end["tokens_used"] < 10_000
    assert host.received_cancels == 1


async def test_undeserializable_request_gets_no_answer(echo_host: ReferenceHost) -> None:
    async with websockets.connect(echo_host.ws_url) as ws:
        await recv_json(ws)
        # A string job_id inside `request` and a missing max_tokens: real hosts stay silent.
        for request in (
            {"model": "m", "prompt": "p", "max_tokens": 5, "job_id": "5"},
            {"model": "m", "prompt": "p"},
        ):
            await ws.send(json.dumps({"type": "prompt", "request": request, "id": "bad"}))
        await ws.send(json.dumps({"type": "ping"}))  # unknown type: ignored
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        # The socket still works.
        await ws.send(json.dumps({"type": "prompt", "prompt": "ok", "id": "good"}))
        frames = await read_answer(ws)
        assert frames[-1]["id"] == "good"


async def test_hostile_frames_do_not_kill_the_host(echo_host: ReferenceHost) -> None:
    async with websockets.connect(echo_host.ws_url, max_size=None) as ws:
        await recv_json(ws)
        await ws.send("[" * 100_000)  # would overflow the JSON decoder's C stack
        await ws.send(json.dumps({"type": "prompt", "prompt": "ok", "id": "after"}))
        frames = await read_answer(ws)
        assert frames[-1]["id"] == "after" and frames[-1]["reason"] == "complete"
    async with httpx.AsyncClient(base_url=echo_host.url) as client:
        r = await client.post("/v1/inference", content=b"[" * 100_000)
        assert r.status_code == 400


async def test_http_endpoints(echo_host: ReferenceHost) -> None:
    async with httpx.AsyncClient(base_url=echo_host.url) as client:
        health = (await client.get("/health")).json()
        assert health == {"status": "healthy", "issues": []}
        version = (await client.get("/v1/version")).json()
        assert {"version", "build", "date", "features"} <= set(version)
        models = (await client.get("/v1/models")).json()
        assert models["models"][0]["id"] == "echo"
        r = await client.post(
            "/v1/inference", json={"model": "echo", "prompt": "a b", "max_tokens": 10}
        )
        body = r.json()
        assert r.status_code == 200
        assert body["content"] == "Echo: a b" and body["tokens_used"] == 3
        assert body["usage"]["completion_tokens"] == 3
        bad = await client.post(
            "/v1/inference", json={"model": "echo", "prompt": "", "max_tokens": 1}
        )
        assert bad.status_code == 400
        assert bad.json()["error_type"] == "validation_error"
        assert bad.json()["details"] == {"field": "prompt"}
        # No S5 store configured: "unavailable", as real hosts without a chain answer.
        assert (await client.get("/v1/checkpoints/nope")).status_code == 503


async def test_many_clients_at_once(echo_host: ReferenceHost) -> None:
    async def one(i: int) -> str:
        async with websockets.connect(echo_host.ws_url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "prompt", "prompt": f"client {i}", "id": str(i)}))
            frames = await read_answer(ws)
            return "".join(f.get("content", "") for f in frames)

    texts = await asyncio.gather(*(one(i) for i in range(50)))
    assert texts == [f"Echo: client {i}" for i in range(50)]


# --- Fuzzing a live host ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=16),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)
fuzz_frames = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    json_values.map(json.dumps),
    st.builds(
        lambda kind, fields: json.dumps({**fields, "type": kind}),
        st.sampled_from(["prompt", "inference", "session_init", "stream_cancel", "x"]),
        st.dictionaries(
            st.sampled_from(
                [
                    "prompt",
                    "request",
                    "jobId",
                    "job_id",
                    "session_id",
                    "id",
                    "max_tokens",
                    "temperature",
                    "model",
                    "chain_id",
                ]
            ),
            json_values,
            max_size=5,
        ),
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(fuzz_frames, min_size=1, max_size=4))
def test_fuzzed_frames_never_break_a_live_host(
    threaded_echo_host: ReferenceHost, frames: list[str | bytes]
) -> None:
    """Random and mutated frames: the host answers with typed frames or not at all, and
    keeps serving the same socket and new ones."""
    with sync_connect(threaded_echo_host.ws_url, open_timeout=5) as ws:
        assert json.loads(ws.recv(5))["type"] == "connected"
        for raw in frames:
            ws.send(raw)
        ws.send(
            json.dumps({"type": "prompt", "prompt": "still there", "id": "probe", "max_tokens": 10})
        )
        while True:
            frame = parse_frame(ws.recv(10))  # every reply is a well-formed frame
            if frame.type == "stream_end" and getattr(frame, "id", None) == "probe":
                break
