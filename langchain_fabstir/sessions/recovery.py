"""Keeping an answer going when its host drops, stalls or refuses for a while.

The session layer calls these when a stream breaks:

- :func:`reconnect`: a new socket, with tenacity (exponential backoff with jitter),
  first to the same host, then to the session's alternate hosts (failover). Only
  failures that can be retried are retried.
- :class:`AnswerRecovery`: what to do after one answer broke (wait out a rate limit, resend,
  resume exactly, or continue elsewhere), with its counters.
- :func:`resume_payload`: how to continue the same answer on that socket. A host that
  announced the ``resume`` extension (the reference host keeps an interrupted answer for
  a grace period) continues exactly from the token offset the client last received.
  Any other host is asked to continue the partial assistant message
  (:data:`CONTINUE_PROMPT`); the result says so (``mode="continuation"``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir import _compat
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    HostDisconnectedError,
    HostError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    StreamChunkTimeoutError,
)
from langchain_fabstir.sessions.models import SessionConfig
from langchain_fabstir.sessions.stream import PromptStream
from langchain_fabstir.sessions.transport import Transport

__all__ = [
    "CONTINUE_PROMPT",
    "RESUMABLE",
    "AnswerRecovery",
    "continuation_payload",
    "fit_context",
    "reconnect",
    "resume_payload",
    "resume_token",
]

RESUMABLE: tuple[type[FabstirError], ...] = (
    HostDisconnectedError,
    StreamChunkTimeoutError,
    ProtocolError,
)
"""Failures in the middle of an answer that a new socket may cure."""

CONTINUE_PROMPT = (
    "Continue your previous answer exactly where it stopped. Do not repeat anything "
    "already written and do not comment on the interruption."
)


def _reconnectable(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionFailedError, ResponseTimeoutError, *RESUMABLE))


async def reconnect(
    connect: Callable[[str], Awaitable[Transport]],
    hosts: Sequence[str],
    attempts: int,
    *,
    on_failure: Callable[[str, BaseException], None] | None = None,
    on_try: Callable[[], None] | None = None,
    initial_wait: float = 0.05,
    max_wait: float = 2.0,
) -> Transport:
    """Open a socket to ``hosts[0]``, then the others in turn, ``attempts`` tries in all
    (``on_try`` is called before each: the answer's retry budget counts every socket).

    Raises the last failure (with ``details["attempts"]``) when every try failed.
    """
    tried = 0

    def target() -> str:
        return hosts[(tried - 1) % len(hosts)]

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_random_exponential(multiplier=initial_wait, max=max_wait),
        retry=retry_if_exception(_reconnectable),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                tried += 1
                if on_try is not None:
                    on_try()
                host = target()
                try:
                    return await connect(host)
                except Exception as exc:
                    if on_failure is not None:
                        on_failure(host, exc)
                    raise
    except FabstirError as exc:
        exc.details["attempts"] = tried
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def resume_payload(
    payload: dict[str, Any], request_id: str, offset: int, token: str | None = None
) -> dict[str, Any]:
    """The same prompt, asking a ``resume``-capable host to continue from ``offset``.

    ``token``: the ``resume_token`` the host gave the socket the answer ran on (see
    :func:`resume_token`); a host that issues tokens resumes only for its holder.
    """
    again = copy.deepcopy(payload)
    again.pop("images", None)  # the host goes on with the answer: nothing to read again
    spec: dict[str, Any] = {"request_id": request_id, "offset": offset}
    if token is not None:
        spec["token"] = token
    again["request"]["resume"] = spec
    return again


def resume_token(old: Transport, new: Transport) -> str | None:
    """The resume token to present on ``new`` for an answer that ran on ``old``: the
    token ``old``'s host announced in its greeting, and only to that same host (another
    host must never learn it)."""
    token = (old.greeting.model_extra or {}).get("resume_token")
    if isinstance(token, str) and old.host_url == new.host_url:
        return token
    return None


def fit_context(messages: list[dict[str, str]], limit: int = 10) -> list[dict[str, str]]:
    """What to send as ``conversation_context`` to a host that reads only the last
    ``limit`` messages: the system messages first (so instructions are never cut), then
    the newest others.

    >>> msgs = [{"role": "system", "content": "S"}] + [
    ...     {"role": "user", "content": str(i)} for i in range(12)]
    >>> [m["content"] for m in fit_context(msgs, 4)]
    ['S', '9', '10', '11']
    """
    system = [m for m in messages if m["role"] == "system"][-limit:]
    others = [m for m in messages if m["role"] != "system"]
    keep = max(0, limit - len(system))
    return system + (others[-keep:] if keep else [])


def continuation_payload(
    payload: dict[str, Any], partial_text: str, generated: int, limit: int = 10
) -> dict[str, Any]:
    """For any host: the conversation plus the partial answer, and a request to go on.

    The token budget shrinks by what was already generated; the context keeps the
    system messages within the host's ``limit``.
    """
    again = copy.deepcopy(payload)
    request = again["request"]
    context = list(request.get("conversation_context") or [])
    context += [
        {"role": "user", "content": request["prompt"]},
        {"role": "assistant", "content": partial_text},
    ]
    request["conversation_context"] = fit_context(context, limit)
    request["prompt"] = CONTINUE_PROMPT
    request["max_tokens"] = max(1, int(request.get("max_tokens") or 1) - generated)
    request.pop("resume", None)
    request.pop("checkpoint", None)  # the host's view no longer matches the client's
    again.pop("images", None)  # not read (and billed) again: the answer goes on from text
    again["prompt"] = CONTINUE_PROMPT
    return again


def _resendable(payload: dict[str, Any], exc: FabstirError) -> bool:
    """Whether a prompt may be sent again as it was: not one with images (a host may
    have read them with its vision sidecar already, and that is billed). Says why in
    ``exc.details`` when not."""
    if not payload.get("images"):
        return True
    exc.details["not_resent"] = (
        "the prompt carries images: it is not sent again automatically (the host may "
        "have read them already, which is billed); send it again yourself"
    )
    return False


class AnswerRecovery:
    """Keeps one answer going through failures (see :meth:`recover`): the one owner of
    retries in the package (``ChatFabstir`` has no retry loop of its own).

    **One retry budget per answer**, counted in *tries*: every socket opened (or tried)
    for the answer after the first, and every time the prompt is sent again on the same
    socket (after a rate limit, or to a host that lost the answer), is one try.

    - ``config.reconnect_attempts``: tries in a row that brought no new token; then the
      last failure is raised (typed, with ``details["attempts"]``). A host that drops
      every socket therefore sees ``1 + reconnect_attempts`` sockets for one answer.
    - ``config.max_resumes``: tries of one answer in all, progress or not: the total
      bound (an answer never uses more than ``1 + max_resumes`` sockets and sends).

    A paid session's job is bound to its host, so every try goes to that host and reuses
    the job: a retry never pays.

    Args:
        payload: the prompt frame of the answer.
        config: the session settings (``reconnect_attempts``, ``max_resumes``,
            ``max_retry_after``, ``max_context_messages``).
        drop: closes the broken socket (and tells discovery why).
        reconnect: ``reconnect(cause, attempts, on_try, rotate)``: a new socket after a
            failure (the same host, then alternates; ``rotate`` hosts skipped first), at
            most ``attempts`` tries, ``on_try()`` before each.
        closing: whether the manager is closing (then nothing reconnects).
    """

    def __init__(
        self,
        payload: dict[str, Any],
        config: SessionConfig,
        *,
        drop: Callable[[BaseException], Awaitable[None]],
        reconnect: Callable[[BaseException, int, Callable[[], None], int], Awaitable[Transport]],
        closing: Callable[[], bool],
    ) -> None:
        self.payload = payload
        self.config = config
        self._drop = drop
        self._reconnect = reconnect
        self._closing = closing
        self.segment_payload = payload  # the request being streamed now
        self.segment_start = 0  # tokens of the answer before it
        self.tries = 0  # tries of this answer after the first send (the budget's count)
        self.stalled = 0  # tries since the last new token
        self.progress_mark = 0
        self.exact = True  # False once a host answered an exact resume by starting over

    @property
    def resumes(self) -> int:
        """Tries so far (the name of earlier versions)."""
        return self.tries

    def _left(self) -> int:
        config = self.config
        return min(config.reconnect_attempts - self.stalled, config.max_resumes - self.tries)

    def _count(self) -> None:
        self.tries += 1
        self.stalled += 1

    def _give_up(self, exc: FabstirError) -> FabstirError:
        exc.details["attempts"] = self.tries
        return exc

    async def recover(self, stream: PromptStream, exc: FabstirError) -> None:
        """Make a broken answer go on, or re-raise ``exc`` (see the class docstring for the
        budget every step below counts against).

        - rate limited before any text: wait as long as the host asked, if that is at most
          ``max_retry_after``, and send again (a longer wait is the caller's decision);
        - the host lost an answer it was asked to resume: continue it as any host would;
        - the socket dropped, stalled or sent garbage: reconnect (same host, then
          alternates; after a try that brought no token, the next host first) and resume
          exactly where the client stopped (on the same host, if
          it announced the ``resume`` extension; it must confirm the offset with
          ``stream_resumed``: a host that starts over instead is asked for a continuation
          from then on) or ask for a continuation (any other host), or send the prompt
          again when nothing of it had arrived.

        Never retried: a host that sent nothing within ``first_token_timeout`` of the
        prompt (``RESPONSE_TIMEOUT``: it may still be working on it, and a prompt sent
        again could be billed twice), and every error the host answered with (invalid
        request, token limit, model not available).
        """
        if stream.chunks_received > self.progress_mark:
            self.stalled = 0
            self.progress_mark = stream.chunks_received
        # The answer's deadline (answer_timeout) bounds its recovery too: no wait or
        # reconnect goes past it.
        time_left = stream.answer_time_left()
        if time_left is not None and time_left <= 0:
            raise stream.answer_timeout_error() from exc
        if isinstance(exc, RateLimitedError):
            wait = 1.0 if exc.retry_after is None else exc.retry_after
            if (
                stream.pieces
                or wait > self.config.max_retry_after
                or self._left() <= 0
                or not _resendable(self.payload, exc)
            ):
                raise self._give_up(exc)
            if time_left is not None and wait >= time_left:
                raise stream.answer_timeout_error() from exc
            self._count()
            await asyncio.sleep(wait)
            stream.reattach(stream.transport, self.payload)
            return
        if isinstance(exc, HostError) and exc.details.get("host_code") == "RESUME_NOT_FOUND":
            if self._left() <= 0:
                raise self._give_up(exc)
            if stream.chunks_received == self.segment_start and not _resendable(
                self.segment_payload, exc
            ):
                raise self._give_up(exc)
            self._count()
            if stream.chunks_received == self.segment_start:
                # Nothing of this request arrived: send it again as it was.
                stream.reattach(stream.transport, self.segment_payload)
            else:
                self._continue_elsewhere(stream, stream.transport)
            return
        if not isinstance(exc, RESUMABLE) or stream.finished or self._closing():
            raise exc
        if exc.details.get("reason") == "resume_mismatch":
            self.exact = False  # this answer goes on by continuation from now on
        if self._left() <= 0:
            raise self._give_up(exc)
        broken = stream.transport
        await self._drop(exc)
        # After a try that brought nothing, go on with the next host first (if any).
        try:
            async with _compat.timeout(time_left):
                transport = await self._reconnect(exc, self._left(), self._count, self.stalled)
        except FabstirError as failed:
            self._give_up(failed)  # the answer's tries in all, not this reconnect's
            raise
        except TimeoutError:
            if time_left is None:
                raise
            raise stream.answer_timeout_error() from exc
        received = stream.chunks_received - self.segment_start
        if "resume" in transport.features and self.exact and transport.host_url == broken.host_url:
            # Offsets count from the start of the request being resumed (the prompt, or
            # the latest continuation request).
            token = resume_token(broken, transport)
            again = resume_payload(self.segment_payload, stream.request_id, received, token)
            stream.reattach(transport, again, mode="exact")
        elif received == 0:
            if not _resendable(self.segment_payload, exc):
                raise self._give_up(exc)
            stream.reattach(transport, self.segment_payload)  # nothing arrived: resend
        else:
            self._continue_elsewhere(stream, transport)

    def _continue_elsewhere(self, stream: PromptStream, transport: Transport) -> None:
        """Ask the host to continue the partial answer (a new request segment)."""
        cont = continuation_payload(
            self.payload, stream.text, stream.chunks_received, self.config.max_context_messages
        )
        self.segment_payload, self.segment_start = cont, stream.chunks_received
        stream.reattach(transport, cont, mode="continuation")
