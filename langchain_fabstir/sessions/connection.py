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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
    EncryptionUnavailableError,
    FabstirError,
    HostDisconnectedError,
    HostIdentityError,
    ModelNotAvailableError,
    ProtocolError,
    ResponseTimeoutError,
    SessionAuthDeniedError,
)
from langchain_fabstir.sessions.conversation import new_node_session_id
from langchain_fabstir.sessions.models import Session, SessionConfig
from langchain_fabstir.sessions.recovery import reconnect
from langchain_fabstir.sessions.sealed import SealedConversation
from langchain_fabstir.sessions.state import SessionState, new_request_id
from langchain_fabstir.sessions.transport import Transport, TransportOptions
from langchain_fabstir.sessions.trust import (
    CHALLENGE_FEATURE,
    HostTrust,
    challenge_key,
    key_address,
)
from langchain_fabstir.wire.encryption import RecoveryKey, SessionCipher, seal_session_init
from langchain_fabstir.wire.frames import ErrorFrame, SessionInit, SessionInitAck

__all__ = ["Connector", "resolve_model"]

log = logging.getLogger(__name__)

Emit = Callable[..., Awaitable[None]]


def resolve_model(
    model: str | None,
    listed: list[str],
    *,
    allow_fallback: bool,
    host_url: str,
    session: Session,
) -> str | None:
    """The model that will serve a request for ``model`` on a host listing ``listed``.

    A host serves a model name it does not know with its default model, silently, so a
    name the host does not list is refused (``MODEL_NOT_AVAILABLE``), or, with
    ``allow_fallback``, replaced by the host's first model, which is then reported.
    Nothing is checked when the host lists nothing (deployed nodes send no list: a
    job's model is checked on chain), for ``"default"``, or for a session of a job.

    >>> s = Session(id="s", host_url="ws://h", model="")
    >>> resolve_model("b", ["a", "b"], allow_fallback=False, host_url="ws://h", session=s)
    'b'
    >>> resolve_model("x", ["a"], allow_fallback=True, host_url="ws://h", session=s)
    'a'
    >>> resolve_model("x", ["a"], allow_fallback=False, host_url="ws://h", session=s)
    Traceback (most recent call last):
    ...
    langchain_fabstir.errors.ModelNotAvailableError: [MODEL_NOT_AVAILABLE] host ws://h ...
    """
    if not listed or not model or model in listed or model == "default":
        return model
    if session.job_id is not None:
        return model  # (a session job's model is the one its host registered on chain)
    if not allow_fallback:
        raise ModelNotAvailableError(
            f"host {host_url} does not serve model {model!r} (it lists "
            f"{', '.join(map(repr, listed[:10]))}); pick one of those, or set "
            "SessionConfig(allow_model_fallback=True) to accept the host's default",
            host_url=host_url,
            session_id=session.id,
            details={"model": model, "models": listed[:10]},
        )
    log.warning("host %s does not serve %r: %r serves", host_url, model, listed[0])
    return listed[0]


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
        recovery_key: RecoveryKey | None = None,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self.user_address = user_address
        self._emit = emit
        self._signing_key = signing_key
        self._recovery_key = recovery_key

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
        # Every host once, and reconnect_attempts retries of a connection cut during
        # session_init shared by all of them (not that many per host).
        used = 0
        spare = self.config.reconnect_attempts

        def count() -> None:
            nonlocal used
            used += 1

        for host in hosts:
            used = 0
            try:
                state.transport = await self.open(state, host, retries=spare, on_try=count)
            except (
                ConnectionFailedError,
                HostDisconnectedError,
                ResponseTimeoutError,
                ProtocolError,
                EncryptionUnavailableError,
                HostIdentityError,
            ) as exc:
                self._record_failure(host, exc)
                last = exc
                spare -= max(0, used - 1)
                continue
            session.host_url = host
            state.alternates = [h for h in hosts if h != host]
            return state.transport
        assert last is not None
        raise last

    async def open(
        self,
        state: SessionState,
        host_url: str,
        *,
        retries: int | None = None,
        on_try: Callable[[], None] | None = None,
    ) -> Transport:
        """Open and initialise a socket to ``host_url`` for this session.

        Opening is idempotent, so a connection cut during the WebSocket handshake or before
        ``session_init_ack`` (``HOST_DISCONNECTED``) is tried again, up to ``retries``
        (default ``reconnect_attempts``) more times with backoff, as any reconnect is
        (``on_try()`` before each try). A host that refuses the connection or never
        answers fails at once (discovery moves on)."""
        more = self.config.reconnect_attempts if retries is None else max(0, retries)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + more),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            retry=retry_if_exception_type(HostDisconnectedError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if on_try is not None:
                    on_try()
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
            state.remember_socket(state.transport, state.sealed)
        try:
            sealed = await self._init(transport, state, state.handover_token(host_url))
        except BaseException:
            await transport.close()
            raise
        state.remember_socket(transport, sealed)
        state.sealed = sealed  # (the encrypted conversation of the socket returned)
        listed = transport.greeting.models
        if not session.model and listed:
            session.model = listed[0]
        try:  # a model the host does not list is refused now, not at the first prompt
            session.model = (
                resolve_model(
                    session.model,
                    listed,
                    allow_fallback=self.config.allow_model_fallback,
                    host_url=host_url,
                    session=session,
                )
                or ""
            )
        except ModelNotAvailableError:
            await transport.close()
            raise
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
    ) -> SealedConversation | None:
        """Encrypted or plaintext init, as ``config.encryption``, the trusted key and the
        host allow (returns the socket's encrypted conversation, ``None``: plaintext).
        The host must be the trusted one (``HOST_IDENTITY_MISMATCH`` before anything is
        sent); a trusted key (the caller's, the chain's, or one proven for the
        paid host's address) makes encryption required: a refusal is an error, never a
        plaintext fallback."""
        session = state.session
        mode = self.config.encryption
        trust = state.trust(transport.host_url)
        trust.check_greeting(transport.greeting, transport.host_url)
        key, trusted = (None, False)
        if mode != "off" or session.encrypted:
            key, trusted = await self._host_key(trust, transport)
        # never a downgrade: required, an encrypted session, or a key from a trusted source
        must = mode == "required" or session.encrypted or (trusted and mode != "off")
        carry = state.node_session(transport.host_url)  # (same host: its history is kept)
        sealed = None
        if key is not None:
            sealed = await self._encrypted_init(
                transport, session, key, previous_token, carry=carry
            )
        if sealed is not None:
            session.encrypted = True
            return sealed
        if must:
            if key is None:
                why = "has no known public key"
            elif trusted:
                why = (
                    "answered ENCRYPTION_NOT_SUPPORTED although its key is known from a "
                    "trusted source (your host_public_key, its on-chain record or its proof): "
                    "a relay or a forged reply"
                )
            else:
                why = "refused encryption"
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
        return None

    async def _host_key(self, trust: HostTrust, transport: Transport) -> tuple[str | None, bool]:
        """The key to seal the init to, and whether it is trusted.

        Trusted: the caller's or the chain's key; else, when the session knows the host's
        address (a paid job's host), the greeting's key or the ``/v1/auth/challenge`` proof,
        only if it hashes to that address. Without either, the host's own word (its greeting
        key hashing to its greeting address, or its proof): used in ``auto``, not trusted."""
        if trust.key is not None:
            return trust.key, True
        greeting = transport.greeting
        if trust.address is not None:
            key = trust.greeting_key(greeting)
            if key is None and CHALLENGE_FEATURE in greeting.features:
                proven = await challenge_key(transport.host_url, timeout=self.config.open_timeout)
                key = proven if key_address(proven) == trust.expected_address() else None
            return key, key is not None
        address = (greeting.host_address or "").lower()
        if not address:
            return None, False
        announced = greeting.host_public_key
        if announced and key_address(announced) == address:
            return announced, False
        if CHALLENGE_FEATURE in greeting.features:
            proven = await challenge_key(transport.host_url, timeout=self.config.open_timeout)
            if key_address(proven) == address:
                return proven, False
        return None, False

    async def _encrypted_init(
        self,
        transport: Transport,
        session: Session,
        host_key: str,
        previous_token: str | None,
        node_session_id: str | None = None,
        carry: tuple[str, list[dict[str, str]] | None] | None = None,
        sealed: SealedConversation | None = None,
    ) -> SealedConversation | None:
        """``encrypted_session_init`` and its ack: the socket's encrypted conversation
        (``sealed`` re-keyed, when given), or ``None`` (``ENCRYPTION_NOT_SUPPORTED``).

        ``node_session_id``: a fresh node session on this socket for another
        conversation (``sessions/conversation.py``; same job, same keys); default the
        node session of the session's last socket to this host (``carry``: its id and
        the conversation it held), else the session's id."""
        if node_session_id is None and carry is not None:
            node_session_id, held = carry
        else:
            held = None
        # One key per session signs every init and is its recoveryPublicKey (the host
        # seals the session's S5 checkpoint deltas to it): the manager's recovery_key
        # (e.g. the SDK's key), else the user's key, else a key made for the session.
        signing_key, chosen = self._signing_key, self._recovery_key
        recovery = session._bind_recovery_key(
            lambda: (
                chosen
                if chosen is not None
                else RecoveryKey(signing_key.get_secret_value())
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
        opened = seal_session_init(host_key, data, signer)
        frame: dict[str, Any] = {
            "type": "encrypted_session_init",
            "chain_id": session.chain_id,
            "session_id": node_session_id or session.id,
            "job_id": job,
            "payload": opened.payload,
        }
        if previous_token is not None:
            frame["resume_token"] = previous_token
        await transport.send(json.dumps(frame, separators=(",", ":")))
        async for reply in self._replies(transport, session, "encrypted_session_init's ack"):
            if isinstance(reply, ErrorFrame):
                if reply.code == "ENCRYPTION_NOT_SUPPORTED":
                    return None
                if reply.code == "SESSION_AUTH_DENIED":
                    raise SessionAuthDeniedError(
                        f"host {transport.host_url} denied this client the session of job "
                        f"{job} ({reply.text[:300]}): the job was paid from a vault that has "
                        "not authorised your address; ask the vault's operator to authorise "
                        "it, or use a job you paid yourself",
                        host_url=transport.host_url,
                        session_id=session.id,
                        details={"host_code": reply.code},
                    )
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

                cipher = SessionCipher(opened.session_key)
                name = node_session_id or session.id
                if sealed is not None:
                    sealed.rekey(cipher, node_session_id=name, fresh=fresh)
                    return sealed
                conversation = SealedConversation(
                    cipher,
                    host_url=transport.host_url,
                    features=transport.features,
                    node_session_id=name,
                    fresh=fresh,
                )

                async def renew(target: SealedConversation = conversation) -> object:
                    sid = new_node_session_id(session.id)
                    return await self._encrypted_init(
                        transport, session, host_key, None, sid, sealed=target
                    )

                conversation.renew = renew
                if carry is not None and held is not None:
                    conversation.held = held
                return conversation
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
            state.remember_socket(state.transport, state.sealed)
            state.transport = None
            state.sealed = None

    async def reconnect(
        self,
        state: SessionState,
        cause: BaseException,
        attempts: int | None = None,
        on_try: Callable[[], None] | None = None,
        rotate: int = 0,
    ) -> Transport:
        """A new socket for a broken answer: the same host first, then alternates (a paid
        session has none: its job is bound to its host). ``attempts`` tries at most
        (default ``reconnect_attempts``), ``on_try()`` before each (the answer's budget,
        see :class:`~langchain_fabstir.sessions.recovery.AnswerRecovery`); ``rotate``: how
        many hosts of that order to try last (the ones that just brought nothing)."""
        session = state.session
        hosts = [session.host_url, *[h for h in state.alternates if h != session.host_url]]
        shift = rotate % len(hosts)
        hosts = hosts[shift:] + hosts[:shift]

        async def connect(host: str) -> Transport:
            return await self._open_once(state, host)  # reconnect() retries itself

        tries = self.config.reconnect_attempts if attempts is None else attempts
        try:
            transport = await reconnect(
                connect, hosts, tries, on_failure=self._record_failure, on_try=on_try
            )
        except FabstirError as exc:
            tried: Any = exc.details.get("attempts", "?")
            raise HostDisconnectedError(
                f"lost {session.host_url} mid-answer ({cause}) and could not reconnect after "
                f"{tried} attempts: {exc}",
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
