"""S5 helpers for the checkpoint tests: put a JSON value on a portal, and a hand-written
host that serves a checkpoint index (``GET /v1/checkpoints/{session_id}``)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5Identity, S5PortalClient


async def upload(portal: LocalPortal, value: dict[str, Any]) -> str:
    """Put a JSON object on the portal (a fresh account) and return its CID."""
    identity, _ = S5Identity.generate()
    async with S5PortalClient(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        return str(await client.upload(json.dumps(value).encode()))


class IndexHost:
    """A real HTTP server answering ``/v1/checkpoints/{id}`` with ``body`` and ``status``."""

    def __init__(self) -> None:
        self.body: bytes = b""
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, status=self.status, content_type="application/json")

    async def __aenter__(self) -> IndexHost:
        app = web.Application()
        app.router.add_get("/v1/checkpoints/{session_id}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def serve(self, index: dict[str, Any]) -> None:
        """Answer with ``index`` (as JSON, status 200)."""
        self.body, self.status = json.dumps(index).encode(), 200
