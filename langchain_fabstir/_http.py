"""The HTTP client every part of the package uses (:func:`client`), and reading a reply
from a peer with bounds on its size and on its time as a whole.

httpx bounds each read (``Timeout.read``), not a reply: a peer that trickles a byte
every second never trips a 30 s read timeout and can hold a request for as long as the
reply is long. :func:`read_capped` reads a streamed reply with a size bound and,
optionally, a deadline for the whole body; :func:`whole_reply_deadline` derives such a
deadline from the reply's expected size, so that a small reply (a registry entry, a
JSON status) that trickles fails within about one read timeout.

>>> whole_reply_deadline(httpx.Timeout(1.0, connect=2.0), 0)
3.0
>>> whole_reply_deadline(httpx.Timeout(1.0, connect=2.0), 1024 * 1024, min_rate=512 * 1024)
5.0
>>> whole_reply_deadline(httpx.Timeout(1.0), 10**12, cap=300.0)
300.0
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import httpx

from langchain_fabstir._compat import timeout as deadline_after

__all__ = [
    "DEFAULT_TIMEOUT",
    "MIN_TRANSFER_RATE",
    "ReplyTooLarge",
    "client",
    "read_capped",
    "request_timeout",
    "whole_reply_deadline",
]

DEFAULT_TIMEOUT = httpx.Timeout(5.0)
"""httpx's own default: what a client made without a timeout gets (requests that need
another pass theirs)."""

MIN_TRANSFER_RATE = 64 * 1024
"""Bytes a second a peer must at least keep up, on average, once it has begun a reply."""


def request_timeout(seconds: float, *, connect: float = 10.0) -> httpx.Timeout:
    """``seconds`` for each phase of a request, connecting at most ``connect`` of them."""
    return httpx.Timeout(seconds, connect=min(seconds, connect))


def client(
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    *,
    headers: dict[str, str] | None = None,
    limits: httpx.Limits | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    base_url: str = "",
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with the package's settings, in one place.

    No redirects are followed (a peer cannot send a request elsewhere) and bodies are
    asked for uncompressed (``Accept-Encoding: identity``): every body read from a peer is
    read with :func:`read_capped`, and a cap on decompressed bytes would let a small
    compressed chunk expand far past it in one step. ``timeout`` (seconds or an
    ``httpx.Timeout``), ``headers`` (added to those), ``limits`` (httpx's defaults
    otherwise), ``transport`` and ``base_url`` are the caller's.
    """
    settings: dict[str, Any] = {} if limits is None else {"limits": limits}
    if transport is None:
        settings["verify"] = _tls_context()
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Accept-Encoding": "identity", **(headers or {})},
        timeout=timeout,
        transport=transport,
        follow_redirects=False,
        **settings,
    )


_TLS: ssl.SSLContext | None = None
_TLS_LOCK = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """httpx's own default TLS context (the ``certifi`` bundle, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` as set when it is first needed), made once and shared by every
    client: making one loads the CA bundle, about 25 ms of CPU per client otherwise
    (an S5 history, a host call, each CLI command). Verification is the same."""
    global _TLS
    with _TLS_LOCK:
        if _TLS is None:
            _TLS = httpx.create_ssl_context()
        return _TLS


class ReplyTooLarge(ValueError):
    """A reply longer than the bound it was read with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"reply larger than {limit} bytes")
        self.limit = limit


def whole_reply_deadline(
    timeout: httpx.Timeout,
    expected_bytes: int,
    *,
    min_rate: float = MIN_TRANSFER_RATE,
    cap: float | None = None,
) -> float | None:
    """Seconds a whole exchange may take: connect, one read timeout, and the time
    ``expected_bytes`` (sent and received) take at ``min_rate``; at most ``cap``.

    ``None`` (no deadline) only when the timeout has no read bound and there is no cap.
    """
    if timeout.read is None:
        return cap
    budget = (timeout.connect or 0.0) + timeout.read + max(0, expected_bytes) / min_rate
    return budget if cap is None else min(budget, cap)


async def read_capped(
    response: httpx.Response,
    limit: int,
    *,
    deadline: float | None = None,
    truncate: bool = False,
) -> bytes:
    """The body of a streamed ``response``: at most ``limit`` bytes, within ``deadline``
    seconds for the whole body (``None``: only httpx's per-read timeout).

    A longer body raises :class:`ReplyTooLarge` (with ``truncate``: its first ``limit``
    bytes are returned). A body not complete by the deadline raises
    ``asyncio.TimeoutError`` (the builtin ``TimeoutError`` on Python 3.11+).
    """
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                if truncate:
                    return
                raise ReplyTooLarge(limit)

    if deadline is None:
        await read()
    else:
        async with deadline_after(deadline):
            await read()
    body = b"".join(chunks)
    return body[:limit] if size > limit else body
