"""A recording ``/v1/ws`` relay on 127.0.0.1 between a client and a host, for the
encryption tests: what a relay on the path sees, and what it can do to the frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

Rewrite = Callable[[str], list[str]]


class WsRelay:
    """``async with WsRelay(host.url) as relay``: ``relay.url`` fronts the host's ``/v1/ws``.

    Forwards text frames both ways and records them (``up``: what the client sent,
    ``down``: what the host sent). Each frame going down passes through ``down_hook``
    when set, which returns the frames to send instead (none, the same, or others).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.replace("http://", "ws://") + "/v1/ws"
        self.up: list[str] = []
        self.down: list[str] = []
        self.down_hook: Rewrite | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> WsRelay:
        app = web.Application()
        app.router.add_get("/v1/ws", self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def wire_text(self) -> str:
        """Everything that crossed the relay, both ways, as one string."""
        return "\n".join(self.up + self.down)

    def sent(self, kind: str) -> list[dict[str, Any]]:
        """The frames of type ``kind`` the client sent, decoded."""
        frames = [json.loads(t) for t in self.up]
        return [f for f in frames if f.get("type") == kind]

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse()
        await client.prepare(request)
        async with aiohttp.ClientSession() as http, http.ws_connect(self.upstream) as host:

            async def downstream() -> None:
                async for msg in host:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    self.down.append(msg.data)
                    for text in self.down_hook(msg.data) if self.down_hook else [msg.data]:
                        await client.send_str(text)
                await client.close()

            task = asyncio.create_task(downstream())
            async for msg in client:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                self.up.append(msg.data)
                await host.send_str(msg.data)
            task.cancel()
        return client
