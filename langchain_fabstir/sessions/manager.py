"""``SessionManager``: the seed's Session Manager API, async-first and Pythonic.

A session is a conversation with one host. The manager keeps the history and carries it
the way the host reads it: as ``conversation_context`` in plaintext mode (the system
messages, then the newest others, 10 in all), and in encrypted mode, where a node keeps
its own history per session id and has no system-prompt field, as prompt text
(:mod:`langchain_fabstir.sessions.conversation`). It counts tokens, enforces timeouts
and maps every failure to a typed error with a stable code (see
:mod:`langchain_fabstir.errors`).

Details and examples: :class:`SessionManager`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import SecretStr

from langchain_fabstir._json import check_utf8
from langchain_fabstir.chain.config import ChainConfig
from langchain_fabstir.checkpoints import CheckpointProof, CheckpointTracker
from langchain_fabstir.checkpoints.published import HostCheckpoints, fetch_host_checkpoints
from langchain_fabstir.discovery import HostDiscovery, HostInfo, SelectionPolicy
from langchain_fabstir.errors import (
    ChainError,
    CheckpointError,
    DiffusionUnavailableError,
    EncryptionUnavailableError,
    FabstirError,
    ImageInputsNotSupportedError,
    InvalidRequestError,
    PlaintextFramesRefusedError,
    SessionNotFoundError,
    SessionTimeoutError,
)
from langchain_fabstir.s5.client import S5PortalClient
from langchain_fabstir.sessions.answer import ImageAnswer, Proof, Resumed, Text
from langchain_fabstir.sessions.budget import SpendBudget
from langchain_fabstir.sessions.connection import Connector, resolve_model
from langchain_fabstir.sessions.models import (
    IMAGE_SIZES,
    MAX_IMAGE_PROMPT_CHARS,
    GeneratedImage,
    Message,
    Session,
    SessionConfig,
    SessionSummary,
    StreamResult,
    utcnow,
)
from langchain_fabstir.sessions.payments import PaidChoice, SessionPayments
from langchain_fabstir.sessions.persistence import SessionPersistence
from langchain_fabstir.sessions.proofs import new_tracker, settle_proof
from langchain_fabstir.sessions.recovery import AnswerRecovery, fit_context
from langchain_fabstir.sessions.state import SessionState, new_request_id
from langchain_fabstir.sessions.stream import PromptStream
from langchain_fabstir.sessions.transport import Transport
from langchain_fabstir.sessions.trust import job_trust, trust_discovered
from langchain_fabstir.sessions.vectors import (
    VectorFrames,
    VectorSearchResult,
    VectorUploadResult,
)
from langchain_fabstir.storage.conversations import S5ConversationStore
from langchain_fabstir.wire.encryption import RecoveryKey, parse_public_key
from langchain_fabstir.wire.frames import InferenceRequest, prompt_payload
from langchain_fabstir.wire.images import (
    ImageInput,
    ImageLike,
    check_message_size,
    host_vision,
    to_images,
)

if TYPE_CHECKING:
    from langchain_fabstir.chain.client import ChainClient
    from langchain_fabstir.chain.funds import DelegateStatus, DepositBalance
    from langchain_fabstir.chain.marketplace import Settlement
    from langchain_fabstir.sessions.audit import ChainRecovery, JobAudit
    from langchain_fabstir.wire.encryption import RecoveryKey


__all__ = ["SessionManager"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

EventHandler = Callable[..., Any | Awaitable[Any]]


def _recovery_key(key: RecoveryKey | SecretStr | str | None) -> RecoveryKey | None:
    if key is None or isinstance(key, RecoveryKey):
        return key
    return RecoveryKey(key.get_secret_value() if isinstance(key, SecretStr) else key)


class SessionManager:
    """Sessions with Fabstir hosts: create, stream, history, checkpoints, resume, end.

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

    Args:
        config: a :class:`~langchain_fabstir.sessions.models.SessionConfig` (defaults as the seed).
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
        storage: an :class:`~langchain_fabstir.storage.conversations.S5ConversationStore`; with
            ``config.persistence_enabled`` every conversation is kept on S5 (see
            :mod:`langchain_fabstir.sessions.persistence`).
        chain: a :class:`~langchain_fabstir.chain.ChainConfig` (e.g. ``BASE_SEPOLIA``, or
            ``ChainConfig.from_env()``) or a :class:`~langchain_fabstir.chain.ChainClient`:
            sessions are then paid on chain. ``create_session(model=..., deposit=...)`` finds
            the hosts registered for the model, pays the cheapest acceptable one (see
            :mod:`langchain_fabstir.sessions.payments`), and opens the socket with the job id,
            encrypted when the host's record has a public key. Needs ``private_key`` and the
            ``chain`` extra (web3.py). ``user_address`` and ``chain_id`` follow from them.
        recovery_key: the key of encrypted sessions (it signs ``encrypted_session_init`` and
            is the ``recoveryPublicKey`` hosts seal checkpoint deltas to; see
            :attr:`Session.recovery_key`): a :class:`~langchain_fabstir.wire.encryption.RecoveryKey`
            or a private key (``SecretStr`` or hex). Default: ``private_key``, else a key made
            per session. To use the key the TypeScript SDK uses for the same user (so either
            opens the other's deltas): ``recovery_key=sdk_encryption_key(sdk_seed_phrase(key))``
            (:mod:`langchain_fabstir.s5.sdk`).
        max_spend: ``{"ETH": Decimal, "USDC": Decimal}``, the most this manager commits in
            session deposits over its life (a token not named: nothing); a payment that
            would cross it is ``BUDGET_EXCEEDED`` before anything is sent. Or a
            :class:`~langchain_fabstir.sessions.budget.SpendBudget`, shared by every manager
            given it (one budget for several managers or event loops).
        spend_ledger: a file that keeps ``max_spend``'s count across restarts (and across
            processes sharing it); each payment is written to it atomically before its
            transaction is sent.
        payer: with ``private_key`` a delegate's key, the payer's address: sessions are
            created with ``createSessionForModelAsDelegate`` and paid from the payer's USDC
            through the allowance the payer gave with :meth:`authorize_delegate`.

    Paid sessions, end to end (the examples' ``paid_session.py`` runs this)::

        async with SessionManager(chain=ChainConfig.from_env(), private_key=key) as manager:
            session = await manager.create_session(
                model="bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf",
                deposit=Decimal("0.001"), payment_token="ETH",
                max_price_per_token=Decimal("0.000001"),
            )
            print(await manager.prompt(session.id, "Hello"))
            summary = await manager.end_session(session.id)   # the host settles
            print(summary.job_id, summary.settlement)
            await manager.watch_settlement(summary.job_id, max_wait=7200)
            await manager.withdraw_refund("ETH")

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
        chain: ChainConfig | ChainClient | None = None,
        max_spend: Mapping[str, Decimal | str | int] | SpendBudget | None = None,
        spend_ledger: str | os.PathLike[str] | None = None,
        payer: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        recovery_key: RecoveryKey | SecretStr | str | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        self._clock = clock
        key = os.environ.get("FABSTIR_PRIVATE_KEY") if private_key is None else private_key
        self._private_key: SecretStr | None = (
            key if isinstance(key, SecretStr) else SecretStr(key) if key else None
        )
        self._payments: SessionPayments | None = None
        if chain is None and (max_spend is not None or spend_ledger is not None or payer):
            raise InvalidRequestError("max_spend=, spend_ledger= and payer= need chain=")
        if spend_ledger is not None and max_spend is None:
            raise InvalidRequestError("spend_ledger= records a budget: give max_spend= too")
        if isinstance(max_spend, SpendBudget):
            if spend_ledger is not None:
                raise InvalidRequestError("a SpendBudget names its own ledger: drop spend_ledger=")
            self.budget: SpendBudget | None = max_spend
        else:
            self.budget = SpendBudget(max_spend, spend_ledger) if max_spend is not None else None
        if chain is not None:
            if payer is not None:
                from langchain_fabstir.chain.funds import checked_address

                payer = checked_address(payer, "payer")
            self._payments = SessionPayments(
                chain, self._private_key, budget=self.budget, payer=payer
            )
            user_address = user_address or self._payments.address
            chain_id = self._payments.client.config.chain_id
        self.default_host_url = host_url or os.environ.get("FABSTIR_HOST_URL")
        if discovery is None and (hosts or os.environ.get("FABSTIR_HOSTS")):
            discovery = HostDiscovery(list(hosts) if hosts else None)
        self.user_address = user_address
        self.chain_id = chain_id
        self._sessions: dict[str, SessionState] = {}
        self._closing = False
        self._handlers: dict[str, list[EventHandler]] = {}
        self._initialized = False
        # The parts this facade composes (each usable and testable alone).
        self._connector = Connector(
            self.config,
            discovery=discovery,
            user_address=user_address,
            emit=self._emit,
            signing_key=self._private_key,
            recovery_key=_recovery_key(recovery_key),
        )
        self._persistence = SessionPersistence(storage, self.config, emit=self._emit)

    def __repr__(self) -> str:
        # Credentials in URLs are redacted; the key never appears.
        from langchain_fabstir._redact import redact_url

        host = redact_url(self.default_host_url) if self.default_host_url else None
        chain = self._payments.client if self._payments is not None else None
        return (
            f"SessionManager(host_url={host!r}, chain={chain!r}, "
            f"user_address={self.user_address!r}, sessions={len(self._sessions)})"
        )

    @property
    def discovery(self) -> HostDiscovery | None:
        """Where hosts come from when a session names none (``None``: no discovery)."""
        return self._connector.discovery

    @property
    def storage(self) -> S5ConversationStore | None:
        """Where conversations are kept (``None``: in memory only)."""
        return self._persistence.storage

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
        if self._payments is not None:
            await self._payments.aclose()

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
        host_public_key: str | None = None,
        deposit: Decimal | str | int | None = None,
        payment_token: Literal["ETH", "USDC"] = "ETH",
        from_deposit: bool = False,
        max_price_per_token: Decimal | str | int | None = None,
        fallback_hosts: Sequence[str] = (),
    ) -> Session:
        """Create a session and connect to its host (the seed's ``createSession``).

        ``initial_context`` is either text (kept as a system message after the system
        prompt, as the seed's multi-model example uses it) or earlier messages.
        With ``connect=False`` the socket opens on the first prompt. Without a host (and
        no default), discovery picks one by ``policy`` (``auto``, ``fastest``,
        ``cheapest``) among those serving ``model``, failing over in that order.

        With ``chain=`` on the manager the session is paid: ``deposit`` (whole ETH or USDC,
        as ``payment_token`` says) goes into a new session job with the best host registered
        for ``model`` whose price per token is at most ``max_price_per_token`` (whole tokens
        per token; the host's on-chain price per 1,000 tokens divided by 1,000). Both are hard
        limits: nothing is sent when no host fits. The session id is the job id, and the job
        is bound to its host (reconnects, never failover). ``host_url`` and ``job_id`` are not
        taken then: the chain picks the host and makes the job.

        ``fallback_hosts``: hosts to go on with, in order, when ``host_url`` cannot be
        connected or is lost mid-answer (failover within the answer's retry budget, see
        :class:`~langchain_fabstir.sessions.recovery.AnswerRecovery`). Not for paid sessions.

        With ``from_deposit=True`` the deposit is drawn from the pre-funded balance
        (:meth:`deposit`; ``createSessionFromDepositForModel``) instead of the wallet, and
        its refund goes back there. A manager made with ``payer=`` (a delegate's key) creates
        the job for the payer (``createSessionForModelAsDelegate``, USDC only). With
        ``max_spend=`` the deposit is counted first: ``BUDGET_EXCEEDED`` and nothing sent
        when it would cross the budget.
        """
        if from_deposit is not False and (from_deposit is not True or self._payments is None):
            raise InvalidRequestError("from_deposit=True needs a SessionManager with chain=")
        if from_deposit and self._payments is not None and self._payments.payer is not None:
            raise InvalidRequestError(
                "a delegate's sessions are paid from the payer's wallet, not a deposit balance"
            )
        paid: PaidChoice | None = None
        if self._payments is not None and job_id is None:
            if host_url is not None:
                raise InvalidRequestError(
                    "a paid session's host comes from the chain: drop host_url=, or pass the "
                    "job_id= of a job you created yourself"
                )
            if not model:
                raise InvalidRequestError(
                    "a paid session needs model= (its 'repo/file' name or 0x id on chain)"
                )
            if deposit is None:
                raise InvalidRequestError(
                    "a paid session needs deposit= (the most you pay into the job, in "
                    f"{payment_token}); unused deposit is refunded after settlement"
                )
            if fallback_hosts:  # refused before anything is paid
                raise InvalidRequestError(
                    "a paid session's job is bound to its host: drop fallback_hosts="
                )
            paid = await self._payments.pay(
                model,
                from_deposit=from_deposit,
                deposit=deposit,
                token=payment_token,
                max_price_per_token=max_price_per_token,
                policy=policy,
                encryption=self.config.encryption,
            )
            job_id, host_url = paid.job.job_id, paid.host.url
            if host_public_key is None:
                host_public_key = paid.host_key
        elif deposit is not None:
            raise InvalidRequestError(
                "deposit= needs a SessionManager with chain= (a paid session)"
            )
        url = host_url or self.default_host_url
        alternates: list[str] = [h for h in fallback_hosts if h != url] if url else []
        discovered: list[HostInfo] = []
        if not url and self.discovery is not None:
            candidates = await self.discovery.candidates(model=model, policy=policy)
            if not candidates:
                await self.discovery.select(model=model, policy=policy)  # raises, with reasons
            url, alternates = candidates[0].url, [c.url for c in candidates[1:]]
            discovered = candidates
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
        # A session id chosen here is new to every node (encrypted mode: its node session
        # starts empty); one the caller chose may have a history on a node already.
        session._node_fresh = session_id is None
        state = SessionState(session)
        state.alternates = alternates
        if host_public_key is not None:  # trusted: encryption is then required
            state.host_keys[url] = "0x" + parse_public_key(host_public_key).hex()
        trust_discovered(discovered, state.host_keys, state.host_addresses)
        if paid is not None:  # the serving host must hold the key of the job's host
            state.host_addresses[url] = paid.host.address
        elif job_id is not None and self._payments is not None:
            await self._trust_job(state, url)
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
        session.conversation_id = self._persistence.conversation_id(sid)
        if connect:
            try:
                await self._connector.first_connection(state)
            except BaseException as exc:
                del self._sessions[sid]
                if paid is not None and self._payments is not None:
                    self._payments.record_failure(paid, exc)
                    await self._payments.release(paid.job.job_id)
                raise
        await self._persistence.persist(state, state.messages, replace=True)
        await self._emit("session_created", session)
        return session

    async def _trust_job(self, state: SessionState, url: str) -> None:
        """A session of an on-chain job trusts the job's host: the serving host must hold
        the key of its address (and of its record's key, which makes encryption required)."""
        job_id = state.session.job_id
        if self._payments is None or job_id is None:
            return
        trust = await job_trust(self._payments.client, job_id)
        if trust.address is not None:
            state.host_addresses[url] = trust.address
        if trust.key is not None:
            state.host_keys.setdefault(url, trust.key)

    def get_session(self, session_id: str) -> Session:
        """The session with this id (raises ``SESSION_NOT_FOUND``)."""
        return self._state(session_id).session

    @property
    def sessions(self) -> list[Session]:
        return [s.session for s in self._sessions.values()]

    def _state(self, session_id: str, *, active: bool = False) -> SessionState:
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

    # --- prompts --------------------------------------------------------------------

    def _context(self, state: SessionState) -> list[dict[str, str]]:
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
        """The ``prompt`` frame for this prompt, as a dict (see
        :func:`~langchain_fabstir.wire.frames.prompt_payload`): the session's model,
        ``max_tokens`` and temperature unless ``params`` override them."""
        return prompt_payload(
            session_id=session.id,
            chain_id=session.chain_id,
            job_id=session.job_id,
            prompt=prompt,
            context=context,
            request_id=request_id,
            features=features,
            model=params.pop("model", None) or session.model or "default",
            max_tokens=params.pop("max_tokens", None)
            or session.max_tokens
            or self.config.default_max_tokens,
            temperature=_first_not_none(
                params.pop("temperature", None),
                session.temperature,
                self.config.default_temperature,
            ),
            extensions=params,
        )

    async def open_stream(
        self,
        session_id: str,
        prompt: str,
        *,
        context: list[dict[str, str]] | None = None,
        record: bool = True,
        images: Sequence[ImageLike] | None = None,
        **params: Any,
    ) -> AsyncGenerator[tuple[PromptStream, str], None]:
        """Low-level streaming: :meth:`answer_events` with the text pieces only.

        Yields ``(stream, text)`` pairs; ``stream.result`` describes how the answer ended.
        """
        events = self.answer_events(
            session_id, prompt, context=context, record=record, images=images, **params
        )
        async with contextlib.aclosing(events) as it:
            async for stream, event in it:
                if type(event) is Text:
                    yield stream, event.text

    async def answer_events(
        self,
        session_id: str,
        prompt: str,
        *,
        context: list[dict[str, str]] | None = None,
        record: bool = True,
        images: Sequence[ImageLike] | None = None,
        **params: Any,
    ) -> AsyncGenerator[tuple[PromptStream, Text | Proof | Resumed | ImageAnswer], None]:
        """One answer as events, the session layer owning every retry of it (used by
        :meth:`stream_prompt` and ``ChatFabstir``).

        Yields ``(stream, event)`` pairs: :class:`~langchain_fabstir.sessions.answer.Text`
        (a piece of the answer), :class:`~langchain_fabstir.sessions.answer.Proof` (a
        checkpoint the session settled, just before the piece that completed it, or at
        the end), :class:`~langchain_fabstir.sessions.answer.Resumed` (the answer goes on
        after a break, before its next piece),
        :class:`~langchain_fabstir.sessions.answer.ImageAnswer` (encrypted sessions: a
        node that routes a prompt such as "draw a cat" to its diffusion model answers
        with one image and no text; it is also in ``stream.result.images``).
        ``stream.result`` describes how the answer ended. ``context`` replaces the
        session's own history for this prompt (and with ``record=False`` the exchange is
        not added to the history). ``images``: see :meth:`prompt`.
        """
        pictures = to_images(images)  # checked before anything is sent
        if not isinstance(prompt, str) or not (prompt.strip() or pictures):
            raise InvalidRequestError("the prompt is empty", session_id=session_id)
        check_utf8(prompt, "the prompt")
        for message in context or ():
            if isinstance(message.get("content"), str):
                check_utf8(message["content"], "a message of the context")
        state = self._state(session_id, active=True)
        session = state.session
        async with state.lock:
            state.last_used = self._clock()
            transport = await self._connector.connection(state)
            rid = new_request_id()
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
            self._check_model(session, transport, payload["request"])
            if pictures:
                self._attach_images(session, transport, payload, pictures, state.sealed is not None)
            ignored: ImageInputsNotSupportedError | None = None
            started = False
            stream = PromptStream(
                transport,
                payload,
                rid,
                first_timeout=self.config.first_token_timeout,
                chunk_timeout=self.config.chunk_timeout,
                session_id=session.id,
                model=payload["request"]["model"],
                answer_timeout=self.config.answer_timeout,
                max_chars=self.config.max_answer_chars,
                token_allowance=self.config.max_tokens_overrun,
                sealed=lambda: state.sealed,
            )
            user_msg = Message(role="user", content=prompt)
            if pictures:  # (the SDK's conversation.json says so; the images are not kept)
                user_msg.metadata["imageCount"] = len(pictures)
            recovery = AnswerRecovery(
                payload,
                self.config,
                drop=lambda exc: self._connector.drop(state, failed=exc),
                reconnect=lambda exc, tries, on_try, rotate: self._connector.reconnect(
                    state, exc, tries, on_try, rotate
                ),
                closing=lambda: self._closing,
            )
            try:
                while True:
                    try:
                        async with contextlib.aclosing(stream.run()) as events:
                            async for event in events:
                                if type(event) is Text:
                                    if not started:
                                        # The exchange enters the hash chain with its first
                                        # piece of answer, as it enters the history (a
                                        # prompt that got no answer is in neither).
                                        started = True
                                        tracker.add_message("user", prompt)
                                        tracker.add_message("assistant")
                                    proof = tracker.on_tokens(event.text, event.tokens)
                                    if proof is not None:
                                        proof = await self._settle(state, stream, proof)
                                        yield stream, Proof(proof)
                                    yield stream, event
                                elif type(event) is Resumed or type(event) is ImageAnswer:
                                    yield stream, event
                        break
                    except FabstirError as exc:
                        await recovery.recover(stream, exc)
                if started:
                    last = tracker.end_message()
                    if last is not None:
                        yield stream, Proof(await self._settle(state, stream, last))
                if pictures and recovery.segment_payload is payload:
                    ignored = _images_ignored(stream)
                    if ignored is not None:
                        raise ignored
            except FabstirError:
                # A broken or timed-out answer leaves the socket in an unknown state.
                if stream.transport.closed or not stream.finished:
                    await self._connector.drop(state)
                raise
            finally:
                if started and not stream.finished:
                    tracker.end_message()  # an interrupted answer still closes its message
                recorded = self._account(
                    state, stream.result, user_msg, stream, record and ignored is None
                )
                if recorded:
                    await self._persistence.persist(state, recorded)

    def _attach_images(
        self,
        session: Session,
        transport: Transport,
        payload: dict[str, Any],
        images: list[ImageInput],
        encrypted: bool,
    ) -> None:
        """Put ``images`` in the prompt frame where a node reads them: at its top level (an
        encrypted socket seals them with the request). Refused first, with
        ``IMAGE_INPUTS_NOT_SUPPORTED``, on a host that announces its extensions without
        ``vision`` (it would drop them), and with ``IMAGE_TOO_LARGE`` when the frame
        cannot reach a node."""
        if host_vision(transport.features) is False:
            raise ImageInputsNotSupportedError(
                f"image inputs not supported by this host ({transport.host_url} does not "
                "announce 'vision': it has no vision model and would ignore the images); "
                "nothing was sent. Use a host with vision (fabstir host --vlm-upstream URL) "
                "or describe the image in text.",
                host_url=transport.host_url,
                session_id=session.id,
            )
        request = payload["request"]
        text = len(request.get("prompt", "")) + sum(
            len(m.get("content", "")) for m in request.get("conversation_context", [])
        )
        check_message_size(images, encrypted=encrypted, text=2 * text)
        payload["images"] = [i.to_wire() for i in images]

    def _check_model(self, session: Session, transport: Transport, request: dict[str, Any]) -> None:
        """The model a prompt asks for, checked against what its host lists
        (:func:`~langchain_fabstir.sessions.connection.resolve_model`)."""
        model = request.get("model")
        served = resolve_model(
            model,
            transport.greeting.models,
            allow_fallback=self.config.allow_model_fallback,
            host_url=transport.host_url,
            session=session,
        )
        if served != model:
            request["model"] = served
            if session.model == model and served is not None:
                session.model = served

    async def _settle(
        self, state: SessionState, stream: PromptStream, proof: CheckpointProof
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

    async def fetch_host_checkpoints(
        self,
        session_id: str,
        *,
        portal: S5PortalClient | str,
        host_url: str | None = None,
        require_proof_hash: bool = False,
    ) -> HostCheckpoints:
        """The checkpoints the session's host published to S5, verified (see
        :func:`~langchain_fabstir.checkpoints.published.fetch_host_checkpoints`).

        The host is the session's (or ``host_url``); its address is the one its greeting
        announced, when the socket is open to it. An encrypted session's deltas are
        opened with :attr:`Session.recovery_key`, passed for you; a plaintext session's
        are read as they are.
        """
        session = self._state(session_id).session
        transport = self._state(session_id).transport
        url = host_url or session.host_url
        address = (
            transport.greeting.host_address
            if transport is not None and transport.host_url == url
            else None
        )
        return await fetch_host_checkpoints(
            url,
            session_id,
            portal=portal,
            host_address=address,
            require_proof_hash=require_proof_hash,
            recovery_key=session.recovery_key,
        )

    def _account(
        self,
        state: SessionState,
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
        session.token_count += result.vlm_tokens  # billed with the job, as generated ones
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

    async def stream_prompt(
        self,
        session_id: str,
        prompt: str,
        *,
        images: Sequence[ImageLike] | None = None,
        **params: Any,
    ) -> AsyncGenerator[str, None]:
        """Send a prompt and yield the answer's text as it arrives (seed: ``streamPrompt``).

        ``params`` override the session's ``model``, ``max_tokens``, ``temperature`` for
        this prompt (``seed`` and other extensions are sent to hosts that announce them).
        ``images``: see :meth:`prompt`; a host that ignored them raises
        ``IMAGE_INPUTS_NOT_SUPPORTED`` after the last piece of text (which you then
        discard). Breaking out of the loop sends ``stream_cancel`` to the host. An answer
        that is an image (encrypted sessions, see :meth:`answer_events`) yields no text:
        use :meth:`prompt` (``result.images``) or :meth:`answer_events` to get it.
        """
        events = self.answer_events(session_id, prompt, images=images, **params)
        async with contextlib.aclosing(events) as it:
            async for _stream, event in it:
                if type(event) is Text:
                    yield event.text

    async def prompt(
        self,
        session_id: str,
        prompt: str,
        *,
        images: Sequence[ImageLike] | None = None,
        **params: Any,
    ) -> StreamResult:
        """Send a prompt and wait for the whole answer (``result.text``, ``result.usage``;
        ``result.images`` when a node answered an encrypted prompt with an image).

        ``images``: pictures for the host's vision model, each an
        :class:`~langchain_fabstir.sessions.ImageInput`, ``bytes``, a
        :class:`~pathlib.Path` or a ``data:`` URL (png, jpeg, webp or gif, at most about
        10 MB each)::

            result = await manager.prompt(sid, "What does the sign say?",
                                          images=[Path("sign.png")])
            result.text, result.vlm_tokens

        They are checked before anything is sent (``INVALID_IMAGE_DATA``,
        ``INVALID_IMAGE_FORMAT``, ``IMAGE_TOO_LARGE``) and go in the prompt frame as a
        node reads them (top level in plaintext, sealed with the request when
        encrypted). The node's vision sidecar reads each image (its text and a short
        description) and puts what it read in front of the prompt; the tokens it used are
        ``result.vlm_tokens`` (billed with the job, counted in ``session.token_count``).
        A host that cannot read images never answers as if it had: one that announces
        its extensions without ``vision`` is refused before sending, and an answer that
        reports no ``vlm_tokens`` (a node without a vision sidecar drops images silently)
        raises ``IMAGE_INPUTS_NOT_SUPPORTED`` with the answer in
        ``details["partial_text"]``; that exchange is not added to the history.

        A prompt with images is never sent twice by a retry (the host may have read
        them already, and reading is billed): a rate limit or a dropped socket before
        the first token is raised to you. An answer resumed exactly goes on as usual;
        one continued on another socket goes on without the images, and its
        ``vlm_tokens`` are unknown (the host's report went with the socket).

        In encrypted mode a node keeps what its vision sidecar read in its history of
        the session, so later prompts on the same node session can refer to the image;
        in plaintext mode (no node history) and on a new node session the image is gone:
        send it again.
        """
        last: PromptStream | None = None
        events = self.answer_events(session_id, prompt, images=images, **params)
        async with contextlib.aclosing(events) as it:
            async for stream, _event in it:
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

    async def generate_image(
        self,
        session_id: str,
        prompt: str,
        *,
        size: str = "1024x1024",
        steps: int = 4,
        model: str | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        timeout: float | None = None,
    ) -> GeneratedImage:
        """Generate an image on the session's host, end to end encrypted (PROTOCOL.md 6.3:
        the node's ``action: image_generation`` inside an ``encrypted_message``).

        ``size`` is one of ``256x256``, ``512x512``, ``768x768``, ``1024x1024``,
        ``1024x768``, ``768x1024``; ``steps`` 1 to 100; ``prompt`` at most 2,000
        characters (the SDK's bound); all checked before anything is sent
        (``INVALID_REQUEST``). Needs an encrypted session (``ENCRYPTION_UNAVAILABLE``
        otherwise: the HTTP route of :class:`~langchain_fabstir.FabstirImageGenerationTool`
        serves plaintext hosts). ``timeout``: seconds for the reply (default
        ``first_token_timeout``).

        Returns a :class:`~langchain_fabstir.sessions.models.GeneratedImage`. The node's
        refusals are typed errors with its code in ``details["host_code"]``:
        ``RATE_LIMITED`` (``RATE_LIMIT_EXCEEDED``: a few images per 60 s per session),
        ``INVALID_REQUEST`` (``VALIDATION_FAILED``), ``PROMPT_BLOCKED``,
        ``DIFFUSION_SERVICE_UNAVAILABLE``, ``IMAGE_GENERATION_FAILED``. Never retried:
        with a job, a generated image is billed (``ceil(generationUnits * 1000)``
        tokens join the job's count, and the session's ``token_count``).
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("the image prompt is empty", session_id=session_id)
        problems = []
        if len(prompt) > MAX_IMAGE_PROMPT_CHARS:
            problems.append(f"the prompt has {len(prompt)} characters (at most 2000)")
        if size not in IMAGE_SIZES:
            problems.append(f"size {size!r} is not one of {', '.join(IMAGE_SIZES)}")
        if type(steps) is not int or not 1 <= steps <= 100:
            problems.append(f"steps {steps!r} is not a whole number from 1 to 100")
        if seed is not None and (type(seed) is not int or not 0 <= seed < 2**64):
            problems.append(f"seed {seed!r} is not a whole number from 0 to 2**64-1")
        if guidance_scale is not None and not (
            isinstance(guidance_scale, (int, float)) and 0 < guidance_scale <= 100
        ):
            problems.append(f"guidance_scale {guidance_scale!r} is not a number in (0, 100]")
        if problems:
            raise InvalidRequestError(
                "image request not sent: " + "; ".join(problems), session_id=session_id
            )
        state = self._state(session_id, active=True)
        session = state.session
        body: dict[str, Any] = {
            "action": "image_generation",
            "prompt": prompt,
            "size": size,
            "steps": steps,
            "safetyLevel": "strict",
            "chainId": session.chain_id,
        }
        optional = {
            "model": model,
            "seed": seed,
            "negativePrompt": negative_prompt,
            "guidanceScale": guidance_scale,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        async with state.lock:
            state.last_used = self._clock()
            transport = await self._connector.connection(state)
            if state.sealed is None:
                raise EncryptionUnavailableError(
                    f"session {session.id} is not end-to-end encrypted: nodes generate "
                    "images over the socket only in encrypted sessions (create the session "
                    "with host_public_key=..., or use FabstirImageGenerationTool for the "
                    "host's HTTP route). Nothing was sent.",
                    host_url=transport.host_url,
                    session_id=session.id,
                )
            wait = self.config.first_token_timeout if timeout is None else timeout
            stream = PromptStream(
                transport,
                {"id": new_request_id(), "request": {}},
                new_request_id(),
                first_timeout=wait,
                chunk_timeout=self.config.chunk_timeout,
                session_id=session.id,
                sealed=lambda: state.sealed,
                action=body,
            )
            image: GeneratedImage | None = None
            try:
                async with contextlib.aclosing(stream.run()) as events:
                    async for event in events:
                        if type(event) is ImageAnswer:
                            image = event.image
                        elif type(event) is Text:
                            break  # (a host that took it for a prompt: stop it)
            except FabstirError:
                if stream.transport.closed or not stream.finished:
                    await self._connector.drop(state)
                raise
            session.last_activity = utcnow()
            if image is None:
                raise DiffusionUnavailableError(
                    f"host {transport.host_url} answered the image request with text: it "
                    "generates no images over the socket",
                    host_url=transport.host_url,
                    session_id=session.id,
                )
            units = (image.billing or {}).get("generationUnits")
            if isinstance(units, (int, float)) and not isinstance(units, bool) and units > 0:
                session.token_count += math.ceil(units * 1000)
            return image

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
        return body.request_id or new_request_id()

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
        stored = await self._persistence.stored_history(session_id)
        if stored is None:
            raise SessionNotFoundError(f"no session {session_id!r}", session_id=session_id)
        return stored

    # --- persistence, export and share ---------------------------------------------------

    async def save_to_s5(self, session_id: str, data: dict[str, Any]) -> str:
        """Save any JSON data of a session as an encrypted S5 blob; returns its CID
        (seed: ``saveToS5``)."""
        self._state(session_id)
        return await self._persistence.require().save_to_s5(data)

    async def load_from_s5(self, cid: str) -> dict[str, Any]:
        """Load what :meth:`save_to_s5` stored (seed: ``loadFromS5``)."""
        return await self._persistence.require().load_from_s5(cid)

    async def export_session(self, session_id: str) -> dict[str, Any]:
        """A self-contained export: the session, its messages and checkpoint proofs."""
        return self._persistence.export(self._state(session_id))

    async def generate_share_code(self, export: dict[str, Any]) -> str:
        """Upload ``export`` encrypted under a fresh key; the code carries where it is and
        the key (seed: ``generateShareCode``). Useless without its key part."""
        return str(await self._persistence.require().generate_share_code(export))

    async def import_session(self, share_code: str) -> Session:
        """The session behind a share code, ready for :meth:`resume_session` (seed:
        ``importSession``). It is paused until resumed.

        An import never replaces a session: when this manager or its storage already has
        one with the export's id (an export of one's own session, or the same code twice),
        the import gets a new id (``session.id``; the export's id is in
        ``session.conversation_id`` until it is resumed) and its checkpoint chain starts
        anew under it. A malformed export is ``INVALID_SHARE_CODE``.
        """
        session, messages, proofs = await self._persistence.import_export(share_code)
        if session.id in self._sessions or await self._persistence.is_stored(session.id):
            log.info("imported session %s exists here: importing it as a new one", session.id)
            session.id, proofs = uuid.uuid4().hex, []
        self._adopt(session, messages, proofs)
        return session

    def _adopt(
        self, session: Session, messages: list[Message], proofs: list[CheckpointProof]
    ) -> SessionState:
        """Make a known conversation a session of this manager (no socket yet)."""
        state = SessionState(session, last_used=self._clock())
        state.messages = list(messages)
        state.unsaved = True
        if self._persistence.enabled:
            session.conversation_id = self._persistence.conversation_id(session.id)
        history = [{"role": m.role, "content": m.content} for m in messages]
        interval = self.config.checkpoint_interval
        try:
            state.tracker = CheckpointTracker.resume(
                session.id,
                history,
                proofs,
                checkpoint_interval=interval,
                signing_key=self._private_key,
            )
            state.proofs = list(proofs)
        except CheckpointError as exc:
            log.warning(
                "earlier checkpoints of %s do not verify, starting anew: %s", session.id, exc
            )
            state.tracker = new_tracker(session.id, interval, history, self._private_key)
        self._sessions[session.id] = state
        return state

    async def resume_session(
        self,
        session_id: str,
        conversation_context: list[Message | dict[str, Any]] | None = None,
        *,
        host_url: str | None = None,
    ) -> Session:
        """Resume a session (seed: ``resumeSession``), also from a new process.

        The history comes from ``conversation_context`` when given, else from this
        manager's memory, else from S5 storage. The session reconnects (to ``host_url``,
        its own host, or a discovered one) and is active again; its idle timer restarts.
        Raises ``SESSION_NOT_FOUND`` when no history can be found.
        """
        given = (
            None
            if conversation_context is None
            else [
                m if isinstance(m, Message) else Message.model_validate(m)
                for m in conversation_context
            ]
        )
        state = self._sessions.get(session_id)
        if state is None:
            session, messages = await self._load_for_resume(session_id, given)
            if host_url:
                session.host_url = host_url
            state = self._adopt(session, messages, [])
        else:
            async with state.lock:
                await self._connector.drop(state)
                if given is not None:
                    adopted = self._adopt(state.session, given, state.proofs)
                    state.messages, state.tracker = adopted.messages, adopted.tracker
                    state.proofs, state.unsaved = adopted.proofs, True
                    self._sessions[session_id] = state
                if host_url:
                    state.session.host_url = host_url
        session = state.session
        if not session.host_url:
            if self.default_host_url:
                session.host_url = self.default_host_url
            elif self.discovery is not None:
                candidates = await self.discovery.candidates(model=session.model or None)
                state.alternates = [c.url for c in candidates]
                session.host_url = state.alternates.pop(0) if state.alternates else ""
        if not session.host_url:
            raise InvalidRequestError(
                f"no host to resume session {session_id!r} on: pass host_url=",
                session_id=session_id,
            )
        if session.job_id is not None and session.host_url not in state.host_addresses:
            await self._trust_job(state, session.host_url)
        session.status = "active"
        state.last_used = self._clock()
        await self._connector.first_connection(state)
        await self._emit("session_resumed", session)
        return session

    async def _load_for_resume(
        self, session_id: str, given: list[Message] | None
    ) -> tuple[Session, list[Message]]:
        if given is not None:
            session = Session(
                id=session_id,
                host_url=self.default_host_url or "",
                model="",
                chain_id=self.chain_id,
                conversation_id=(
                    self.storage.conversation_path(session_id) if self.storage else session_id
                ),
            )
            return session, given
        stored = await self._persistence.stored_session(
            session_id, default_host_url=self.default_host_url, chain_id=self.chain_id
        )
        if stored is None:
            raise SessionNotFoundError(
                f"no session {session_id!r} here, no history given and none in storage",
                session_id=session_id,
            )
        return stored

    # --- sockets, for ChatFabstir's session pool ------------------------------------------

    def is_reusable(self, session_id: str) -> bool:
        """Whether the session is active and has not been idle past ``session_timeout``."""
        state = self._sessions.get(session_id)
        return (
            state is not None
            and state.session.status == "active"
            and self._clock() - state.last_used <= self.config.session_timeout
        )

    def is_connected(self, session_id: str) -> bool:
        """Whether the session has an open socket now."""
        state = self._sessions.get(session_id)
        return state is not None and state.transport is not None and not state.transport.closed

    async def connect(self, session_id: str) -> Transport:
        """The session's socket, opened (and ``session_init`` said) if needed; its
        ``features`` are what the host announced."""
        return await self._connector.connection(self._state(session_id))

    # --- host RAG (PROTOCOL.md 6.5) ----------------------------------------------------

    async def _vector_socket(self, state: SessionState, allow_plaintext: bool) -> Transport:
        transport = await self._connector.connection(state)
        if state.sealed is not None and not allow_plaintext:
            raise PlaintextFramesRefusedError(
                f"session {state.session.id} is end-to-end encrypted, but vectors, their "
                "metadata and search queries travel in clear (hosts have no encrypted form "
                "of uploadVectors/searchVectors): pass allow_plaintext=True to send them "
                "anyway. Nothing was sent.",
                session_id=state.session.id,
                host_url=transport.host_url,
            )
        return transport

    async def upload_vectors(
        self,
        session_id: str,
        vectors: Sequence[dict[str, Any]],
        replace: bool = False,
        *,
        allow_plaintext: bool = False,
        timeout: float = 30.0,
        max_frame_bytes: int = 2 * 1024 * 1024,
    ) -> VectorUploadResult:
        """Store vectors in the host's memory for this session (the SDK's ``uploadVectors``).

        ``vectors``: ``{"id": str, "vector": [384 floats], "metadata": {...}}`` each (checked
        here first: 384 finite values, metadata JSON <= 10,240 bytes, <= 100,000 in all); an
        existing id is overwritten; ``replace=True`` clears the session's vectors first. They
        go in frames of at most 1,000 vectors and ``max_frame_bytes``, ``replace`` only on the
        first; each frame's reply is awaited up to ``timeout`` seconds.

        What is private and what is not: the vectors live only in that host's memory, for
        this session id (no chain, no S5, no other session sees them) until the host restarts
        or a plaintext re-init of the session wipes them; but the frames have no encrypted
        form, so the host and (without ``wss://``) the network read vectors and metadata in
        clear. On an encrypted session they are refused (``PLAINTEXT_FRAMES_REFUSED``) unless
        ``allow_plaintext=True``. Per-vector rejections by the host are in the result;
        a batch the host refused entirely, or its error frame, is ``VECTOR_STORE_ERROR``.
        """
        frames = VectorFrames(max_frame_bytes=max_frame_bytes)
        entries = [frames.entry(v.get("id"), v.get("vector"), v.get("metadata")) for v in vectors]
        state = self._state(session_id, active=True)
        total = VectorUploadResult()
        if not entries and not replace:
            return total
        async with state.lock:
            state.last_used = self._clock()
            transport = await self._vector_socket(state, allow_plaintext)
            for frame, rid, n in frames.upload_frames(entries, replace, new_request_id()):
                reply = await transport.request(frame, "uploadVectorsResponse", rid, timeout)
                part = frames.upload_reply(reply, n, transport.host_url)
                total.uploaded += part.uploaded
                total.rejected += part.rejected
                total.errors.extend(part.errors)
        return total

    async def search_vectors(
        self,
        session_id: str,
        query_vector: Sequence[float],
        k: int = 5,
        threshold: float = 0.2,
        metadata_filter: dict[str, Any] | None = None,
        *,
        allow_plaintext: bool = False,
        timeout: float = 10.0,
    ) -> VectorSearchResult:
        """The ``k`` (1..20) vectors of this session most similar to ``query_vector`` (cosine,
        ``score >= threshold``, -1..1; -1: none), best first (the SDK's ``searchVectors``).
        ``metadata_filter``: ``{"field": value}`` or ``{"field": {"$eq"|"$in": ...}}``;
        with a filter, hosts rank every matching vector and ignore ``threshold``. The query
        travels in clear, as the upload does (see :meth:`upload_vectors`).
        ``result.total_vectors`` is how many vectors the host holds for the session."""
        rid = new_request_id()
        frame = VectorFrames.search_frame(query_vector, k, threshold, metadata_filter, rid)
        state = self._state(session_id, active=True)
        async with state.lock:
            state.last_used = self._clock()
            transport = await self._vector_socket(state, allow_plaintext)
            reply = await transport.request(frame, "searchVectorsResponse", rid, timeout)
        return VectorFrames.search_reply(reply, k, transport.host_url)

    async def end_session(self, session_id: str, *, release_job: bool = False) -> SessionSummary:
        """End the session, close its socket and summarise it (seed: ``endSession``).

        A paid session's host settles the job when its socket closes. ``release_job=True``
        (for a host that could not serve): the user completes the job at once instead, so
        the unused deposit comes back without waiting for the host (less the contract's
        early-end fee); the host is paid only for tokens it has proven."""
        state = self._state(session_id)
        async with state.lock:
            await self._connector.drop(state)
            state.session.status = "ended"
            await self._persistence.persist(state, [])
        settled: Settlement | None = None
        job_id = state.session.job_id
        if release_job and job_id is not None and self._payments is not None:
            await self._payments.release(job_id)
        if job_id is not None and self._payments is not None:
            try:
                settled = await self._payments.settlement(job_id)
            except ChainError as exc:  # the session is over either way: say so, do not fail
                log.warning(
                    "session %s ended; reading job %s on chain failed: %s", session_id, job_id, exc
                )
        summary = SessionSummary(
            final_token_count=state.session.token_count,
            checkpoint_proofs=list(state.proofs),
            conversation_id=state.session.conversation_id,
            job_id=job_id,
            settlement=settled.model_dump() if settled is not None else None,
        )
        await self._emit("session_ended", state.session, summary)
        return summary

    # --- the chain ------------------------------------------------------------------

    def _chain(self) -> SessionPayments:
        if self._payments is None:
            raise InvalidRequestError("this needs a SessionManager with chain= (a ChainConfig)")
        return self._payments

    @property
    def chain(self) -> ChainClient | None:
        """The chain client of paid sessions (``None`` without ``chain=``)."""
        return self._payments.client if self._payments is not None else None

    async def settlement(self, job_id: int) -> Settlement:
        """Where the job stands on chain now (active, completed, timed out; refund; deadline)."""
        return await self._chain().settlement(job_id)

    async def watch_settlement(
        self, job_id: int, *, max_wait: float, poll_interval: float = 15.0
    ) -> Settlement:
        """Wait until the job is settled; once the chain's clock passes its deadline
        (start + maxDuration + proofTimeoutWindow) and the host has not settled, settle it
        as the user (see :class:`~langchain_fabstir.chain.SettlementWatcher`)."""
        from langchain_fabstir.chain.marketplace import SettlementWatcher

        watcher = SettlementWatcher(self._chain().client, poll_interval=poll_interval)
        return await watcher.wait(job_id, max_wait=max_wait)

    async def deposit_balance(self, token: Literal["ETH", "USDC"] = "ETH") -> DepositBalance:
        """The user's in-contract balance (deposits and refunds), in whole tokens: a
        :class:`~langchain_fabstir.chain.funds.DepositBalance`, a ``Decimal`` equal to the
        free balance (what sessions ``from_deposit`` draw from and :meth:`withdraw` takes),
        with ``.free``, ``.locked`` (deposits of active sessions) and ``.total``."""
        from langchain_fabstir.chain.funds import DepositBalance, read_balances
        from langchain_fabstir.chain.marketplace import from_base_units, token_decimals

        client = self._chain().client
        free, locked, total = await read_balances(client, token)
        decimals = await token_decimals(client, token)
        return DepositBalance(
            from_base_units(free, decimals),
            from_base_units(locked, decimals),
            from_base_units(total, decimals),
            token,
        )

    async def deposit(
        self, amount: Decimal | str | int, payment_token: Literal["ETH", "USDC"] = "ETH"
    ) -> DepositBalance:
        """Pre-fund the in-contract balance with ``amount`` whole tokens from the wallet
        (``depositNative``; USDC: ``approve`` then ``depositToken``); sessions then pay with
        ``create_session(..., from_deposit=True)``. Returns the balance after. Not counted
        by ``max_spend`` (the money stays the user's until a session takes it)."""
        from langchain_fabstir.chain.funds import deposit_funds
        from langchain_fabstir.chain.marketplace import to_base_units, token_decimals

        value = _money(amount, "amount")
        client = self._chain().client
        await deposit_funds(
            client, to_base_units(value, await token_decimals(client, payment_token)), payment_token
        )
        return await self.deposit_balance(payment_token)

    async def withdraw(
        self, amount: Decimal | str | int, token: Literal["ETH", "USDC"] = "ETH"
    ) -> Decimal:
        """Take ``amount`` whole tokens of the free deposit balance back to the wallet
        (``INSUFFICIENT_DEPOSIT``, nothing sent, when the free balance is smaller)."""
        from langchain_fabstir.chain.funds import withdraw_funds
        from langchain_fabstir.chain.marketplace import (
            from_base_units,
            to_base_units,
            token_decimals,
        )

        value = _money(amount, "amount")
        client = self._chain().client
        decimals = await token_decimals(client, token)
        base = to_base_units(value, decimals)
        await withdraw_funds(client, base, token)
        return from_base_units(base, decimals)

    async def audit_job(
        self,
        job_id: int,
        *,
        portal: S5PortalClient | str,
        recovery_key: RecoveryKey | None = None,
        from_block: int | None = None,
        block_range: int = 9000,
    ) -> JobAudit:
        """Audit a job from the chain alone: every ``ProofSubmitted`` (logs read
        ``block_range`` blocks at a time from the job's creation block, or ``from_block``),
        each proof's bytes fetched by ``proofCID`` from ``portal`` (a URL or client) and
        checked against ``proofHash`` (SHA-256), each ``deltaCID`` fetched and verified
        (host signature, session, chain of deltas; opened with ``recovery_key``, by default
        the recovery key of this manager's session of the job), and the tokens claimed
        against the settlement. See :class:`~langchain_fabstir.sessions.audit.JobAudit`.
        Works for any job (another user's too): it needs no key, only the chain."""
        from langchain_fabstir.sessions.audit import audit_job

        return await self._from_chain(
            audit_job, job_id, portal, recovery_key, from_block, block_range
        )

    async def recover_from_chain(
        self,
        job_id: int,
        *,
        portal: S5PortalClient | str,
        recovery_key: RecoveryKey | None = None,
        from_block: int | None = None,
        block_range: int = 9000,
    ) -> ChainRecovery:
        """Rebuild a job's conversation (its checkpoint history) from the chain's
        ``ProofSubmitted`` events and the deltas they name on S5, without the host (gone,
        or lying): every delta verified as :meth:`audit_job` does. ``recovery_key`` opens
        an encrypted session's deltas (default: this manager's session of the job). See
        :class:`~langchain_fabstir.sessions.audit.ChainRecovery`."""
        from langchain_fabstir.sessions.audit import recover_from_chain

        return await self._from_chain(
            recover_from_chain, job_id, portal, recovery_key, from_block, block_range
        )

    async def _from_chain(
        self,
        read: Callable[..., Awaitable[_T]],
        job_id: int,
        portal: S5PortalClient | str,
        recovery_key: RecoveryKey | None,
        from_block: int | None,
        block_range: int,
    ) -> _T:
        """``read(client, job_id, portal, ...)`` with a portal client opened for the call
        when ``portal`` is a URL (:meth:`audit_job`, :meth:`recover_from_chain`)."""
        job_id, recovery_key = self._job_and_key(job_id, recovery_key)
        client = self._chain().client
        async with contextlib.AsyncExitStack() as stack:
            if isinstance(portal, str):
                portal = await stack.enter_async_context(S5PortalClient(portal))
            return await read(
                client,
                job_id,
                portal,
                recovery_key=recovery_key,
                from_block=from_block,
                block_range=block_range,
            )

    def _job_and_key(
        self, job_id: int, recovery_key: RecoveryKey | None
    ) -> tuple[int, RecoveryKey | None]:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
            raise InvalidRequestError(f"job_id must be a positive integer, got {job_id!r}")
        if recovery_key is None:
            state = self._sessions.get(str(job_id))
            if state is not None and state.session.job_id == job_id:
                recovery_key = state.session.recovery_key
        return job_id, recovery_key

    # --- delegates ------------------------------------------------------------------

    async def authorize_delegate(
        self,
        address: str,
        allowance: Decimal | str | int,
        token: Literal["USDC"] = "USDC",
    ) -> DelegateStatus:
        """As the payer: let the key ``address`` create sessions paid from this wallet, up
        to ``allowance`` whole tokens in all (``approve(marketplace, allowance)`` then
        ``authorizeDelegate(address, true)``). The allowance is the marketplace's: direct
        USDC sessions of this wallet also use (and reset) it."""
        from langchain_fabstir.chain.funds import authorize_delegate
        from langchain_fabstir.chain.marketplace import to_base_units, token_decimals

        value = _money(allowance, "allowance")
        client = self._chain().client
        base = to_base_units(value, await token_decimals(client, token))
        await authorize_delegate(client, address, base, token)
        return await self.delegate_status(address, token)

    async def revoke_delegate(self, address: str, token: Literal["USDC"] = "USDC") -> None:
        """As the payer: ``authorizeDelegate(address, false)`` then ``approve(marketplace,
        0)``; ``DELEGATE_REVOKE_INCOMPLETE`` when one step failed (run it again)."""
        from langchain_fabstir.chain.funds import revoke_delegate

        await revoke_delegate(self._chain().client, address, token)

    async def delegate_status(
        self, address: str, token: Literal["USDC"] = "USDC"
    ) -> DelegateStatus:
        """Whether ``address`` may pay for this manager's payer (this wallet, or ``payer=``
        on a delegate's manager), with the allowance left and the payer's balance."""
        from langchain_fabstir.chain.funds import delegate_status

        payments = self._chain()
        payer = payments.payer or payments.address
        if payer is None:
            raise InvalidRequestError("delegate_status needs the payer: private_key= or payer=")
        return await delegate_status(payments.client, payer, address, token)

    async def withdraw_refund(self, token: Literal["ETH", "USDC"] = "ETH") -> Decimal:
        """Withdraw every refund credited to the user's in-contract balance to the wallet;
        returns the amount in whole tokens (0 when there was none: nothing sent)."""
        from langchain_fabstir.chain.marketplace import (
            from_base_units,
            token_decimals,
            withdraw_refund,
        )

        client = self._chain().client
        taken = await withdraw_refund(client, token)
        return from_base_units(taken, await token_decimals(client, token))


def _money(value: Any, what: str) -> Decimal:
    from langchain_fabstir.sessions.budget import _money as money

    amount = money(value, what)
    if amount <= 0:
        raise InvalidRequestError(f"{what} must be > 0, got {value!r}")
    return amount


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


def _images_ignored(stream: PromptStream) -> ImageInputsNotSupportedError | None:
    """The error for a complete answer to a prompt with images whose host reported no
    ``vlm_tokens``: its vision sidecar did not read them (none, or every call failed)."""
    result = stream.result
    if not stream.finished or result.reason != "complete" or result.vlm_tokens > 0:
        return None
    return ImageInputsNotSupportedError(
        f"image inputs not supported by this host: {stream.transport.host_url} answered a "
        "prompt with images without reporting vlm_tokens (it has no vision sidecar, or "
        "its vision calls failed), so the answer ignored the images. It is in "
        "details['partial_text']; use a host with vision or describe the image in text.",
        host_url=stream.transport.host_url,
        session_id=stream.session_id,
        details={"partial_text": stream.text, "tokens_used": result.tokens_used},
    )
