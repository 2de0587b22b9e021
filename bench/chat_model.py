"""ChatFabstir benchmarks (issue: ChatFabstir). Every figure is a ratio of two
measurements taken side by side (interleaved, medians), peers in separate processes.

(a) tokens/s of ``ChatFabstir.astream`` over ``langchain_openai.ChatOpenAI.astream``, each
    streaming the same 1,000-token answer from a local server in its own process: the
    reference host (echo engine, no delay) and a minimal OpenAI-compatible server
    (``/v1/chat/completions``, SSE). Target >= 3.0, aim 5.
(b) tokens/s of ``ChatFabstir.astream`` over a ``BaseChatModel`` that does no I/O and
    yields 1,000 ready-made chunks (LangChain's own per-chunk cost): report, aim 0.5.
(c) time to first token of a prompt on a warm session (a ChatFabstir that already served
    a call) over a bare ``websockets`` round trip on a connected socket: report.

The OpenAI-compatible server is this module run as a script::

    python -m bench.chat_model openai-server   # prints "READY http://127.0.0.1:<port>"
"""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import websockets
from aiohttp import web
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from bench.common import Stopwatch, entry, interleaved
from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.cli import start_host_process

TOKENS = 1000
TOKEN = "tok "
ECHO_HOST_ARGS = ("--engine", "echo", "--script", TOKEN, "--fill", "--rate-limit", "0")


# --- a minimal OpenAI-compatible server ----------------------------------------------


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    """``/v1/chat/completions`` with ``stream: true``: one SSE event per token."""
    body = await request.json()
    n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0}
    base["model"] = body.get("model", "echo")
    token = _sse({**base, "choices": [{"index": 0, "delta": {"content": TOKEN}}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
    await resp.write(_sse({**base, "choices": [first]}))
    for _ in range(n):
        await resp.write(token)
    end = {"index": 0, "delta": {}, "finish_reason": "length"}
    await resp.write(_sse({**base, "choices": [end]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
        await resp.write(_sse({**base, "choices": [], "usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _serve_openai() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat_completions)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def start_openai_process(timeout: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """Start the OpenAI-compatible server as a child process; return it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.chat_model", "openai-server"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline().strip() if sel.select(timeout) else ""
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"OpenAI-compatible server failed to start: {line!r}")
    return proc, line.split(" ", 1)[1]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- a chat model with no I/O ---------------------------------------------------------


class ReadyChunksModel(BaseChatModel):
    """Yields ``n`` ready-made chunks: LangChain's per-chunk cost and nothing else."""

    n: int = TOKENS

    @property
    def _llm_type(self) -> str:
        return "ready-chunks"

    def _chunks(self) -> list[ChatGenerationChunk]:
        return [ChatGenerationChunk(message=AIMessageChunk(content=TOKEN)) for _ in range(self.n)]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(TOKEN * self.n))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            yield chunk


async def _tokens_per_s(model: BaseChatModel, prompt: str = "go") -> float:
    """Stream one answer; tokens (chunks with text) per second."""
    watch = Stopwatch()
    n = 0
    async for chunk in model.astream(prompt):
        if chunk.content:
            n += 1
    elapsed = watch.elapsed()
    if n != TOKENS:
        raise RuntimeError(f"{type(model).__name__} streamed {n} tokens, expected {TOKENS}")
    return n / elapsed


# --- benchmarks -----------------------------------------------------------------------


async def fabstir_over_openai() -> dict[str, Any]:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    host, host_url = start_host_process(*ECHO_HOST_ARGS)
    server, server_url = start_openai_process()
    try:
        fabstir = ChatFabstir(host_url=host_url, max_tokens=TOKENS)
        openai = ChatOpenAI(
            base_url=server_url + "/v1",
            api_key=SecretStr("not-used"),
            model="echo",
            max_tokens=TOKENS,
            stream_usage=True,
            max_retries=0,
        )
        runs: dict[str, Callable[[], Awaitable[float]]] = {
            "fabstir": lambda: _tokens_per_s(fabstir),
            "openai": lambda: _tokens_per_s(openai),
        }
        for run in runs.values():  # warm-up: connections, imports, caches
            await run()
        medians = await interleaved(runs, repeats=7)
    finally:
        _stop(host)
        _stop(server)
    ratio = medians["fabstir"] / medians["openai"]
    return entry(
        "astream_tokens_per_s_fabstir_over_chatopenai",
        ratio,
        "ratio",
        target=">= 3.0 (aim 5)",
        passed=ratio >= 3.0,
        fabstir_tokens_per_s=round(medians["fabstir"]),
        chatopenai_tokens_per_s=round(medians["openai"]),
        tokens=TOKENS,
    )


async def fabstir_over_no_io() -> dict[str, Any]:
    host, host_url = start_host_process(*ECHO_HOST_ARGS)
    try:
        fabstir = ChatFabstir(host_url=host_url, max_tokens=TOKENS)
        ready = ReadyChunksModel()
        runs: dict[str, Callable[[], Awaitable[float]]] = {
            "fabstir": lambda: _tokens_per_s(fabstir),
            "no_io": lambda: _tokens_per_s(ready),
        }
        for run in runs.values():
            await run()
        medians = await interleaved(runs, repeats=7)
    finally:
        _stop(host)
    ratio = medians["fabstir"] / medians["no_io"]
    return entry(
        "astream_tokens_per_s_fabstir_over_no_io_model",
        ratio,
        "ratio",
        target="report; aim >= 0.5",
        passed=ratio >= 0.5,
        fabstir_tokens_per_s=round(medians["fabstir"]),
        no_io_tokens_per_s=round(medians["no_io"]),
        tokens=TOKENS,
    )


TTFT_TOKENS = 5
TTFT_SAMPLES = 15


async def warm_ttft_over_bare_ws() -> dict[str, Any]:
    host, host_url = start_host_process(*ECHO_HOST_ARGS)
    try:
        fabstir = ChatFabstir(host_url=host_url, max_tokens=TTFT_TOKENS)
        await fabstir.ainvoke("warm up")  # the session and its socket now exist
        ws_url = host_url.replace("http://", "ws://") + "/v1/ws"
        bare = await websockets.connect(ws_url, compression="deflate")
        await bare.recv()  # the greeting
        ids = iter(range(10**9))

        async def fabstir_ttft() -> float:
            started = time.perf_counter()
            first: float | None = None
            async for chunk in fabstir.astream("go"):
                if first is None and chunk.content:
                    first = time.perf_counter() - started
            assert first is not None
            return first

        async def bare_ttft() -> float:
            rid = f"b{next(ids)}"
            frame = {
                "type": "prompt",
                "id": rid,
                "request": {"model": "echo", "prompt": "go", "max_tokens": TTFT_TOKENS},
            }
            started = time.perf_counter()
            await bare.send(json.dumps(frame))
            first: float | None = None
            while True:
                msg = json.loads(await bare.recv())
                if first is None and msg["type"] == "stream_chunk" and msg.get("content"):
                    first = time.perf_counter() - started
                if msg["type"] == "stream_end":
                    break
            assert first is not None
            return first

        async def median_of(run: Callable[[], Awaitable[float]]) -> float:
            return statistics.median([await run() for _ in range(TTFT_SAMPLES)])

        runs: dict[str, Callable[[], Awaitable[float]]] = {
            "fabstir": lambda: median_of(fabstir_ttft),
            "bare": lambda: median_of(bare_ttft),
        }
        for run in runs.values():
            await run()
        medians = await interleaved(runs, repeats=5)
        await bare.close()
    finally:
        _stop(host)
    ratio = medians["fabstir"] / medians["bare"]
    return entry(
        "warm_ttft_fabstir_over_bare_websockets",
        ratio,
        "ratio",
        target="report (lower is better)",
        passed=None,
        fabstir_ttft_ms=round(medians["fabstir"] * 1000, 3),
        bare_ttft_ms=round(medians["bare"] * 1000, 3),
    )


BENCHMARKS = [fabstir_over_openai, fabstir_over_no_io, warm_ttft_over_bare_ws]


if __name__ == "__main__":
    if sys.argv[1:] == ["openai-server"]:
        asyncio.run(_serve_openai())
    else:
        for bench in BENCHMARKS:
            print(json.dumps(asyncio.run(bench()), indent=1), flush=True)
