"""A session's socket: open it, say ``session_init``, keep it, replace it when it breaks.

:class:`Connector` is the part of :class:`~langchain_fabstir.sessions.SessionManager` that
talks to hosts before any prompt: it opens a :class:`~langchain_fabstir.sessions.transport.
Transport` (with the timeouts of :class:`~langchain_fabstir.sessions.models.SessionConfig`),
waits for ``session_init_ack`` within ``ack_timeout``, tries a new session's alternate hosts
in order (discovery), and reconnects a broken answer through
:func:`~langchain_fabstir.sessions.recovery.reconnect` (tenacity: the same host first, then the
alternates). It reports every success and failure to discovery's circuit breaker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir.discovery import HostDiscovery
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    HostDisconnectedError,
    ProtocolError,
    ResponseTimeoutError,
)
from langchain_fabstir.sessions.models import Session, SessionConfig
from langchain_fabstir.sessions.recovery import reconnect
from langchain_fabstir.sessions.state import SessionState, new_request_id
from langchain_fabstir.sessions.transport import Transport, TransportOptions
from langchain_fabstir.wire.frames import SessionInit, SessionInitAck

__all__ = ["Connector"]

Emit = Callable[..., Awaitable[None]]


class Connector:
    """Opens, keeps and replaces the sockets of sessions (see the module docstring)."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        discovery: HostDiscovery | None,
        user_address: str | None,
        emit: Emit,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self.user_address = user_address
        self._emit = emit

    async def connection(self, state: SessionState) -> Transport:
        """The session's socket, opened and initialised if needed."""
        transport = state.transport
        if transport is not None and not transport.closed:
            return transport
        state.transport = await self.open(state, state.session.host_url)
        return state.transport

    async def first_connection(self, state: SessionState) -> Transport:
        """Connect a new session: its host, or (with discovery) the next candidates."""
        if not state.alternates:
            return await self.connection(state)
        session = state.session
        hosts = [session.host_url, *state.alternates]
        last: FabstirError | None = None
        for host in hosts:
            try:
                state.transport = await self.open(state, host)
            except (
                ConnectionFailedError,
                HostDisconnectedError,
                ResponseTimeoutError,
                ProtocolError,
            ) as exc:
                self._record_failure(host, exc)
                last = exc
                continue
            session.host_url = host
            state.alternates = [h for h in hosts if h != host]
            return state.transport
        assert last is not None
        raise last

    async def open(self, state: SessionState, host_url: str) -> Transport:
        """Open and initialise a socket to ``host_url`` for this session.

        Opening is idempotent, so a connection cut during the WebSocket handshake or before
        ``session_init_ack`` (``HOST_DISCONNECTED``) is tried again, up to
        ``reconnect_attempts`` more times with backoff, as any reconnect is. A host that
        refuses the connection or never answers fails at once (discovery moves on)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + self.config.reconnect_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            retry=retry_if_exception_type(HostDisconnectedError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._open_once(state, host_url)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open_once(self, state: SessionState, host_url: str) -> Transport:
        session = state.session
        config = self.config
        options = TransportOptions(
            open_timeout=config.open_timeout,
            compression=config.compression_enabled,
            max_frame_size=config.max_frame_size,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_interval,
        )
        transport = await Transport.open(host_url, options)
        if state.transport is not None:
            state.remember_socket(state.transport)
        try:
            await self._session_init(transport, session, state.handover_token(host_url))
        except BaseException:
            await transport.close()
            raise
        state.remember_socket(transport)
        if not session.model and transport.greeting.models:
            session.model = transport.greeting.models[0]
        if self.discovery is not None:
            self.discovery.record_success(host_url)
        return transport

    async def _session_init(
        self, transport: Transport, session: Session, previous_token: str | None = None
    ) -> None:
        """``session_init`` and its ack. ``previous_token``: the ``resume_token`` of the
        session's last socket to the same host, so that the host hands this socket what
        that one owned (its checkpoint state): only the holder can present it."""
        rid = new_request_id()
        init = SessionInit(
            chain_id=session.chain_id,
            session_id=session.id,
            job_id=session.job_id,
            user_address=self.user_address,
            id=rid,
        )
        if previous_token is not None:
            init.__pydantic_extra__ = {"resume_token": previous_token}
        await transport.send(init)
        deadline = time.monotonic() + self.config.ack_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResponseTimeoutError(
                    f"no session_init_ack from {session.host_url} within "
                    f"{self.config.ack_timeout}s",
                    host_url=session.host_url,
                    session_id=session.id,
                )
            frame = await transport.recv(remaining, what="session_init_ack")
            if isinstance(frame, SessionInitAck) and frame.id in (None, rid):
                if frame.status != "success":
                    raise ProtocolError(
                        f"host refused session_init: {frame.message or frame.status}",
                        host_url=session.host_url,
                        session_id=session.id,
                    )
                return

    async def drop(self, state: SessionState, failed: BaseException | None = None) -> None:
        """Close the session's socket (``failed``: it broke, and discovery hears why)."""
        if state.transport is not None:
            if failed is not None:
                self._record_failure(state.transport.host_url, failed)
                state.transport.abort()
            await state.transport.close()
            state.remember_socket(state.transport)
            state.transport = None

    async def reconnect(self, state: SessionState, cause: BaseException) -> Transport:
        """A new socket for a broken answer: the same host first, then alternates."""
        session = state.session
        hosts = [session.host_url, *[h for h in state.alternates if h != session.host_url]]

        async def connect(host: str) -> Transport:
            return await self._open_once(state, host)  # reconnect() retries itself

        try:
            transport = await reconnect(
                connect, hosts, self.config.reconnect_attempts, on_failure=self._record_failure
            )
        except FabstirError as exc:
            attempts: Any = exc.details.get("attempts", "?")
            raise HostDisconnectedError(
                f"lost {session.host_url} mid-answer ({cause}) and could not reconnect after "
                f"{attempts} attempts: {exc}",
                host_url=session.host_url,
                session_id=session.id,
                details={"attempts": exc.details.get("attempts"), "cause": str(cause)},
            ) from exc
        if transport.host_url != session.host_url:
            await self._emit("failover", session, session.host_url, transport.host_url)
            session.host_url = transport.host_url
        state.transport = transport
        return transport

    def _record_failure(self, host: str, exc: BaseException) -> None:
        if self.discovery is not None:
            self.discovery.record_failure(host, exc)
