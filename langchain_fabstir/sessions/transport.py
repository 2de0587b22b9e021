"""One WebSocket connection to a host's ``/v1/ws``, over the ``websockets`` library.

The transport knows frames and sockets, nothing of sessions or LangChain. It opens the
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
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI

from langchain_fabstir import _compat
from langchain_fabstir.errors import (
    AnswerTruncatedError,
    ConnectionFailedError,
    EncryptionModeError,
    FabstirError,
    HostDisconnectedError,
    ProtocolError,
    ResponseTimeoutError,
)
from langchain_fabstir.sessions.conversation import (
    ENCRYPTED_CONTEXT_FEATURE,
    plan_turn,
    with_images,
)
from langchain_fabstir.wire.encryption import SessionCipher
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
        self.cipher: SessionCipher | None = None
        """The session key once an ``encrypted_session_init`` was acked (see
        :meth:`encrypt`); ``None``: a plaintext socket."""
        self.held: list[dict[str, str]] | None = None
        """Encrypted mode: the conversation the host holds for this socket's node session,
        as far as the client knows (``None``: unknown)."""
        self.node_session_id: str | None = None
        """Encrypted mode: the session id of the latest ``encrypted_session_init``."""
        self._renew: Callable[[], Awaitable[object]] | None = None
        self._asked: list[dict[str, str]] = []
        self._answer: list[str] = []
        self._rid: Any = None  # the id of the prompt being answered
        self._final: str | None = None  # its authenticated finish reason
        self._counted = False  # this host sealed a chunk count in a final frame

    @property
    def spent(self) -> bool:
        """The session key carried enough chunks that the next answer should run on a
        fresh one (a new socket): see :class:`~langchain_fabstir.wire.encryption.SessionCipher`."""
        return self.cipher is not None and self.cipher.spent

    # --- encrypted mode (PROTOCOL.md section 4) --------------------------------------

    def encrypt(
        self,
        cipher: SessionCipher,
        *,
        node_session_id: str | None = None,
        fresh: bool = True,
        renew: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """From now on prompts go out as ``encrypted_message`` and answers come in as
        ``encrypted_chunk`` under ``cipher``; answer text in clear is refused.

        ``node_session_id``: the session id the init named; ``fresh``: never used
        before, so the node holds no conversation for it (else what it holds is
        unknown: a node keeps a session id's history across sockets); ``renew``: opens
        a fresh node session on this socket (calls ``encrypt`` again), for a
        conversation the current one does not hold (see ``sessions/conversation.py``)."""
        self.cipher = cipher
        self.held = [] if fresh else None
        if node_session_id is not None:
            self.node_session_id = node_session_id
        if renew is not None:
            self._renew = renew

    async def send_prompt(self, payload: dict[str, Any]) -> None:
        """Send a ``prompt`` frame (a dict from ``prompt_payload``), sealed in encrypted
        mode, where the host keeps the conversation per node session id.

        A deployed node ignores ``conversation_context`` inside the ciphertext and has no
        system-prompt field, so the conversation reaches it as prompt text
        (:func:`~langchain_fabstir.sessions.conversation.plan_turn`): the new message
        with the instructions in front while the node session holds this conversation,
        else a fresh node session (a new ``encrypted_session_init`` on this socket) with
        the conversation inlined. A host that announced ``encrypted_context`` gets the
        history as ``conversation_context`` instead, whenever its copy is not known to
        equal it."""
        cipher = self.cipher
        if cipher is None:
            await self.send(json.dumps(payload, separators=(",", ":")))
            return
        request = dict(payload.get("request") or {})
        session_id = request.get("session_id")
        context = request.pop("conversation_context", None) or []
        for name in ("session_id", "job_id", "request_id", "chain_id"):
            request.pop(name, None)
        prompt = str(request.get("prompt", ""))
        checkpoint = request.get("checkpoint")
        # The checkpoints extension hashes the conversation as the client sees it,
        # whatever text carries it to the model (see plan_turn): say what it is (the
        # context only when the host may not hold it).
        told: dict[str, Any] = {"session": session_id, "prompt": prompt}
        if request.get("resume") is not None:
            context = []  # the answer goes on; the node session's history is unknown
            self.held = None
            told = {}
        elif ENCRYPTED_CONTEXT_FEATURE in self.greeting.features:
            if context != self.held:
                request["conversation_context"] = told["context"] = context
        else:
            plan = plan_turn(context, prompt, self.held)
            if plan.new_node_session and self._renew is not None:
                await self._renew()  # a new node session id and key on this socket
                assert self.cipher is not None
                cipher = self.cipher
            request["prompt"] = plan.prompt
            if plan.inlined and payload.get("images"):
                request["prompt"] = with_images(plan.prompt, prompt)
            if plan.inlined:
                told["context"] = context
        if isinstance(checkpoint, dict) and told:
            request["checkpoint"] = {**checkpoint, **told}
        if payload.get("images"):  # (a node reads them inside the ciphertext, 6.2)
            request["images"] = payload["images"]
        resuming = request.get("resume") is not None
        self._asked = [] if resuming else [*context, {"role": "user", "content": prompt}]
        self._answer = []
        self.held = None  # known again when the answer completes
        cipher.expect_chunk(0)
        self._rid, self._final = payload.get("id"), None
        frame: dict[str, Any] = {
            "type": "encrypted_message",
            "session_id": self.node_session_id or session_id,
            "id": payload.get("id"),
            "payload": cipher.seal_message(json.dumps(request, separators=(",", ":"))),
        }
        await self.send(json.dumps(frame, separators=(",", ":")))

    def decode(self, raw: str | bytes) -> Any:
        """A received message as decoded JSON; in encrypted mode ``encrypted_chunk`` is
        opened into the ``stream_chunk`` it stands for (its index checked in order, its
        nonce new under the session key), and the ``stream_end`` of a complete answer
        carries the finish reason the host sealed in ``encrypted_response``.

        Raises :class:`~langchain_fabstir.errors.EncryptionError` subclasses: an encrypted
        frame on a plaintext socket, or answer text in clear on an encrypted one
        (``ENCRYPTION_MODE_MISMATCH``), a frame that does not authenticate
        (``DECRYPTION_FAILED``), a reordered chunk (``CHUNK_OUT_OF_ORDER``), a chunk or
        final frame of an earlier answer played again (``CHUNK_REPLAYED``), an answer
        that ends without its sealed final frame, or (hosts that announce
        ``chunk_count``, and any host once it sealed a count on this socket) with fewer
        chunks than the host sealed (``ANSWER_TRUNCATED``). Deployed nodes seal no count:
        against them, a relay that drops the last chunks of an answer and forwards the
        final frames cannot be detected."""
        obj = loads(raw)
        if self.cipher is None:
            if type(obj) is dict and str(obj.get("type", ""))[:10] == "encrypted_":
                raise EncryptionModeError(
                    f"host {self.host_url} sent an {obj.get('type')} frame in a plaintext session",
                    host_url=self.host_url,
                )
            return obj
        return self._open(obj)

    def _open(self, obj: Any) -> Any:
        if type(obj) is not dict:
            return obj
        kind = obj.get("type")
        cipher = self.cipher
        assert cipher is not None
        if kind == "encrypted_chunk":
            try:
                text = cipher.open_chunk(obj.get("payload"))
            except FabstirError as exc:
                exc.host_url = self.host_url
                raise
            self._answer.append(text)
            chunk: dict[str, Any] = {
                "type": "stream_chunk",
                "content": text,
                "tokens": obj.get("tokens", 1),
            }
            if "id" in obj:
                chunk["id"] = obj["id"]
            return chunk
        if kind == "stream_chunk" and obj.get("content"):
            raise EncryptionModeError(
                f"host {self.host_url} sent answer text in clear in an encrypted session "
                "(refused, not shown)",
                host_url=self.host_url,
            )
        if kind == "encrypted_response":
            return self._open_final(obj, cipher)
        if kind == "stream_resumed" and type(obj.get("offset")) is int:
            cipher.expect_chunk(obj["offset"])
            self._answer = []  # (the answer's text before the resume is not here)
        elif kind == "stream_end":
            if obj.get("reason") == "complete" and obj.get("id") in (None, self._rid):
                if self._final is None:
                    raise AnswerTruncatedError(
                        f"host {self.host_url} ended an encrypted answer as complete without "
                        "its sealed encrypted_response (frames were dropped on the way)",
                        host_url=self.host_url,
                    )
                obj = dict(obj, finish_reason=self._final)  # the sealed one
                text = "".join(self._answer)
                if self._asked and text:  # (a node stores no turn for an empty answer)
                    self.held = [*self._asked, {"role": "assistant", "content": text}]
            self._asked, self._answer = [], []
        return obj

    def _open_final(self, obj: dict[str, Any], cipher: SessionCipher) -> Any:
        """``encrypted_response``: the sealed finish reason, and the sealed chunk count
        where the host gives one (checked against the chunks received)."""
        try:
            finish_reason = cipher.open_final(obj.get("payload"))
            count = obj.get("count")
            if count is not None and obj.get("id") in (None, self._rid):
                cipher.check_count(count)
                self._counted = True
            elif obj.get("id") in (None, self._rid) and (
                self._counted or "chunk_count" in self.greeting.features
            ):
                raise AnswerTruncatedError(
                    f"host {self.host_url} announced sealed chunk counts and this answer's "
                    "final frame has none (removed on the way?)",
                )
        except FabstirError as exc:
            exc.host_url = self.host_url
            raise
        if obj.get("id") in (None, self._rid):
            self._final = finish_reason
        out = dict(obj, finish_reason=finish_reason)
        out.pop("payload", None)
        out.pop("count", None)
        return out

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
            raise self._disconnected(exc) from None

    async def recv_raw(self) -> str | bytes:
        """The next raw message, without a deadline (callers wrap it in one)."""
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise self._disconnected(exc) from None

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

    def _disconnected(self, exc: ConnectionClosed) -> HostDisconnectedError:
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
