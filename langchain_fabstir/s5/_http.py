"""HTTP plumbing shared by :class:`~langchain_fabstir.s5.client.S5PortalClient`: the errors
of portal refusals, the buffered reply, and which failures are worth retrying."""

from __future__ import annotations

import httpx

from langchain_fabstir.errors import StorageError

__all__ = ["BlobNotFoundError", "PortalRequestError"]

EXCERPT = 200


class BlobNotFoundError(StorageError):
    """The portal does not have the requested blob (HTTP 404)."""

    code = "BLOB_NOT_FOUND"
    is_retryable = False


class PortalRequestError(StorageError):
    """The portal refused a request for a reason other than auth, revision or integrity."""

    code = "PORTAL_REQUEST_REJECTED"
    is_retryable = False


class Transient(Exception):
    """An HTTP answer worth retrying (5xx, 429); carries the response facts."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


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
