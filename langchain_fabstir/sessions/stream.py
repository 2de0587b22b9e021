"""The driver of one answer: the socket, the clocks and ``stream_cancel`` around the
answer machine (``sessions/answer.py``), which holds the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from langchain_fabstir import _compat
from langchain_fabstir.errors import (
    FabstirError,
    ResponseTimeoutError,
    StreamChunkTimeoutError,
)
from langchain_fabstir.sessions.answer import (
    AnswerMachine,
    AnswerState,
    Ended,
    Event,
    Failed,
    HostCheckpoint,
    ImageAnswer,
    Overrun,
    Resumed,
    Text,
    error_from_frame,
    parse_retry_after,
)
from langchain_fabstir.sessions.models import StreamResult
from langchain_fabstir.sessions.sealed import SealedConversation
from langchain_fabstir.sessions.transport import Transport
from langchain_fabstir.wire.frames import StreamCancel

__all__ = ["PromptStream", "error_from_frame", "parse_retry_after"]

log = logging.getLogger(__name__)

_AWAITING_FIRST = AnswerState.AWAITING_FIRST
_AWAITING_RESUME = AnswerState.AWAITING_RESUME


class PromptStream:
    """Sends one prompt and drives its
    :class:`~langchain_fabstir.sessions.answer.AnswerMachine`: :meth:`run` yields the
    machine's events for the consumer (:class:`Text`, :class:`ImageAnswer`,
    :class:`Resumed`, :class:`HostCheckpoint`), raises a :class:`Failed` event's error,
    and returns at :class:`Ended`; :attr:`result` says how the answer ended.

    It owns what needs I/O or a clock: sending (sealed with the session's
    :class:`~langchain_fabstir.sessions.sealed.SealedConversation` in encrypted mode, a
    fresh node session opened first when the conversation asks for one), the timeouts,
    ``stream_cancel`` when the consumer stops early or the host overruns, and closing a
    socket whose key is spent.

    Args:
        transport: a connected socket (its session already initialised).
        payload: the prompt frame as a dict (sent as JSON).
        request_id: the frame's ``id``; frames carrying another id are ignored.
        first_timeout: seconds to the first frame of this answer.
        chunk_timeout: seconds allowed between two frames of this answer. Frames that are
            not part of this answer (other ids, unknown types, stray acks, checkpoint
            frames) are not progress: they do not reset either clock.
        answer_timeout: seconds for the whole answer, resumes included (``None``: none).
        max_chars: characters one answer may have; more is ``ANSWER_TOO_LARGE``.
        token_allowance: tokens a host may send beyond the request's ``max_tokens``
            before the client stops the answer itself (``stream_cancel``, the socket is
            closed, ``finish_reason="length"``).
        sealed: the encrypted conversation of the session's current socket (a callable:
            after a reconnect it is the new socket's); ``None``: plaintext.
        action: an encrypted ``action`` body to send instead of ``payload`` (sealed as
            is, outside the conversation; encrypted sockets only).
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
        answer_timeout: float | None = None,
        max_chars: int | None = None,
        token_allowance: int = 16,
        sealed: Callable[[], SealedConversation | None] | None = None,
        action: dict[str, Any] | None = None,
    ) -> None:
        self.transport = transport
        self.payload = payload
        self.request_id = request_id
        self.first_timeout = first_timeout
        self.chunk_timeout = chunk_timeout
        self.session_id = session_id
        self._sealed_of = sealed or (lambda: None)
        self._action = action
        max_tokens = (payload.get("request") or {}).get("max_tokens")
        self.machine = AnswerMachine(
            request_id,
            host_url=transport.host_url,
            session_id=session_id,
            model=model,
            max_tokens=max_tokens,
            max_chars=max_chars,
            token_allowance=token_allowance,
            sealed=self._sealed_of(),
        )
        self.result: StreamResult = self.machine.result
        self.pieces = self.machine.pieces
        self.answer_timeout = answer_timeout
        self._answer_deadline: float | None = None  # loop time, set when the answer starts
        self._clock_since: float | None = None  # when the last frame of this answer came
        self._waiting_since: float | None = None
        self._deadline = first_timeout
        self._timed_out = False
        self._resumed: Resumed | None = None  # to pass on when the answer goes on
        self.host_checkpoints: dict[int, dict[str, Any]] = {}
        """Signed ``checkpoint`` frames the host pushed, by checkpoint number (at most 64
        unsettled)."""
        self.host_cosign = True
        """False once the host's view of the answer can differ from the client's."""

    # --- what the session layer reads -------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finished(self) -> bool:
        return self.machine.finished

    @property
    def chunks_received(self) -> int:
        return self.machine.chunks_received

    @property
    def sealed(self) -> SealedConversation | None:
        return self.machine.sealed

    def answer_time_left(self) -> float | None:
        """Seconds left before the answer's deadline (``answer_timeout``; ``None``: no
        deadline, or the answer has not started)."""
        if self._answer_deadline is None:
            return None
        return self._answer_deadline - asyncio.get_running_loop().time()

    def answer_timeout_error(self) -> ResponseTimeoutError:
        """The error of an answer past its deadline (``RESPONSE_TIMEOUT``)."""
        return ResponseTimeoutError(
            f"the answer from {self.transport.host_url} did not end within "
            f"{self.answer_timeout}s (answer_timeout)",
            host_url=self.transport.host_url,
            session_id=self.session_id,
            details={"answer_timeout": self.answer_timeout, "partial_text": self.text},
        )

    def reattach(
        self, transport: Transport, payload: dict[str, Any], *, mode: str | None = None
    ) -> None:
        """Go on with this answer on ``transport`` by sending ``payload`` (a retry, a
        resume or a continuation; ``mode`` says which). Text received so far is kept, so
        the consumer sees every token once."""
        self.transport = transport
        self.payload = payload
        offset = None
        if mode == "exact":
            resume = (payload.get("request") or {}).get("resume") or {}
            offset = resume.get("offset") if type(resume.get("offset")) is int else 0
        self._resumed = self.machine.reattach(
            host_url=transport.host_url,
            sealed=self._sealed_of(),
            mode=mode,
            resume_offset=offset,
        )
        if mode == "continuation":
            self.host_cosign = False

    # --- the answer -------------------------------------------------------------------

    def run(self) -> AsyncGenerator[Event, None]:
        """The events of the answer, as an async generator (close it to stop early)."""
        return self._run()

    def __aiter__(self) -> AsyncGenerator[Event, None]:
        return self._run()

    async def _send(self) -> None:
        sealed = self.machine.sealed
        if sealed is None:
            await self.transport.send(json.dumps(self.payload, separators=(",", ":")))
            return
        if self._action is not None:
            await self.transport.send(sealed.seal_action(self._action, self.request_id))
            return
        prompt = sealed.plan(self.payload)
        if prompt.new_node_session and sealed.renew is not None:
            await sealed.renew()  # a new node session id and key on this socket
        await self.transport.send(sealed.seal(prompt))

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

    async def _next_raw(self) -> str | bytes:
        """The next message, within the deadline of this answer's clock (which frames
        that were not part of the answer do not reset) and the answer's own deadline."""
        machine = self.machine
        first = machine.state is _AWAITING_FIRST or machine.state is _AWAITING_RESUME
        deadline = self.first_timeout if first else self.chunk_timeout
        now = self._loop.time()
        stale = not machine.progressed
        since = self._clock_since if stale and self._clock_since is not None else now
        self._clock_since = since
        overall = self._answer_deadline
        if overall is not None and since + deadline > overall:
            deadline = overall - since
            if deadline <= now - since:
                raise self.answer_timeout_error()
        self._deadline = deadline
        self._waiting_since = since
        if since + deadline < self._watch_at:  # a shorter deadline than the watchdog's
            self._watch.cancel()
            self._watch_at = since + deadline
            self._watch = self._loop.call_at(self._watch_at, self._watchdog)
        try:
            return await self.transport.ws.recv()  # (the hot path: no wrapper coroutine)
        except ConnectionClosed as exc:
            if not self._timed_out:
                raise self.transport.disconnected(exc) from None
            if overall is not None and self._loop.time() >= overall:
                raise self.answer_timeout_error() from None
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

    async def _run(self) -> AsyncGenerator[Event, None]:
        self._loop = loop = asyncio.get_running_loop()
        self._timed_out = False
        if self._answer_deadline is None and self.answer_timeout is not None:
            self._answer_deadline = loop.time() + self.answer_timeout
        self._clock_since = None
        machine = self.machine
        machine.progressed = True
        receive = machine.receive_raw
        failed = False
        self._watch_at = loop.time() + self.first_timeout
        self._watch = loop.call_at(self._watch_at, self._watchdog)
        try:
            await self._send()
            if self._resumed is not None:
                resumed, self._resumed = self._resumed, None
                yield resumed
            while True:
                events = receive(await self._next_raw())
                for event in events:
                    if type(event) is Text or type(event) is ImageAnswer:
                        yield event
                    elif type(event) is Ended:
                        if event.close_socket:  # the next answer runs on a fresh key
                            await self.transport.close()
                        return
                    elif type(event) is Failed:
                        raise event.error
                    elif type(event) is HostCheckpoint:
                        if event.number in self.host_checkpoints or len(self.host_checkpoints) < 64:
                            self.host_checkpoints[event.number] = event.proof
                        yield event
                    elif type(event) is Overrun:
                        await self._cancel_remote()
                        await self.transport.close()
                        if event.error is not None:
                            raise event.error
                        log.warning(
                            "host %s went past max_tokens=%s (%s tokens): stopped by the client",
                            self.transport.host_url,
                            machine.max_tokens,
                            machine.tokens_received,
                        )
                        return
                    # (UsageReported: the result has it)
        except FabstirError:
            failed = True  # a broken answer: the session decides (resume or give up)
            raise
        finally:
            self._watch.cancel()
            if not machine.finished and not failed:
                await self._cancel_remote()  # the consumer stopped early
                machine.stopped()

    async def _cancel_remote(self) -> None:
        """Ask the host to stop generating (best effort)."""
        if self.transport.closed:
            return
        sealed = self.machine.sealed
        sid = (sealed.node_session_id if sealed is not None else None) or self.session_id
        frame = StreamCancel(session_id=sid or None, reason="user_cancelled")
        with contextlib.suppress(Exception):
            async with _compat.timeout(2.0):
                await asyncio.shield(self.transport.send(frame))
