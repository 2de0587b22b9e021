"""Bounded HTTP calls from the reference host to its sidecars (search API, diffusion).

One request, one answer read up to a byte cap, the whole exchange (connect, send, read)
under one deadline. Failures come back as :class:`UpstreamError` with a short reason the
route puts in the node's error message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from langchain_fabstir._compat import timeout as deadline
from langchain_fabstir._http import ReplyTooLarge, client, read_capped
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import UpstreamError

__all__ = ["UpstreamError", "call_upstream", "upstream_json"]


async def call_upstream(
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """``(status, reason, body)`` of one request; the body is at most ``max_bytes``.

    Raises :class:`UpstreamError` when the exchange fails, takes longer than ``timeout``
    seconds in all, or the answer is larger than ``max_bytes``.
    """
    try:
        async with deadline(timeout), client(timeout) as http:
            async with http.stream(
                method, url, params=params, json=json_body, headers=headers
            ) as response:
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise UpstreamError(f"the answer is {length} bytes (limit {max_bytes})")
                body = await read_capped(response, max_bytes)
                return response.status_code, response.reason_phrase, body
    except ReplyTooLarge:
        raise UpstreamError(f"the answer is larger than {max_bytes} bytes") from None
    except (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException) as exc:
        raise UpstreamError(f"no answer within {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc


async def upstream_json(raw: bytes, not_json: str) -> Any:
    """A sidecar's answer parsed with the bounds of untrusted JSON, off the event loop;
    :class:`UpstreamError` ``"{not_json}: <why>"`` when it is not JSON."""
    try:
        return await asyncio.to_thread(loads_untrusted, raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"{not_json}: {exc}") from exc
