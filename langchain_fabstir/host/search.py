"""The reference host's ``POST /v1/search``: a node's web search over a configured search API.

Deployed nodes search through Brave, Bing or DuckDuckGo with their own API keys
(PROTOCOL.md section 6.4). The reference host calls one search API given on the command
line (``fabstir host --search-upstream URL``) that speaks Brave's JSON shape, and answers
exactly as a node does, errors included; without one it answers 503 as a node without a
search service.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from langchain_fabstir.host._routes import error as _error
from langchain_fabstir.host._routes import read_json
from langchain_fabstir.host._upstream import UpstreamError, call_upstream, upstream_json

__all__ = ["MAX_QUERY_BYTES", "MAX_RESULTS", "SearchRoute"]

MAX_QUERY_BYTES = 500
"""Longest query a node searches, in UTF-8 bytes (api/search/request.rs)."""
MAX_RESULTS = 20
"""Most results one request may ask for (``numResults`` 1..20, default 10)."""

_CHAIN_NAMES = {84532: "Base Sepolia", 5611: "opBNB Testnet"}
_U64 = 2**64


class SearchRoute:
    """``POST /v1/search`` as a deployed node answers it (PROTOCOL.md section 6.4).

    ``upstream`` is the base URL of a search API, or ``None`` (every request then answers
    503 ``Search service not available``, as a node without a search service). The host
    calls it as nodes call Brave::

        GET {upstream}?q=<query>&count=<numResults>     (Accept: application/json)
        200 {"web": {"results": [{"title": str, "url": str, "description": str,
                                  "age": str | null}, ...]}}

    and turns each result into ``{"title", "url", "snippet": description,
    "publishedDate": age (when given), "source": "brave"}``. Like a node it caches
    answers by query (lower-cased, trimmed; ``cache_ttl`` seconds, ``cache_size``
    entries, ``cached: true`` and ``searchTimeMs: 0`` on a hit; also at most
    ``cache_max_bytes`` of result text, oldest out first), allows
    ``rate_limit_per_minute`` upstream searches (a token bucket: 429 ``Rate limited,
    retry after Ns`` beyond it), and answers 500 ``Provider unavailable: all`` when the
    search API fails: unreachable, an error status, not that JSON shape, slower than
    ``timeout`` seconds in all, or larger than ``max_upstream_bytes``. The answer is
    parsed with depth and size bounds, and at most ``numResults`` results are kept (a
    node keeps what Brave sends, which is never more).
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        timeout: float = 10.0,
        max_upstream_bytes: int = 2 * 1024 * 1024,
        cache_ttl: float = 3600.0,
        cache_size: int = 1000,
        cache_max_bytes: int = 16 * 1024 * 1024,
        rate_limit_per_minute: int = 60,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.timeout = timeout
        self.max_upstream_bytes = max_upstream_bytes
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.cache_max_bytes = cache_max_bytes
        self._cache: OrderedDict[str, tuple[float, list[dict[str, Any]], int]] = OrderedDict()
        self._cache_bytes = 0
        self._rate = max(1, rate_limit_per_minute)
        self._tokens = float(self._rate)
        self._refilled = time.monotonic()
        self.upstream_calls = 0
        """How many times the search API was called (tests read this)."""

    # --- node rules -------------------------------------------------------------------

    def _take_token(self) -> float | None:
        """``None`` when a search may go out now, else the seconds until it may."""
        now = time.monotonic()
        self._tokens = min(
            float(self._rate), self._tokens + (now - self._refilled) * self._rate / 60.0
        )
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) * 60.0 / self._rate

    def _cached(self, key: str) -> list[dict[str, Any]] | None:
        entry = self._cache.get(key)
        if entry is None or time.monotonic() - entry[0] > self.cache_ttl:
            return None
        return entry[1]

    def _remember(self, key: str, results: list[dict[str, Any]]) -> None:
        size = len(key) + sum(len(v) + 64 for r in results for v in r.values())
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old[2]
        if size > self.cache_max_bytes:
            return
        self._cache[key] = (time.monotonic(), results, size)
        self._cache_bytes += size
        while len(self._cache) > self.cache_size or self._cache_bytes > self.cache_max_bytes:
            self._cache_bytes -= self._cache.popitem(last=False)[1][2]

    # --- the route --------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        body = await read_json(request, _shape_problem)
        if isinstance(body, web.Response):
            return body
        query: str = body["query"]
        count: int = body.get("numResults", 10)
        chain_id: int = body.get("chainId", 84532)
        if not query.strip():
            return _error(400, "Query cannot be empty")
        if len(query.encode("utf-8")) > MAX_QUERY_BYTES:
            return _error(400, "Query too long (max 500 characters)")
        if count < 1:
            return _error(400, "num_results must be at least 1")
        if count > MAX_RESULTS:
            return _error(400, "num_results cannot exceed 20")
        if self.upstream is None:
            return _error(503, "Search service not available")
        key = query.lower().strip()
        results = self._cached(key)
        cached = results is not None
        started = time.monotonic()
        if results is None:
            wait = self._take_token()
            if wait is not None:
                return _error(429, f"Rate limited, retry after {max(1, round(wait))}s")
            try:
                results = await self._search(query, count)
            except UpstreamError:
                return _error(500, "Provider unavailable: all")
            self._remember(key, results)
        return web.json_response(
            {
                "query": query,
                "results": results,
                "resultCount": len(results),
                "searchTimeMs": 0 if cached else int((time.monotonic() - started) * 1000),
                "provider": "brave",
                "cached": cached,
                "chainId": chain_id,
                "chainName": _CHAIN_NAMES.get(chain_id, "Unknown"),
            }
        )

    async def _search(self, query: str, count: int) -> list[dict[str, Any]]:
        assert self.upstream is not None
        self.upstream_calls += 1
        status, _, raw = await call_upstream(
            "GET",
            self.upstream,
            params={"q": query, "count": str(count)},
            headers={"Accept": "application/json"},
            timeout=self.timeout,
            max_bytes=self.max_upstream_bytes,
        )
        if status != 200:
            raise UpstreamError(f"the search API answered HTTP {status}")
        data = await upstream_json(raw, "the search API's answer is not JSON")
        web_part = data.get("web") if isinstance(data, dict) else None
        items = web_part.get("results") if isinstance(web_part, dict) else None
        if not isinstance(items, list):
            raise UpstreamError("the search API's answer has no web.results list")
        results: list[dict[str, Any]] = []
        for item in items[:count]:
            if not isinstance(item, dict) or not all(
                isinstance(item.get(f), str) for f in ("title", "url", "description")
            ):
                raise UpstreamError("a search result lacks title, url or description")
            age = item.get("age")
            if age is not None and not isinstance(age, str):
                raise UpstreamError("a search result's age is not a string")
            result = {"title": item["title"], "url": item["url"], "snippet": item["description"]}
            if age is not None:
                result["publishedDate"] = age
            result["source"] = "brave"
            results.append(result)
        return results


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def _shape_problem(body: Any) -> str | None:
    """Why ``body`` does not deserialize into the node's ``SearchApiRequest`` (serde's 422)."""
    if not isinstance(body, dict):
        return "invalid type: expected struct SearchApiRequest"
    if "query" not in body:
        return "missing field `query`"
    if not isinstance(body["query"], str):
        return "query: invalid type: expected a string"
    if "numResults" in body and not _is_uint(body["numResults"]):
        return "numResults: invalid type: expected usize"
    if "chainId" in body and not _is_uint(body["chainId"]):
        return "chainId: invalid type: expected u64"
    request_id = body.get("requestId")
    if request_id is not None and not isinstance(request_id, str):
        return "requestId: invalid type: expected a string"
    return None
