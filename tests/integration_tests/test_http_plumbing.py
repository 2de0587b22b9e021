"""Every HTTP client of the package asks a peer for uncompressed bodies (one client
factory, ``langchain_fabstir._http.client``): each body is read with a cap, and a cap on
decompressed bytes would let a small compressed chunk expand far past it in one step."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from langchain_fabstir import FabstirEmbeddings, FabstirSearchRetriever
from langchain_fabstir.chat_models.profile import base_profile, fetch_profile
from langchain_fabstir.errors import FabstirError
from langchain_fabstir.s5.cid import CID
from langchain_fabstir.s5.client import S5PortalClient
from langchain_fabstir.sessions.trust import challenge_key
from langchain_fabstir.tools import FabstirImageGenerationTool


@asynccontextmanager
async def recording_peer() -> AsyncIterator[tuple[str, list[tuple[str, str | None]]]]:
    """A peer on 127.0.0.1 that answers every request 404 and records its path and
    ``Accept-Encoding``."""
    seen: list[tuple[str, str | None]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Accept-Encoding")))
        return web.json_response({"error": "not here"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def _s5_download(url: str) -> Any:
    async with S5PortalClient(url, max_attempts=1) as portal:
        return await portal.download(CID.from_bytes(b"x"))


CALLS: dict[str, Callable[[str], Awaitable[Any]]] = {
    "embeddings": lambda url: FabstirEmbeddings(host_url=url, max_retries=0).aembed_query("q"),
    "search": lambda url: FabstirSearchRetriever(host_url=url, max_retries=0).ainvoke("q"),
    "images": lambda url: FabstirImageGenerationTool(host_url=url, max_retries=0)._agenerate(
        "a cat", None, None, None
    ),
    "host challenge": lambda url: challenge_key(url, timeout=5.0),
    "model profile": lambda url: fetch_profile(url, None, base_profile(), timeout=5.0),
    "s5 portal": _s5_download,
}


@pytest.mark.parametrize("name", list(CALLS))
async def test_every_client_asks_for_uncompressed_bodies(name: str) -> None:
    async with recording_peer() as (url, seen):
        try:
            await CALLS[name](url)
        except FabstirError:
            pass  # the peer answered 404: only the request matters here
    assert seen, f"{name}: nothing was asked"
    assert {encoding for _, encoding in seen} == {"identity"}, seen
