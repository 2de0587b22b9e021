"""One WebSocket connection to a host's ``/v1/ws``, over the ``websockets`` library.

The transport knows frames and sockets, nothing of sessions, encryption or LangChain (an
encrypted socket's conversation is the session's: ``sessions/sealed.py``). It opens the
connection (open timeout, permessage-deflate when asked, a maximum frame size,
keepalive pings), waits for the host's ``connected`` greeting, sends frames and receives
typed frames with a deadline, and closes cleanly. Every failure is a typed
:class:`~langchain_fabstir.errors.FabstirError`:

- cannot connect, handshake refused, no greeting in time: ``HOST_UNREACHABLE``
- the socket closes or breaks: ``HOST_DISCONNECTED``
- a frame that is not the protocol: ``PROTOCOL_ERROR``
- nothing arrives before the deadline: ``RESPONSE_TIMEOUT`` (the caller picks the
  subclass, e.g. the inactivity timeout)

>>> ws_url("http://127.0.0.1:8080"), ws_url("https://h.example/"), ws_url("ws://h/v1/ws")
('ws://127.0.0.1:8080/v1/ws', 'wss://h.example/v1/ws', 'ws://h/v1/ws')
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI

from langchain_fabstir import _compat
from langchain_fabstir.errors import (
    ConnectionFailedError,
    HostDisconnectedError,
    ProtocolError,
    ResponseTimeoutError,
)
from langchain_fabstir.wire.frames import Connected, _Frame, encode_frame, loads, parse_frame

__all__ = ["Transport", "TransportOptions", "ws_url"]


def ws_url(host_url: str) -> str:
    """The ``/v1/ws`` URL of a host given by its HTTP(S) or WS(S) base URL."""
    url = host_url.strip().rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    if not url.endswith("/v1/ws"):
        url += "/v1/ws"
    return url


@dataclass(frozen=True)
class TransportOptions:
    """Connection settings (seconds and bytes)."""

    open_timeout: float = 10.0
    compression: bool = True
    max_frame_size: int = 4 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 2.0


class Transport:
    """A connected socket to one host. Use :meth:`open`, then ``send``/``recv``.

    Attributes:
        greeting: the host's ``connected`` frame (extensions it announced in
            ``greeting.features``).
    """

    def __init__(self, host_url: str, ws: ClientConnection, greeting: Connected) -> None:
        self.host_url = host_url
        self.ws = ws
        self.greeting = greeting

    @classmethod
    async def open(cls, host_url: str, options: TransportOptions | None = None) -> Transport:
        """Connect and wait for the greeting, all within ``options.open_timeout``."""
        opts = options or TransportOptions()
        url = ws_url(host_url)
        try:
            async with _compat.timeout(opts.open_timeout):
                ws = await connect(
                    url,
                    open_timeout=None,
                    compression="deflate" if opts.compression else None,
                    max_size=opts.max_frame_size,
                    ping_interval=opts.ping_interval,
                    ping_timeout=opts.ping_timeout,
                    close_timeout=opts.close_timeout,
                    user_agent_header="langchain-fabstir",
                )
                try:
                    greeting = await cls._await_greeting(ws, host_url)
                except BaseException:
                    await ws.close()
                    raise
        except asyncio.TimeoutError:
            raise ConnectionFailedError(
                f"no connection and greeting from {url} within {opts.open_timeout}s",
                host_url=host_url,
            ) from None
        except (ConnectionClosed, ConnectionResetError, InvalidMessage) as exc:
            if isinstance(exc, InvalidMessage) and not isinstance(exc.__cause__, EOFError):
                raise ConnectionFailedError(
                    f"cannot connect to {url}: {exc}", host_url=host_url
                ) from exc
            # The host took the connection and dropped it while it was being opened.
            raise HostDisconnectedError(
                f"connection to {url} dropped while it was being opened: {exc}",
                host_url=host_url,
            ) from exc
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionFailedError(
                f"cannot connect to {url}: {exc}", host_url=host_url
            ) from exc
        return cls(host_url, ws, greeting)

    @staticmethod
    async def _await_greeting(ws: ClientConnection, host_url: str) -> Connected:
        raw = await ws.recv()
        frame = parse_frame(raw)
        if isinstance(frame, Connected):
            return frame
        raise ProtocolError(
            f"expected a 'connected' greeting, got {frame.type!r}", host_url=host_url
        )

    @property
    def features(self) -> list[str]:
        return self.greeting.features

    @property
    def closed(self) -> bool:
        return self.ws.close_code is not None or self.ws.state.name in ("CLOSING", "CLOSED")

    async def send(self, frame: _Frame | str) -> None:
        text = frame if isinstance(frame, str) else encode_frame(frame)
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            raise self.disconnected(exc) from None

    async def recv_raw(self) -> str | bytes:
        """The next raw message, without a deadline (callers wrap it in one)."""
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise self.disconnected(exc) from None

    async def recv(self, timeout: float | None = None, *, what: str = "a frame") -> _Frame:
        """The next typed frame; ``RESPONSE_TIMEOUT`` if none arrives within ``timeout``."""
        try:
            async with _compat.timeout(timeout):
                raw = await self.recv_raw()
        except asyncio.TimeoutError:
            raise ResponseTimeoutError(
                f"no {what} from {self.host_url} within {timeout}s", host_url=self.host_url
            ) from None
        try:
            return parse_frame(raw)
        except ProtocolError as exc:
            exc.host_url = self.host_url
            raise

    async def request(
        self, frame: str, reply_type: str, request_id: str, timeout: float
    ) -> dict[str, Any]:
        """Send a plaintext request frame (host RAG: ``uploadVectors``, ``searchVectors``)
        and return its reply: the first ``reply_type`` frame whose ``requestId`` is
        ``request_id`` (or absent), or a bare ``error`` frame (no ``code``, ``id`` or
        ``requestId``: nodes send RAG errors so, correlated by time). Other frames (stray
        frames of earlier answers) are skipped. ``RESPONSE_TIMEOUT`` after ``timeout``
        seconds for all of it; ``PROTOCOL_ERROR`` for a frame that is not JSON."""
        await self.send(frame)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                async with _compat.timeout(remaining):
                    raw = await self.recv_raw()
            except asyncio.TimeoutError:
                raise ResponseTimeoutError(
                    f"no {reply_type} from {self.host_url} within {timeout}s",
                    host_url=self.host_url,
                ) from None
            try:
                obj = loads(raw)
            except ProtocolError as exc:
                exc.host_url = self.host_url
                raise
            if type(obj) is not dict:
                continue
            kind = obj.get("type")
            if kind == reply_type and obj.get("requestId") in (None, request_id):
                return obj
            if kind == "error" and (
                obj.get("requestId") == request_id
                or not any(f in obj for f in ("code", "id", "requestId"))
            ):
                return obj

    def disconnected(self, exc: ConnectionClosed) -> HostDisconnectedError:
        """The typed error of a socket that closed or broke (``HOST_DISCONNECTED``)."""
        rcvd = exc.rcvd
        detail = f"code {rcvd.code} {rcvd.reason!r}" if rcvd is not None else "no close frame"
        return HostDisconnectedError(
            f"connection to {self.host_url} closed ({detail})",
            host_url=self.host_url,
            details={"close_code": rcvd.code if rcvd is not None else None},
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    def abort(self) -> None:
        """Drop the connection at once (no closing handshake)."""
        transport: Any = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()
