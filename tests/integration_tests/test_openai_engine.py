"""The reference host in front of an OpenAI-compatible server (the ``openai`` engine).

Every upstream here is a real HTTP server on 127.0.0.1 (``tests/openai_upstream.py``):
over SmolLM2 through llama.cpp for real text, or scripted for errors, 429s, stalls and
drops. Clients are the package's ``SessionManager``/``ChatFabstir`` or a raw WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
from pydantic import BaseModel, SecretStr

from langchain_fabstir import SessionManager
from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.host import LlamaEngine, OpenAIEngine, ReferenceHost
from tests.openai_upstream import OpenAIUpstream

WAIT = 30.0  # bound on every wait below


@asynccontextmanager
async def openai_host(
    upstream: OpenAIUpstream, *, resume_grace: float = 30.0, **engine_kw: Any
) -> AsyncIterator[ReferenceHost]:
    async with OpenAIEngine(upstream.url, **engine_kw) as engine:
        async with ReferenceHost(
            engine, rate_limit_per_minute=None, resume_grace=resume_grace
        ) as host:
            yield host


@asynccontextmanager
async def raw_socket(host: ReferenceHost) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(host.ws_url) as ws:
            assert (await ws.receive_json(timeout=WAIT))["type"] == "connected"
            await ws.send_json({"type": "session_init", "session_id": "7", "jobId": 7})
            assert (await ws.receive_json(timeout=WAIT))["type"] == "session_init_ack"
            yield ws


async def send_prompt(
    ws: aiohttp.ClientWebSocketResponse, prompt: str = "Say hello.", **request: Any
) -> None:
    body = {"model": "smollm2-135m", "prompt": prompt, "max_tokens": 16, "temperature": 0.0}
    body.update(request)
    await ws.send_json({"type": "prompt", "request": body, "id": "p-1"})


async def frames_until_end(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ws.receive_json(timeout=WAIT)
        frames.append(frame)
        if frame["type"] == "stream_end":
            return frames


# --- real text through SessionManager and ChatFabstir -----------------------------------


@pytest.fixture
async def llama_upstream(llama_engine: LlamaEngine) -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream(llama_engine, extra_models=("other-model",)) as upstream:
        yield upstream


@pytest.mark.llama
async def test_session_manager_streams_real_text_with_upstream_usage(
    llama_upstream: OpenAIUpstream,
) -> None:
    async with openai_host(llama_upstream, api_key=SecretStr("sk-test-123")) as host:
        async with SessionManager(host_url=host.url) as manager:
            session = await manager.create_session(temperature=0.0, max_tokens=24)
            pieces = [t async for t in manager.stream_prompt(session.id, "Name a colour.")]
            result = await manager.prompt(session.id, "The capital of France is", seed=5)
    assert "".join(pieces).strip()
    assert result.text.strip() and result.finish_reason in ("stop", "length")
    # The counts the client got are the upstream's own (llama.cpp's), not an estimate.
    upstream_usage = llama_upstream.usages[-1]
    assert result.usage is not None
    assert result.usage.completion_tokens == upstream_usage["completion_tokens"]
    assert result.usage.prompt_tokens == upstream_usage["prompt_tokens"]
    body = llama_upstream.requests[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] <= 24 and body["temperature"] == 0.0 and body["seed"] == 5
    assert body["messages"][-1] == {"role": "user", "content": "The capital of France is"}
    # History travels as messages; the key as a bearer token, and nowhere else.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert llama_upstream.headers[-1]["Authorization"] == "Bearer sk-test-123"


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}"


@pytest.mark.llama
async def test_chat_fabstir_structured_output_and_tools_pass_response_format(
    llama_upstream: OpenAIUpstream,
) -> None:
    class City(BaseModel):
        name: str
        country: str

    async with openai_host(llama_upstream) as host:
        llm = ChatFabstir(host_url=host.url, temperature=0.0, max_tokens=60)
        city = await llm.with_structured_output(City).ainvoke("Paris is a city in France.")
        call = await llm.bind_tools([get_weather], tool_choice="any").ainvoke(
            "What is the weather in Paris?"
        )
        message = await llm.ainvoke("Say hi.")
    assert isinstance(city, City)
    assert llama_upstream.requests[0]["response_format"]["type"] == "json_schema"
    # Tools ride on response_format too: the upstream decodes the tool-call envelope.
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    tools_format = llama_upstream.requests[1]["response_format"]
    assert tools_format["json_schema"]["name"] == "tool_envelope"
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == llama_upstream.usages[-1]["completion_tokens"]


@pytest.mark.llama
async def test_models_come_from_upstream_and_unknown_names_fall_back(
    llama_upstream: OpenAIUpstream,
) -> None:
    async with openai_host(llama_upstream) as host:
        async with httpx.AsyncClient(base_url=host.url) as http:
            models = (await http.get("/v1/models")).json()["models"]
            await http.get("/v1/models")  # cached: no second upstream read
            async with raw_socket(host) as ws:
                await send_prompt(ws, model="no-such-model", max_tokens=4)
                await frames_until_end(ws)
                await send_prompt(ws, model="other-model", max_tokens=4)
                await frames_until_end(ws)
            version = (await http.get("/v1/version")).json()
    assert [m["id"] for m in models] == ["smollm2-135m", "other-model"]
    assert llama_upstream.model_lists == 1
    assert [r["model"] for r in llama_upstream.requests] == ["smollm2-135m", "other-model"]
    assert version["engine"] == "openai"
    assert version["engine_info"]["upstream"] == llama_upstream.url.removesuffix("/v1")
    assert version["engine_info"]["token_counts"] == "upstream"
    assert "sk-" not in json.dumps(version)


@pytest.mark.llama
async def test_counted_tokens_when_upstream_sends_no_usage(llama_engine: LlamaEngine) -> None:
    async with OpenAIUpstream(llama_engine, usage=False) as upstream:
        async with openai_host(upstream) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws, max_tokens=12)
                frames = await frames_until_end(ws)
            async with httpx.AsyncClient(base_url=host.url) as http:
                version = (await http.get("/v1/version")).json()
    chunks = [f for f in frames if f["type"] == "stream_chunk" and f["content"]]
    assert frames[-1]["tokens_used"] == len(chunks) > 0
    assert version["engine_info"]["token_counts"] == "counted"


# --- cancel and disconnect close the upstream request ------------------------------------


async def test_stream_cancel_closes_the_upstream_request() -> None:
    async with OpenAIUpstream(behaviour="endless") as upstream:
        async with openai_host(upstream, models=["m"]) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws, max_tokens=100000)
                first = await ws.receive_json(timeout=WAIT)
                assert first["type"] == "stream_chunk"
                await ws.send_json({"type": "stream_cancel", "session_id": "7"})
                frames = await frames_until_end(ws)
                assert frames[-1]["reason"] == "cancelled"
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
    assert upstream.disconnects == 1


async def test_client_disconnect_closes_the_upstream_request() -> None:
    async with OpenAIUpstream(behaviour="endless") as upstream:
        # The host keeps an unread answer resume_grace seconds for a resume, then stops it.
        async with openai_host(upstream, models=["m"], resume_grace=0.2) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws, max_tokens=100000)
                assert (await ws.receive_json(timeout=WAIT))["type"] == "stream_chunk"
            await asyncio.wait_for(upstream.disconnected.wait(), WAIT)


# --- upstream errors become the host's error frames --------------------------------------


async def test_upstream_429_is_the_rate_limit_error_with_retry_after() -> None:
    async with OpenAIUpstream(behaviour="429") as upstream:
        async with openai_host(upstream, models=["m"]) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                error, end = await frames_until_end(ws)
    assert error == {
        "type": "error",
        "error": "Rate limit exceeded, retry after 7 seconds",
        "id": "p-1",
    }
    assert end["reason"] == "error" and end["tokens_used"] == 0


async def test_upstream_context_overflow_is_token_limit_exceeded() -> None:
    async with OpenAIUpstream(behaviour="overflow") as upstream:
        async with openai_host(upstream, models=["m"]) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                error, end = await frames_until_end(ws)
    assert error["code"] == "TOKEN_LIMIT_EXCEEDED"
    assert error["prompt_tokens"] == 4990 and error["context_window_size"] == 4096
    assert "maximum context length" in error["message"]
    assert end["reason"] == "error"


@pytest.mark.parametrize(
    ("behaviour", "text"), [("500", "CUDA out of memory"), ("error_event", "model crashed")]
)
async def test_other_upstream_errors_are_an_error_frame(behaviour: str, text: str) -> None:
    async with OpenAIUpstream(behaviour=behaviour) as upstream:
        async with openai_host(upstream, models=["m"]) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                error, end = await frames_until_end(ws)
    assert error["type"] == "error" and text in error["error"]
    assert end["reason"] == "error"


async def test_stall_before_first_token_ends_with_an_error() -> None:
    async with OpenAIUpstream(behaviour="stall_first") as upstream:
        async with openai_host(upstream, models=["m"], stall_timeout=0.5) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                error, end = await frames_until_end(ws)
                assert "stalled" in error["error"] and end["reason"] == "error"
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)


@pytest.mark.parametrize(("behaviour", "text"), [("stall_mid", "stalled"), ("drop_mid", "drop")])
async def test_stall_or_drop_mid_answer_ends_the_answer(behaviour: str, text: str) -> None:
    async with OpenAIUpstream(behaviour=behaviour) as upstream:
        async with openai_host(upstream, models=["m"], stall_timeout=0.5) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                frames = await frames_until_end(ws)
                # A second prompt on the same socket is still answered.
                await send_prompt(ws)
                again = await frames_until_end(ws)
            if behaviour == "stall_mid":
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
    contents = [f["content"] for f in frames if f["type"] == "stream_chunk"]
    assert contents[:3] == ["one ", "two ", "three "]
    assert contents[3].startswith("Error: ") and text in contents[3]
    assert frames[-1]["reason"] == "complete"
    assert again[-1]["type"] == "stream_end"


async def test_overall_deadline_ends_an_endless_answer() -> None:
    async with OpenAIUpstream(behaviour="endless") as upstream:
        async with openai_host(upstream, models=["m"], deadline=0.3) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws, max_tokens=100000)
                frames = await frames_until_end(ws)
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
    assert "deadline" in frames[-3]["content"]
    assert frames[-1]["reason"] == "complete"


# --- the concurrency cap and the key -----------------------------------------------------


async def test_max_concurrent_caps_upstream_requests() -> None:
    async with OpenAIUpstream(behaviour="endless") as upstream:
        async with openai_host(upstream, models=["m"], max_concurrent=1, queue_timeout=0.3) as host:
            async with raw_socket(host) as first, raw_socket(host) as second:
                await send_prompt(first, max_tokens=100000)
                assert (await first.receive_json(timeout=WAIT))["type"] == "stream_chunk"
                await send_prompt(second)
                error, end = await frames_until_end(second)
                await first.send_json({"type": "stream_cancel", "session_id": "7"})
                await frames_until_end(first)
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
                # The slot is free again: the next prompt reaches the upstream.
                upstream.behaviour = "429"
                await send_prompt(second)
                again, _ = await frames_until_end(second)
    assert error["error"] == "Rate limit exceeded, retry after 5 seconds"
    assert end["reason"] == "error"
    assert upstream.peak == 1 and len(upstream.requests) == 2
    assert again["error"] == "Rate limit exceeded, retry after 7 seconds"


async def test_api_key_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with OpenAIUpstream(behaviour="500") as upstream:
        engine = OpenAIEngine(upstream.url, api_key=SecretStr("sk-very-secret"))
        async with engine, ReferenceHost(engine, rate_limit_per_minute=None) as host:
            async with httpx.AsyncClient(base_url=host.url) as http:
                await http.get("/v1/models")
                version = (await http.get("/v1/version")).text
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                frames = await frames_until_end(ws)
    assert upstream.headers[-1]["Authorization"] == "Bearer sk-very-secret"
    shown = repr(engine) + engine.summary() + version + json.dumps(frames) + caplog.text
    assert "sk-very-secret" not in shown


# --- the command line ----------------------------------------------------------------


def _start_cli_host(
    upstream_url: str, *, recursion_limit: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, TEST_UPSTREAM_KEY="sk-cli-key")
    args = ["--engine", "openai", "--upstream", upstream_url, "--max-concurrent", "2"]
    args += ["--upstream-key-env", "TEST_UPSTREAM_KEY", "--rate-limit", "0"]
    command = [sys.executable, "-m", "langchain_fabstir.cli"]
    if recursion_limit is not None:  # as py_ecc sets it: deep JSON would crash the process
        command = [
            sys.executable,
            "-c",
            f"import sys; sys.setrecursionlimit({recursion_limit}); "
            "from langchain_fabstir.cli import main; sys.exit(main())",
        ]
    proc = subprocess.Popen(
        [*command, "host", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(60):
        proc.kill()
        raise RuntimeError("the host did not start")
    line = proc.stdout.readline().strip()
    assert line.startswith("READY "), line
    return proc, line.split(" ", 1)[1]


async def test_cli_host_with_openai_engine() -> None:
    async with OpenAIUpstream(behaviour="429", extra_models=("big-model",)) as upstream:
        proc, url = await asyncio.to_thread(_start_cli_host, upstream.url)
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                models = (await http.get("/v1/models")).json()["models"]
                version = (await http.get("/v1/version")).json()
            async with aiohttp.ClientSession() as client:
                async with client.ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
                    await ws.receive_json(timeout=WAIT)
                    await send_prompt(ws)
                    error = await ws.receive_json(timeout=WAIT)
        finally:
            proc.terminate()
            _, stderr = await asyncio.to_thread(proc.communicate, timeout=WAIT)
    assert [m["id"] for m in models] == ["smollm2-135m", "big-model"]
    assert version["engine_info"]["max_concurrent"] == 2
    assert error["error"] == "Rate limit exceeded, retry after 7 seconds"
    assert upstream.headers[-1]["Authorization"] == "Bearer sk-cli-key"
    summary = f"upstream {upstream.url.removesuffix('/v1')}, models: smollm2-135m, big-model"
    assert summary in stderr
    assert "sk-cli-key" not in stderr


@pytest.mark.parametrize(
    ("behaviour", "text"),
    [("deep_event", "unreadable event"), ("deep_error", "upstream error (HTTP 500)")],
)
async def test_deeply_nested_json_from_the_upstream_is_an_error_frame(
    behaviour: str, text: str
) -> None:
    """100,000 ``[`` in an event or an error body: a typed error, and the host lives on
    (run in a subprocess with the recursion limit py_ecc sets, where ``json.loads`` of
    such a text overflows the C stack)."""
    async with OpenAIUpstream(behaviour=behaviour) as upstream:
        proc, url = await asyncio.to_thread(_start_cli_host, upstream.url, recursion_limit=100_000)
        try:
            errors = []
            for _ in range(2):  # the same host answers a second time
                async with aiohttp.ClientSession() as client:
                    async with client.ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
                        await ws.receive_json(timeout=WAIT)
                        await send_prompt(ws)
                        error, end = await frames_until_end(ws)
                        errors.append(error)
                        assert end["reason"] == "error"
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.communicate, timeout=WAIT)
    for error in errors:
        assert error["type"] == "error" and text in error["error"]
        assert len(error["error"]) < 1000


# --- the upstream's bounds: line size, deadline, max_tokens, a client that leaves ---------


async def test_an_endless_event_line_is_cut_at_max_event_bytes() -> None:
    """1 MiB every 20 ms without a newline: an error once the line passes the bound."""
    async with OpenAIUpstream(behaviour="long_line") as upstream:
        async with openai_host(upstream, models=["m"], max_event_bytes=4 * 1024 * 1024) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                error, end = await asyncio.wait_for(frames_until_end(ws), WAIT)
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
    assert "longer than 4194304 bytes" in error["error"] and end["reason"] == "error"


async def test_the_deadline_holds_inside_a_read() -> None:
    """An upstream that never pauses (so the stall timer never fires) and never ends its
    line still ends the answer at its deadline."""
    async with OpenAIUpstream(behaviour="slow_line") as upstream:
        async with openai_host(upstream, models=["m"], deadline=0.5) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws)
                loop = asyncio.get_running_loop()
                started = loop.time()
                error, end = await asyncio.wait_for(frames_until_end(ws), WAIT)
                took = loop.time() - started
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
    assert "deadline" in error["error"] and end["reason"] == "error"
    assert took < WAIT / 2  # not the 256 KiB line bound (about 5 s), nor forever


async def test_an_upstream_that_ignores_max_tokens_is_cut_there() -> None:
    async with OpenAIUpstream(behaviour="endless") as upstream:
        async with openai_host(upstream, models=["m"]) as host:
            async with raw_socket(host) as ws:
                await send_prompt(ws, max_tokens=5)
                frames = await frames_until_end(ws)
                await asyncio.wait_for(upstream.disconnected.wait(), WAIT)
    chunks = [f for f in frames if f["type"] == "stream_chunk" and f["content"]]
    assert len(chunks) == 5
    assert frames[-1]["reason"] == "complete" and frames[-1]["finish_reason"] == "length"


async def test_a_client_that_leaves_closes_the_upstream_after_a_bounded_buffer() -> None:
    """The answer of a socket that dropped is generated on for ``unread_limit`` tokens
    (for a resume), then the upstream request is closed, long before ``resume_grace``."""
    async with OpenAIUpstream(behaviour="endless") as upstream:
        async with openai_host(upstream, models=["m"], resume_grace=120.0) as host:
            host.unread_limit, host.unread_wait = 20, 0.5
            async with raw_socket(host) as ws:
                await send_prompt(ws, max_tokens=100000)
                assert (await ws.receive_json(timeout=WAIT))["type"] == "stream_chunk"
            await asyncio.wait_for(upstream.disconnected.wait(), 10.0)
            (job,) = host._jobs.values()
            await asyncio.wait_for(job.finished.wait(), WAIT)
            assert job.stopped_unread
            assert "no client read it" in job.frames[-3]


async def test_an_http_client_that_leaves_closes_the_upstream_request() -> None:
    async with OpenAIUpstream(behaviour="endless") as upstream:
        async with openai_host(upstream, models=["m"]) as host:
            body = {"model": "m", "prompt": "hi", "max_tokens": 100000}
            async with httpx.AsyncClient(base_url=host.url) as http:
                request = asyncio.ensure_future(http.post("/v1/inference", json=body))
                await asyncio.wait_for(upstream.started.wait(), WAIT)
                request.cancel()  # the client goes away mid-answer
                with contextlib.suppress(asyncio.CancelledError):
                    await request
            await asyncio.wait_for(upstream.disconnected.wait(), 10.0)
