"""Sessions kept on S5: every exchange saved, resume from storage, export, share, import.

:class:`SessionPersistence` is the part of :class:`~langchain_fabstir.sessions.SessionManager`
that talks to an :class:`~langchain_fabstir.storage.S5ConversationStore` (``storage=``). With
``SessionConfig.persistence_enabled`` every exchange is appended to the conversation's
``conversation.json`` (the Fabstir SDK's shape), so a session can be resumed from another
process or device, exported, and shared by a share code. A storage failure never loses the
conversation in memory: it is logged and announced (``persistence_failed``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_fabstir.checkpoints import CheckpointProof
from langchain_fabstir.errors import (
    CheckpointError,
    FabstirError,
    InvalidRequestError,
    ShareCodeError,
)
from langchain_fabstir.sessions.models import Message, Session, SessionConfig, utcnow
from langchain_fabstir.sessions.state import SessionState
from langchain_fabstir.storage.conversations import (
    S5ConversationStore,
    export_session,
    ms_timestamp,
)

__all__ = ["SessionPersistence", "message_from_sdk", "sdk_metadata", "session_from_export"]

log = logging.getLogger(__name__)

Emit = Callable[..., Awaitable[None]]


def sdk_metadata(session: Session, **extra: Any) -> dict[str, Any]:
    """The SDK's conversation ``metadata`` for a :class:`~langchain_fabstir.sessions.Session`.

    >>> md = sdk_metadata(Session(id="1", host_url="http://h", model="m", job_id=7))
    >>> md["chainId"], md["model"], md["endpoint"], md["jobId"], md["status"]
    (84532, 'm', 'http://h', '7', 'active')
    """
    status = {"active": "active", "paused": "active", "ended": "ended"}[session.status]
    out: dict[str, Any] = {
        "chainId": session.chain_id,
        "model": session.model,
        "provider": None,
        "endpoint": session.host_url,
        "jobId": None if session.job_id is None else str(session.job_id),
        "status": status,
        "totalTokens": session.token_count,
        "startTime": ms_timestamp(session.created_at),
        # The SDK's meaning: whether the session ran encrypted. A store that encrypts what
        # it writes records True here regardless (S5ConversationStore).
        "encryption": session.encrypted,
    }
    out.update(extra)
    return out


_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time datetime knows


def message_from_sdk(item: dict[str, Any]) -> Message:
    """A :class:`Message` from the SDK's shape (unknown roles become ``user``; a timestamp
    that is not a time, now).

    >>> message_from_sdk({"role": "assistant", "content": "hi", "timestamp": 1e300}).role
    'assistant'
    """
    ts = item.get("timestamp")
    when = (
        datetime.fromtimestamp(ts / 1000, timezone.utc)
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 <= ts <= _MAX_MS
        else utcnow()
    )
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        role = "user"
    metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
    return Message(
        role=role, content=str(item.get("content", "")), timestamp=when, metadata=metadata or {}
    )


class _SharedMessage(BaseModel):
    """One message of a shared export, as much as an import trusts."""

    model_config = ConfigDict(extra="ignore")

    role: str = Field(max_length=32)
    content: str
    timestamp: float | None = None
    metadata: dict[str, Any] | None = None


class _SharedSession(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f/]+$")


class _SharedExport(BaseModel):
    """What :meth:`SessionPersistence.import_export` accepts (anything else:
    ``INVALID_SHARE_CODE``)."""

    model_config = ConfigDict(extra="ignore")

    session: _SharedSession
    messages: list[_SharedMessage] = Field(max_length=1_000_000)
    checkpointProofs: list[dict[str, Any]] = Field(default_factory=list, max_length=100_000)


def session_from_export(
    export: dict[str, Any],
) -> tuple[Session, list[Message], list[CheckpointProof]]:
    """The session (paused), messages and proofs of an export, or ``ShareCodeError``
    (``INVALID_SHARE_CODE``) naming what is wrong with it.

    >>> try:
    ...     session_from_export({"session": {"id": "s"}, "messages": "nope"})
    ... except ShareCodeError as e:
    ...     print(e.code, e.message.split("(")[1])
    INVALID_SHARE_CODE messages: Input should be a valid list)
    """
    try:
        shared = _SharedExport.model_validate(export)
        data = shared.session.model_dump()
        data.update(status="paused", conversation_id=None)
        data.setdefault("host_url", "")
        data.setdefault("model", "")
        session = Session.model_validate(data)
        messages = [message_from_sdk(m.model_dump()) for m in shared.messages]
        proofs = [CheckpointProof.from_dict(p) for p in shared.checkpointProofs]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<export>'}: {err['msg']}"
            for err in exc.errors()[:3]
        )
        raise ShareCodeError(
            f"the shared export is not a valid session export ({problems})"
        ) from None
    except (ValueError, TypeError, OverflowError, CheckpointError) as exc:
        raise ShareCodeError(f"the shared export is not a valid session export: {exc}") from None
    return session, messages, proofs


class SessionPersistence:
    """Saving, loading and sharing sessions (see the module docstring)."""

    def __init__(
        self, storage: S5ConversationStore | None, config: SessionConfig, *, emit: Emit
    ) -> None:
        self.storage = storage
        self.config = config
        self._emit = emit

    @property
    def enabled(self) -> bool:
        """Whether every exchange is saved (a store is configured and persistence is on)."""
        return self.storage is not None and self.config.persistence_enabled

    def require(self) -> S5ConversationStore:
        """The store, or a clear error when none is configured."""
        if self.storage is None:
            raise InvalidRequestError(
                "no S5 storage configured: pass storage=S5ConversationStore(...) to SessionManager"
            )
        return self.storage

    def conversation_id(self, session_id: str) -> str:
        """Where the conversation is kept (its path on S5, or the session id)."""
        if self.enabled and self.storage is not None:
            return self.storage.conversation_path(session_id)
        return session_id

    async def persist(
        self, state: SessionState, messages: list[Message], *, replace: bool = False
    ) -> None:
        """Append ``messages`` to the stored conversation. A storage failure is logged and
        announced (``persistence_failed`` event); the in-memory history is kept."""
        if not self.enabled:
            return
        assert self.storage is not None
        session = state.session
        if state.unsaved:
            # A session that came from elsewhere (import, given context): write it whole.
            messages, replace = list(state.messages), True
        try:
            await self.storage.save_conversation(
                session.id, messages, metadata=sdk_metadata(session), replace=replace
            )
            state.unsaved = False
        except FabstirError as exc:
            log.warning("could not save session %s to S5: %s", session.id, exc)
            await self._emit("persistence_failed", session, exc)

    # --- export and share ------------------------------------------------------------

    @staticmethod
    def export(state: SessionState) -> dict[str, Any]:
        """A self-contained export: the session, its messages and checkpoint proofs."""
        export = export_session(state.session, state.messages)
        export["checkpointProofs"] = [p.to_dict() for p in state.proofs]
        return export

    async def import_export(
        self, share_code: str
    ) -> tuple[Session, list[Message], list[CheckpointProof]]:
        """The session, messages and proofs behind a share code (the session is paused)."""
        return session_from_export(await self.require().import_session(share_code))

    # --- loading -----------------------------------------------------------------------

    async def is_stored(self, session_id: str) -> bool:
        """Whether storage holds a conversation with this id."""
        if self.storage is None:
            return False
        return await self.storage.load_conversation(session_id) is not None

    async def stored_history(self, session_id: str) -> list[Message] | None:
        """The stored conversation's messages, or ``None`` (no store, or nothing stored)."""
        if self.storage is None:
            return None
        stored = await self.storage.load_conversation(session_id)
        if stored is None:
            return None
        return [message_from_sdk(m) for m in stored.get("messages") or []]

    async def stored_session(
        self, session_id: str, *, default_host_url: str | None, chain_id: int
    ) -> tuple[Session, list[Message]] | None:
        """A session rebuilt from its stored conversation (``None`` if nothing is stored)."""
        if self.storage is None:
            return None
        stored = await self.storage.load_conversation(session_id)
        if stored is None:
            return None
        meta = dict(stored.get("metadata") or {})
        job = meta.get("jobId")
        session = Session(
            id=session_id,
            host_url=str(meta.get("endpoint") or default_host_url or ""),
            model=str(meta.get("model") or ""),
            job_id=int(job) if isinstance(job, (int, str)) and str(job).isdigit() else None,
            chain_id=int(meta.get("chainId") or chain_id),
            token_count=int(meta.get("totalTokens") or 0),
            conversation_id=self.storage.conversation_path(session_id),
        )
        messages = [message_from_sdk(m) for m in stored.get("messages") or []]
        return session, messages
