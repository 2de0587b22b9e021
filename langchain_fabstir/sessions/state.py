"""What the session layer keeps per session, and the ids it sends."""

from __future__ import annotations

import asyncio
import time
import uuid

from langchain_fabstir.checkpoints import CheckpointProof, CheckpointTracker
from langchain_fabstir.sessions.models import Message, Session
from langchain_fabstir.sessions.sealed import SealedConversation
from langchain_fabstir.sessions.transport import Transport
from langchain_fabstir.sessions.trust import HostTrust
from langchain_fabstir.wire.frames import InferenceRequest

__all__ = ["SessionState", "new_request_id"]


def new_request_id() -> str:
    """An id in the SDK's shape, ``<epoch ms>-<suffix>``, with a random suffix: hosts key
    resumable answers by it, so it must not be guessable or repeat across processes."""
    return f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:16]}"


class SessionState:
    """One session as the manager holds it (the public part is ``session``)."""

    def __init__(self, session: Session, *, last_used: float = 0.0) -> None:
        self.session = session
        self.messages: list[Message] = []
        self.transport: Transport | None = None
        self.sealed: SealedConversation | None = None
        """The encrypted conversation of :attr:`transport` (``None``: plaintext)."""
        self.lock = asyncio.Lock()
        self.proofs: list[CheckpointProof] = []
        self.tracker: CheckpointTracker | None = None
        self.pending_request: InferenceRequest | None = None
        self.alternates: list[str] = []  # other hosts to fail over to, in order
        self.unsaved = False  # history not yet written to storage as a whole
        self.last_used = last_used
        self.host_keys: dict[str, str] = {}
        """Host public keys from a trusted source (the caller, the chain), by host URL."""
        self.host_addresses: dict[str, str] = {}
        """The address the host at a URL must hold the key of (a paid job's host)."""
        self.node_carry: tuple[str, str, list[dict[str, str]] | None] | None = None
        """Encrypted mode: ``(host_url, node session id, conversation held)`` of the
        session's last socket (see :meth:`node_session`)."""
        self.handover: tuple[str, str] | None = None
        """``(host_url, resume_token)`` of the session's last socket: presented to the same
        host at the next ``session_init`` so that it hands the new socket what the old one
        owned. Never shown to another host."""

    def trust(self, host_url: str) -> HostTrust:
        """What this session trusts about the host at ``host_url``."""
        return HostTrust(
            key=self.host_keys.get(host_url), address=self.host_addresses.get(host_url)
        )

    def node_session(self, host_url: str) -> tuple[str, list[dict[str, str]] | None] | None:
        """Encrypted mode: the node session id the session's last socket to ``host_url``
        used, and the conversation it held (a node keeps a session id's history across
        sockets), for a new socket to the same host."""
        if self.node_carry is not None and self.node_carry[0] == host_url:
            return self.node_carry[1], self.node_carry[2]
        return None

    def remember_socket(self, transport: Transport, sealed: SealedConversation | None) -> None:
        """Keep what a new socket to the same host needs from this one (its token, its
        node session)."""
        if sealed is not None and sealed.node_session_id is not None:
            self.node_carry = (transport.host_url, sealed.node_session_id, sealed.held)
        token = (transport.greeting.model_extra or {}).get("resume_token")
        if isinstance(token, str):
            self.handover = (transport.host_url, token)

    def handover_token(self, host_url: str) -> str | None:
        """The token to present to ``host_url`` (only the host that issued it)."""
        if self.handover is not None and self.handover[0] == host_url:
            return self.handover[1]
        return None
