"""The Fabstir host protocol (``/v1/ws``, plaintext mode) as typed frames. No I/O here.

One parser (:func:`parse_frame`) turns a text frame into a typed model, one encoder
(:func:`encode_frame`) turns a model into a text frame. The client and the reference
host both use them, so the two cannot drift apart.

The shapes follow what deployed hosts accept (``docs/PROTOCOL.md``): aliases such as
``sessionId``/``session_id`` and ``jobId``/``job_id`` are accepted on input; numbers
that hosts accept as decimal strings are accepted as such.

>>> frame = parse_frame('{"type":"stream_chunk","content":"Hel","tokens":1,"id":"p-1"}')
>>> type(frame).__name__, frame.content, frame.tokens, frame.id
('StreamChunk', 'Hel', 1, 'p-1')
>>> encode_frame(StreamCancel(session_id="123"))
'{"type":"stream_cancel","session_id":"123","reason":"user_cancelled"}'

An unknown ``type`` is returned as :class:`UnknownFrame` (hosts ignore unknown types,
and so does the client); anything that is not a frame raises :class:`ProtocolError`
with a bounded excerpt of the input:

>>> parse_frame('{"type":"future_thing","x":1}').type
'future_thing'
>>> parse_frame('not json')
Traceback (most recent call last):
...
langchain_fabstir.errors.ProtocolError: [PROTOCOL_ERROR] frame is not valid JSON: 'not json'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationError,
    field_validator,
    model_serializer,
)

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import ProtocolError

__all__ = [
    "DEFAULT_CHAIN_ID",
    "EXCERPT_LIMIT",
    "EXTENSION_FEATURES",
    "ClientFrame",
    "Connected",
    "ContextMessage",
    "ErrorFrame",
    "Frame",
    "HostFrame",
    "InferenceRequest",
    "PromptFrame",
    "SessionInit",
    "SessionInitAck",
    "StreamCancel",
    "StreamChunk",
    "StreamEnd",
    "StreamResumed",
    "UnknownFrame",
    "Usage",
    "encode_frame",
    "excerpt",
    "loads",
    "parse_frame",
    "prompt_payload",
]

DEFAULT_CHAIN_ID = 84532
EXCERPT_LIMIT = 200
"""How many characters of an offending frame an error message quotes."""


def loads(raw: str | bytes) -> Any:
    """``json.loads`` for peer input: too deep or not JSON -> :class:`ProtocolError`."""
    try:
        return loads_untrusted(raw)
    except ValueError as exc:  # (UnicodeDecodeError is a ValueError)
        shown = excerpt(raw)
        why = str(exc) if "deeper" in str(exc) or "too deep" in str(exc) else "is not valid JSON"
        raise ProtocolError(f"frame {why}: {shown}", details={"excerpt": shown}) from None


def excerpt(raw: str | bytes, limit: int = EXCERPT_LIMIT) -> str:
    """A bounded, printable excerpt of a frame for error messages.

    >>> excerpt("x" * 500)[-20:]
    "xxxxxx… (500 chars)'"
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
    if len(text) > limit:
        return repr(text[:limit] + f"… ({len(text)} chars)")
    return repr(text)


def _int_from_decimal(value: Any) -> Any:
    """Hosts accept job and chain ids as numbers or decimal strings."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


class _Frame(BaseModel):
    """Base of all frames: unknown extra fields are kept (peers may add fields)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    type: str


# --- Shared pieces ----------------------------------------------------------------------


class ContextMessage(BaseModel):
    """One message of ``conversation_context``."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str
    timestamp: int | None = None


class Usage(BaseModel):
    """Token usage as hosts report it in ``stream_end``."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    context_window_size: int | None = None


class InferenceRequest(BaseModel):
    """The request body of a prompt (nested ``request``) and of ``POST /v1/inference``.

    ``model``, ``prompt`` and ``max_tokens`` are required, as on real hosts. Fields past
    ``thinking`` are this project's extensions; a host that did not announce them
    ignores them, and the client only sends them to hosts that did.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str
    prompt: str
    max_tokens: Annotated[int, Strict()] = Field(ge=0)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    stream: bool = True
    request_id: str | None = None
    conversation_context: list[ContextMessage] = Field(default_factory=list)
    # Real hosts take only a number here (a decimal string makes the request fail).
    job_id: Annotated[int, Strict()] | None = Field(default=None, alias="jobId")
    session_id: str | None = None
    chain_id: int | None = Field(default=None, alias="chainId")
    web_search: bool | None = None
    max_searches: int | None = None
    search_queries: list[str] | None = None
    thinking: str | None = None
    # --- extensions (announced by the host in `connected.features`) ---
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None

    @field_validator("chain_id", mode="before")
    @classmethod
    def _chain_decimal(cls, value: Any) -> Any:
        return _int_from_decimal(value)


# --- Client -> host ---------------------------------------------------------------------


class SessionInit(_Frame):
    """``session_init``: binds the socket to a job/session. Answered by ``session_init_ack``."""

    type: Literal["session_init"] = "session_init"
    chain_id: int = Field(default=DEFAULT_CHAIN_ID, alias="chainId")
    session_id: str | None = Field(default=None, alias="sessionId")
    job_id: int | None = Field(default=None, alias="jobId")
    user_address: str | None = None
    id: str | None = None

    @field_validator("job_id", "chain_id", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        return _int_from_decimal(value)

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class PromptFrame(_Frame):
    """``prompt`` (session fields merged in by the host) or ``inference`` (used as is).

    With a nested ``request`` the host uses it; without one it builds the request from
    the top-level fields with the defaults of real hosts.
    """

    type: Literal["prompt", "inference"] = "prompt"
    prompt: str | None = None
    request: InferenceRequest | None = None
    chain_id: int | None = Field(default=None, alias="chainId")
    job_id: int | str | None = Field(default=None, alias="jobId")
    session_id: str | None = Field(default=None, alias="sessionId")
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool | None = None
    id: str | None = None

    def effective_request(
        self, *, session_id: str | None = None, job_id: int | None = None
    ) -> InferenceRequest:
        """The request a real host would run for this frame.

        >>> f = PromptFrame(prompt="hi")
        >>> r = f.effective_request(session_id="s", job_id=7)
        >>> r.model, r.max_tokens, r.temperature, r.session_id, r.job_id
        ('tiny-vicuna', 4000, 0.7, 's', 7)
        """
        if self.request is not None:
            if self.type == "inference":
                return self.request
            updates: dict[str, Any] = {}
            if self.request.session_id is None and session_id is not None:
                updates["session_id"] = session_id
            if self.request.job_id is None and job_id is not None:
                updates["job_id"] = job_id
            return self.request.model_copy(update=updates) if updates else self.request
        return InferenceRequest(
            model=self.model or "tiny-vicuna",
            prompt=self.prompt or "",
            max_tokens=self.max_tokens if self.max_tokens is not None else 4000,
            temperature=self.temperature if self.temperature is not None else 0.7,
            stream=True if self.stream is None else self.stream,
            session_id=session_id,
            job_id=job_id,
        )


class StreamCancel(_Frame):
    """``stream_cancel``: asks the host to stop the answer it is streaming."""

    type: Literal["stream_cancel"] = "stream_cancel"
    session_id: str | None = Field(default=None, alias="sessionId")
    reason: str = "user_cancelled"


# --- Host -> client ---------------------------------------------------------------------


class Connected(_Frame):
    """The greeting. Real hosts send only ``message``; extras announce extensions.

    This project's reference host adds ``features`` (e.g. ``["resume", "tools"]``),
    ``models``, ``host_address``, ``host_public_key`` (with the ``encryption`` feature:
    compressed secp256k1, ``0x``-hex) and ``version``.
    """

    type: Literal["connected"] = "connected"
    message: str = ""
    features: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    host_address: str | None = None
    host_public_key: str | None = None
    version: str | None = None


class SessionInitAck(_Frame):
    type: Literal["session_init_ack"] = "session_init_ack"
    status: str = "success"
    session_id: str | None = None
    job_id: int | None = None
    chain_id: int | None = None
    message: str | None = None
    id: str | None = None

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("job_id", "chain_id", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        return _int_from_decimal(value)


class StreamChunk(_Frame):
    """One generated token (``tokens`` is 1), or the final empty chunk (``tokens`` 0)."""

    type: Literal["stream_chunk"] = "stream_chunk"
    content: str = ""
    tokens: int = 0
    id: str | None = None


class StreamEnd(_Frame):
    """End of an answer. ``finish_reason`` and ``usage`` are optional on real hosts."""

    type: Literal["stream_end"] = "stream_end"
    reason: str = "complete"
    tokens_used: int = 0
    id: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    vlm_tokens: int = 0
    session_id: str | None = None

    @model_serializer(mode="wrap")
    def _vlm_only_when_spent(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Nodes send ``vlm_tokens`` only when their vision model spent some."""
        data = handler(self)
        if isinstance(data, dict) and not data.get("vlm_tokens"):
            data.pop("vlm_tokens", None)
        return data


class ErrorFrame(_Frame):
    """An error, always followed by ``stream_end`` with reason ``error``.

    Context overflow comes with ``code``/``message``; everything else as a bare
    ``error`` string.
    """

    type: Literal["error"] = "error"
    code: str | None = None
    message: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    context_window_size: int | None = None
    id: str | None = None

    @property
    def text(self) -> str:
        """The human-readable error text, whichever shape the host used."""
        return self.message or self.error or self.code or "unspecified host error"


class StreamResumed(_Frame):
    """The ``resume`` extension: the host's first frame after a resume request, saying from
    which token (``offset``) the answer ``id`` goes on. A client that asked for an exact
    resume and gets a chunk without it knows the host restarted the answer instead."""

    type: Literal["stream_resumed"] = "stream_resumed"
    id: str | None = None
    offset: Annotated[int, Strict()] = Field(ge=0)


class UnknownFrame(_Frame):
    """A frame whose ``type`` this version does not know. Ignored by the client."""


ClientFrame = SessionInit | PromptFrame | StreamCancel
HostFrame = Connected | SessionInitAck | StreamChunk | StreamEnd | ErrorFrame | StreamResumed
Frame = ClientFrame | HostFrame | UnknownFrame

_FRAME_TYPES: dict[str, type[_Frame]] = {
    "session_init": SessionInit,
    "prompt": PromptFrame,
    "inference": PromptFrame,
    "stream_cancel": StreamCancel,
    "connected": Connected,
    "session_init_ack": SessionInitAck,
    "stream_chunk": StreamChunk,
    "stream_end": StreamEnd,
    "error": ErrorFrame,
    "stream_resumed": StreamResumed,
}


def parse_frame(raw: str | bytes) -> _Frame:
    """Parse one text frame into its typed model.

    Raises:
        ProtocolError: the input is not JSON, not an object, has no string ``type``, or a
            known frame type has fields of the wrong type. The message quotes a bounded
            excerpt of the input and names the failing fields.
    """
    return frame_from_obj(loads(raw), raw)


def frame_from_obj(data: Any, raw: str | bytes | None = None) -> _Frame:
    """Turn an already-decoded JSON value into a typed frame (see :func:`parse_frame`)."""
    if not isinstance(data, dict):
        shown = excerpt(raw if raw is not None else json.dumps(data, default=str))
        raise ProtocolError(f"frame is not a JSON object: {shown}", details={"excerpt": shown})
    kind = data.get("type")
    if not isinstance(kind, str):
        shown = excerpt(raw if raw is not None else json.dumps(data, default=str))
        raise ProtocolError(
            f"frame has no string 'type' field: {shown}", details={"excerpt": shown}
        )
    model = _FRAME_TYPES.get(kind, UnknownFrame)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        shown = excerpt(raw if raw is not None else json.dumps(data, default=str))
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<frame>'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise ProtocolError(
            f"malformed {kind!r} frame ({problems}): {shown}",
            details={"excerpt": shown, "frame_type": kind},
        ) from None


def encode_frame(frame: _Frame) -> str:
    """Encode a frame as the compact JSON text a peer expects (``None`` fields omitted).

    >>> encode_frame(SessionInit(session_id="1", job_id=1, id="a"))
    '{"type":"session_init","chain_id":84532,"session_id":"1","job_id":1,"id":"a"}'
    """
    return frame.model_dump_json(exclude_none=True)


EXTENSION_FEATURES = {
    "seed": "seed",
    "tools": "tools",
    "tool_choice": "tools",
    "parallel_tool_calls": "tools",
    "checkpoint": "checkpoints",
    "response_format": "response_format",
}
"""Request fields this client sends only to hosts that announced the feature."""


def prompt_payload(
    *,
    session_id: str,
    chain_id: int,
    job_id: int | None,
    prompt: str,
    context: list[dict[str, str]],
    request_id: str,
    model: str,
    max_tokens: int,
    temperature: float | None,
    features: Sequence[str] = (),
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``prompt`` frame as a dict, in the shape deployed hosts and the SDK use.

    Extension fields (``seed``, ``tools``, ``response_format``...) are included only when
    ``features`` (what the host announced) has the matching feature; ``None`` values never.

    >>> p = prompt_payload(session_id="s", chain_id=84532, job_id=None, prompt="hi",
    ...     context=[], request_id="1-a", model="m", max_tokens=8, temperature=0.0,
    ...     extensions={"seed": 1, "stop": None})
    >>> p["type"], p["request"]["prompt"], "seed" in p["request"], "stop" in p["request"]
    ('prompt', 'hi', False, False)
    """
    request: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "request_id": request_id,
        "conversation_context": context,
        "session_id": session_id,
    }
    if job_id is not None:
        request["job_id"] = job_id
    for key, value in (extensions or {}).items():
        if value is None:
            continue
        feature = EXTENSION_FEATURES.get(key)
        if feature is not None and feature not in features:
            continue
        request[key] = value
    payload: dict[str, Any] = {
        "type": "prompt",
        "chain_id": chain_id,
        "prompt": prompt,
        "request": request,
        "id": request_id,
    }
    if job_id is not None:
        payload["jobId"] = str(job_id)
    return payload
