"""One answer as a state machine without I/O: frames in, typed events out.

:class:`AnswerMachine` is the protocol of one answer, in the manner of websockets'
sans-I/O ``protocol.py``: the driver (:class:`~langchain_fabstir.sessions.stream.PromptStream`)
owns the socket, the clocks and ``stream_cancel``, and hands every received message to
:meth:`AnswerMachine.receive_raw`; what comes back is a list of events. No socket, no
event loop, no clock here, so every rule below is tested with frames alone
(``tests/unit_tests/test_answer_machine.py``).
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

from langchain_fabstir._json import escapes_surrogate, without_lone_surrogates
from langchain_fabstir.errors import (
    AnswerTooLargeError,
    DecryptionFailedError,
    DiffusionUnavailableError,
    EncryptionFailedError,
    EncryptionModeError,
    FabstirError,
    HostError,
    ImageGenerationError,
    InvalidHexError,
    InvalidNonceSizeError,
    InvalidRequestError,
    InvalidUtf8Error,
    MissingPayloadError,
    MissingPayloadFieldsError,
    MissingSessionIdError,
    ModelNotAvailableError,
    PromptBlockedError,
    ProtocolError,
    RateLimitedError,
    SessionAuthDeniedError,
    SessionKeyNotFoundError,
    TokenLimitExceededError,
)
from langchain_fabstir.sessions.models import GeneratedImage, StreamResult
from langchain_fabstir.sessions.sealed import ImageReply, SealedConversation
from langchain_fabstir.wire.frames import (
    ErrorFrame,
    StreamChunk,
    StreamEnd,
    StreamResumed,
    Usage,
    frame_from_obj,
    loads,
)

__all__ = [
    "AnswerMachine",
    "AnswerState",
    "Ended",
    "Event",
    "Failed",
    "HostCheckpoint",
    "ImageAnswer",
    "Overrun",
    "Proof",
    "Resumed",
    "Text",
    "UsageReported",
    "error_from_frame",
    "parse_retry_after",
]

_RETRY_AFTER = re.compile(r"retry after (\d+(?:\.\d+)?)\s*(ms|milliseconds|s|sec|seconds)?", re.I)


def parse_retry_after(text: str) -> float | None:
    """Seconds a host asked us to wait, from its error text.

    >>> parse_retry_after("Rate limit exceeded, retry after 60 seconds")
    60.0
    >>> parse_retry_after("slow down") is None
    True
    """
    m = _RETRY_AFTER.search(text)
    if not m:
        return None
    value = float(m.group(1))
    return value / 1000.0 if (m.group(2) or "").lower().startswith("m") else value


_REREAD = "; nothing was answered. Ask again: the next prompt goes on a new socket"
_NODE_CODES: dict[str, tuple[type[FabstirError], str]] = {
    # code -> (error, what it means to the user); PROTOCOL.md 6.7. None of these is
    # followed by a stream_end except ENCRYPTION_FAILED.
    "MISSING_SESSION_ID": (
        MissingSessionIdError,
        "host {host} got the encrypted prompt without a session id it knows" + _REREAD,
    ),
    "SESSION_KEY_NOT_FOUND": (
        SessionKeyNotFoundError,
        "host {host} holds no session key for this session (it restarted, or lost the "
        "encrypted init)" + _REREAD + " with a new encrypted init",
    ),
    "MISSING_PAYLOAD": (MissingPayloadError, "host {host} found no payload in the prompt"),
    "MISSING_PAYLOAD_FIELDS": (
        MissingPayloadFieldsError,
        "host {host} found the prompt's payload without ciphertextHex, nonceHex or aadHex",
    ),
    "INVALID_HEX_ENCODING": (InvalidHexError, "host {host} found bad hex in the prompt"),
    "INVALID_NONCE_SIZE": (InvalidNonceSizeError, "host {host} found a bad nonce in the prompt"),
    "DECRYPTION_FAILED": (
        DecryptionFailedError,
        "host {host} could not decrypt the prompt (changed on the way, or the host holds "
        "another key for this session)" + _REREAD,
    ),
    "INVALID_UTF8": (InvalidUtf8Error, "host {host} decrypted a prompt that is not UTF-8"),
    "ENCRYPTION_FAILED": (
        EncryptionFailedError,
        "host {host} could not encrypt its answer and stopped it (nothing went out in "
        "clear); ask again",
    ),
    "SESSION_AUTH_DENIED": (
        SessionAuthDeniedError,
        "host {host} denied this client the job's session (the job was paid from a vault "
        "that has not authorised your address: ask the vault's operator to authorise it)",
    ),
}
_ENDS_ALONE = frozenset(_NODE_CODES) - {"ENCRYPTION_FAILED"}
"""Node error codes after which no ``stream_end`` comes: the answer fails at once."""
_IMAGE_CODES: dict[str, type[FabstirError]] = {
    "VALIDATION_FAILED": InvalidRequestError,
    "PROMPT_BLOCKED": PromptBlockedError,
    "DIFFUSION_SERVICE_UNAVAILABLE": DiffusionUnavailableError,
    "IMAGE_GENERATION_FAILED": ImageGenerationError,
}
IMAGE_RATE_WINDOW = 60.0
"""Seconds of a node's image rate limit window (``IMAGE_GEN_RATE_LIMIT`` per 60 s)."""


def image_error(
    reply: dict[str, Any], *, host_url: str | None = None, session_id: str | None = None
) -> FabstirError:
    """A node's ``image_generation_error`` as a typed error (``details["host_code"]``: the
    node's code).

    >>> e = image_error({"type": "image_generation_error",
    ...                  "error": {"code": "PROMPT_BLOCKED", "message": "Blocked keyword"}})
    >>> e.code, e.details["host_code"]
    ('PROMPT_BLOCKED', 'PROMPT_BLOCKED')
    """
    error = reply.get("error")
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or "IMAGE_GENERATION_FAILED")[:64]
    message = str(error.get("message") or "no details")[:500]
    where: dict[str, Any] = {"host_url": host_url, "session_id": session_id}
    details = {"host_code": code}
    text = f"host {host_url} could not generate the image ({code}: {message})"
    if code == "RATE_LIMIT_EXCEEDED":
        return RateLimitedError(
            text + f"; a node allows a few images per {IMAGE_RATE_WINDOW:g} s per session",
            retry_after=IMAGE_RATE_WINDOW,
            details=details,
            **where,
        )
    kind = _IMAGE_CODES.get(code, ImageGenerationError)
    return kind(text, details=details, **where)


def error_from_frame(
    frame: ErrorFrame, *, host_url: str | None = None, session_id: str | None = None
) -> FabstirError:
    """Map a host's ``error`` frame (either shape) to a typed error.

    >>> e = error_from_frame(ErrorFrame(error="Rate limit exceeded, retry after 60 seconds"))
    >>> e.code, e.retry_after
    ('RATE_LIMITED', 60.0)
    >>> error_from_frame(ErrorFrame(code="SESSION_KEY_NOT_FOUND", message="x")).code
    'SESSION_KEY_NOT_FOUND'
    """
    text = frame.text
    where: dict[str, Any] = {"host_url": host_url, "session_id": session_id}
    known = _NODE_CODES.get(frame.code or "")
    if known is not None:
        kind, meaning = known
        said = f" (the host said: {text[:300]})" if text != frame.code else ""
        return kind(
            meaning.format(host=host_url) + said, details={"host_code": frame.code}, **where
        )
    lowered = text.lower()
    if frame.code == "TOKEN_LIMIT_EXCEEDED" or "context window" in lowered:
        return TokenLimitExceededError(
            text,
            details={
                "prompt_tokens": frame.prompt_tokens,
                "context_window_size": frame.context_window_size,
            },
            **where,
        )
    if "rate limit" in lowered or frame.code in ("RATE_LIMITED", "RATE_LIMIT_EXCEEDED"):
        return RateLimitedError(text, retry_after=parse_retry_after(text), **where)
    if "validation error" in lowered or "invalid" in lowered:
        return InvalidRequestError(text, **where)
    if "model" in lowered and ("not found" in lowered or "not available" in lowered):
        return ModelNotAvailableError(text, **where)
    return HostError(text, details={"host_code": frame.code}, **where)


# --- events -------------------------------------------------------------------------


class Text:
    """A piece of the answer's text (``tokens``: what the host counted for it)."""

    __slots__ = ("text", "tokens")

    def __init__(self, text: str, tokens: int = 1) -> None:
        self.text = text
        self.tokens = tokens

    def __repr__(self) -> str:
        return f"Text({self.text!r}, {self.tokens})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Text) and (other.text, other.tokens) == (self.text, self.tokens)

    __hash__ = None  # type: ignore[assignment]


class Resumed:
    """The answer goes on after a break: ``mode`` is ``"exact"`` (the host resumes at
    ``offset``, the pieces the consumer has) or ``"continuation"`` (a new request asks
    any host to go on from the text so far); ``host_url``: where it goes on."""

    __slots__ = ("host_url", "mode", "offset")

    def __init__(self, mode: str, offset: int, host_url: str) -> None:
        self.mode, self.offset, self.host_url = mode, offset, host_url

    def note(self) -> dict[str, Any]:
        """As ``response_metadata["fabstir_resumes"]`` lists it."""
        return {"mode": self.mode, "offset": self.offset, "host_url": self.host_url}


class HostCheckpoint:
    """A signed ``checkpoint`` frame the host pushed (the ``checkpoints`` extension)."""

    __slots__ = ("number", "proof")

    def __init__(self, number: int, proof: dict[str, Any]) -> None:
        self.number, self.proof = number, proof


class Proof:
    """A checkpoint proof the session settled (emitted by the session layer, which
    owns the checkpoint tracker, before the piece of text that completed it)."""

    __slots__ = ("proof",)

    def __init__(self, proof: Any) -> None:
        self.proof = proof


class ImageAnswer:
    """The answer is an image (a node routed the prompt to its diffusion model, or an
    ``action: image_generation``); :class:`Ended` follows (no text, no ``stream_end``)."""

    __slots__ = ("image",)

    def __init__(self, image: GeneratedImage) -> None:
        self.image = image


class UsageReported:
    """The host's counts for the answer (from its ``stream_end``)."""

    __slots__ = ("tokens_used", "usage", "vlm_tokens")

    def __init__(self, usage: Usage | None, tokens_used: int, vlm_tokens: int) -> None:
        self.usage, self.tokens_used, self.vlm_tokens = usage, tokens_used, vlm_tokens


class Ended:
    """The answer ended; ``result`` says how (also :attr:`AnswerMachine.result`).
    ``close_socket``: the session key is spent, the next answer needs a new socket."""

    __slots__ = ("close_socket", "result")

    def __init__(self, result: StreamResult, close_socket: bool = False) -> None:
        self.result, self.close_socket = result, close_socket


class Failed:
    """The answer failed with ``error`` (a typed error with a stable code)."""

    __slots__ = ("error",)

    def __init__(self, error: FabstirError) -> None:
        self.error = error


class Overrun:
    """The host sent more than the answer may have: the driver sends ``stream_cancel``
    and closes the socket (its late frames must not reach the next answer), then
    raises ``error`` (too many characters) or ends the answer (``error`` is ``None``:
    past ``max_tokens``, ``finish_reason="length"``)."""

    __slots__ = ("error",)

    def __init__(self, error: FabstirError | None) -> None:
        self.error = error


Event = (
    Text | Resumed | HostCheckpoint | Proof | ImageAnswer | UsageReported | Ended | Failed | Overrun
)


class AnswerState(enum.Enum):
    """Where an answer is (:attr:`AnswerMachine.state`)."""

    AWAITING_FIRST = "awaiting_first"
    """The prompt went out; nothing of the answer came yet (``first_token_timeout``)."""
    AWAITING_RESUME = "awaiting_resume"
    """An exact resume went out; the host must confirm the offset (``stream_resumed``)."""
    STREAMING = "streaming"
    """Text is coming (``chunk_timeout`` between frames)."""
    FAILING = "failing"
    """The host reported an error for the answer; its ``stream_end`` follows."""
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"
    """The client stopped the answer (it overran its caps)."""


_OPEN = (AnswerState.AWAITING_FIRST, AnswerState.STREAMING, AnswerState.FAILING)
"""States in which a chunk of the answer is text."""
_LIVE = (*_OPEN, AnswerState.AWAITING_RESUME)
"""States in which the answer's frames are read (errors and ends too)."""
_NONE: list[Any] = []  # (never mutated: the "no event" answer, without an allocation)
_ERROR_PREFIX = "Error: "


class AnswerMachine:
    """The protocol of one answer (see the module docstring).

    Feed it every message the socket receives, in order (:meth:`receive_raw`, or
    :meth:`receive` with a decoded frame on a plaintext socket), and act on the events:

    - :class:`Text`: a piece of this answer. A host that is restarting an answer after
      a resume or continuation restates text the consumer already has: that is
      dropped. An ``"Error: ..."`` piece is held until what follows says whether it was
      text (more text) or the host's way of failing (the end).
    - :class:`HostCheckpoint`: a signed checkpoint the host pushed (at most 64 kept
      unsettled by the session).
    - :class:`UsageReported`, then :class:`Ended`: the answer is complete.
    - :class:`Failed`: the host reported an error (typed, see :func:`error_from_frame`),
      or a frame broke the protocol (``PROTOCOL_ERROR``), or an encrypted frame did
      not open (``DECRYPTION_FAILED``, ``CHUNK_OUT_OF_ORDER``, ``CHUNK_REPLAYED``,
      ``ANSWER_TRUNCATED``, ``ENCRYPTION_MODE_MISMATCH``). The state is then
      ``FAILED``; the session decides whether the answer goes on (:meth:`reattach`).
    - :class:`Overrun`: more tokens or characters than allowed.

    Frames that are not part of this answer (another ``id``: stale frames of a
    cancelled answer; ``connected``, acks, unknown extension frames) give no event,
    and :attr:`progressed` is ``False`` after them: they do not reset the inactivity
    clock.

    Args:
        request_id: the prompt frame's ``id``.
        max_tokens: the request's ``max_tokens`` (``None``: no cap).
        max_chars: characters one answer may have (``None``: no cap).
        token_allowance: tokens a host may send beyond ``max_tokens``.
        sealed: the socket's encrypted conversation (``None``: plaintext socket).
    """

    def __init__(
        self,
        request_id: str,
        *,
        host_url: str = "",
        session_id: str = "",
        model: str = "",
        max_tokens: int | None = None,
        max_chars: int | None = None,
        token_allowance: int = 16,
        sealed: SealedConversation | None = None,
    ) -> None:
        self.request_id = request_id
        self.host_url = host_url
        self.session_id = session_id
        self.sealed = sealed
        self.state = AnswerState.AWAITING_FIRST
        self.pieces: list[str] = []
        self.chunks_received = 0
        self.tokens_received = 0
        self.chars_received = 0
        self.progressed = False
        """The last frame was part of this answer (resets the inactivity clock)."""
        self.result = StreamResult(
            host_url=host_url, session_id=session_id, model=model, request_id=request_id
        )
        self.max_tokens = max_tokens if type(max_tokens) is int and max_tokens > 0 else None
        self._token_cap = (
            self.max_tokens + max(token_allowance, self.max_tokens // 10)
            if self.max_tokens is not None
            else 1 << 62
        )
        self._char_cap = max_chars if max_chars is not None else 1 << 62
        self._resume_offset: int | None = None
        self._repeat: str | None = None  # delivered text a restarting host may restate
        self._repeat_at = 0
        self._held: list[str] = []
        self._held_n = 0
        self._held_error: str | None = None
        self._pending: FabstirError | None = None

    # --- driver side ----------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def first(self) -> bool:
        """Nothing of this (re)sent request came yet: the first-frame timeout applies."""
        return self.state is AnswerState.AWAITING_FIRST or (
            self.state is AnswerState.AWAITING_RESUME
        )

    @property
    def finished(self) -> bool:
        return self.state is AnswerState.ENDED or self.state is AnswerState.STOPPED

    def reattach(
        self,
        *,
        host_url: str,
        sealed: SealedConversation | None,
        mode: str | None = None,
        resume_offset: int | None = None,
    ) -> Resumed | None:
        """The request goes out again (a retry, an exact resume at ``resume_offset``, a
        continuation: ``mode``). Text received so far is kept, and a host that answers
        by starting over has what the consumer already has dropped, so the consumer sees
        every token once. Returns the :class:`Resumed` event to pass on (``mode`` given)."""
        self.host_url = self.result.host_url = host_url
        self.sealed = sealed
        self.state = AnswerState.AWAITING_RESUME if mode == "exact" else AnswerState.AWAITING_FIRST
        self._resume_offset = (resume_offset or 0) if mode == "exact" else None
        self._repeat = "".join(self.pieces) or None
        self._repeat_at, self._held, self._held_n = 0, [], 0
        self._held_error = self._pending = None
        if mode is None:
            return None
        self.result.resumed += 1
        event = Resumed(mode, self.chunks_received, host_url)
        self.result.metadata.setdefault("resumes", []).append(event.note())
        return event

    def stopped(self) -> None:
        """The consumer stopped early (the driver sent ``stream_cancel``)."""
        r = self.result
        r.reason = "cancelled"
        r.finish_reason = r.finish_reason or "cancelled"
        r.text = self.text
        if self.state in _LIVE:
            self.state = AnswerState.STOPPED

    # --- frames in, events out --------------------------------------------------------

    def receive_raw(self, raw: str | bytes) -> list[Event]:
        """A message as the socket gave it (opened with the session key when sealed)."""
        try:
            if len(raw) < 1024:  # (too short to nest deep: see _json.too_deep)
                try:
                    obj = json.loads(raw)
                except (ValueError, RecursionError):
                    obj = loads(raw)  # the typed error, with an excerpt
                else:
                    if escapes_surrogate(raw):  # (as loads_untrusted does)
                        obj = without_lone_surrogates(obj)
            else:
                obj = loads(raw)
            sealed = self.sealed
            if sealed is not None:
                obj = sealed.open(obj)
            elif type(obj) is dict and str(obj.get("type", ""))[:10] == "encrypted_":
                raise EncryptionModeError(
                    f"host {self.host_url} sent an {obj.get('type')} frame in a plaintext session",
                    host_url=self.host_url,
                )
        except FabstirError as exc:
            return self._fail(exc)
        return self.receive(obj)

    def receive(self, obj: Any) -> list[Event]:
        """A decoded frame (a plaintext one, or one :class:`SealedConversation` opened)."""
        try:
            # Hot path: a token chunk of this answer, checked with plain dict access.
            if (
                type(obj) is dict
                and obj.get("type") == "stream_chunk"
                and obj.get("id", self.request_id) == self.request_id
                and self.state in _OPEN
            ):
                return self._chunk(obj)
            return self._other(obj)
        except FabstirError as exc:
            return self._fail(exc)

    def _fail(self, exc: FabstirError) -> list[Event]:
        if exc.host_url is None:
            exc.host_url = self.host_url
        if exc.session_id is None:
            exc.session_id = self.session_id
        self.state = AnswerState.FAILED
        self.progressed = True
        return [Failed(exc)]

    def _chunk(self, obj: dict[str, Any]) -> list[Event]:
        self.progressed = True
        if self.state is not AnswerState.STREAMING and self.state is AnswerState.AWAITING_FIRST:
            self.state = AnswerState.STREAMING
        content = obj.get("content")
        if type(content) is not str:
            frame_from_obj(obj)  # typed ProtocolError with an excerpt
            raise ProtocolError(f"bad stream_chunk content: {content!r}")
        if not content:
            return _NONE  # (the final empty chunk does not release a held error)
        tokens = obj.get("tokens", 1)
        n = tokens if type(tokens) is int and tokens >= 0 else 1
        repeat = self._repeat
        if repeat is not None:
            at = self._repeat_at
            if repeat.startswith(content, at):
                self._repeat_at = at + len(content)  # still restating: hold it
                self._held.append(content)
                self._held_n += n
                if self._repeat_at >= len(repeat):
                    self._repeat = None  # the whole restatement: dropped
                return _NONE
            rest = len(repeat) - at
            if content[:rest] == repeat[at:]:
                content = content[rest:]  # the restatement ends inside it
            else:  # not a restatement after all: deliver what was held
                content, n = "".join(self._held) + content, n + self._held_n
            self._repeat = None
        if self._held_error is not None or content.startswith(_ERROR_PREFIX):
            return self._rare_piece(content, n)
        self.tokens_received = tokens = self.tokens_received + (n or 1)
        self.chars_received = chars = self.chars_received + len(content)
        if tokens > self._token_cap or chars > self._char_cap:
            return [self._overrun()]
        self.pieces.append(content)
        self.chunks_received += 1
        return [Text(content, n)]

    def _rare_piece(self, content: str, n: int) -> list[Event]:
        """A piece after, or being, an ``"Error: ..."`` piece (held until what follows
        says whether it was text)."""
        events: list[Event] = []
        if self._held_error is not None:
            # It was text after all: more text followed it.
            held, self._held_error = self._held_error, None
            events.append(self._piece(held, 0))
        if content.startswith(_ERROR_PREFIX):
            self._held_error = content
            return events
        self.tokens_received += n or 1
        self.chars_received += len(content)
        if self.tokens_received > self._token_cap or self.chars_received > self._char_cap:
            events.append(self._overrun())
            return events
        events.append(self._piece(content, n))
        return events

    def _piece(self, text: str, n: int) -> Text:
        self.pieces.append(text)
        self.chunks_received += 1
        return Text(text, n)

    def _overrun(self) -> Overrun:
        self.state = AnswerState.STOPPED
        r = self.result
        r.text = self.text
        if self.chars_received > self._char_cap:
            self.state = AnswerState.FAILED
            r.reason = r.finish_reason = "cancelled"
            return Overrun(
                AnswerTooLargeError(
                    f"host {self.host_url} sent over {self._char_cap} characters for one "
                    "answer (max_answer_chars); the client stopped it",
                    host_url=self.host_url,
                    session_id=self.session_id,
                    details={"chars": self.chars_received, "partial_text": r.text},
                )
            )
        r.reason = "max_tokens"
        r.finish_reason = "length"
        r.tokens_used = self.chunks_received
        r.metadata["host_overran_max_tokens"] = True
        return Overrun(None)

    def _other(self, obj: Any) -> list[Event]:
        rid = self.request_id
        self.progressed = False  # unless it is part of this answer (below)
        state = self.state
        if type(obj) is ImageReply:
            if obj.id not in (None, rid) or state not in _LIVE:
                return _NONE
            self.progressed = True
            return self._image(obj)
        frame = frame_from_obj(obj)
        if isinstance(frame, StreamResumed) and frame.id in (None, rid):
            if state not in _LIVE:
                return _NONE
            if frame.offset != self._resume_offset:  # (also one nobody asked for)
                raise self._resume_mismatch(frame.offset)
            self._resume_offset = None
            self.state = AnswerState.STREAMING
            self.progressed = True
            return _NONE
        if isinstance(frame, StreamChunk):
            if state is AnswerState.AWAITING_RESUME and frame.id in (None, rid):
                raise self._resume_mismatch(None)  # the host started over
            return _NONE  # a chunk of another (cancelled) answer
        if state not in _LIVE:
            return _NONE  # (an answer that ended or failed)
        if isinstance(frame, ErrorFrame):
            if frame.id not in (None, rid):
                return _NONE
            self.progressed = True
            error = error_from_frame(frame, host_url=self.host_url, session_id=self.session_id)
            if frame.code in _ENDS_ALONE:
                raise error  # (no stream_end follows these: PROTOCOL.md 6.7)
            self.state = AnswerState.FAILING
            self._pending = error
            return _NONE
        if isinstance(frame, StreamEnd):
            if frame.id not in (None, rid):
                return _NONE
            if (
                frame.id is None
                and frame.reason == "cancelled"
                and not self.pieces
                and (self._held_error is None and self._pending is None)
            ):
                return _NONE  # the end of an earlier, cancelled answer on this socket
            self.progressed = True
            return self._end(frame)
        if frame.type == "checkpoint" and frame.model_extra:
            proof = frame.model_extra.get("proof")
            number = proof.get("checkpointNumber") if isinstance(proof, dict) else None
            if isinstance(number, int) and frame.model_extra.get("id") in (None, rid):
                return [HostCheckpoint(number, proof)]  # type: ignore[arg-type]
        # connected, session_init_ack, unknown extension frames: not ours to use.
        return _NONE

    def _image(self, reply: ImageReply) -> list[Event]:
        """The answer is an image reply (alone: no chunks, no ``stream_end`` follow)."""
        self.state = AnswerState.ENDED
        if not reply.ok:
            return [
                Failed(image_error(reply.reply, host_url=self.host_url, session_id=self.session_id))
            ]
        try:
            image = GeneratedImage.from_node(
                reply.reply,
                host_url=self.host_url,
                session_id=self.session_id,
                request_id=self.request_id,
            )
        except ValueError as exc:
            self.state = AnswerState.FAILED
            raise ProtocolError(f"host {self.host_url} sent a bad image: {exc}") from None
        r = self.result
        r.images.append(image)
        r.text = self.text
        r.reason, r.finish_reason = "complete", "stop"
        return [ImageAnswer(image), Ended(r)]

    def _end(self, end: StreamEnd) -> list[Event]:
        r = self.result
        r.text = self.text
        r.reason = end.reason
        r.finish_reason = end.finish_reason or ("stop" if end.reason == "complete" else end.reason)
        r.tokens_used = end.tokens_used
        r.vlm_tokens = end.vlm_tokens
        r.usage = end.usage
        if r.usage is not None and not r.usage.total_tokens:
            r.usage = Usage(
                prompt_tokens=r.usage.prompt_tokens,
                completion_tokens=r.usage.completion_tokens,
                total_tokens=r.usage.prompt_tokens + r.usage.completion_tokens,
                context_window_size=r.usage.context_window_size,
            )
        error: FabstirError | None = self._pending
        if error is None and end.reason == "error":
            error = HostError(
                "host ended the answer with an error and no details",
                host_url=self.host_url,
                session_id=self.session_id,
            )
        if error is None and self._held_error is not None:
            error = HostError(
                self._held_error[len(_ERROR_PREFIX) :],
                host_url=self.host_url,
                session_id=self.session_id,
                details={"partial_text": r.text},
            )
        if error is not None:
            # (the answer ended on the host: the socket is in a known state)
            self.state = AnswerState.ENDED
            return [Failed(error)]
        self.state = AnswerState.ENDED
        usage = UsageReported(r.usage, r.tokens_used, end.vlm_tokens)
        spent = self.sealed is not None and self.sealed.spent
        return [usage, Ended(r, close_socket=spent)]

    def _resume_mismatch(self, offset: int | None) -> ProtocolError:
        said = "started the answer over" if offset is None else f"resumed at token {offset}"
        return ProtocolError(
            f"host {self.host_url} was asked to resume at token {self._resume_offset} and "
            f"{said}: not using exact resume with it again",
            host_url=self.host_url,
            session_id=self.session_id,
            details={"reason": "resume_mismatch", "expected_offset": self._resume_offset},
        )
