"""A small OpenAI-compatible server on 127.0.0.1 for the ``openai`` engine's tests and bench.

``OpenAIUpstream(engine)`` serves ``/v1/chat/completions`` (streamed as server-sent events,
``usage`` in a last chunk when ``stream_options.include_usage`` asks for it) and
``/v1/models`` over any host engine: over ``LlamaEngine`` the text is real. With
``behaviour`` set it misbehaves on purpose (errors, 429s, stalls, drops, an endless
answer). It records what it saw: request bodies and headers, how many requests ran at
once, and whether a client closed its connection mid-answer (``disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from langchain_fabstir.host.engines import Engine, EngineRequest

BEHAVIOURS = {
    None,
    "429",
    "overflow",
    "500",
    "stall_first",
    "stall_mid",
    "drop_mid",
    "error_event",
    "endless",
    "long_line",  # an event line that never ends: 1 MiB every 20 ms, no newline
    "slow_line",  # an event line that never ends: 1 KiB every 20 ms, no newline
    "deep_event",  # an event of 100,000 "["
    "deep_error",  # an HTTP 500 whose body is 100,000 "["
}


class OpenAIUpstream:
    def __init__(
        self,
        engine: Engine | None = None,
        *,
        model_id: str = "smollm2-135m",
        extra_models: tuple[str, ...] = (),
        usage: bool = True,
        max_model_len: int = 8192,
        behaviour: str | None = None,
    ) -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.engine = engine
        self.model_id = model_id
        self.extra_models = extra_models
        self.usage = usage
        self.max_model_len = max_model_len
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.usages: list[dict[str, int]] = []
        self.model_lists = 0
        self.active = 0
        self.peak = 0
        self.started = asyncio.Event()  # a chat completion began streaming
        self.disconnected = asyncio.Event()  # a client closed its connection mid-answer
        self.disconnects = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> OpenAIUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: a client that closes its connection cancels the handler,
        # so a stalled handler notices too.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        data = [
            {"id": m, "object": "model", "owned_by": "tests", "max_model_len": self.max_model_len}
            for m in (self.model_id, *self.extra_models)
        ]
        return web.json_response({"object": "list", "data": data})

    def _chunk(self, model: str, content: str | None, finish: str | None = None) -> bytes:
        delta = {"content": content} if content is not None else {}
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        behaviour = self.behaviour
        if behaviour == "429":
            return web.json_response(
                {"error": {"message": "Too many requests", "type": "rate_limit"}},
                status=429,
                headers={"Retry-After": "7"},
            )
        if behaviour == "overflow":
            message = (
                "This model's maximum context length is 4096 tokens. However, you requested "
                "5000 tokens (4990 in the messages, 10 in the completion). Please reduce the "
                "length of the messages or completion."
            )
            return web.json_response(
                {"error": {"message": message, "code": "context_length_exceeded"}}, status=400
            )
        if behaviour == "500":
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        if behaviour == "deep_error":
            return web.Response(body=b"[" * 100_000, status=500, content_type="application/json")
        model = str(body.get("model"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.started.set()
        try:
            if behaviour == "error_event":
                await resp.write(b'data: {"error": {"message": "model crashed"}}\n\n')
            elif behaviour == "deep_event":
                await resp.write(b"data: " + b"[" * 100_000 + b"\n\n")
                await self._release.wait()
            elif behaviour in ("long_line", "slow_line"):
                piece = b"x" * (1024 * 1024 if behaviour == "long_line" else 1024)
                await resp.write(b'data: {"choices":[{"delta":{"content":"')
                while True:  # ends only when the client goes away
                    await resp.write(piece)
                    await asyncio.sleep(0.02)  # pacing, not synchronisation
            elif behaviour in ("stall_first", "stall_mid", "drop_mid"):
                if behaviour != "stall_first":
                    for tok in ["one ", "two ", "three "]:
                        await resp.write(self._chunk(model, tok))
                if behaviour == "drop_mid":
                    assert request.transport is not None
                    request.transport.close()  # mid-answer, no [DONE]
                    return resp
                await self._release.wait()  # silence until the client gives up
            elif behaviour == "endless":
                while True:  # ends only when the client goes away
                    await resp.write(self._chunk(model, "tok "))
                    await asyncio.sleep(0.005)  # pacing, not synchronisation
            else:
                await self._generate(resp, body, model)
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        finally:
            self.active -= 1
        return resp

    async def _generate(self, resp: web.StreamResponse, body: dict[str, Any], model: str) -> None:
        assert self.engine is not None
        gen = self.engine.generate(
            EngineRequest(
                body["messages"],
                max_tokens=int(body.get("max_tokens") or 256),
                temperature=float(body.get("temperature", 0.7)),
                seed=body.get("seed"),
                response_format=body.get("response_format"),
            )
        )
        try:
            async for token in gen:
                await resp.write(self._chunk(model, token))
        finally:
            with contextlib.suppress(Exception):
                await gen.aclose()  # a client that left stops the model
        result = gen.result
        await resp.write(self._chunk(model, None, result.finish_reason))
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            }
            self.usages.append(usage)
            final = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": []}
            final["usage"] = usage
            await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
