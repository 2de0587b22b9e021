"""A hostile relay on 127.0.0.1 between a client and a host, for the host-trust tests.

It forwards HTTP (``/health``, ``/v1/version``, ``/v1/auth/challenge``, ...) unchanged and
relays ``/v1/ws`` text frames both ways, recording what the client sends (``up``). Attacks:

- ``swap_greeting``: the ``connected`` greeting's ``host_public_key`` and ``host_address``
  become the relay's own (``RELAY_KEY``), as a relay that wants the client to seal to it;
- ``refuse_encryption``: an ``encrypted_session_init`` is not forwarded; the relay answers
  ``ENCRYPTION_NOT_SUPPORTED`` itself (a forged downgrade);
- ``answer_challenge``: ``POST /v1/auth/challenge`` is answered with the relay's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from aiohttp import web
from coincurve import PrivateKey

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.wire.encryption import (
    address_of_public_key,
    answer_challenge,
    host_public_key,
)

RELAY_KEY = "0x" + "7c" * 32
RELAY_PUBLIC_KEY = host_public_key(PrivateKey(bytes.fromhex(RELAY_KEY[2:])))
RELAY_ADDRESS = address_of_public_key(RELAY_PUBLIC_KEY)


class TrustRelay:
    """``async with TrustRelay(host.url) as relay``: ``relay.url`` fronts the host."""

    def __init__(
        self,
        upstream: str,
        *,
        swap_greeting: bool = False,
        refuse_encryption: bool = False,
        answer_challenge: bool = False,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.swap_greeting = swap_greeting
        self.refuse_encryption = refuse_encryption
        self.answer_challenge = answer_challenge
        self.up: list[str] = []
        """Every text frame the client sent over ``/v1/ws``, in order."""
        self.refused_inits = 0
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> TrustRelay:
        app = web.Application()
        app.router.add_get("/v1/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._http_forward)
        self._http = aiohttp.ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._http is not None
        await self._runner.cleanup()
        await self._http.close()

    def sent_text(self) -> str:
        """All the client sent over the socket, as one string."""
        return "\n".join(self.up)

    def sent_types(self) -> list[str]:
        return [str(json.loads(f).get("type")) for f in self.up]

    async def _http_forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.answer_challenge and request.path == "/v1/auth/challenge":
            challenge = bytes.fromhex(loads_untrusted(body)["challenge"])
            return web.json_response(answer_challenge(RELAY_KEY, challenge))
        assert self._http is not None
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self._http.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as reply:
            data = await reply.read()
            return web.Response(body=data, status=reply.status, content_type=reply.content_type)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse()
        await client.prepare(request)
        upstream = self.upstream.replace("http://", "ws://", 1) + "/v1/ws"
        assert self._http is not None
        async with self._http.ws_connect(upstream) as host:

            async def downstream() -> None:
                async for msg in host:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    text = msg.data
                    frame = json.loads(text)
                    if self.swap_greeting and frame.get("type") == "connected":
                        frame["host_public_key"] = RELAY_PUBLIC_KEY
                        frame["host_address"] = RELAY_ADDRESS
                        text = json.dumps(frame)
                    await client.send_str(text)
                await client.close()

            task = asyncio.create_task(downstream())
            try:
                async for msg in client:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    self.up.append(msg.data)
                    frame = json.loads(msg.data)
                    if self.refuse_encryption and frame.get("type") == "encrypted_session_init":
                        self.refused_inits += 1
                        await client.send_str(
                            json.dumps(
                                {
                                    "type": "error",
                                    "code": "ENCRYPTION_NOT_SUPPORTED",
                                    "message": "this host cannot open encrypted sessions",
                                    "session_id": frame.get("session_id"),
                                }
                            )
                        )
                        continue
                    await host.send_str(msg.data)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return client
