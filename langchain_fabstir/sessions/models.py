"""The seed API's data types, Pythonic: ``SessionConfig``, ``Session``, ``Message``, ...

Field names are snake_case versions of the seed's TypeScript names; times are
``datetime`` (UTC) and durations are seconds.

>>> cfg = SessionConfig(checkpoint_interval=500)
>>> cfg.checkpoint_interval, cfg.reconnect_attempts, cfg.session_timeout
(500, 3, 3600.0)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from langchain_fabstir.wire.encryption import RecoveryKey
from langchain_fabstir.wire.frames import Usage

__all__ = [
    "GeneratedImage",
    "Message",
    "Session",
    "SessionConfig",
    "SessionStatus",
    "SessionSummary",
    "StreamResult",
    "utcnow",
]

SessionStatus = Literal["active", "paused", "ended"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class SessionConfig(BaseModel):
    """How sessions behave (the seed's ``SessionConfig`` plus the timeouts it implies).

    All durations are in seconds.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    checkpoint_interval: int = Field(default=1000, ge=1)
    """Generated tokens between automatic checkpoints."""
    persistence_enabled: bool = True
    """Keep conversations in S5 when a storage backend is configured."""
    compression_enabled: bool = True
    """Negotiate permessage-deflate on the WebSocket."""
    reconnect_attempts: int = Field(default=3, ge=0)
    """The retry settings of an answer, documented once (see
    :class:`~langchain_fabstir.sessions.recovery.AnswerRecovery`): one budget per answer,
    counted in tries (every socket opened or tried after the first, every prompt sent
    again). This one: tries in a row that bring no new token before the last failure is
    raised (``HOST_DISCONNECTED``, ...): a host that drops every socket sees
    ``1 + reconnect_attempts`` sockets. Also the retries of a connection cut during
    ``session_init``. ``ChatFabstir`` sets it from its ``max_retries``."""
    max_resumes: int = Field(default=10, ge=0)
    """The total bound of the same budget: tries of one answer in all, progress or not (an
    answer never uses more than ``1 + max_resumes`` sockets and sends)."""
    session_timeout: float = Field(default=3600.0, gt=0)
    """An idle session past this raises ``SESSION_TIMEOUT`` on its next use."""
    open_timeout: float = Field(default=10.0, gt=0)
    """Connecting and receiving the host's greeting."""
    ack_timeout: float = Field(default=10.0, gt=0)
    """Waiting for ``session_init_ack``."""
    first_token_timeout: float = Field(default=60.0, gt=0)
    """From sending a prompt to its first frame (a host that never answers ends here)."""
    chunk_timeout: float = Field(default=30.0, gt=0)
    """Inactivity between two frames of one answer (frames that are not part of the
    answer do not count as activity)."""
    answer_timeout: float | None = Field(default=900.0, gt=0)
    """The whole answer, from sending the prompt to its end, resumes included: a host
    that keeps streaming forever ends here with ``RESPONSE_TIMEOUT`` (``None``: no limit).
    It bounds the answer's recovery too: a reconnect is cut at the deadline, and a rate
    limit that asks for a longer wait than is left is not waited. ``ChatFabstir`` sets it
    from its ``timeout``."""
    max_answer_chars: int = Field(default=4_000_000, ge=1)
    """Characters one answer may have; a host that sends more is stopped
    (``ANSWER_TOO_LARGE``). Bounds the client's memory per answer."""
    max_tokens_overrun: int = Field(default=16, ge=0)
    """Tokens a host may send past the request's ``max_tokens`` (at least a tenth of it
    is allowed) before the client stops the answer itself: ``stream_cancel``, the socket
    is closed, and the answer ends with ``finish_reason="length"``."""
    max_frame_size: int = Field(default=4 * 1024 * 1024, ge=1024)
    ping_interval: float | None = 20.0
    max_context_messages: int = Field(default=10, ge=1)
    """Real hosts use only the last 10 context messages; the client sends at most this
    many, always keeping system messages first."""
    max_retry_after: float = Field(default=30.0, ge=0)
    """The longest "retry after N seconds" of a rate-limited host that is waited out."""
    require_verified_checkpoints: bool = False
    """Make a checkpoint that cannot be made or verified fatal (default: a warning)."""
    encryption: Literal["auto", "required", "off"] = "auto"
    """End-to-end encryption (PROTOCOL.md section 4). ``"auto"``: encrypt whenever the host's
    public key is known (given to ``create_session(host_public_key=...)``, in the host's
    on-chain record, or announced by the host with a matching ``host_address``, or
    recovered from ``/v1/auth/challenge``); ``"required"``: never send a prompt in clear
    (``ENCRYPTION_UNAVAILABLE`` instead; a paid session whose host proves no key is not
    paid); ``"off"``: plaintext. A key from a trusted source (the caller, the chain, or one
    proven for a paid job's host address) makes encryption required for that session in
    ``"auto"`` too, and a session that ran encrypted never falls back to plaintext. The
    host must hold the key of the address the session trusts (``HOST_IDENTITY_MISMATCH``
    otherwise; see :mod:`langchain_fabstir.sessions.trust`)."""
    allow_model_fallback: bool = False
    """A model the host does not list (in its greeting) is refused with
    ``MODEL_NOT_AVAILABLE`` before any prompt is sent; ``True``: the host's first listed
    model serves instead, and that is the model reported (``StreamResult.model``,
    ``session.model``). Hosts that list no models (deployed nodes) and sessions with a
    job (whose model the host registered on chain) are not checked."""
    default_max_tokens: int = Field(default=500, ge=1)
    default_temperature: float = Field(default=0.7, ge=0.0, le=2.0)


class Message(BaseModel):
    """One message of a conversation (the seed's ``Message``)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: str
    timestamp: datetime = Field(default_factory=utcnow)
    token_count: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_sdk(self) -> dict[str, Any]:
        """This message in the SDK's ``conversation.json`` shape.

        >>> m = Message(role="user", content="hi", token_count=2).to_sdk()
        >>> m["role"], m["content"], m["metadata"], isinstance(m["timestamp"], int)
        ('user', 'hi', {'tokenCount': 2}, True)
        """
        metadata = dict(self.metadata)
        if self.token_count is not None:
            metadata.setdefault("tokenCount", self.token_count)
        return {
            "role": self.role,
            "content": self.content,
            "timestamp": int(self.timestamp.timestamp() * 1000),
            "metadata": metadata,
        }


class Session(BaseModel):
    """A conversation with one host (the seed's ``Session``)."""

    model_config = ConfigDict(validate_assignment=False)

    id: str
    host_url: str
    model: str
    status: SessionStatus = "active"
    conversation_id: str | None = None
    token_count: int = 0
    checkpoint_count: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    last_activity: datetime = Field(default_factory=utcnow)
    # Beyond the seed: the parameters the session was created with.
    job_id: int | None = None
    chain_id: int = 84532
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None
    encrypted: bool = False
    """Whether the session's socket runs in encrypted mode (section 4)."""
    _recovery_key: RecoveryKey | None = PrivateAttr(default=None)
    _node_fresh: bool = PrivateAttr(default=False)

    @property
    def recovery_key(self) -> RecoveryKey | None:
        """The key this session's S5 checkpoint deltas are sealed to (section 4.5), once
        it ran encrypted; ``None`` for a plaintext session.

        Its public half is the ``recoveryPublicKey`` of every ``encrypted_session_init``
        of the session (the same across reconnects and failovers): the manager's
        ``recovery_key`` when given (e.g. the TypeScript SDK's key for the same user,
        :func:`~langchain_fabstir.s5.sdk.sdk_encryption_key`), else its ``private_key``
        (so a later process can open the deltas too), else a key made for the session and
        kept only in memory. Pass it to
        :func:`~langchain_fabstir.checkpoints.published.fetch_host_checkpoints`
        (``recovery_key=``), or call ``SessionManager.fetch_host_checkpoints``, which
        does. It is not part of ``model_dump()`` or ``repr``, and its own ``repr`` shows
        the public key only.
        """
        return self._recovery_key

    def _claim_node_session(self) -> bool:
        """True once, at the first encrypted init of a session created in this process:
        no node holds a conversation under its id yet (``sessions/conversation.py``)."""
        fresh, self._node_fresh = self._node_fresh, False
        return fresh

    def _bind_recovery_key(self, make: Callable[[], RecoveryKey]) -> RecoveryKey:
        """The session's recovery key, made by ``make`` the first time (connection.py)."""
        if self._recovery_key is None:
            self._recovery_key = make()
        return self._recovery_key


class SessionSummary(BaseModel):
    """What :meth:`SessionManager.end_session` returns."""

    final_token_count: int
    checkpoint_proofs: list[Any] = Field(default_factory=list)
    conversation_id: str | None = None
    job_id: int | None = None
    """The session job on chain, for a paid session (or one given ``job_id=``)."""
    settlement: dict[str, Any] | None = None
    """The job on chain when the session ended (``state``, ``tokens_used``, ``deposit``,
    ``refunded_to_user``, ``deadline``...; see :class:`~langchain_fabstir.chain.Settlement`).
    Hosts settle after the socket closes: right after ``end_session`` it is usually
    ``active``; :meth:`SessionManager.watch_settlement` waits for the end."""


_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
IMAGE_SIZES = ("256x256", "512x512", "768x768", "1024x1024", "1024x768", "768x1024")
"""The sizes nodes generate (PROTOCOL.md 6.3)."""
MAX_IMAGE_PROMPT_CHARS = 2000
"""Longest image prompt the SDK sends (and the client)."""
MAX_IMAGE_BYTES = 16 * 1024 * 1024
"""Largest generated image the client takes (a 1024x1024 PNG is a few MB)."""


class GeneratedImage(BaseModel):
    """An image a host generated inside an encrypted session (PROTOCOL.md 6.3).

    It comes from :meth:`~langchain_fabstir.SessionManager.generate_image` (the node's
    ``action: image_generation``), or as the answer to a prompt a node routed to its
    diffusion model itself (``StreamResult.images``). The node's metadata is kept as it
    sent it; the image was checked to be base64 of a PNG, JPEG, GIF or WebP file of at
    most :data:`MAX_IMAGE_BYTES`.

    Attributes:
        data: the image file's bytes (``base64``: the same as base64 text).
        mime_type: read from the bytes (``image/png`` on deployed nodes).
        billing: the node's ``billing`` block (``generationUnits``, ``megapixels``,
            ``steps``); with a job, ``ceil(generationUnits * 1000)`` tokens join the job's
            token count.
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    data: bytes = Field(repr=False)
    mime_type: str
    model: str | None = None
    size: str | None = None
    steps: int | None = None
    seed: int | None = None
    processing_time_ms: int | None = Field(default=None, alias="processingTimeMs")
    safety: dict[str, Any] | None = None
    billing: dict[str, Any] | None = None
    provider: str | None = None
    chain_id: int | None = Field(default=None, alias="chainId")
    host_url: str = ""
    session_id: str = ""
    request_id: str = ""

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def content_block(self) -> dict[str, Any]:
        """LangChain's standard image content block (as ``ChatFabstir`` returns it)."""
        return {"type": "image", "base64": self.base64, "mime_type": self.mime_type}

    @classmethod
    def from_node(cls, reply: dict[str, Any], **where: str) -> GeneratedImage:
        """The node's ``image_generation_result`` (decrypted JSON), checked; raises
        ``ValueError`` saying what is wrong with it."""
        text = reply.get("image")
        if not isinstance(text, str) or not text:
            raise ValueError("the image_generation_result has no image")
        if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ValueError(f"the generated image is larger than {MAX_IMAGE_BYTES} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the generated image is not valid base64") from None
        mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
        if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            mime = "image/webp"
        if mime is None:
            raise ValueError("the generated image is not a PNG, JPEG, GIF or WebP file")
        fields = {
            k: v
            for k, v in reply.items()
            if k in ("model", "size", "steps", "seed", "processingTimeMs", "safety")
            or k in ("billing", "provider", "chainId")
        }
        try:
            return cls.model_validate({**fields, "data": data, "mime_type": mime, **where})
        except ValidationError as exc:
            raise ValueError(f"the image_generation_result is malformed: {exc}") from None


class StreamResult(BaseModel):
    """How one answer ended, with the host's real counts when it sent them."""

    text: str = ""
    finish_reason: str | None = None
    reason: str = "complete"
    tokens_used: int = 0
    vlm_tokens: int = 0
    """Tokens the host's vision model spent on the prompt's images (PROTOCOL.md 6.2:
    billed to the job like generated tokens; not in ``tokens_used``)."""
    usage: Usage | None = None
    images: list[GeneratedImage] = Field(default_factory=list)
    """The answer as an image: a node that routes an encrypted prompt to its diffusion
    model ("draw a ...", PROTOCOL.md 6.3) answers with one image and no text."""
    host_url: str = ""
    session_id: str = ""
    model: str = ""
    request_id: str = ""
    resumed: int = 0
    """How many times the answer was resumed after a dropped connection."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def input_tokens(self) -> int:
        return self.usage.prompt_tokens if self.usage else 0

    @property
    def output_tokens(self) -> int:
        return self.usage.completion_tokens if self.usage else self.tokens_used
