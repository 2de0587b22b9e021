"""``SessionManager``: the seed's Session Manager API, async-first and Pythonic.

A session is a conversation with one host. Real hosts keep no history, so every prompt
carries the conversation as ``conversation_context``; the manager keeps the history,
counts tokens, enforces timeouts and maps every failure to a typed error with a stable
code (see :mod:`langchain_fabstir.errors`).

Quick start, against a reference host running locally::

    import asyncio
    from langchain_fabstir import SessionManager

    async def main():
        async with SessionManager(host_url="http://127.0.0.1:8080") as manager:
            session = await manager.create_session(system_prompt="Be brief.")
            async for token in manager.stream_prompt(session.id, "What are React hooks?"):
                print(token, end="", flush=True)
            summary = await manager.end_session(session.id)
            print(summary.final_token_count)

    asyncio.run(main())

A runnable version (doctest) with the in-process echo host:

>>> import asyncio
>>> from langchain_fabstir.host import EchoEngine, ReferenceHost
>>> async def demo():
...     async with ReferenceHost(EchoEngine()) as host:
...         async with SessionManager(host_url=host.url) as manager:
...             s = await manager.create_session(model="echo")
...             text = "".join([t async for t in manager.stream_prompt(s.id, "hi there")])
...             history = await manager.get_conversation_history(s.id)
...             return text, [m.role for m in history]
>>> asyncio.run(demo())
('Echo: hi there', ['user', 'assistant'])
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from pydantic import SecretStr

from langchain_fabstir.checkpoints import CheckpointProof, CheckpointTracker
from langchain_fabstir.discovery import HostDiscovery, SelectionPolicy
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    HostDisconnectedError,
    HostError,
    InvalidRequestError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    SessionNotFoundError,
    SessionTimeoutError,
)
from langchain_fabstir.models import (
    Message,
    Session,
    SessionConfig,
    SessionSummary,
    StreamResult,
    utcnow,
)
from langchain_fabstir.persistence import S5ConversationStore
from langchain_fabstir.protocol import (
    InferenceRequest,
    SessionInit,
    SessionInitAck,
)
from langchain_fabstir.recovery import (
    RESUMABLE,
    continuation_payload,
    fit_context,
    reconnect,
    resume_payload,
    resume_token,
)
from langchain_fabstir.session_checkpoints import new_tracker, settle_proof
from langchain_fabstir.session_storage import SessionStorageMixin
from langchain_fabstir.stream import PromptStream
from langchain_fabstir.transport import Transport, TransportOptions

__all__ = ["SessionManager"]

log = logging.getLogger(__name__)

EventHandler = Callable[..., Any | Awaitable[Any]]

_EXTENSION_FIELDS = {
    "seed": "seed",
    "tools": "tools",
    "tool_choice": "tools",
    "parallel_tool_calls": "tools",
    "checkpoint": "checkpoints",
    "response_format": "response_format",
}
"""Request fields this client sends only to hosts that announced the feature."""


def _request_id() -> str:
    """An id in the SDK's shape, ``<epoch ms>-<suffix>``, with a random suffix: hosts key
    resumable answers by it, so it must not be guessable or repeat across processes."""
    return f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:16]}"


class _SessionState:
    """What the manager keeps per session (the public part is ``session``)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.messages: list[Message] = []
        self.transport: Transport | None = None
        self.lock = asyncio.Lock()
        self.proofs: list[CheckpointProof] = []
        self.tracker: CheckpointTracker | None = None
        self.pending_request: InferenceRequest | None = None
        self.alternates: list[str] = []
        self.unsaved = False  # history not yet written to storage as a whole
        self.last_used = 0.0


class SessionManager(SessionStorageMixin):
    """Sessions with Fabstir hosts: create, stream, history, checkpoints, resume, end.

    Args:
        config: a :class:`~langchain_fabstir.models.SessionConfig` (defaults as the seed).
        host_url: the default host (``http://``, ``https://``, ``ws://`` or ``wss://``
            base URL). ``FABSTIR_HOST_URL`` is used when neither this nor a per-session
            host is given.
        user_address: the user's wallet address, sent in ``session_init``.
        chain_id: the chain sent in ``session_init`` (default Base Sepolia, 84532).
        private_key: the user's secp256k1 key (hex), used to sign checkpoint proofs.
            Defaults to ``FABSTIR_PRIVATE_KEY``. Kept as a ``SecretStr``.
        hosts: hosts to discover from (URLs or ``{address, url, models, price}``); also
            read from ``FABSTIR_HOSTS``. ``create_session()`` without a host then picks
            one (probing ``/health``, ``/v1/models``, ``/v1/version``) and fails over
            to the others.
        discovery: a configured :class:`~langchain_fabstir.discovery.HostDiscovery`
            (registry file or URL, policy weights, circuit breaker settings).
        storage: an :class:`~langchain_fabstir.persistence.S5ConversationStore`; with
            ``config.persistence_enabled`` every conversation is kept on S5 (see
            :mod:`langchain_fabstir.session_storage`).

    Events (:meth:`on`): ``"checkpoint"`` (a :class:`CheckpointProof`),
    ``"checkpoint_failed"`` (a :class:`~langchain_fabstir.errors.CheckpointError`),
    ``"session_created"``, ``"session_ended"``.
    """

    def __init__(
        self,
        config: SessionConfig | None = None,
        *,
        host_url: str | None = None,
        user_address: str | None = None,
        chain_id: int = 84532,
        private_key: str | SecretStr | None = None,
        hosts: Sequence[str | dict[str, Any]] | None = None,
        discovery: HostDiscovery | None = None,
        storage: S5ConversationStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or SessionConfig()
        self._clock = clock
        key = os.environ.get("FABSTIR_PRIVATE_KEY") if private_key is None else private_key
        self._private_key: SecretStr | None = (
            key if isinstance(key, SecretStr) else SecretStr(key) if key else None
        )
        self.default_host_url = host_url or os.environ.get("FABSTIR_HOST_URL")
        if discovery is None and (hosts or os.environ.get("FABSTIR_HOSTS")):
            discovery = HostDiscovery(list(hosts) if hosts else None)
        self.discovery = discovery
        self.storage = storage
        self.user_address = user_address
        self.chain_id = chain_id
        self._sessions: dict[str, _SessionState] = {}
        self._closing = False
        self._handlers: dict[str, list[EventHandler]] = {}
        self._initialized = False

    # --- lifecycle ------------------------------------------------------------------

    async def initialize(self) -> SessionManager:
        """Prepare the manager (idempotent). Called for you by ``async with``."""
        self._initialized = True
        self._closing = False
        return self

    async def aclose(self) -> None:
        """Close every open connection (sessions stay in memory until ended). Streams in
        flight end with ``HOST_DISCONNECTED``; nothing reconnects after this."""
        self._closing = True
        for state in list(self._sessions.values()):
            if state.transport is not None:
                await state.transport.close()
                state.transport = None

    async def __aenter__(self) -> SessionManager:
        return await self.initialize()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- events ---------------------------------------------------------------------

    def on(self, event: str, handler: EventHandler | None = None) -> Any:
        """Register ``handler`` (sync or async) for ``event`` (e.g. ``"checkpoint"``).

        Without ``handler`` it is a decorator: ``@manager.on("checkpoint")``. Returns the
        handler. A handler that raises is logged and does not stop the stream.
        """
        if handler is None:

            def register(fn: EventHandler) -> EventHandler:
                self._handlers.setdefault(event, []).append(fn)
                return fn

            return register
        self._handlers.setdefault(event, []).append(handler)
        return handler

    def off(self, event: str, handler: EventHandler) -> None:
        """Unregister a handler added with :meth:`on`."""
        handlers = self._handlers.get(event, [])
        if handler in handlers:
            handlers.remove(handler)

    async def _emit(self, event: str, *args: Any) -> None:
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%r handler %r failed", event, handler)

    # --- sessions -------------------------------------------------------------------

    async def create_session(
        self,
        *,
        model: str | None = None,
        host_url: str | None = None,
        job_id: int | None = None,
        initial_context: str | Sequence[Message | dict[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        system_prompt: str | None = None,
        session_id: str | None = None,
        connect: bool = True,
        policy: SelectionPolicy | str = "auto",
    ) -> Session:
        """Create a session and connect to its host (the seed's ``createSession``).

        ``initial_context`` is either text (kept as a system message after the system
        prompt, as the seed's multi-model example uses it) or earlier messages.
        With ``connect=False`` the socket opens on the first prompt. Without a host (and
        no default), discovery picks one by ``policy`` (``auto``, ``fastest``,
        ``cheapest``) among those serving ``model``, failing over in that order.
        """
        url = host_url or self.default_host_url
        alternates: list[str] = []
        if not url and self.discovery is not None:
            candidates = await self.discovery.candidates(model=model, policy=policy)
            if not candidates:
                await self.discovery.select(model=model, policy=policy)  # raises, with reasons
            url, alternates = candidates[0].url, [c.url for c in candidates[1:]]
        if not url:
            raise InvalidRequestError(
                "no host: pass host_url= to create_session or SessionManager, "
                "set FABSTIR_HOST_URL, or give hosts= / FABSTIR_HOSTS for discovery"
            )
        sid = session_id or (str(job_id) if job_id is not None else uuid.uuid4().hex)
        if sid in self._sessions and self._sessions[sid].session.status != "ended":
            raise InvalidRequestError(f"session {sid} already exists", session_id=sid)
        session = Session(
            id=sid,
            host_url=url,
            model=model or "",
            job_id=job_id,
            chain_id=self.chain_id,
            temperature=temperature,
            max_tokens=max_tokens,
            system_prompt=system_prompt,
            conversation_id=sid,
        )
        state = _SessionState(session)
        state.alternates = alternates
        state.last_used = self._clock()
        if system_prompt:
            state.messages.append(Message(role="system", content=system_prompt))
        state.messages.extend(_context_messages(initial_context))
        state.tracker = new_tracker(
            sid,
            self.config.checkpoint_interval,
            [{"role": m.role, "content": m.content} for m in state.messages],
            self._private_key,
        )
        self._sessions[sid] = state
        if self._persisting() and self.storage is not None:
            session.conversation_id = self.storage.conversation_path(sid)
        if connect:
            try:
                await self._first_connection(state)
            except BaseException:
                del self._sessions[sid]
                raise
        await self._persist(state, state.messages, replace=True)
        await self._emit("session_created", session)
        return session

    def get_session(self, session_id: str) -> Session:
        """The session with this id (raises ``SESSION_NOT_FOUND``)."""
        return self._state(session_id).session

    @property
    def sessions(self) -> list[Session]:
        return [s.session for s in self._sessions.values()]

    def _state(self, session_id: str, *, active: bool = False) -> _SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            raise SessionNotFoundError(f"no session {session_id!r}", session_id=session_id)
        if active:
            if state.session.status == "ended":
                raise SessionNotFoundError(
                    f"session {session_id!r} has ended", session_id=session_id
                )
            idle = self._clock() - state.last_used
            if idle > self.config.session_timeout:
                state.session.status = "paused"
                raise SessionTimeoutError(
                    f"session {session_id!r} was idle for {idle:.0f}s (session_timeout is "
                    f"{self.config.session_timeout:.0f}s): create or resume a session",
                    session_id=session_id,
                    host_url=state.session.host_url,
                )
        return state

    async def _first_connection(self, state: _SessionState) -> Transport:
        """Connect a new session: its host, or (with discovery) the next candidates."""
        if not state.alternates:
            return await self._connection(state)
        session = state.session
        hosts = [session.host_url, *state.alternates]
        last: FabstirError | None = None
        for host in hosts:
            try:
                state.transport = await self._open(state, host)
            except (ConnectionFailedError, ResponseTimeoutError, ProtocolError) as exc:
                if self.discovery is not None:
                    self.discovery.record_failure(host, exc)
                last = exc
                continue
            session.host_url = host
            state.alternates = [h for h in hosts if h != host]
            return state.transport
        assert last is not None
        raise last

    async def _connection(self, state: _SessionState) -> Transport:
        """The session's socket, opened and initialised if needed."""
        transport = state.transport
        if transport is not None and not transport.closed:
            return transport
        state.transport = await self._open(state, state.session.host_url)
        return state.transport

    async def _open(self, state: _SessionState, host_url: str) -> Transport:
        """Open and initialise a socket to ``host_url`` for this session."""
        session = state.session
        options = TransportOptions(
            open_timeout=self.config.open_timeout,
            compression=self.config.compression_enabled,
            max_frame_size=self.config.max_frame_size,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_interval,
        )
        transport = await Transport.open(host_url, options)
        try:
            await self._session_init(transport, session)
        except BaseException:
            await transport.close()
            raise
        if not session.model and transport.greeting.models:
            session.model = transport.greeting.models[0]
        if self.discovery is not None:
            self.discovery.record_success(host_url)
        return transport

    async def _session_init(self, transport: Transport, session: Session) -> None:
        rid = _request_id()
        await transport.send(
            SessionInit(
                chain_id=session.chain_id,
                session_id=session.id,
                job_id=session.job_id,
                user_address=self.user_address,
                id=rid,
            )
        )
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

    # --- prompts --------------------------------------------------------------------

    def _context(self, state: _SessionState) -> list[dict[str, str]]:
        """The history as ``conversation_context`` (see :func:`fit_context`)."""
        return fit_context(
            [{"role": m.role, "content": m.content} for m in state.messages],
            self.config.max_context_messages,
        )

    def build_payload(
        self,
        session: Session,
        features: Sequence[str],
        prompt: str,
        context: list[dict[str, str]],
        request_id: str,
        **params: Any,
    ) -> dict[str, Any]:
        """The ``prompt`` frame for this prompt, as a dict (see PROTOCOL.md).

        Extension fields (``seed``, ``tools``, ``response_format``...) are included only
        when the host announced the matching feature.
        """
        request: dict[str, Any] = {
            "model": params.pop("model", None) or session.model or "default",
            "prompt": prompt,
            "max_tokens": params.pop("max_tokens", None)
            or session.max_tokens
            or self.config.default_max_tokens,
            "temperature": _first_not_none(
                params.pop("temperature", None),
                session.temperature,
                self.config.default_temperature,
            ),
            "stream": True,
            "request_id": request_id,
            "conversation_context": context,
            "session_id": session.id,
        }
        if session.job_id is not None:
            request["job_id"] = session.job_id
        for key, value in params.items():
            if value is None:
                continue
            feature = _EXTENSION_FIELDS.get(key)
            if feature is not None and feature not in features:
                continue
            request[key] = value
        payload: dict[str, Any] = {
            "type": "prompt",
            "chain_id": session.chain_id,
            "prompt": prompt,
            "request": request,
            "id": request_id,
        }
        if session.job_id is not None:
            payload["jobId"] = str(session.job_id)
        return payload

    async def open_stream(
        self,
        session_id: str,
        prompt: str,
        *,
        context: list[dict[str, str]] | None = None,
        record: bool = True,
        **params: Any,
    ) -> AsyncGenerator[tuple[PromptStream, str], None]:
        """Low-level streaming used by :meth:`stream_prompt` and ``ChatFabstir``.

        Yields ``(stream, text)`` pairs; ``stream.result`` describes how the answer ended.
        ``context`` replaces the session's own history for this prompt (and with
        ``record=False`` the exchange is not added to the history).
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("the prompt is empty", session_id=session_id)
        state = self._state(session_id, active=True)
        session = state.session
        async with state.lock:
            state.last_used = self._clock()
            transport = await self._connection(state)
            rid = _request_id()
            ctx = self._context(state) if context is None else context
            if context is None and state.tracker is not None:
                tracker, scope = state.tracker, "session"
            else:
                interval = self.config.checkpoint_interval
                tracker = new_tracker(session.id, interval, ctx, self._private_key)
                scope = "request"
            params.setdefault(
                "checkpoint", {"interval": self.config.checkpoint_interval, "scope": scope}
            )
            payload = self.build_payload(session, transport.features, prompt, ctx, rid, **params)
            started = False

            def feed(text: str, n: int) -> CheckpointProof | None:
                # The exchange enters the hash chain with its first piece of answer, as
                # it enters the history (a prompt that got no answer is in neither).
                nonlocal started
                if not started:
                    started = True
                    tracker.add_message("user", prompt)
                    tracker.add_message("assistant")
                return tracker.on_tokens(text, n)

            stream = PromptStream(
                transport,
                payload,
                rid,
                first_timeout=self.config.first_token_timeout,
                chunk_timeout=self.config.chunk_timeout,
                session_id=session.id,
                model=payload["request"]["model"],
                on_tokens=feed,
            )
            user_msg = Message(role="user", content=prompt)
            recovery = _Recovery(payload)
            try:
                while True:
                    try:
                        async with contextlib.aclosing(stream.run()) as pieces:
                            async for text in pieces:
                                if stream.new_proofs:
                                    stream.chunk_proofs = [
                                        await self._settle(state, stream, p)
                                        for p in stream.new_proofs
                                    ]
                                    stream.new_proofs.clear()
                                yield stream, text
                                if stream.chunk_proofs:
                                    stream.chunk_proofs = []
                        break
                    except FabstirError as exc:
                        await self._recover(state, stream, payload, exc, recovery)
                if started:
                    last = tracker.end_message()
                    if last is not None:
                        stream.end_proofs.append(await self._settle(state, stream, last))
            except FabstirError:
                # A broken or timed-out answer leaves the socket in an unknown state.
                if stream.transport.closed or not stream.finished:
                    await self._drop_connection(state)
                raise
            finally:
                if started and not stream.finished:
                    tracker.end_message()  # an interrupted answer still closes its message
                recorded = self._account(state, stream.result, user_msg, stream, record)
                if recorded:
                    await self._persist(state, recorded)

    async def _settle(
        self, state: _SessionState, stream: PromptStream, proof: CheckpointProof
    ) -> CheckpointProof:
        transport = stream.transport
        announced = stream.host_cosign and "checkpoints" in transport.features
        settled = await settle_proof(
            proof,
            host_checkpoints=stream.host_checkpoints,
            host_address=transport.greeting.host_address if announced else None,
            signing_key=self._private_key,
            require_verified=self.config.require_verified_checkpoints,
            emit=self._emit,
            host_url=transport.host_url,
        )
        state.proofs.append(settled)
        state.session.checkpoint_count += 1
        return settled

    async def create_checkpoint(self, session_id: str) -> CheckpointProof:
        """A checkpoint proof of the conversation as it is now (seed: ``createCheckpoint``).

        Between prompts it covers everything since the previous checkpoint (an empty
        delta when nothing changed). Signed with the user's key when one is configured.
        """
        state = self._state(session_id)
        async with state.lock:
            if state.tracker is None:
                raise InvalidRequestError(
                    "this session keeps no checkpoints", session_id=session_id
                )
            proof = state.tracker.checkpoint()
            state.proofs.append(proof)
            state.session.checkpoint_count += 1
            await self._emit("checkpoint", proof)
            return proof

    def get_checkpoint_proofs(self, session_id: str) -> list[CheckpointProof]:
        """Every proof of the session so far, in order."""
        return list(self._state(session_id).proofs)

    def _account(
        self,
        state: _SessionState,
        result: StreamResult,
        user_msg: Message,
        stream: PromptStream,
        record: bool,
    ) -> list[Message]:
        """Count the answer's tokens; add the exchange to the history (when recorded and
        answered). Returns the messages added."""
        session = state.session
        now = utcnow()
        session.last_activity = now
        state.last_used = self._clock()
        if result.usage is not None:
            session.token_count += result.usage.total_tokens
        else:
            session.token_count += result.tokens_used or stream.chunks_received
        if not (record and stream.pieces):
            return []
        answer = Message(
            role="assistant",
            content=stream.text,
            token_count=result.output_tokens or stream.chunks_received,
            metadata={"finish_reason": result.finish_reason} if result.finish_reason else {},
        )
        state.messages += [user_msg, answer]
        return [user_msg, answer]

    async def _drop_connection(
        self, state: _SessionState, failed: BaseException | None = None
    ) -> None:
        if state.transport is not None:
            if failed is not None and self.discovery is not None:
                self.discovery.record_failure(state.transport.host_url, failed)
            if failed is not None:
                state.transport.abort()
            await state.transport.close()
            state.transport = None

    async def _recover(
        self,
        state: _SessionState,
        stream: PromptStream,
        payload: dict[str, Any],
        exc: FabstirError,
        recovery: _Recovery,
    ) -> None:
        """Make a broken answer go on, or re-raise ``exc``.

        - rate limited before any text: wait as long as the host asked, if that is at most
          ``max_retry_after``, and send again (a longer wait is the caller's decision);
        - the host lost an answer it was asked to resume: continue it as any host would;
        - the socket dropped, stalled or sent garbage mid-answer: reconnect (same host,
          then alternates) and resume exactly where the client stopped (hosts with the
          ``resume`` extension) or ask for a continuation (any other host). Gives up
          after ``reconnect_attempts`` drops in a row without a new token, or after
          ``max_resumes`` resumes of one answer.
        """
        config = self.config
        if isinstance(exc, RateLimitedError):
            wait = 1.0 if exc.retry_after is None else exc.retry_after
            if (
                stream.pieces
                or wait > config.max_retry_after
                or recovery.rate_waits >= config.reconnect_attempts
            ):
                raise exc
            recovery.rate_waits += 1
            await asyncio.sleep(wait)
            stream.reattach(stream.transport, payload)
            return
        if isinstance(exc, HostError) and exc.details.get("host_code") == "RESUME_NOT_FOUND":
            if stream.chunks_received == recovery.segment_start:
                # Nothing of this request arrived: send it again as it was.
                stream.reattach(stream.transport, recovery.segment_payload)
            else:
                self._continue_elsewhere(stream, stream.transport, payload, recovery)
            return
        if not isinstance(exc, RESUMABLE) or stream.finished or self._closing:
            raise exc
        if stream.chunks_received > recovery.progress_mark:
            recovery.stalled_drops = 0
        recovery.stalled_drops += 1
        recovery.progress_mark = stream.chunks_received
        recovery.resumes += 1
        if (
            recovery.stalled_drops > config.reconnect_attempts
            or recovery.resumes > config.max_resumes
        ):
            exc.details["attempts"] = recovery.resumes - 1
            raise exc
        await self._drop_connection(state, failed=exc)
        transport = await self._reconnect(state, exc)
        received = stream.chunks_received - recovery.segment_start
        if "resume" in transport.features:
            # Offsets count from the start of the request being resumed (the prompt, or
            # the latest continuation request).
            token = resume_token(stream.transport, transport)
            again = resume_payload(recovery.segment_payload, stream.request_id, received, token)
            stream.reattach(transport, again, mode="exact")
        elif received == 0:
            stream.reattach(transport, recovery.segment_payload)  # nothing arrived: resend
        else:
            self._continue_elsewhere(stream, transport, payload, recovery)

    def _continue_elsewhere(
        self,
        stream: PromptStream,
        transport: Transport,
        payload: dict[str, Any],
        recovery: _Recovery,
    ) -> None:
        """Ask the host to continue the partial answer (a new request segment)."""
        cont = continuation_payload(
            payload, stream.text, stream.chunks_received, self.config.max_context_messages
        )
        recovery.segment_payload, recovery.segment_start = cont, stream.chunks_received
        stream.reattach(transport, cont, mode="continuation")

    async def _reconnect(self, state: _SessionState, cause: BaseException) -> Transport:
        """A new socket for a broken answer: the same host first, then alternates."""
        session = state.session
        hosts = [session.host_url, *[h for h in state.alternates if h != session.host_url]]

        async def connect(host: str) -> Transport:
            return await self._open(state, host)

        def failed(host: str, exc: BaseException) -> None:
            if self.discovery is not None:
                self.discovery.record_failure(host, exc)

        try:
            transport = await reconnect(
                connect, hosts, self.config.reconnect_attempts, on_failure=failed
            )
        except FabstirError as exc:
            raise HostDisconnectedError(
                f"lost {session.host_url} mid-answer ({cause}) and could not reconnect after "
                f"{exc.details.get('attempts', '?')} attempts: {exc}",
                host_url=session.host_url,
                session_id=session.id,
                details={"attempts": exc.details.get("attempts"), "cause": str(cause)},
            ) from exc
        if transport.host_url != session.host_url:
            await self._emit("failover", session, session.host_url, transport.host_url)
            session.host_url = transport.host_url
        state.transport = transport
        return transport

    async def stream_prompt(
        self, session_id: str, prompt: str, **params: Any
    ) -> AsyncGenerator[str, None]:
        """Send a prompt and yield the answer's text as it arrives (seed: ``streamPrompt``).

        ``params`` override the session's ``model``, ``max_tokens``, ``temperature`` for
        this prompt (``seed`` and other extensions are sent to hosts that announce them).
        Breaking out of the loop sends ``stream_cancel`` to the host.
        """
        async with contextlib.aclosing(self.open_stream(session_id, prompt, **params)) as it:
            async for _stream, text in it:
                yield text

    async def prompt(self, session_id: str, prompt: str, **params: Any) -> StreamResult:
        """Send a prompt and wait for the whole answer (``result.text``, ``result.usage``)."""
        last: PromptStream | None = None
        async with contextlib.aclosing(self.open_stream(session_id, prompt, **params)) as it:
            async for stream, _text in it:
                last = stream
        return last.result if last is not None else StreamResult(session_id=session_id)

    async def buffered_stream(
        self, session_id: str, prompt: str, buffer_size: int = 10
    ) -> AsyncGenerator[str, None]:
        """Like :meth:`stream_prompt`, but yields ``buffer_size`` tokens at a time."""
        if buffer_size < 1:
            raise InvalidRequestError("buffer_size must be at least 1")
        buffer: list[str] = []
        async with contextlib.aclosing(self.stream_prompt(session_id, prompt)) as it:
            async for token in it:
                buffer.append(token)
                if len(buffer) >= buffer_size:
                    yield "".join(buffer)
                    buffer.clear()
        if buffer:
            yield "".join(buffer)

    async def send_inference_request(
        self, session_id: str, request: dict[str, Any] | InferenceRequest
    ) -> str:
        """Queue a request (the seed's ``sendInferenceRequest``); read it with
        :meth:`stream_response`. Accepts ``{"type": "inference", "request": {...}}``
        or the request body itself. Returns the request id."""
        state = self._state(session_id, active=True)
        body: Any = request
        if isinstance(body, dict) and "request" in body and isinstance(body["request"], dict):
            body = body["request"]
        if isinstance(body, dict):
            merged = {"model": state.session.model or "default", "max_tokens": 500, **body}
            try:
                body = InferenceRequest.model_validate(merged)
            except ValueError as exc:
                raise InvalidRequestError(
                    f"invalid inference request: {exc}", session_id=session_id
                ) from None
        state.pending_request = body
        return body.request_id or _request_id()

    async def stream_response(self, session_id: str) -> AsyncGenerator[str, None]:
        """Stream the answer to the request queued by :meth:`send_inference_request`."""
        state = self._state(session_id, active=True)
        req = state.pending_request
        if req is None:
            raise InvalidRequestError(
                "no request queued: call send_inference_request first", session_id=session_id
            )
        state.pending_request = None
        params: dict[str, Any] = {
            "model": req.model,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        }
        async with contextlib.aclosing(self.stream_prompt(session_id, req.prompt, **params)) as it:
            async for token in it:
                yield token

    async def get_conversation_history(self, session_id: str) -> list[Message]:
        """The conversation so far, oldest first (seed: ``getConversationHistory``).

        A session this manager does not hold is read from S5 storage (any process or
        device with the same seed phrase sees the same conversation).
        """
        state = self._sessions.get(session_id)
        if state is not None:
            return list(state.messages)
        stored = await self._stored_history(session_id)
        if stored is None:
            raise SessionNotFoundError(f"no session {session_id!r}", session_id=session_id)
        return stored

    async def end_session(self, session_id: str) -> SessionSummary:
        """End the session, close its socket and summarise it (seed: ``endSession``)."""
        state = self._state(session_id)
        async with state.lock:
            await self._drop_connection(state)
            state.session.status = "ended"
            await self._persist(state, [])
        summary = SessionSummary(
            final_token_count=state.session.token_count,
            checkpoint_proofs=list(state.proofs),
            conversation_id=state.session.conversation_id,
        )
        await self._emit("session_ended", state.session, summary)
        return summary


class _Recovery:
    """Counters of one answer's recoveries."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.segment_payload = payload  # the request being streamed now
        self.segment_start = 0  # tokens of the answer before it
        self.rate_waits = 0
        self.resumes = 0
        self.stalled_drops = 0  # drops in a row with no new token in between
        self.progress_mark = 0


def _first_not_none(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _context_messages(
    initial: str | Sequence[Message | dict[str, Any]] | None,
) -> list[Message]:
    if initial is None:
        return []
    if isinstance(initial, str):
        return [Message(role="system", content=initial)] if initial else []
    out: list[Message] = []
    for item in initial:
        out.append(item if isinstance(item, Message) else Message.model_validate(item))
    return out
