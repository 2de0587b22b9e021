"""Plain JSON calls to a host's HTTP routes (``/v1/search``, ``/v1/images/generate``):
hosts from a URL list or :class:`~langchain_fabstir.discovery.HostDiscovery`, failover
with a tenacity retry, answers read up to a byte cap and parsed with depth bounds, and
the node's ``{"error": ...}`` answers turned into typed errors.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from langchain_fabstir._http import ReplyTooLarge, client, read_capped, request_timeout
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.discovery import HostDiscovery
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    HostDisconnectedError,
    HostError,
    InvalidRequestError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
)

__all__ = [
    "UNAVAILABLE",
    "HostRoutes",
    "NodeAnswer",
    "call_hosts",
    "common_error",
    "error_message",
    "other_error",
    "post_json",
    "resolve_hosts",
    "service_error",
]

T = TypeVar("T")

UNAVAILABLE = "unavailable"
"""``details["kind"]`` of an error saying a host lacks the service (not worth a retry
on the same host; another host may have it)."""
_MAX_ERROR_BYTES = 64 * 1024
_RETRY_AFTER_CAP = 30.0
_BACKOFF = wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 1)
_RETRY_IN_TEXT = re.compile(r"retry after (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


class NodeAnswer:
    """A host's answer: status, body (capped) and the ``Retry-After`` header."""

    __slots__ = ("body", "retry_after", "status", "url")

    def __init__(self, url: str, status: int, body: bytes, retry_after: str | None) -> None:
        self.url = url
        self.status = status
        self.body = body
        self.retry_after = retry_after

    def json(self, host: str) -> Any:
        """The body parsed with depth bounds; :class:`ProtocolError` if it is not JSON."""
        try:
            return loads_untrusted(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                f"{self.url} answered with something that is not JSON ({exc})",
                host_url=host,
                details={"excerpt": self.body[:120].decode("utf-8", "replace")},
            ) from exc

    def retry_after_seconds(self, message: str) -> float | None:
        """Seconds to wait: the ``Retry-After`` header, else ``retry after Ns`` in the text."""
        for text in (self.retry_after, message):
            if not text:
                continue
            try:
                return float(text)
            except ValueError:
                found = _RETRY_IN_TEXT.search(text)
                if found:
                    return float(found.group(1))
        return None


class HostRoutes(BaseModel):
    """The hosts of a client of a host's HTTP routes (embeddings, search, images):
    ``host_url`` (default ``FABSTIR_HOST_URL``) and ``discovery``; :meth:`_connect` opens
    the HTTP client and resolves the hosts to try, :meth:`_post` sends a request with
    failover. A subclass gives ``timeout`` (seconds a request) and ``max_retries``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    host_url: str | list[str] | None = Field(
        default=None,
        description="Host base URL, or a list tried in order (failover). Defaults to "
        "FABSTIR_HOST_URL.",
    )
    discovery: HostDiscovery | None = Field(
        default=None,
        exclude=True,
        description="Where hosts come from (a HostDiscovery); host_url then restricts it.",
    )

    timeout: float
    max_retries: int

    @model_validator(mode="before")
    @classmethod
    def _host_from_env(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("host_url") is None:
            env = os.environ.get("FABSTIR_HOST_URL")
            if env:
                return {**data, "host_url": env}
        return data

    @model_validator(mode="after")
    def _check_hosts(self) -> Any:
        urls = [self.host_url] if isinstance(self.host_url, str) else list(self.host_url or [])
        if any(not isinstance(u, str) or not u.strip() for u in urls):
            raise ValueError("host_url must be a URL or a list of URLs")
        return self

    @asynccontextmanager
    async def _connect(self, timeout: float) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
        """An HTTP client with ``timeout`` seconds a request (10 s at most to connect) and
        the base URLs to try, in order."""
        async with client(request_timeout(timeout)) as http:
            yield http, await resolve_hosts(self.host_url, self.discovery, type(self).__name__)

    async def _post(
        self,
        client: httpx.AsyncClient,
        hosts: list[str],
        path: str,
        body: dict[str, Any],
        *,
        max_bytes: int,
        refused: Callable[[NodeAnswer, str], FabstirError],
        parse: Callable[[NodeAnswer, str], T],
        what: str = "",
        state: dict[str, int] | None = None,
    ) -> T:
        """POST ``body`` to ``path`` of the first host, failing over (:func:`call_hosts`);
        a 200 answer goes to ``parse(answer, host)``, another to ``refused(answer, host)``
        (the error raised)."""

        async def one(host: str) -> T:
            answer = await post_json(
                client, host, path, body, max_bytes=max_bytes, timeout=self.timeout, what=what
            )
            if answer.status != 200:
                raise refused(answer, host)
            return parse(answer, host)

        return await call_hosts(
            hosts, one, max_retries=self.max_retries, discovery=self.discovery, state=state
        )


async def resolve_hosts(
    host_url: str | list[str] | None, discovery: HostDiscovery | None, who: str
) -> list[str]:
    """The base URLs to try, in order (discovery's healthy hosts, or ``host_url``)."""
    if discovery is not None:
        found = await discovery.candidates(model=None, host_url=host_url)
        if not found:
            # select() raises NoHostAvailableError with the reason for every host.
            found = [await discovery.select(model=None, host_url=host_url)]
        return [h.url for h in found]
    hosts = [host_url] if isinstance(host_url, str) else list(host_url or [])
    if not hosts:
        raise InvalidRequestError(
            f"{who} needs a host: pass host_url=..., discovery=..., or set FABSTIR_HOST_URL"
        )
    return [h.rstrip("/") for h in hosts]


async def post_json(
    client: httpx.AsyncClient,
    host: str,
    path: str,
    body: dict[str, Any],
    *,
    max_bytes: int,
    timeout: float,
    what: str = "",
) -> NodeAnswer:
    """POST ``body`` to ``{host}{path}``; read at most ``max_bytes`` of a 200 answer
    (:class:`ProtocolError` beyond, its message naming ``what`` was sent) and 64 KB of an
    error's; transport failures typed."""
    url = f"{host}{path}"
    try:
        async with client.stream("POST", url, json=body) as response:
            status = response.status_code
            retry_after = response.headers.get("retry-after")
            if status == 200:
                raw = await read_capped(response, max_bytes)
            else:  # an error's excerpt is enough
                raw = await read_capped(response, _MAX_ERROR_BYTES, truncate=True)
    except ReplyTooLarge as exc:
        raise ProtocolError(
            f"{url} sent more than {exc.limit} bytes{what} (a broken or hostile host); "
            "stopped reading",
            host_url=host,
            details={"limit": exc.limit},
        ) from None
    except httpx.TimeoutException as exc:
        raise ResponseTimeoutError(
            f"{url} did not answer within {timeout} s", host_url=host
        ) from exc
    except httpx.ConnectError as exc:
        raise ConnectionFailedError(
            f"cannot reach {url}: {exc or type(exc).__name__}", host_url=host
        ) from exc
    except httpx.HTTPError as exc:
        raise HostDisconnectedError(
            f"{url} failed mid-request: {type(exc).__name__}: {exc}", host_url=host
        ) from exc
    return NodeAnswer(url, status, raw, retry_after)


def error_message(answer: NodeAnswer) -> str:
    """The node's message of an error answer (``{"error": ...}`` JSON or axum's text)."""
    message = answer.body[:_MAX_ERROR_BYTES].decode("utf-8", "replace")
    try:
        data = loads_untrusted(answer.body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    elif isinstance(data, dict) and isinstance(data.get("message"), str):
        message = data["message"]
    return " ".join(message.split())[:500] or f"HTTP {answer.status}"


def common_error(answer: NodeAnswer, host: str) -> FabstirError | None:
    """The typed error of a refusal every route shares (400/413/415/422, 429), else None."""
    message = error_message(answer)
    details: dict[str, Any] = {"status": answer.status}
    if answer.status in (400, 413, 415, 422):
        return InvalidRequestError(
            f"{answer.url} refused the request: {message}", host_url=host, details=details
        )
    if answer.status == 429:
        return RateLimitedError(
            f"{answer.url}: {message}",
            host_url=host,
            retry_after=answer.retry_after_seconds(message),
            details=details,
        )
    return None


def other_error(answer: NodeAnswer, host: str) -> HostError:
    """Any other non-200 answer."""
    return HostError(
        f"{answer.url} answered HTTP {answer.status}: {error_message(answer)}",
        host_url=host,
        details={"status": answer.status},
    )


def service_error(
    answer: NodeAnswer,
    host: str,
    *,
    service: str,
    unavailable: type[HostError],
    failed: type[HostError],
) -> FabstirError:
    """The typed error of a non-200 answer of a route offering ``service``: a shared
    refusal (:func:`common_error`); 404 (no such route) or 503 (service not loaded):
    ``unavailable`` marked ``kind="unavailable"``; 500: ``failed``; else :func:`other_error`."""
    common = common_error(answer, host)
    if common is not None:
        return common
    message = error_message(answer)
    details: dict[str, Any] = {"status": answer.status}
    if answer.status in (404, 503):
        text = message if answer.status == 503 else f"no {service} here (404: {message})"
        return unavailable(
            f"{answer.url}: {text}", host_url=host, details={**details, "kind": UNAVAILABLE}
        )
    if answer.status == 500:
        return failed(f"{answer.url}: {message}", host_url=host, details=details)
    return other_error(answer, host)


async def call_hosts(
    hosts: list[str],
    call: Callable[[str], Awaitable[T]],
    *,
    max_retries: int,
    discovery: HostDiscovery | None = None,
    state: dict[str, int] | None = None,
) -> T:
    """``call(host)`` on the first host, moving to the next one after each retryable
    failure, at most ``max_retries`` more times (tenacity). No wait before a host not
    tried yet; backoff (or the host's ``retry_after``, capped at 30 s) before a host
    tried already. A host lacking the service (``details["kind"] == "unavailable"``) is
    not asked again, and is not reported to ``discovery``'s circuit breakers (it is
    healthy, it just does not offer this). ``state["next"]`` (the index of the host to
    start on) carries the position over between calls that share ``state``."""
    tried: list[str] = []
    state = {"next": 0} if state is None else state

    def upcoming() -> str:
        return hosts[state["next"] % len(hosts)]

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, FabstirError) or not exc.is_retryable:
            return False
        return exc.details.get("kind") != UNAVAILABLE or upcoming() not in tried

    def wait(retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RateLimitedError) and exc.retry_after:
            return min(max(_BACKOFF(retry_state), exc.retry_after), _RETRY_AFTER_CAP)
        if upcoming() not in tried:
            return 0.0  # failing over to a host not tried yet: no need to wait
        return float(_BACKOFF(retry_state))

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max_retries + 1),
        retry=retry_if_exception(retryable),
        wait=wait,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            host = upcoming()
            tried.append(host)
            try:
                result = await call(host)
            except FabstirError as exc:
                if exc.is_retryable:
                    state["next"] += 1
                    if discovery is not None and exc.details.get("kind") != UNAVAILABLE:
                        discovery.record_failure(host, exc)
                raise
            if discovery is not None:
                discovery.record_success(host)
            return result
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True
