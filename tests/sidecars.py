"""Sidecars written for the tests, on 127.0.0.1 (port 0): a search API in Brave's JSON shape,
an OpenAI-style images API returning real PNG files and a vision model (chat completions),
all scripted per test; a tiny PNG
encoder (zlib + struct, no Pillow) and a loop thread to run servers for sync tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A real PNG of one colour (8-bit RGB), as a diffusion sidecar would send."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the first pixel of a PNG made by :func:`png` (checks the CRCs)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    pixels = zlib.decompress(chunks[b"IDAT"])
    return width, height, pixels[1:4]


class Sidecar:
    """One aiohttp server; ``requests`` records what it was sent (method, query, JSON)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.handler: Handler | None = None  # a test's override of the normal answer
        self.url = ""


def brave_results(query: str, count: int) -> dict[str, Any]:
    return {
        "type": "search",
        "web": {
            "results": [
                {
                    "title": f"{query} - result {i}",
                    "url": f"https://example.org/{i}",
                    "description": f"Result {i} about {query}.",
                    "age": "2 days ago" if i % 2 == 0 else None,
                }
                for i in range(count)
            ]
        },
    }


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hostile_host(
    route: str, body: bytes | None = None, *, status: int = 200
) -> AsyncIterator[str]:
    """A hand-written host whose ``POST route`` answers ``body`` with ``status`` (JSON), or
    never answers while the test runs (``body=None``)."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if body is None:
            await release.wait()
        return web.Response(body=body or b"{}", status=status, content_type="application/json")

    app = web.Application()
    app.router.add_post(route, handler)
    async with serve(app) as url:
        try:
            yield url
        finally:
            release.set()


@contextlib.asynccontextmanager
async def search_sidecar() -> AsyncIterator[Sidecar]:
    """``GET /search?q=..&count=N`` -> N Brave-shaped results (or ``sidecar.handler``)."""
    sidecar = Sidecar()

    async def search(request: web.Request) -> web.StreamResponse:
        sidecar.requests.append({"query": dict(request.query), "headers": dict(request.headers)})
        if sidecar.handler is not None:
            return await sidecar.handler(request)
        return web.json_response(
            brave_results(request.query["q"], int(request.query.get("count", "10")))
        )

    app = web.Application()
    app.router.add_get("/search", search)
    async with serve(app) as url:
        sidecar.url = f"{url}/search"
        yield sidecar


@contextlib.asynccontextmanager
async def diffusion_sidecar() -> AsyncIterator[Sidecar]:
    """``POST /v1/images/generations`` -> ``{"data": [{"b64_json": <PNG of the size>}]}``."""
    sidecar = Sidecar()

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        sidecar.requests.append({"json": body})
        if sidecar.handler is not None:
            return await sidecar.handler(request)
        width, height = (int(n) for n in body["size"].split("x"))
        image = png(width, height, (body.get("seed", 7) % 256, 80, 40))
        return web.json_response(
            {"created": 0, "data": [{"b64_json": base64.b64encode(image).decode()}]}
        )

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    async with serve(app) as url:
        sidecar.url = url
        yield sidecar


VLM_OCR, VLM_VISUAL = "HELLO 42", "A red square."
"""What :func:`vlm_sidecar` reads in every image (its text, its one-sentence description)."""
VLM_OCR_TOKENS, VLM_VISUAL_TOKENS = 30, 12


@contextlib.asynccontextmanager
async def vlm_sidecar() -> AsyncIterator[Sidecar]:
    """``POST /v1/chat/completions`` as a vision model answers a node: the OCR instruction
    -> :data:`VLM_OCR`, any other -> :data:`VLM_VISUAL`, with ``usage.total_tokens`` (or
    ``sidecar.handler``). ``requests`` holds the JSON bodies."""
    sidecar = Sidecar()

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        sidecar.requests.append(body)
        if sidecar.handler is not None:
            return await sidecar.handler(request)
        ocr = body["messages"][0]["content"][0]["text"].startswith("Extract all text")
        return web.json_response(
            {
                "choices": [
                    {"message": {"role": "assistant", "content": VLM_OCR if ocr else VLM_VISUAL}}
                ],
                "usage": {"total_tokens": VLM_OCR_TOKENS if ocr else VLM_VISUAL_TOKENS},
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", complete)
    async with serve(app) as url:
        sidecar.url = url
        yield sidecar


class LoopThread:
    """An event loop in a daemon thread, for servers that sync code talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(30)

    def enter(self, cm: contextlib.AbstractAsyncContextManager[Any]) -> Any:
        return self.run(self._stack.enter_async_context(cm))

    def close(self) -> None:
        self.run(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
