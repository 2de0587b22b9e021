"""Bounded HTTP calls from the reference host to its sidecars (search API, diffusion).

One request, one answer read up to a byte cap, the whole exchange (connect, send, read)
under one deadline. Failures come back as :class:`UpstreamError` with a short reason the
route puts in the node's error message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from langchain_fabstir._compat import timeout as deadline

__all__ = ["UpstreamError", "call_upstream"]


class UpstreamError(Exception):
    """The sidecar could not be reached, was too slow, or sent too much."""


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
        async with deadline(timeout):
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session:
                async with session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=headers,
                    allow_redirects=False,
                ) as response:
                    if (response.content_length or 0) > max_bytes:
                        raise UpstreamError(
                            f"the answer is {response.content_length} bytes (limit {max_bytes})"
                        )
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > max_bytes:
                            raise UpstreamError(f"the answer is larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    return response.status, response.reason or "", b"".join(chunks)
    except (TimeoutError, asyncio.TimeoutError) as exc:  # the same class from 3.11
        raise UpstreamError(f"no answer within {timeout:g} s") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
