"""A bounded JSON GET over an injectable ``httpx.AsyncClient`` (shared by sources and probes)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from langchain_fabstir._compat import timeout as deadline_after
from langchain_fabstir._http import ReplyTooLarge, read_capped, whole_reply_deadline
from langchain_fabstir._json import loads_untrusted

__all__ = ["FetchError", "JsonReply", "get_json"]


class FetchError(Exception):
    """A GET failed. ``kind`` is ``unreachable`` (network/timeout/HTTP status) or ``invalid``."""

    def __init__(self, kind: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


@dataclass(frozen=True)
class JsonReply:
    """A parsed JSON body, its HTTP status, and the request's round-trip time in seconds."""

    status: int
    body: Any
    elapsed_s: float


def _excerpt(raw: bytes, limit: int = 80) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > limit else "")


async def get_json(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: httpx.Timeout,
    max_bytes: int,
    accept_error_body: bool = False,
    deadline: float | None = None,
) -> JsonReply:
    """GET ``url`` and parse its body as JSON, reading at most ``max_bytes``.

    The whole GET (connect, headers, body) is bounded by ``deadline`` seconds, by default
    :func:`~langchain_fabstir._http.whole_reply_deadline` of ``timeout`` and
    ``max_bytes``: a server that trickles its reply cannot hold it for long.

    Raises :class:`FetchError` with ``kind="unreachable"`` for transport failures, timeouts and
    (unless ``accept_error_body``) HTTP statuses >= 400; ``kind="invalid"`` for bodies that are
    too large or not JSON. With ``accept_error_body`` a >= 400 reply whose body is JSON is
    returned (``/health`` answers 503 with a JSON status).
    """
    if deadline is None:
        deadline = whole_reply_deadline(timeout, max_bytes)
    started = time.perf_counter()
    try:
        async with deadline_after(deadline):
            async with client.stream("GET", url, timeout=timeout) as response:
                elapsed = time.perf_counter() - started
                raw = await read_capped(response, max_bytes)
                status = response.status_code
    except ReplyTooLarge:
        raise FetchError("invalid", f"GET {url}: reply larger than {max_bytes} bytes") from None
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise FetchError(
            "unreachable", f"GET {url}: no complete reply within {deadline:g}s"
        ) from exc
    except httpx.TimeoutException as exc:
        raise FetchError("unreachable", f"GET {url}: timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise FetchError("unreachable", f"GET {url}: {type(exc).__name__}: {detail}") from exc
    if status >= 400 and not accept_error_body:
        raise FetchError("unreachable", f"GET {url}: HTTP {status}", status=status)
    try:
        body = loads_untrusted(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        if status >= 400:
            raise FetchError("unreachable", f"GET {url}: HTTP {status}", status=status) from exc
        raise FetchError("invalid", f"GET {url}: reply is not JSON: {_excerpt(raw)}") from exc
    return JsonReply(status=status, body=body, elapsed_s=elapsed)
