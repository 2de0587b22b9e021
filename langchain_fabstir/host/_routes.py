"""What the reference host's plain JSON routes (``/v1/embed``, ``/v1/search``,
``/v1/images/generate``) share: reading the request body as a deployed node's axum does
(415, 400 and 422 with axum's texts) and the node's ``{"error": ...}`` answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from langchain_fabstir._json import loads_untrusted

__all__ = ["error", "read_json"]


def error(status: int, message: str) -> web.Response:
    """The node's error answer: ``{"error": message}`` with ``status``."""
    return web.json_response({"error": message}, status=status)


async def read_json(
    request: web.Request, shape_problem: Callable[[Any], str | None]
) -> Any | web.Response:
    """The request's JSON body (parsed with depth bounds), or the answer axum gives when it
    is not JSON (415 without ``Content-Type: application/json``, 400 unparsable) or does
    not fit the route's request type (422 with ``shape_problem(body)``'s reason)."""
    if request.content_type != "application/json":
        return web.Response(
            status=415, text="Expected request with `Content-Type: application/json`"
        )
    try:
        body = loads_untrusted(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return web.Response(
            status=400, text=f"Failed to parse the request body as JSON: {str(exc)[:200]}"
        )
    problem = shape_problem(body)
    if problem is not None:
        return web.Response(
            status=422,
            text=f"Failed to deserialize the JSON body into the target type: {problem}",
        )
    return body
