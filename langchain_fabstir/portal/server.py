"""The local S5 portal: the Dart node's HTTP API (``/s5/...``) over disk blobs and SQLite.

Endpoints (see ``docs/S5.md`` section 1):

* ``GET|POST /s5/account/register`` and ``/s5/account/login``: challenge-response accounts.
  A response must be signed for one of the portal's public hosts (``PortalConfig.public_hosts``,
  never the request's ``Host`` header, which a relaying attacker chooses).
* ``POST /s5/account/logout`` (auth): revokes the token presented.
* ``POST /s5/upload`` (auth): multipart field ``file`` or a raw body; ``{"cid": "z..."}``
  (the legacy raw CID in base58btc, as the Dart node answers).
* ``GET /s5/download/{cid}``: the bytes, streamed from disk; ``GET /s5/blob/{cid}``: 307 to the
  download URL. A CID whose size is not the stored blob's size gets 404 (size 0 means unknown).
* ``GET /s5/registry?pk=`` and ``POST /s5/registry`` (auth): signed entries, 64-byte data,
  strictly increasing revisions ("Revision number too low", "Invalid signature").

A token is read from ``Authorization: Bearer``, the ``s5-auth-token`` cookie or
``?auth_token=``. Bodies are read to their end or refused: over the limit 413, a body that
stops arriving for ``body_timeout`` seconds gets its connection closed, and so does a download
the client stops reading. Memory per connection is bounded (bodies go to disk in pieces).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import base58
from aiohttp import BodyPartReader, web

from langchain_fabstir._compat import timeout
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import StorageError
from langchain_fabstir.portal.store import BlobStore, BlobWriter, PortalDB
from langchain_fabstir.s5.cid import CID, blake3_hash
from langchain_fabstir.s5.encoding import EncodingError, b64url_decode, b64url_encode
from langchain_fabstir.s5.registry import (
    MKEY_ED25519,
    InvalidRegistryEntryError,
    RegistryEntry,
    verify_ed25519,
)

__all__ = ["PortalConfig", "build_app", "portal_db", "set_public_hosts"]

_CHALLENGE_TTL = 300.0
_MAX_CHALLENGES = 10_000
_MAX_JSON = 16 * 1024
_COOKIE = "s5-auth-token"
_CHUNK = 128 * 1024  # bytes per disk read / write of a streamed body


@dataclass
class PortalConfig:
    """Settings of a local portal.

    Attributes:
        data_dir: where blobs and the SQLite database live (created if missing).
        open_registration: anyone may register; if ``False``, registering needs a Bearer
            token from ``registration_tokens``.
        registration_tokens: allow-list of invite tokens (when registration is closed).
        public_hosts: the ``host[:port]`` names (as in the portal's public URL) challenge
            responses must be signed for. :class:`~langchain_fabstir.portal.LocalPortal`
            adds its public URL (by default the bound address); with none, logins are refused.
        max_upload_bytes: larger uploads are refused with 413.
        idle_timeout: seconds a connection may sit without a complete request (idle between
            requests, or a request line and headers that never finish) before it is closed.
        body_timeout: seconds a request body may stop arriving, or a download stop being
            read, before the connection is closed.
        token_ttl: seconds an auth token stays valid after login (``None``: until revoked).
        max_challenges_per_client: pending login/register challenges one client address
            (an IPv6 /64) may hold; its oldest is dropped beyond that, never another's.
    """

    data_dir: Path
    open_registration: bool = True
    registration_tokens: frozenset[str] = field(default_factory=frozenset)
    public_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = 64 * 1024 * 1024
    idle_timeout: float = 30.0
    body_timeout: float = 30.0
    token_ttl: float | None = None
    max_challenges_per_client: int = 16

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 0:
            raise ValueError("max_upload_bytes must be >= 0")
        if self.idle_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("idle_timeout and body_timeout must be positive")
        if self.max_challenges_per_client < 1:
            raise ValueError("max_challenges_per_client must be >= 1")


class _Pending(NamedTuple):
    pubkey: bytes
    kind: int
    expires: float
    client: str


class _Stalled(Exception):
    """The peer stopped sending the body (or reading the reply) for ``body_timeout``."""


def _client_key(request: web.Request) -> str:
    """Who a challenge is counted against: the peer address (an IPv6 address by its /64)."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _drop_connection(request: web.Request) -> None:
    """Close the connection at once (buffered output is discarded: the peer is stalled)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


class _Portal:
    def __init__(self, config: PortalConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(config.data_dir)
        self.db = PortalDB(config.data_dir / "portal.sqlite3", token_ttl=config.token_ttl)
        # challenge -> pending; insertion order is expiry order (one TTL for all)
        self.challenges: OrderedDict[bytes, _Pending] = OrderedDict()
        # client -> its pending challenges, oldest first
        self.by_client: dict[str, OrderedDict[bytes, None]] = {}
        self.host_hashes: frozenset[bytes] = frozenset()
        self.set_public_hosts(config.public_hosts)

    def set_public_hosts(self, hosts: tuple[str, ...] | list[str]) -> None:
        self.host_hashes = frozenset(blake3_hash(h.lower().encode("utf-8")) for h in hosts)

    # --- helpers ------------------------------------------------------------------

    @staticmethod
    def _error(status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text)

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(_COOKIE) or request.query.get("auth_token")

    def _authorized(self, request: web.Request) -> bool:
        token = self._token(request)
        return bool(token) and self.db.token_owner(token or "") is not None

    async def _chunks(self, request: web.Request, limit: int) -> AsyncIterator[bytes]:
        """The request body in pieces, to its end; 413 past ``limit`` bytes, stalls raise."""
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        async for chunk in self._bounded(request.content.readany, limit):
            yield chunk

    async def _bounded(
        self, read: Callable[[], Awaitable[bytes]], limit: int
    ) -> AsyncIterator[bytes]:
        """``read()`` until it returns nothing, each read under ``body_timeout`` (a stall
        raises :class:`_Stalled`); 413 once more than ``limit`` bytes came."""
        total = 0
        while True:
            try:
                async with timeout(self.config.body_timeout):
                    chunk = await read()
            except asyncio.TimeoutError as exc:
                raise _Stalled from exc
            if not chunk:
                return
            total += len(chunk)
            if total > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
            yield chunk

    async def _read_json(self, request: web.Request) -> Any:
        raw = b"".join([chunk async for chunk in self._chunks(request, _MAX_JSON)])
        try:
            return loads_untrusted(raw)
        except ValueError as exc:
            raise web.HTTPBadRequest(text="Invalid JSON") from exc

    @staticmethod
    def _parse_pubkey(text: str | None) -> bytes:
        try:
            raw = b64url_decode(text or "")
        except EncodingError as exc:
            raise web.HTTPBadRequest(text="Invalid pubKey") from exc
        if len(raw) == 32:
            raw = bytes([MKEY_ED25519]) + raw
        if len(raw) != 33 or raw[0] != MKEY_ED25519:
            raise web.HTTPBadRequest(text="Invalid pubKey")
        return raw

    # --- challenges ---------------------------------------------------------------

    def _forget(self, challenge: bytes) -> _Pending | None:
        pending = self.challenges.pop(challenge, None)
        if pending is not None:
            mine = self.by_client.get(pending.client)
            if mine is not None:
                mine.pop(challenge, None)
                if not mine:
                    del self.by_client[pending.client]
        return pending

    def _prune_challenges(self) -> None:
        now = time.monotonic()
        while self.challenges:
            oldest = next(iter(self.challenges))
            if self.challenges[oldest].expires >= now:
                break
            self._forget(oldest)

    def _issue(self, request: web.Request, pubkey: bytes, kind: int) -> bytes | None:
        """A new challenge, or ``None`` when the portal holds too many (retry later).

        A client over its quota loses its own oldest challenge, never someone else's.
        """
        self._prune_challenges()
        client = _client_key(request)
        mine = self.by_client.get(client)
        while mine and len(mine) >= self.config.max_challenges_per_client:
            self._forget(next(iter(mine)))
            mine = self.by_client.get(client)
        if len(self.challenges) >= _MAX_CHALLENGES:
            return None
        challenge = os.urandom(32)
        expires = time.monotonic() + _CHALLENGE_TTL
        self.challenges[challenge] = _Pending(pubkey, kind, expires, client)
        self.by_client.setdefault(client, OrderedDict())[challenge] = None
        return challenge

    # --- accounts -----------------------------------------------------------------

    async def challenge(self, request: web.Request, kind: int) -> web.Response:
        pubkey = self._parse_pubkey(request.query.get("pubKey"))
        if kind == 1 and not self.config.open_registration:
            token = self._token(request)
            if token not in self.config.registration_tokens:
                return self._error(401, "Registration on this portal needs an invite token")
        if kind == 1 and self.db.has_account(pubkey):
            return self._error(400, "Account already exists")
        if kind == 2 and not self.db.has_account(pubkey):
            return self._error(404, "Account not found")
        challenge = self._issue(request, pubkey, kind)
        if challenge is None:
            return web.Response(
                status=429,
                text="Too many pending challenges on this portal; try again in a minute",
                headers={"Retry-After": "60"},
            )
        return web.json_response({"challenge": b64url_encode(challenge)})

    async def answer(self, request: web.Request, kind: int) -> web.Response:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            return self._error(400, "Invalid request body")
        pubkey = self._parse_pubkey(body.get("pubKey"))
        try:
            response = b64url_decode(str(body.get("response", "")))
            signature = b64url_decode(str(body.get("signature", "")))
        except EncodingError:
            return self._error(400, "Invalid response or signature encoding")
        if len(response) != 65 or response[0] != kind:
            return self._error(400, "Invalid challenge response")
        pending = self._forget(response[1:33])
        if pending is None or pending.pubkey != pubkey or pending.kind != kind:
            return self._error(400, "Unknown or expired challenge")
        if pending.expires < time.monotonic():
            return self._error(400, "Unknown or expired challenge")
        if response[33:] not in self.host_hashes:
            return self._error(
                400, "Challenge response is for another portal host (sign for its public URL)"
            )
        if len(signature) != 64 or not verify_ed25519(pubkey[1:], response, signature):
            return self._error(401, "Invalid signature")
        if kind == 1:
            if self.db.has_account(pubkey):
                return self._error(400, "Account already exists")
            label = body.get("label")
            email = body.get("email")
            self.db.add_account(
                pubkey,
                label if isinstance(label, str) else None,
                email if isinstance(email, str) else None,
            )
        elif not self.db.has_account(pubkey):
            return self._error(404, "Account not found")
        token = "S5A" + base58.b58encode(os.urandom(32)).decode("ascii")
        self.db.add_token(token, pubkey)
        reply = web.json_response({"authToken": token})
        reply.set_cookie(_COOKIE, token, httponly=True, samesite="Strict")
        return reply

    async def register_get(self, request: web.Request) -> web.Response:
        return await self.challenge(request, 1)

    async def register_post(self, request: web.Request) -> web.Response:
        return await self.answer(request, 1)

    async def login_get(self, request: web.Request) -> web.Response:
        return await self.challenge(request, 2)

    async def login_post(self, request: web.Request) -> web.Response:
        return await self.answer(request, 2)

    async def logout(self, request: web.Request) -> web.Response:
        token = self._token(request)
        if not token or not self.db.revoke_token(token):
            return self._error(401, "Unauthorized")
        reply = web.Response(status=204)
        reply.del_cookie(_COOKIE)
        return reply

    # --- blobs --------------------------------------------------------------------

    async def _receive(self, source: AsyncIterator[bytes], writer: BlobWriter) -> None:
        """Copy ``source`` into ``writer`` in pieces of about 1 MiB (disk I/O off the loop)."""
        pending: list[bytes] = []
        size = 0
        async for chunk in source:
            pending.append(chunk)
            size += len(chunk)
            if size >= 1024 * 1024:
                await asyncio.to_thread(writer.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await asyncio.to_thread(writer.write, b"".join(pending))

    def _part_chunks(self, part: BodyPartReader, limit: int) -> AsyncIterator[bytes]:
        return self._bounded(lambda: part.read_chunk(_CHUNK), limit)

    async def _store_upload(self, request: web.Request, writer: BlobWriter) -> None:
        limit = self.config.max_upload_bytes
        if not request.content_type.startswith("multipart/"):
            await self._receive(self._chunks(request, limit), writer)
            return
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        reader = await request.multipart()
        while True:
            try:
                async with timeout(self.config.body_timeout):
                    part = await reader.next()
            except asyncio.TimeoutError as exc:
                raise _Stalled from exc
            if part is None:
                raise web.HTTPBadRequest(text="Multipart upload needs a field named 'file'")
            if isinstance(part, BodyPartReader) and part.name == "file":
                await self._receive(self._part_chunks(part, limit), writer)
                return

    async def upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized")
        writer = await asyncio.to_thread(self.blobs.writer)
        try:
            await self._store_upload(request, writer)
        except _Stalled:
            await asyncio.to_thread(writer.abort)
            _drop_connection(request)
            return self._error(408, "Request body stopped arriving")
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        size = writer.size
        hash32 = await asyncio.to_thread(writer.commit)
        cid = CID(hash32, size)
        return web.json_response({"cid": "z" + base58.b58encode(cid.to_legacy_bytes()).decode()})

    @staticmethod
    def _cid(request: web.Request) -> CID:
        try:
            return CID.parse(request.match_info["cid"])
        except StorageError as exc:
            raise web.HTTPBadRequest(text="Invalid CID") from exc

    async def download(self, request: web.Request) -> web.StreamResponse:
        cid = self._cid(request)
        try:
            # One trip to a worker thread opens the blob and reads its first piece (all
            # of a small blob, closing it there): not one trip per step.
            handle, size, first = await asyncio.to_thread(_open_blob, self.blobs.path_for(cid.hash))
        except FileNotFoundError:
            return self._error(404, "Blob not found")
        try:
            if cid.size and cid.size != size:  # size 0: unknown (a lookup by hash)
                return self._error(404, "Blob not found (no blob of this hash has this size)")
            reply = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            reply.content_length = size
            try:
                async with timeout(self.config.body_timeout):
                    await reply.prepare(request)
                if request.method == "HEAD":
                    return reply
                # One piece in flight per connection: write() waits while the socket buffer
                # is full, so a client that does not read holds at most about one piece.
                chunk, sent = first, 0
                while chunk:
                    async with timeout(self.config.body_timeout):
                        await reply.write(chunk)
                    sent += len(chunk)
                    chunk = b""
                    if handle is not None and sent < size:
                        chunk = await asyncio.to_thread(handle.read, _CHUNK)
            except asyncio.TimeoutError:
                _drop_connection(request)  # the client stopped reading
            except ConnectionError:
                pass  # the client went away; nothing to answer
            return reply
        finally:
            if handle is not None:
                await asyncio.to_thread(handle.close)

    async def blob(self, request: web.Request) -> web.Response:
        cid = self._cid(request)
        location = f"/s5/download/{cid}"
        if request.query_string:
            location += "?" + request.query_string
        raise web.HTTPTemporaryRedirect(location)

    # --- registry -----------------------------------------------------------------

    async def registry_get(self, request: web.Request) -> web.Response:
        pk = self._parse_pubkey(request.query.get("pk"))
        entry = self.db.registry_get(pk)
        if entry is None:
            return web.Response(status=404)
        return web.json_response(entry.to_json())

    async def registry_post(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized")
        body = await self._read_json(request)
        if isinstance(body, dict):
            try:
                if len(b64url_decode(str(body.get("data", "")))) > 64:
                    return self._error(400, "Data too long: at most 64 bytes")
            except EncodingError:
                return self._error(400, "Invalid registry entry encoding")
        try:
            entry = RegistryEntry.from_json(body)
        except InvalidRegistryEntryError as exc:
            return self._error(400, f"Invalid registry entry: {exc.message}")
        if not entry.verify():
            return self._error(400, "Invalid signature")
        current = self.db.registry_get(entry.pk)
        if current is not None:
            if current == entry:
                return web.Response(status=204)  # an identical resend is accepted
            if entry.revision <= current.revision:
                return self._error(400, "Revision number too low")
        self.db.registry_put(entry)
        return web.Response(status=204)


def _open_blob(path: Path) -> tuple[BinaryIO | None, int, bytes]:
    """``(open handle or None, size, first piece)``: a blob of at most one piece is read
    whole and closed here (no handle)."""
    handle = path.open("rb")
    try:
        size = os.fstat(handle.fileno()).st_size
        first = handle.read(_CHUNK)
    except BaseException:
        handle.close()
        raise
    if len(first) >= size:
        handle.close()
        return None, size, first
    return handle, size, first


_PORTAL = web.AppKey("portal", _Portal)


@web.middleware
async def _stalled_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
    """A body that stops arriving closes its connection (after a 408 if it can be sent)."""
    try:
        response: web.StreamResponse = await handler(request)
    except _Stalled:
        _drop_connection(request)
        return web.Response(status=408, text="Request body stopped arriving")
    return response


def build_app(config: PortalConfig) -> web.Application:
    """The aiohttp application of a local portal (opens its data directory).

    Serve it with ``keepalive_timeout=config.idle_timeout`` (as
    :class:`~langchain_fabstir.portal.LocalPortal` does) so idle connections are reaped.
    """
    portal = _Portal(config)
    app = web.Application(
        client_max_size=config.max_upload_bytes + 64 * 1024, middlewares=[_stalled_bodies]
    )
    app[_PORTAL] = portal
    app.add_routes(
        [
            web.get("/s5/account/register", portal.register_get),
            web.post("/s5/account/register", portal.register_post),
            web.get("/s5/account/login", portal.login_get),
            web.post("/s5/account/login", portal.login_post),
            web.post("/s5/account/logout", portal.logout),
            web.post("/s5/upload", portal.upload),
            web.get("/s5/download/{cid}", portal.download),
            web.get("/s5/blob/{cid}", portal.blob),
            web.get("/s5/registry", portal.registry_get),
            web.post("/s5/registry", portal.registry_post),
        ]
    )

    async def _close(_: web.Application) -> None:
        portal.db.close()

    app.on_cleanup.append(_close)
    return app


def set_public_hosts(app: web.Application, hosts: tuple[str, ...] | list[str]) -> None:
    """Set the ``host[:port]`` names challenge responses of ``app`` must be signed for."""
    app[_PORTAL].set_public_hosts(hosts)


def portal_db(app: web.Application) -> PortalDB:
    """The account/token/registry store of a portal app (to revoke tokens, for example)."""
    return app[_PORTAL].db
