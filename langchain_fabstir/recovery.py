"""Keeping an answer going when its host drops, stalls or refuses for a while.

The session layer calls these when a stream breaks:

- :func:`reconnect`: a new socket, with tenacity (exponential backoff with jitter),
  first to the same host, then to the session's alternate hosts (failover). Only
  failures that can be retried are retried.
- :func:`resume_payload`: how to continue the same answer on that socket. A host that
  announced the ``resume`` extension (the reference host keeps an interrupted answer for
  a grace period) continues exactly from the token offset the client last received.
  Any other host is asked to continue the partial assistant message
  (:data:`CONTINUE_PROMPT`); the result says so (``mode="continuation"``).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    HostDisconnectedError,
    ProtocolError,
    ResponseTimeoutError,
    StreamChunkTimeoutError,
)
from langchain_fabstir.transport import Transport

__all__ = [
    "CONTINUE_PROMPT",
    "RESUMABLE",
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
    initial_wait: float = 0.05,
    max_wait: float = 2.0,
) -> Transport:
    """Open a socket to ``hosts[0]``, then the others in turn, ``attempts`` tries in all.

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
    again["prompt"] = CONTINUE_PROMPT
    return again
