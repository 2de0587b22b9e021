"""The SessionManager's persistence: conversations on S5, resume, export and share.

Mixed into :class:`~langchain_fabstir.session.SessionManager`. With a
:class:`~langchain_fabstir.persistence.S5ConversationStore` (``storage=``) and
``SessionConfig.persistence_enabled``, every exchange is appended to the conversation's
``conversation.json`` (the Fabstir SDK's shape), so a session can be resumed from another
process or device, exported, and shared by a share code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from langchain_fabstir.checkpoints import CheckpointProof, CheckpointTracker
from langchain_fabstir.errors import (
    CheckpointError,
    FabstirError,
    InvalidRequestError,
    SessionNotFoundError,
)
from langchain_fabstir.models import Message, Session, utcnow
from langchain_fabstir.persistence import export_session, sdk_metadata
from langchain_fabstir.session_checkpoints import new_tracker

if TYPE_CHECKING:
    from langchain_fabstir.discovery import HostDiscovery
    from langchain_fabstir.models import SessionConfig
    from langchain_fabstir.persistence import S5ConversationStore
    from langchain_fabstir.session import _SessionState
    from langchain_fabstir.transport import Transport


class _Manager(Protocol):
    """What the mixin uses of :class:`~langchain_fabstir.session.SessionManager`."""

    config: SessionConfig
    storage: S5ConversationStore | None
    discovery: HostDiscovery | None
    default_host_url: str | None
    chain_id: int
    _sessions: dict[str, _SessionState]
    _private_key: Any
    _clock: Callable[[], float]

    def _state(self, session_id: str, *, active: bool = False) -> _SessionState: ...
    async def _emit(self, event: str, *args: Any) -> None: ...
    async def _drop_connection(
        self, state: _SessionState, failed: BaseException | None = None
    ) -> None: ...
    async def _first_connection(self, state: _SessionState) -> Transport: ...
    def _persisting(self) -> bool: ...
    def _require_storage(self) -> Any: ...
    def _adopt(
        self, session: Session, messages: list[Message], proofs: list[CheckpointProof]
    ) -> _SessionState: ...
    async def _load_for_resume(
        self, session_id: str, given: list[Message] | None
    ) -> tuple[Session, list[Message]]: ...


__all__ = ["SessionStorageMixin"]

log = logging.getLogger(__name__)


def _message_from_sdk(item: dict[str, Any]) -> Message:
    ts = item.get("timestamp")
    when = (
        datetime.fromtimestamp(ts / 1000, timezone.utc)
        if isinstance(ts, (int, float))
        else utcnow()
    )
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        role = "user"
    metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
    return Message(
        role=role, content=str(item.get("content", "")), timestamp=when, metadata=metadata or {}
    )


class SessionStorageMixin:
    """Persistence, resume, export and share for :class:`SessionManager`."""

    # --- saving ------------------------------------------------------------------------

    def _persisting(self: _Manager) -> bool:
        return self.storage is not None and self.config.persistence_enabled

    async def _persist(
        self: _Manager,
        state: _SessionState,
        messages: list[Message],
        *,
        replace: bool = False,
    ) -> None:
        """Append ``messages`` to the stored conversation. A storage failure is logged and
        announced (``persistence_failed`` event); the in-memory history is kept."""
        if not self._persisting():
            return
        assert self.storage is not None
        session = state.session
        if state.unsaved:
            # A session that came from elsewhere (import, given context): write it whole.
            messages, replace = list(state.messages), True
        try:
            await self.storage.save_conversation(
                session.id,
                messages,
                metadata=sdk_metadata(session),
                replace=replace,
            )
            state.unsaved = False
        except FabstirError as exc:
            log.warning("could not save session %s to S5: %s", session.id, exc)
            await self._emit("persistence_failed", session, exc)

    async def save_to_s5(self: _Manager, session_id: str, data: dict[str, Any]) -> str:
        """Save any JSON data of a session as an encrypted S5 blob; returns its CID
        (seed: ``saveToS5``)."""
        self._state(session_id)
        return await self._require_storage().save_to_s5(data)

    async def load_from_s5(self: _Manager, cid: str) -> dict[str, Any]:
        """Load what :meth:`save_to_s5` stored (seed: ``loadFromS5``)."""
        return await self._require_storage().load_from_s5(cid)

    def _require_storage(self: _Manager) -> Any:
        if self.storage is None:
            raise InvalidRequestError(
                "no S5 storage configured: pass storage=S5ConversationStore(...) to SessionManager"
            )
        return self.storage

    # --- export and share ------------------------------------------------------------

    async def export_session(self: _Manager, session_id: str) -> dict[str, Any]:
        """A self-contained export: the session, its messages and checkpoint proofs."""
        state = self._state(session_id)
        export = export_session(state.session, state.messages)
        export["checkpointProofs"] = [p.to_dict() for p in state.proofs]
        return export

    async def generate_share_code(self: _Manager, export: dict[str, Any]) -> str:
        """Upload ``export`` encrypted under a fresh key; the code carries where it is and
        the key (seed: ``generateShareCode``). Useless without its key part."""
        return str(await self._require_storage().generate_share_code(export))

    async def import_session(self: _Manager, share_code: str) -> Session:
        """The session behind a share code, ready for :meth:`resume_session` (seed:
        ``importSession``). It is paused until resumed."""
        export = await self._require_storage().import_session(share_code)
        data = dict(export.get("session") or {})
        messages = [_message_from_sdk(m) for m in export.get("messages") or []]
        session = Session.model_validate({**data, "status": "paused"})
        proofs = [CheckpointProof.from_dict(p) for p in export.get("checkpointProofs") or []]
        self._adopt(session, messages, proofs)
        return session

    def _adopt(
        self: _Manager,
        session: Session,
        messages: list[Message],
        proofs: list[CheckpointProof],
    ) -> _SessionState:
        """Make a known conversation a session of this manager (no socket yet)."""
        from langchain_fabstir.session import _SessionState

        state = _SessionState(session)
        state.messages = list(messages)
        state.last_used = self._clock()
        state.unsaved = True
        if self._persisting() and self.storage is not None:
            session.conversation_id = self.storage.conversation_path(session.id)
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

    # --- resume ------------------------------------------------------------------------

    async def resume_session(
        self: _Manager,
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
                await self._drop_connection(state)
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
        session.status = "active"
        state.last_used = self._clock()
        await self._first_connection(state)
        await self._emit("session_resumed", session)
        return session

    async def _load_for_resume(
        self: _Manager, session_id: str, given: list[Message] | None
    ) -> tuple[Session, list[Message]]:
        stored = None
        if self.storage is not None and given is None:
            stored = await self.storage.load_conversation(session_id)
        if given is None and stored is None:
            raise SessionNotFoundError(
                f"no session {session_id!r} here, no history given and none in storage",
                session_id=session_id,
            )
        meta = dict((stored or {}).get("metadata") or {})
        job = meta.get("jobId")
        session = Session(
            id=session_id,
            host_url=str(meta.get("endpoint") or self.default_host_url or ""),
            model=str(meta.get("model") or ""),
            job_id=int(job) if isinstance(job, (int, str)) and str(job).isdigit() else None,
            chain_id=int(meta.get("chainId") or self.chain_id),
            token_count=int(meta.get("totalTokens") or 0),
            conversation_id=(
                self.storage.conversation_path(session_id) if self.storage else session_id
            ),
        )
        messages = (
            given
            if given is not None
            else [_message_from_sdk(m) for m in (stored or {}).get("messages") or []]
        )
        return session, messages

    async def _stored_history(self: _Manager, session_id: str) -> list[Message] | None:
        if self.storage is None:
            return None
        stored = await self.storage.load_conversation(session_id)
        if stored is None:
            return None
        return [_message_from_sdk(m) for m in stored.get("messages") or []]
