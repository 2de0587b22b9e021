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

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir.discovery import HostDiscovery
from langchain_fabstir.errors import (
    ENCRYPTION_ERRORS,
    ConnectionFailedError,
    DecryptionFailedError,
    EncryptionError,
    EncryptionUnavailableError,
    FabstirError,
    HostDisconnectedError,
    ProtocolError,
    ResponseTimeoutError,
)
from langchain_fabstir.sessions.conversation import new_node_session_id
from langchain_fabstir.sessions.models import Session, SessionConfig
from langchain_fabstir.sessions.recovery import reconnect
from langchain_fabstir.sessions.state import SessionState, new_request_id
from langchain_fabstir.sessions.transport import Transport, TransportOptions
from langchain_fabstir.wire.encryption import (
    RecoveryKey,
    SessionCipher,
    address_of_public_key,
    recover_challenge_key,
    seal_session_init,
)
from langchain_fabstir.wire.frames import ErrorFrame, SessionInit, SessionInitAck

__all__ = ["Connector"]

log = logging.getLogger(__name__)

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
        signing_key: SecretStr | None = None,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self.user_address = user_address
        self._emit = emit
        self._signing_key = signing_key

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
                EncryptionUnavailableError,
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
            await self._init(transport, state, state.handover_token(host_url))
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
        async for frame in self._replies(transport, session, "session_init_ack"):
            if isinstance(frame, SessionInitAck) and frame.id in (None, rid):
                if frame.status != "success":
                    raise ProtocolError(
                        f"host refused session_init: {frame.message or frame.status}",
                        host_url=session.host_url,
                        session_id=session.id,
                    )
                return

    async def _init(
        self, transport: Transport, state: SessionState, previous_token: str | None
    ) -> None:
        """Encrypted or plaintext init, as ``config.encryption`` and the host allow."""
        session = state.session
        mode = self.config.encryption
        must = mode == "required" or session.encrypted  # never a downgrade
        key = await self._host_key(state, transport) if mode != "off" or must else None
        carry = state.node_session(transport.host_url)  # (same host: its history is kept)
        if key is not None and await self._encrypted_init(
            transport, session, key, previous_token, carry=carry
        ):
            session.encrypted = True
            return
        if must:
            why = "has no known public key" if key is None else "refused encryption"
            raise EncryptionUnavailableError(
                f"host {transport.host_url} {why}: encryption is required"
                + (" (this session ran encrypted)" if session.encrypted else "")
                + ", so no prompt was sent. Give create_session(host_public_key=...) or "
                "use a host started with a host key (FABSTIR_HOST_KEY).",
                host_url=transport.host_url,
                session_id=session.id,
            )
        if key is not None:
            log.warning("host %s refused encryption: plaintext session", transport.host_url)
        session.encrypted = False
        await self._session_init(transport, session, previous_token)

    async def _host_key(self, state: SessionState, transport: Transport) -> str | None:
        """The host's public key: given by the caller for this host; else announced by the
        host and hashing to the address it announced; else recovered from its
        ``/v1/auth/challenge`` answer and hashing to that address."""
        given = state.host_keys.get(transport.host_url)
        if given is not None:
            return given
        greeting = transport.greeting
        address = (greeting.host_address or "").lower()
        announced = greeting.host_public_key
        if announced and address:
            try:
                if address_of_public_key(announced).lower() == address:
                    return announced
            except EncryptionError:
                pass
        if "encryption" in greeting.features and address:
            return await self._challenge(transport.host_url, address)
        return None

    async def _challenge(self, host_url: str, address: str) -> str | None:
        base = host_url.rstrip("/").removesuffix("/v1/ws")
        base = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        challenge = secrets.token_bytes(32)
        try:
            async with httpx.AsyncClient(timeout=self.config.open_timeout) as client:
                reply = await client.post(
                    f"{base}/v1/auth/challenge", json={"challenge": challenge.hex()}
                )
            key = recover_challenge_key(challenge, reply.json())
        except (httpx.HTTPError, ValueError, EncryptionError):
            return None
        return key if address_of_public_key(key).lower() == address else None

    async def _encrypted_init(
        self,
        transport: Transport,
        session: Session,
        host_key: str,
        previous_token: str | None,
        node_session_id: str | None = None,
        carry: tuple[str, list[dict[str, str]] | None] | None = None,
    ) -> bool:
        """``encrypted_session_init`` and its ack (False: ``ENCRYPTION_NOT_SUPPORTED``).

        ``node_session_id``: a fresh node session on this socket for another
        conversation (``sessions/conversation.py``; same job, same keys); default the
        node session of the session's last socket to this host (``carry``: its id and
        the conversation it held), else the session's id."""
        if node_session_id is None and carry is not None:
            node_session_id, held = carry
        else:
            held = None
        # One key per session signs every init and is its recoveryPublicKey (the host
        # seals the session's S5 checkpoint deltas to it): the user's key, else a key
        # made for the session.
        signing_key = self._signing_key
        recovery = session._bind_recovery_key(
            lambda: (
                RecoveryKey(signing_key.get_secret_value())
                if signing_key is not None
                else RecoveryKey()
            )
        )
        signer = recovery.private_key()
        job = str(session.job_id) if session.job_id is not None else session.id
        data = {
            "jobId": job,
            "modelName": session.model or "",
            "pricePerToken": 0,
            "recoveryPublicKey": "0x" + signer.public_key.format(compressed=True).hex(),
        }
        sealed = seal_session_init(host_key, data, signer)
        frame: dict[str, Any] = {
            "type": "encrypted_session_init",
            "chain_id": session.chain_id,
            "session_id": node_session_id or session.id,
            "job_id": job,
            "payload": sealed.payload,
        }
        if previous_token is not None:
            frame["resume_token"] = previous_token
        await transport.send(json.dumps(frame, separators=(",", ":")))
        async for reply in self._replies(transport, session, "encrypted_session_init's ack"):
            if isinstance(reply, ErrorFrame):
                if reply.code == "ENCRYPTION_NOT_SUPPORTED":
                    return False
                error = ENCRYPTION_ERRORS.get(reply.code or "", DecryptionFailedError)
                raise error(
                    f"host {transport.host_url} could not open the encrypted session init "
                    f"({reply.code}: {reply.text}); is host_public_key this host's key?",
                    host_url=transport.host_url,
                    session_id=session.id,
                )
            if isinstance(reply, SessionInitAck):
                if reply.status != "success":
                    raise ProtocolError(
                        f"host refused encrypted_session_init: {reply.message or reply.status}",
                        host_url=transport.host_url,
                        session_id=session.id,
                    )
                fresh = session._claim_node_session() if node_session_id is None else carry is None

                async def renew() -> bool:
                    sid = new_node_session_id(session.id)
                    return await self._encrypted_init(transport, session, host_key, None, sid)

                transport.encrypt(
                    SessionCipher(sealed.session_key),
                    node_session_id=node_session_id or session.id,
                    fresh=fresh,
                    renew=renew,
                )
                if carry is not None and held is not None:
                    transport.held = held
                return True
        raise AssertionError("unreachable: _replies ends only by raising")  # pragma: no cover

    async def _replies(
        self, transport: Transport, session: Session, what: str
    ) -> AsyncIterator[Any]:
        """The host's frames, until ``ack_timeout`` runs out for all of them together
        (then ``RESPONSE_TIMEOUT`` saying that ``what`` never came)."""
        deadline = time.monotonic() + self.config.ack_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResponseTimeoutError(
                    f"no {what} from {transport.host_url} within {self.config.ack_timeout}s",
                    host_url=transport.host_url,
                    session_id=session.id,
                )
            yield await transport.recv(remaining, what=what)

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
