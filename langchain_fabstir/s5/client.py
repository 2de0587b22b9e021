"""An async client for the HTTP API of an S5 portal (the Dart node's API, or :mod:`..portal`).

Every byte is checked: uploads are hashed locally and a reply CID that differs is refused,
downloads are hashed against their CID, registry entries must carry a valid signature.
Transient failures (connection errors, timeouts, 5xx, 429) are retried with tenacity
(bounded attempts, exponential backoff with jitter); after the last attempt a
:class:`~langchain_fabstir.errors.StorageError` names the portal and the number of attempts.
Besides httpx's per-read timeouts, every attempt has a deadline as a whole, derived from
the size of what it carries (connect + read timeout + size at ``min_transfer_rate``,
capped by ``request_deadline``): a portal that trickles a small reply (a registry entry, an
account challenge) a byte at a time fails within about one read timeout per attempt.

Details and examples: :class:`S5PortalClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir import _http
from langchain_fabstir._compat import timeout as deadline_after
from langchain_fabstir._http import (
    MIN_TRANSFER_RATE,
    ReplyTooLarge,
    read_capped,
    whole_reply_deadline,
)
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import (
    AuthenticationError,
    FabstirError,
    IntegrityError,
    RevisionConflictError,
    StorageError,
)
from langchain_fabstir.s5._http import (
    EXCERPT,
    TRANSPORT_ERRORS,
    BlobNotFoundError,
    DeadlineExceeded,
    PortalRequestError,
    Response,
    Transient,
    connect_only,
    install_log_redaction,
    is_transient,
)
from langchain_fabstir.s5.cid import CID, InvalidCIDError, blake3_hash
from langchain_fabstir.s5.encoding import EncodingError, b64url_decode, b64url_encode
from langchain_fabstir.s5.registry import (
    MKEY_ED25519,
    Ed25519KeyPair,
    InvalidRegistryEntryError,
    RegistryEntry,
)

__all__ = [
    "CHALLENGE_LOGIN",
    "CHALLENGE_REGISTER",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_REQUEST_DEADLINE",
    "DEFAULT_TIMEOUT",
    "BlobNotFoundError",
    "PortalRequestError",
    "S5PortalClient",
]

CHALLENGE_REGISTER = 0x01
CHALLENGE_LOGIN = 0x02
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0, pool=5.0)
DEFAULT_REQUEST_DEADLINE = 300.0
DEFAULT_MAX_CONCURRENT_REQUESTS = 20

install_log_redaction()


class S5PortalClient:
    """Async HTTP client of one S5 portal (``{url}/s5/...``).

    Secrets stay out of logs: importing this module attaches a filter to the loggers of httpx,
    httpcore and aiohttp that replaces auth-token, cookie and ``Authorization`` values with
    ``[REDACTED]`` (httpcore prints every response header, the portal's ``Set-Cookie`` included,
    at DEBUG); the client itself never logs a token, key or seed.

    Setup and use::

        from langchain_fabstir.s5 import S5Identity, S5PortalClient

        identity = S5Identity.from_phrase(phrase)
        async with S5PortalClient("http://127.0.0.1:5050") as client:
            await client.ensure_account(identity.portal_account_key_pair())
            cid = await client.upload(b"hello")          # CID('blobb...')
            assert await client.download(cid) == b"hello"

    Errors: :class:`AuthenticationError` (401/403), :class:`IntegrityError` (hash or signature
    mismatch), :class:`RevisionConflictError` (registry write with a stale revision),
    :class:`BlobNotFoundError` (404), :class:`PortalRequestError` (other refusals),
    :class:`StorageError` (unreachable after retries, malformed replies).

    Args:
        portal_url: base URL, e.g. ``"https://s5.example.com"`` or ``portal.url``.
        auth_token: a token from :meth:`register`/:meth:`login` (kept as ``SecretStr``).
        timeout: ``httpx.Timeout`` split by phase (default: connect 5 s, read/write 30 s).
        request_deadline: the most seconds one attempt may take as a whole, from sending
            the request to the last byte of the reply (default 300 s; ``None``: no cap).
            Each attempt's own deadline is smaller when what it carries is small: the
            connect timeout, plus the read timeout, plus its bytes (sent or expected back)
            at ``min_transfer_rate``. An attempt past its deadline counts as a timeout:
            retried like one, then ``StorageError``.
        min_transfer_rate: bytes a second a portal must keep up on average (default
            64 KiB/s), for the deadline above.
        max_attempts: attempts per request for transient failures (>= 1).
        backoff_initial: base of the exponential backoff, seconds (with full jitter).
        backoff_max: cap of one backoff wait, seconds.
        max_download_bytes: downloads above this size are refused (``StorageError``).
        max_concurrent_requests: requests in flight at once (more wait their turn, before
            their deadline starts). The default, httpx's number of kept-alive connections,
            lets every request reuse a warm connection, and keeps many histories or logs
            sharing one client (one ``S5Access``) from queueing on the connection pool
            until its pool timeout.
        transport: an ``httpx.AsyncBaseTransport`` (tests, proxies).
    """

    def __init__(
        self,
        portal_url: str,
        *,
        auth_token: SecretStr | str | None = None,
        timeout: httpx.Timeout | None = None,
        request_deadline: float | None = DEFAULT_REQUEST_DEADLINE,
        max_attempts: int = 4,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        max_download_bytes: int = 256 * 1024 * 1024,
        min_transfer_rate: float = MIN_TRANSFER_RATE,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be at least 1")
        if request_deadline is not None and not request_deadline > 0:
            raise ValueError("request_deadline must be positive (or None)")
        if not min_transfer_rate > 0:
            raise ValueError("min_transfer_rate must be positive")
        self.request_deadline = request_deadline
        self.min_transfer_rate = min_transfer_rate
        self.portal_url = portal_url.rstrip("/")
        url = httpx.URL(self.portal_url)
        self.portal_host = url.host + (f":{url.port}" if url.port else "")
        self._token: SecretStr | None = (
            SecretStr(auth_token) if isinstance(auth_token, str) else auth_token
        )
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_download_bytes = max_download_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self._slots = asyncio.Semaphore(max_concurrent_requests)
        self._http = _http.client(timeout or DEFAULT_TIMEOUT, transport=transport)

    # --- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> S5PortalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"S5PortalClient({self.portal_url!r}, authenticated={self._token is not None})"

    @property
    def auth_token(self) -> SecretStr | None:
        """The current account token (``SecretStr``; never printed)."""
        return self._token

    # --- plumbing -----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.portal_url}/s5/{path}"

    def _auth_headers(self) -> dict[str, str]:
        if self._token is None:
            return {}
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    def attempt_deadline(self, size: int) -> float | None:
        """Seconds one attempt that carries ``size`` bytes may take as a whole.

        >>> S5PortalClient("http://x", timeout=httpx.Timeout(1.0, connect=0.5)).attempt_deadline(0)
        1.5
        """
        return whole_reply_deadline(
            self._http.timeout, size, min_rate=self.min_transfer_rate, cap=self.request_deadline
        )

    async def _once(self, build: Callable[[], httpx.Request], limit: int, size: int) -> Response:
        async with self._slots:
            return await self._attempt(build, limit, size)

    async def _attempt(self, build: Callable[[], httpx.Request], limit: int, size: int) -> Response:
        request = build()
        deadline = self.attempt_deadline(size)
        if deadline is None:
            return await self._exchange(request, limit)
        try:
            async with deadline_after(deadline):
                return await self._exchange(request, limit)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise DeadlineExceeded(
                f"no complete reply within its {deadline:g} s deadline (connect, read "
                f"timeout, {size} bytes at {self.min_transfer_rate:g} B/s, at most "
                f"request_deadline={self.request_deadline})",
                request=request,
            ) from exc

    async def _exchange(self, request: httpx.Request, limit: int) -> Response:
        response = await self._http.send(request, stream=True)
        try:
            body = await read_capped(response, limit)
        except ReplyTooLarge:
            raise StorageError(
                f"reply from {self.portal_url} exceeds {limit} bytes", host_url=self.portal_url
            ) from None
        finally:
            await response.aclose()
        result = Response(response.status_code, body, response.headers)
        if result.status >= 500 or result.status == 429:
            raise Transient(result.status, result.text)
        return result

    async def _request(
        self,
        what: str,
        build: Callable[[], httpx.Request],
        *,
        idempotent: bool = True,
        limit: int = 1024 * 1024,
        size: int = 0,
    ) -> Response:
        """One request, retried; ``size``: the bytes it sends or expects back, for its
        deadline (:meth:`attempt_deadline`); small by default."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception(is_transient if idempotent else connect_only),
            reraise=False,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return await self._once(build, limit, size)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise StorageError(
                f"S5 portal {self.portal_url} failed to {what} after {attempts} attempts: "
                f"{type(last).__name__}: {last}",
                host_url=self.portal_url,
                details={"attempts": attempts, "operation": what},
            ) from last
        except TRANSPORT_ERRORS as exc:
            raise StorageError(
                f"S5 portal {self.portal_url} failed to {what} after {attempts} attempts: "
                f"{type(exc).__name__}: {exc}",
                host_url=self.portal_url,
                details={"attempts": attempts, "operation": what},
            ) from exc
        except httpx.HTTPError as exc:  # invalid URL, unsupported scheme, undecodable body
            raise StorageError(
                f"S5 portal {self.portal_url} could not {what}: {type(exc).__name__}: {exc}",
                host_url=self.portal_url,
                details={"attempts": attempts, "operation": what},
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _refused(self, what: str, response: Response) -> FabstirError:
        details = {"status": response.status, "excerpt": response.text, "operation": what}
        message = f"S5 portal {self.portal_url} refused to {what}: HTTP {response.status}"
        if response.status in (401, 403):
            return AuthenticationError(
                f"{message} (token missing, expired or not allowed)",
                host_url=self.portal_url,
                details=details,
            )
        if response.status == 404:
            return BlobNotFoundError(
                f"{message} (not found)", host_url=self.portal_url, details=details
            )
        return PortalRequestError(
            f"{message}: {response.text}", host_url=self.portal_url, details=details
        )

    def _json(self, what: str, response: Response) -> dict[str, Any]:
        try:
            obj = loads_untrusted(response.body)
        except ValueError as exc:
            raise StorageError(
                f"S5 portal {self.portal_url} sent malformed JSON for {what}",
                host_url=self.portal_url,
                details={"excerpt": response.text},
            ) from exc
        if not isinstance(obj, dict):
            raise StorageError(
                f"S5 portal {self.portal_url} sent a non-object JSON reply for {what}",
                host_url=self.portal_url,
                details={"excerpt": response.text},
            )
        return obj

    # --- accounts -----------------------------------------------------------------

    async def _challenge_flow(
        self,
        endpoint: str,
        kind: int,
        key_pair: Ed25519KeyPair,
        body_extra: dict[str, Any],
        bearer: str | None,
    ) -> SecretStr:
        pub = b64url_encode(key_pair.registry_key)
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        reply = await self._request(
            f"start {endpoint}",
            lambda: self._http.build_request(
                "GET", self._url(f"account/{endpoint}"), params={"pubKey": pub}, headers=headers
            ),
        )
        if reply.status != 200:
            raise self._refused(f"start {endpoint}", reply)
        try:
            challenge = b64url_decode(self._json(endpoint, reply).get("challenge", ""))
        except EncodingError as exc:
            raise StorageError(
                "portal challenge is not base64url", host_url=self.portal_url
            ) from exc
        if len(challenge) != 32:
            raise StorageError("portal challenge must be 32 bytes", host_url=self.portal_url)
        response = bytes([kind]) + challenge + blake3_hash(self.portal_host.encode("utf-8"))
        body = {
            "pubKey": pub,
            "response": b64url_encode(response),
            "signature": b64url_encode(key_pair.sign(response)),
            **body_extra,
        }
        reply = await self._request(
            f"finish {endpoint}",
            lambda: self._http.build_request(
                "POST", self._url(f"account/{endpoint}"), json=body, headers=headers
            ),
            idempotent=False,
        )
        if reply.status != 200:
            raise self._refused(endpoint, reply)
        token = self._json(endpoint, reply).get("authToken")
        if not isinstance(token, str) or not token:
            raise StorageError(
                f"portal {endpoint} reply has no authToken", host_url=self.portal_url
            )
        self._token = SecretStr(token)
        return self._token

    async def register(
        self,
        key_pair: Ed25519KeyPair,
        *,
        label: str = "langchain-fabstir",
        email: str | None = None,
        invite_token: SecretStr | str | None = None,
    ) -> SecretStr:
        """Create an account for ``key_pair`` (challenge type ``0x01``) and keep its token.

        ``invite_token`` is sent as Bearer on the challenge request, for portals that
        restrict registration.
        """
        extra: dict[str, Any] = {"label": label}
        if email is not None:
            extra["email"] = email
        bearer = (
            invite_token.get_secret_value() if isinstance(invite_token, SecretStr) else invite_token
        )
        return await self._challenge_flow("register", CHALLENGE_REGISTER, key_pair, extra, bearer)

    async def login(
        self, key_pair: Ed25519KeyPair, *, label: str = "langchain-fabstir"
    ) -> SecretStr:
        """Log in to an existing account (challenge type ``0x02``) and keep the new token."""
        return await self._challenge_flow(
            "login", CHALLENGE_LOGIN, key_pair, {"label": label}, None
        )

    async def ensure_account(
        self,
        key_pair: Ed25519KeyPair,
        *,
        label: str = "langchain-fabstir",
        invite_token: SecretStr | str | None = None,
    ) -> SecretStr:
        """Log in, or register when the portal does not know the account yet."""
        try:
            return await self.login(key_pair, label=label)
        except (BlobNotFoundError, PortalRequestError, AuthenticationError):
            return await self.register(key_pair, label=label, invite_token=invite_token)

    # --- blobs --------------------------------------------------------------------

    async def upload(self, data: bytes, *, media_type: str = "application/octet-stream") -> CID:
        """Store ``data``; return its CID after checking the portal's reply against it."""
        expected = CID.from_bytes(data)
        reply = await self._request(
            "upload a blob",
            lambda: self._http.build_request(
                "POST",
                self._url("upload"),
                files={"file": ("blob", data, media_type)},
                headers=self._auth_headers(),
            ),
            size=len(data),
        )
        if reply.status not in (200, 201):
            raise self._refused("upload a blob", reply)
        text = self._json("upload", reply).get("cid")
        try:
            got = CID.parse(text) if isinstance(text, str) else None
        except InvalidCIDError as exc:
            raise StorageError(
                "portal upload reply holds a malformed CID",
                host_url=self.portal_url,
                details={"excerpt": str(text)[:EXCERPT]},
            ) from exc
        if got is None or got.hash != expected.hash or got.size != expected.size:
            raise IntegrityError(
                f"portal {self.portal_url} answered an upload with a CID that does not match "
                "the content",
                host_url=self.portal_url,
                details={"expected": str(expected), "got": str(got)},
            )
        return expected

    async def _fetch(self, path: str, what: str, size: int | None) -> bytes:
        limit = self.max_download_bytes
        reply = await self._request(
            what,
            lambda: self._http.build_request("GET", self._url(path), headers=self._auth_headers()),
            limit=limit,
            size=limit if size is None else min(size, limit),
        )
        if reply.status != 200:
            raise self._refused(what, reply)
        return reply.body

    async def download(self, cid: CID | str) -> bytes:
        """The bytes of ``cid``; :class:`IntegrityError` if they do not hash to it."""
        cid = CID.coerce(cid)
        body = await self._fetch(f"download/{cid}", f"download {cid}", cid.size)
        if not cid.matches(body):
            raise IntegrityError(
                f"blob {cid} from {self.portal_url} does not match its hash or size",
                host_url=self.portal_url,
                details={"cid": str(cid), "received_bytes": len(body)},
            )
        return body

    async def download_hash(self, hash32: bytes) -> bytes:
        """The bytes whose BLAKE3 hash is ``hash32`` when the size is unknown (registry links).

        The request names a CID with size 0; portals look blobs up by hash.
        """
        if len(hash32) != 32:
            raise InvalidCIDError("a blob hash must be 32 bytes")
        cid = CID(hash32, 0)
        body = await self._fetch(f"download/{cid}", f"download blob {hash32.hex()[:16]}", None)
        if blake3_hash(body) != hash32:
            raise IntegrityError(
                f"blob {hash32.hex()} from {self.portal_url} does not match its hash",
                host_url=self.portal_url,
                details={"hash": hash32.hex(), "received_bytes": len(body)},
            )
        return body

    # --- registry -----------------------------------------------------------------

    async def registry_get(self, pk: bytes) -> RegistryEntry | None:
        """The entry under ``pk`` (33 bytes, or 32 and prefixed with ``0xed``), or ``None``.

        Raises :class:`IntegrityError` if the portal returns an entry for another key or
        one whose signature does not verify.
        """
        key = pk if len(pk) == 33 else bytes([MKEY_ED25519]) + pk
        reply = await self._request(
            "read the registry",
            lambda: self._http.build_request(
                "GET",
                self._url("registry"),
                params={"pk": b64url_encode(key)},
                headers=self._auth_headers(),
            ),
        )
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise self._refused("read the registry", reply)
        try:
            entry = RegistryEntry.from_json(self._json("registry", reply))
        except InvalidRegistryEntryError as exc:
            raise IntegrityError(
                f"portal {self.portal_url} sent a malformed registry entry: {exc.message}",
                host_url=self.portal_url,
            ) from exc
        if entry.pk != key:
            raise IntegrityError(
                "portal returned a registry entry for another key", host_url=self.portal_url
            )
        return entry.verified()

    async def registry_set(self, entry: RegistryEntry) -> None:
        """Store ``entry``; :class:`RevisionConflictError` if the portal has a newer revision."""
        payload = entry.to_json()
        reply = await self._request(
            "write the registry",
            lambda: self._http.build_request(
                "POST", self._url("registry"), json=payload, headers=self._auth_headers()
            ),
        )
        if reply.status in (200, 201, 204):
            return
        text = reply.text.lower()
        if "revision" in text and ("low" in text or "old" in text):
            raise RevisionConflictError(
                f"registry write at revision {entry.revision} lost to a newer revision",
                host_url=self.portal_url,
                details={"revision": entry.revision, "excerpt": reply.text},
            )
        if "signature" in text:
            raise IntegrityError(
                f"portal {self.portal_url} refused the registry signature: {reply.text}",
                host_url=self.portal_url,
            )
        raise self._refused("write the registry", reply)
