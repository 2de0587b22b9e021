"""One answer streamed from a host: frames in, text out. The per-token hot path lives here.

:class:`PromptStream` sends one prompt on a connected
:class:`~langchain_fabstir.sessions.transport.Transport` and turns the host's frames into text. It
enforces the timeouts (first frame, inactivity between frames), maps host errors to typed
errors, ignores frames of other answers (stale frames after a cancel), and sends
``stream_cancel`` when the consumer stops early. It knows nothing of sessions:
:mod:`langchain_fabstir.sessions.manager` drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from langchain_fabstir import _compat
from langchain_fabstir.errors import (
    AnswerTooLargeError,
    FabstirError,
    HostDisconnectedError,
    HostError,
    InvalidRequestError,
    ModelNotAvailableError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    StreamChunkTimeoutError,
    TokenLimitExceededError,
)
from langchain_fabstir.sessions.models import StreamResult
from langchain_fabstir.sessions.transport import Transport
from langchain_fabstir.wire.frames import (
    ErrorFrame,
    StreamCancel,
    StreamChunk,
    StreamEnd,
    StreamResumed,
    Usage,
    frame_from_obj,
)

__all__ = ["PromptStream", "error_from_frame", "parse_retry_after"]

log = logging.getLogger(__name__)

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


def error_from_frame(
    frame: ErrorFrame, *, host_url: str | None = None, session_id: str | None = None
) -> FabstirError:
    """Map a host's ``error`` frame (either shape) to a typed error.

    >>> e = error_from_frame(ErrorFrame(error="Rate limit exceeded, retry after 60 seconds"))
    >>> e.code, e.retry_after
    ('RATE_LIMITED', 60.0)
    """
    text = frame.text
    where: dict[str, Any] = {"host_url": host_url, "session_id": session_id}
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


class PromptStream:
    """An async iterator of text pieces for one prompt; :attr:`result` when it ends.

    Args:
        transport: a connected socket (its session already initialised).
        payload: the prompt frame as a dict (sent as JSON).
        request_id: the frame's ``id``; frames carrying another id are ignored.
        first_timeout: seconds to the first frame of this answer.
        chunk_timeout: seconds allowed between two frames of this answer. Frames that are
            not part of this answer (other ids, unknown types, stray acks, checkpoint
            frames) are not progress: they do not reset either clock.
        answer_timeout: seconds for the whole answer, resumes included (``None``: none).
        max_chars: characters one answer may have; more is :class:`AnswerTooLargeError`.
        token_allowance: tokens a host may send beyond the request's ``max_tokens``
            before the client stops the answer itself (``stream_cancel``, the socket is
            closed, ``finish_reason="length"``).
        on_tokens: called as ``on_tokens(text, n_tokens)`` for every piece (the
            session's checkpoint tracker); keep it cheap. Whatever it returns other than
            ``None`` (a completed checkpoint) is collected in :attr:`new_proofs`.
    """

    def __init__(
        self,
        transport: Transport,
        payload: dict[str, Any],
        request_id: str,
        *,
        first_timeout: float,
        chunk_timeout: float,
        session_id: str = "",
        model: str = "",
        on_tokens: Callable[[str, int], Any] | None = None,
        answer_timeout: float | None = None,
        max_chars: int | None = None,
        token_allowance: int = 16,
    ) -> None:
        self.transport = transport
        self.payload = payload
        self.request_id = request_id
        self.first_timeout = first_timeout
        self.chunk_timeout = chunk_timeout
        self.session_id = session_id
        self.on_tokens = on_tokens
        self.pieces: list[str] = []
        self.result = StreamResult(
            host_url=transport.host_url,
            session_id=session_id,
            model=model,
            request_id=request_id,
        )
        self.finished = False
        self.chunks_received = 0
        self.tokens_received = 0
        self.chars_received = 0
        max_tokens = (payload.get("request") or {}).get("max_tokens")
        self.max_tokens = max_tokens if type(max_tokens) is int and max_tokens > 0 else None
        self._token_cap = (
            self.max_tokens + max(token_allowance, self.max_tokens // 10)
            if self.max_tokens is not None
            else 1 << 62
        )
        self._char_cap = max_chars if max_chars is not None else 1 << 62
        self.answer_timeout = answer_timeout
        self._answer_deadline: float | None = None  # loop time, set when the answer starts
        self._clock_since: float | None = None  # when the last frame of this answer came
        self._resume_offset: int | None = None  # an exact resume waits for stream_resumed
        self.new_proofs: list[Any] = []
        """Checkpoints completed by the latest piece (the consumer clears it)."""
        self.chunk_proofs: list[Any] = []
        """Settled proofs that belong to the piece being yielded (set by the session)."""
        self.end_proofs: list[Any] = []
        """Proofs settled when the answer ended."""
        self.host_checkpoints: dict[int, dict[str, Any]] = {}
        self._waiting_since: float | None = None
        self._deadline = first_timeout
        self._timed_out = False
        self._repeat: str | None = None  # delivered text a restarting host may restate
        self.resume_note: dict[str, Any] | None = None
        """Set when the answer was resumed; the consumer reads and clears it."""
        self.host_cosign = True
        """False once the host's view of the answer can differ from the client's."""
        """Signed ``checkpoint`` frames the host pushed, by checkpoint number."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    def run(self) -> AsyncGenerator[str, None]:
        """The text pieces, as an async generator (close it to stop early)."""
        return self._run()

    def _watchdog(self) -> None:
        """Runs now and then while the answer streams, and aborts a socket that has been
        silent longer than allowed. The hot path only stamps the time it starts waiting:
        no timer per frame."""
        loop = self._loop
        now = loop.time()
        since = self._waiting_since
        if since is None:
            self._watch_at = now + self.chunk_timeout
        elif now >= since + self._deadline:
            self._timed_out = True
            self.transport.abort()
            return
        else:
            self._watch_at = since + self._deadline
        self._watch = loop.call_at(self._watch_at, self._watchdog)

    async def _next_frame(self, deadline: float, first: bool, stale: bool) -> Any:
        """The next frame's decoded JSON object (dict), within ``deadline`` seconds of the
        last frame of this answer (``stale``: the previous frame was not part of it, so
        the clock it started keeps running) and within the answer's own deadline."""
        now = self._loop.time()
        since = self._clock_since if stale and self._clock_since is not None else now
        self._clock_since = since
        overall = self._answer_deadline
        if overall is not None and since + deadline > overall:
            deadline = overall - since
            if deadline <= now - since:
                raise self._answer_timeout_error()
        self._deadline = deadline
        self._waiting_since = since
        if since + deadline < self._watch_at:  # a shorter deadline than the watchdog's
            self._watch.cancel()
            self._watch_at = since + deadline
            self._watch = self._loop.call_at(self._watch_at, self._watchdog)
        try:
            raw = await self.transport.recv_raw()
        except HostDisconnectedError:
            if not self._timed_out:
                raise
            if overall is not None and self._loop.time() >= overall:
                raise self._answer_timeout_error() from None
            if first:
                raise ResponseTimeoutError(
                    f"host {self.transport.host_url} sent nothing within {deadline}s of the "
                    "prompt (a host silently drops requests it cannot parse)",
                    host_url=self.transport.host_url,
                    session_id=self.session_id,
                ) from None
            raise StreamChunkTimeoutError(
                f"no chunk from {self.transport.host_url} for {deadline}s in the middle of an "
                "answer",
                host_url=self.transport.host_url,
                session_id=self.session_id,
            ) from None
        finally:
            self._waiting_since = None
        return self.transport.decode(raw)  # (opens encrypted frames, see transport.py)

    def answer_time_left(self) -> float | None:
        """Seconds left before the answer's deadline (``answer_timeout``; ``None``: no
        deadline, or the answer has not started)."""
        if self._answer_deadline is None:
            return None
        return self._answer_deadline - self._loop.time()

    def answer_timeout_error(self) -> ResponseTimeoutError:
        """The error of an answer past its deadline (``RESPONSE_TIMEOUT``)."""
        return self._answer_timeout_error()

    def _answer_timeout_error(self) -> ResponseTimeoutError:
        return ResponseTimeoutError(
            f"the answer from {self.transport.host_url} did not end within "
            f"{self.answer_timeout}s (answer_timeout)",
            host_url=self.transport.host_url,
            session_id=self.session_id,
            details={"answer_timeout": self.answer_timeout, "partial_text": self.text},
        )

    async def _run(self) -> AsyncGenerator[str, None]:
        self._loop = asyncio.get_running_loop()
        self._timed_out = False
        if self._answer_deadline is None and self.answer_timeout is not None:
            self._answer_deadline = self._loop.time() + self.answer_timeout
        self._clock_since = None
        rid = self.request_id
        first = True
        stale = False  # the previous frame was not part of this answer
        awaiting_ack = self._resume_offset is not None
        # After a resume or continuation: text the consumer already has, which a host
        # that starts the answer over restates (dropped, see reattach).
        repeat, self._repeat = self._repeat, None
        repeat_at, held_n = 0, 0
        held: list[str] = []
        held_error: str | None = None  # an "Error: ..." chunk waiting for what follows
        failed = False
        pending: FabstirError | None = None
        on_tokens = self.on_tokens
        pieces = self.pieces
        self._watch_at = self._loop.time() + self.first_timeout
        self._watch = self._loop.call_at(self._watch_at, self._watchdog)
        try:
            await self.transport.send_prompt(self.payload)  # (sealed in encrypted mode)
            while True:
                obj = await self._next_frame(
                    self.first_timeout if first else self.chunk_timeout, first, stale
                )
                # Hot path: a token chunk of this answer, checked with plain dict access.
                if (
                    type(obj) is dict
                    and obj.get("type") == "stream_chunk"
                    and obj.get("id", rid) == rid
                    and not awaiting_ack
                ):
                    first = stale = False
                    content = obj.get("content")
                    if type(content) is not str:
                        frame_from_obj(obj)  # typed ProtocolError with an excerpt
                        raise ProtocolError(f"bad stream_chunk content: {content!r}")
                    if not content:
                        continue  # (the final empty chunk does not release a held error)
                    tokens = obj.get("tokens", 1)
                    n = tokens if type(tokens) is int and tokens >= 0 else 1
                    if repeat is not None:
                        if repeat.startswith(content, repeat_at):
                            repeat_at += len(content)  # still restating: hold it
                            held.append(content)
                            held_n += n
                            if repeat_at < len(repeat):
                                continue
                            repeat = None  # the whole restatement: dropped
                            continue
                        rest = len(repeat) - repeat_at
                        if content[:rest] == repeat[repeat_at:]:
                            content = content[rest:]  # the restatement ends inside it
                        else:  # not a restatement after all: deliver what was held
                            content, n = "".join(held) + content, n + held_n
                        repeat = None
                    if held_error is not None:
                        # It was text after all: more text followed it.
                        self._emit(held_error, 0)
                        yield held_error
                        held_error = None
                    if content.startswith("Error: "):
                        held_error = content
                        continue
                    self.tokens_received += n or 1
                    self.chars_received += len(content)
                    if (
                        self.tokens_received > self._token_cap
                        or self.chars_received > self._char_cap
                    ):
                        await self._stop_overrun()
                        return
                    self.chunks_received += 1
                    pieces.append(content)
                    if on_tokens is not None:
                        proof = on_tokens(content, n)
                        if proof is not None:
                            self.new_proofs.append(proof)
                    yield content
                    continue
                frame = frame_from_obj(obj)
                stale = True  # unless it is part of this answer (below)
                if isinstance(frame, StreamResumed) and frame.id in (None, rid):
                    if frame.offset != self._resume_offset:
                        raise self._resume_mismatch(frame.offset)
                    self._resume_offset = None
                    first = stale = awaiting_ack = False
                    continue
                if isinstance(frame, StreamChunk):
                    if awaiting_ack and frame.id in (None, rid):
                        raise self._resume_mismatch(None)  # the host started over
                    continue  # a chunk of another (cancelled) answer
                if isinstance(frame, ErrorFrame):
                    if frame.id not in (None, rid):
                        continue
                    first = stale = False
                    pending = error_from_frame(
                        frame, host_url=self.transport.host_url, session_id=self.session_id
                    )
                    continue
                if isinstance(frame, StreamEnd):
                    if frame.id not in (None, rid):
                        continue
                    if (
                        frame.id is None
                        and frame.reason == "cancelled"
                        and not pieces
                        and (held_error is None and pending is None)
                    ):
                        # The end of an earlier, cancelled answer on this socket.
                        continue
                    self._finish(frame)
                    stale = False
                    if pending is not None:
                        raise pending
                    if frame.reason == "error":
                        raise HostError(
                            "host ended the answer with an error and no details",
                            host_url=self.transport.host_url,
                            session_id=self.session_id,
                        )
                    if held_error is not None:
                        raise HostError(
                            held_error[len("Error: ") :],
                            host_url=self.transport.host_url,
                            session_id=self.session_id,
                            details={"partial_text": self.text},
                        )
                    if self.transport.spent:  # the next answer runs on a fresh session key
                        await self.transport.close()
                    return
                # connected, session_init_ack, unknown extension frames: not ours to use.
                self.on_other_frame(frame)
        except FabstirError:
            failed = True  # a broken answer: the session decides (resume or give up)
            raise
        finally:
            self._watch.cancel()
            if not self.finished and not failed:
                await self._cancel_remote()  # the consumer stopped early

    def reattach(
        self, transport: Transport, payload: dict[str, Any], *, mode: str | None = None
    ) -> None:
        """Go on with this answer on ``transport`` by sending ``payload`` (a resume or a
        continuation; ``mode`` says which). Text received so far is kept, so the consumer
        sees every token once."""
        self.transport = transport
        self.payload = payload
        self.finished = False
        self.result.host_url = transport.host_url
        self._resume_offset = None
        # A host may answer by starting over (also one that confirmed an exact resume):
        # what the consumer already has is dropped when the new text restates it.
        self._repeat = "".join(self.pieces) or None
        if mode == "exact":
            resume = (payload.get("request") or {}).get("resume") or {}
            offset = resume.get("offset")
            self._resume_offset = offset if type(offset) is int else 0
        if mode is not None:
            self.result.resumed += 1
            note = {"mode": mode, "offset": self.chunks_received, "host_url": transport.host_url}
            self.result.metadata.setdefault("resumes", []).append(note)
            self.resume_note = note
            if mode == "continuation":
                self.host_cosign = False

    def _resume_mismatch(self, offset: int | None) -> ProtocolError:
        said = "started the answer over" if offset is None else f"resumed at token {offset}"
        return ProtocolError(
            f"host {self.transport.host_url} was asked to resume at token "
            f"{self._resume_offset} and {said}: not using exact resume with it again",
            host_url=self.transport.host_url,
            session_id=self.session_id,
            details={"reason": "resume_mismatch", "expected_offset": self._resume_offset},
        )

    async def _stop_overrun(self) -> None:
        """The host sent more than this answer may have: stop it, close the socket (its
        late frames must not reach the next answer), and end as the caps say."""
        await self._cancel_remote()
        await self.transport.close()
        if self.chars_received > self._char_cap:
            raise AnswerTooLargeError(
                f"host {self.transport.host_url} sent over {self._char_cap} characters for one "
                "answer (max_answer_chars); the client stopped it",
                host_url=self.transport.host_url,
                session_id=self.session_id,
                details={"chars": self.chars_received, "partial_text": self.text},
            )
        log.warning(
            "host %s went past max_tokens=%s (%s tokens): stopped by the client",
            self.transport.host_url,
            self.max_tokens,
            self.tokens_received,
        )
        self.finished = True
        r = self.result
        r.text = self.text
        r.reason = "max_tokens"
        r.finish_reason = "length"
        r.tokens_used = self.chunks_received
        r.metadata["host_overran_max_tokens"] = True

    def _emit(self, text: str, n: int) -> None:
        self.pieces.append(text)
        self.chunks_received += 1
        if self.on_tokens is not None:
            proof = self.on_tokens(text, n)
            if proof is not None:
                self.new_proofs.append(proof)

    def on_other_frame(self, frame: Any) -> None:
        """Extension frames: a host's signed ``checkpoint`` is kept for the session to
        verify; anything else is ignored."""
        if frame.type == "checkpoint" and frame.model_extra:
            proof = frame.model_extra.get("proof")
            number = proof.get("checkpointNumber") if isinstance(proof, dict) else None
            if (
                isinstance(number, int)
                and frame.model_extra.get("id") in (None, self.request_id)
                and (number in self.host_checkpoints or len(self.host_checkpoints) < 64)
            ):
                self.host_checkpoints[number] = proof  # at most 64 unsettled at a time

    def _finish(self, end: StreamEnd) -> None:
        self.finished = True
        r = self.result
        r.text = self.text
        r.reason = end.reason
        r.finish_reason = end.finish_reason or ("stop" if end.reason == "complete" else end.reason)
        r.tokens_used = end.tokens_used
        r.vlm_tokens = max(0, end.vlm_tokens or 0)
        r.usage = end.usage
        if r.usage is not None and not r.usage.total_tokens:
            r.usage = Usage(
                prompt_tokens=r.usage.prompt_tokens,
                completion_tokens=r.usage.completion_tokens,
                total_tokens=r.usage.prompt_tokens + r.usage.completion_tokens,
                context_window_size=r.usage.context_window_size,
            )

    async def _cancel_remote(self) -> None:
        """The consumer stopped early: ask the host to stop generating (best effort)."""
        if self.transport.closed:
            return
        sid = self.transport.node_session_id or self.session_id  # (the node's session)
        frame = StreamCancel(session_id=sid or None, reason="user_cancelled")
        with contextlib.suppress(Exception):
            async with _compat.timeout(2.0):
                await asyncio.shield(self.transport.send(frame))
        self.result.reason = "cancelled"
        self.result.finish_reason = self.result.finish_reason or "cancelled"
        self.result.text = self.text
