"""Raw ``/v1/ws`` helpers: read frames off a socket, and a hand-written host that does
whatever a test tells it to with each prompt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve


async def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame of ``ws``, decoded (at most ``timeout`` seconds)."""
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def read_answer(ws: Any) -> list[dict[str, Any]]:
    """The frames of one answer, up to and with its ``stream_end``."""
    frames = []
    while True:
        frame = await recv_json(ws)
        frames.append(frame)
        if frame["type"] == "stream_end":
            return frames


@dataclass
class RawHost:
    """What a hand-written host saw: prompt frames and when they arrived (monotonic)."""

    url: str = ""
    prompts: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    connections: int = 0


OnPrompt = Callable[[ServerConnection, dict[str, Any], int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_host(
    on_prompt: OnPrompt, features: Sequence[str] | None = ()
) -> AsyncIterator[RawHost]:
    """A hand-written ``websockets`` host on 127.0.0.1 port 0: it greets (announcing
    ``features``; ``None`` leaves the field out), acknowledges every ``session_init``, and
    hands each ``prompt``/``inference`` frame to ``on_prompt(ws, msg, n)``, which answers
    the ``n``-th prompt (0-based) however the test wants."""
    seen = RawHost()
    greeting: dict[str, Any] = {"type": "connected", "message": "hi"}
    if features is not None:
        greeting["features"] = list(features)

    async def handler(ws: ServerConnection) -> None:
        seen.connections += 1
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps(greeting))
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "session_init":
                    ack = {"type": "session_init_ack", "status": "success", "id": msg.get("id")}
                    await ws.send(json.dumps(ack))
                elif msg["type"] in ("prompt", "inference"):
                    seen.prompts.append(msg)
                    seen.arrivals.append(time.monotonic())
                    await on_prompt(ws, msg, len(seen.prompts) - 1)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        seen.url = f"http://127.0.0.1:{port}"
        yield seen
