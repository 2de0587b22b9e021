"""What the session layer keeps per session, and the ids it sends."""

from __future__ import annotations

import asyncio
import time
import uuid

from langchain_fabstir.checkpoints import CheckpointProof, CheckpointTracker
from langchain_fabstir.sessions.models import Message, Session
from langchain_fabstir.sessions.transport import Transport
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
        self.lock = asyncio.Lock()
        self.proofs: list[CheckpointProof] = []
        self.tracker: CheckpointTracker | None = None
        self.pending_request: InferenceRequest | None = None
        self.alternates: list[str] = []  # other hosts to fail over to, in order
        self.unsaved = False  # history not yet written to storage as a whole
        self.last_used = last_used
