"""HTTP plumbing shared by :class:`~langchain_fabstir.s5.client.S5PortalClient`: the errors
of portal refusals, the buffered reply, which failures are worth retrying, and the log filter
that keeps auth tokens out of the HTTP libraries' debug logs."""

from __future__ import annotations

import logging
import re

import httpx

from langchain_fabstir.errors import BlobNotFoundError, PortalRequestError

__all__ = [
    "BlobNotFoundError",
    "PortalRequestError",
    "RedactSecretsFilter",
    "install_log_redaction",
    "redact_secrets",
]

EXCERPT = 200


class Transient(Exception):
    """An HTTP answer worth retrying (5xx, 429); carries the response facts."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


class DeadlineExceeded(httpx.TimeoutException):
    """One request (send and the whole reply) took longer than its overall deadline.

    A subclass of ``httpx.TimeoutException`` so that it is retried exactly like a read
    timeout (idempotent requests only) and ends as a ``StorageError``.
    """


TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def is_transient(exc: BaseException) -> bool:
    """Retry predicate for idempotent requests: transport failures, 5xx and 429."""
    return isinstance(exc, (Transient, *TRANSPORT_ERRORS))


def connect_only(exc: BaseException) -> bool:
    """Retry predicate for non-idempotent requests: only what never reached the portal."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, Transient))


class Response:
    """A fully read (size-bounded) HTTP reply."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: httpx.Headers) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def text(self) -> str:
        return self.body[:EXCERPT].decode("utf-8", "replace")


# --- keeping secrets out of logs ---------------------------------------------------------

REDACTED = "[REDACTED]"
_SECRET_HEADERS = "set-cookie|cookie|authorization|proxy-authorization|x-api-key"
_PATTERNS = (
    # httpcore's trace lines print header tuples: (b'Set-Cookie', b's5-auth-token=...; ...')
    re.compile(
        rf"(\(\s*b?(['\"])(?:{_SECRET_HEADERS})\2\s*,\s*b?(['\"]))(.*?)(\3\s*\))",
        re.IGNORECASE,
    ),
    # headers printed as a mapping or a line: 'authorization': 'Bearer x', Cookie: a=b
    re.compile(
        rf"((['\"]?)(?:{_SECRET_HEADERS})\2\s*[:=]\s*(['\"]?))([^'\"\r\n,)}}]+)()", re.IGNORECASE
    ),
    re.compile(r"((?:Bearer|Basic)\s+)()()([A-Za-z0-9._~+/=-]+)()", re.IGNORECASE),
    re.compile(
        r"((?:s5-auth-token|auth_token|authToken)[\"']?\s*[=:]\s*[\"']?)()()([^\s&;'\",)]+)()"
    ),
)


def redact_secrets(text: str) -> str:
    """``text`` with the values of auth headers, cookies and auth tokens replaced."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(5)}", text)
    return text


class RedactSecretsFilter(logging.Filter):
    """Rewrites a log record so that no auth token, cookie or Authorization value remains.

    httpcore logs every response's headers at DEBUG (the portal's ``Set-Cookie`` carries the
    account token) and httpx logs request URLs at INFO (a URL may carry ``auth_token=``).
    The record is kept, with the secret values replaced by ``[REDACTED]``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


# A filter on a logger only sees records logged to that very logger, not its children's:
# name every logger the HTTP stack writes to.
HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "hpack",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.server",
)
_FILTER = RedactSecretsFilter()


def install_log_redaction(names: tuple[str, ...] = HTTP_LOGGERS) -> None:
    """Attach :class:`RedactSecretsFilter` to the HTTP libraries' loggers (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
