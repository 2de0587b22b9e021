"""The local S5 portal: the Dart node's HTTP API (``/s5/...``) over disk blobs and SQLite.

Endpoints (see ``docs/S5.md`` section 1):

* ``GET|POST /s5/account/register`` and ``/s5/account/login``: challenge-response accounts.
* ``POST /s5/upload`` (auth): multipart field ``file`` or a raw body; ``{"cid": "z..."}``
  (the legacy raw CID in base58btc, as the Dart node answers).
* ``GET /s5/download/{cid}``: the bytes; ``GET /s5/blob/{cid}``: 307 to the download URL.
* ``GET /s5/registry?pk=`` and ``POST /s5/registry`` (auth): signed entries, 64-byte data,
  strictly increasing revisions ("Revision number too low", "Invalid signature").

A token is read from ``Authorization: Bearer``, the ``s5-auth-token`` cookie or
``?auth_token=``. Oversized requests get HTTP 413.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import base58
from aiohttp import BodyPartReader, web

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import StorageError
from langchain_fabstir.portal.store import BlobStore, PortalDB
from langchain_fabstir.s5.cid import CID, blake3_hash
from langchain_fabstir.s5.encoding import EncodingError, b64url_decode, b64url_encode
from langchain_fabstir.s5.registry import (
    MKEY_ED25519,
    InvalidRegistryEntryError,
    RegistryEntry,
    verify_ed25519,
)

__all__ = ["PortalConfig", "build_app"]

_CHALLENGE_TTL = 300.0
_MAX_CHALLENGES = 10_000
_MAX_JSON = 16 * 1024
_COOKIE = "s5-auth-token"


@dataclass
class PortalConfig:
    """Settings of a local portal.

    Attributes:
        data_dir: where blobs and the SQLite database live (created if missing).
        open_registration: anyone may register; if ``False``, registering needs a Bearer
            token from ``registration_tokens``.
        registration_tokens: allow-list of invite tokens (when registration is closed).
        public_hosts: extra ``host:port`` names clients may sign challenges for (besides the
            request's ``Host`` header), e.g. behind a reverse proxy.
        max_upload_bytes: larger uploads are refused with 413.
    """

    data_dir: Path
    open_registration: bool = True
    registration_tokens: frozenset[str] = field(default_factory=frozenset)
    public_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = 64 * 1024 * 1024


class _Portal:
    def __init__(self, config: PortalConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(config.data_dir)
        self.db = PortalDB(config.data_dir / "portal.sqlite3")
        # challenge -> (registry key, kind, expiry)
        self.challenges: dict[bytes, tuple[bytes, int, float]] = {}

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

    async def _read_json(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > _MAX_JSON:
            raise web.HTTPRequestEntityTooLarge(
                max_size=_MAX_JSON, actual_size=request.content_length
            )
        raw = await request.content.read(_MAX_JSON + 1)
        if len(raw) > _MAX_JSON:
            raise web.HTTPRequestEntityTooLarge(max_size=_MAX_JSON, actual_size=len(raw))
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

    def _prune_challenges(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self.challenges.items() if v[2] < now]:
            del self.challenges[key]
        while len(self.challenges) >= _MAX_CHALLENGES:
            self.challenges.pop(next(iter(self.challenges)))

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
        self._prune_challenges()
        challenge = os.urandom(32)
        self.challenges[challenge] = (pubkey, kind, time.monotonic() + _CHALLENGE_TTL)
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
        pending = self.challenges.pop(response[1:33], None)
        if pending is None or pending[0] != pubkey or pending[1] != kind:
            return self._error(400, "Unknown or expired challenge")
        if pending[2] < time.monotonic():
            return self._error(400, "Unknown or expired challenge")
        hosts = {request.host, *self.config.public_hosts}
        if response[33:] not in {blake3_hash(h.encode("utf-8")) for h in hosts}:
            return self._error(400, "Challenge response is for another portal host")
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

    # --- blobs --------------------------------------------------------------------

    async def _read_upload(self, request: web.Request) -> bytes:
        limit = self.config.max_upload_bytes
        too_large = web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1)
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            raise too_large
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name != "file":
                    continue
                chunks: list[bytes] = []
                total = 0
                while chunk := await part.read_chunk(64 * 1024):
                    total += len(chunk)
                    if total > limit:
                        raise too_large
                    chunks.append(chunk)
                return b"".join(chunks)
            raise web.HTTPBadRequest(text="Multipart upload needs a field named 'file'")
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise too_large
        return data

    async def upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized")
        data = await self._read_upload(request)
        await asyncio.to_thread(self.blobs.put, data)
        cid = CID.from_bytes(data)
        return web.json_response({"cid": "z" + base58.b58encode(cid.to_legacy_bytes()).decode()})

    @staticmethod
    def _cid(request: web.Request) -> CID:
        try:
            return CID.parse(request.match_info["cid"])
        except StorageError as exc:
            raise web.HTTPBadRequest(text="Invalid CID") from exc

    async def download(self, request: web.Request) -> web.Response:
        cid = self._cid(request)
        data = await asyncio.to_thread(self.blobs.get, cid.hash)
        if data is None:
            return self._error(404, "Blob not found")
        return web.Response(body=data, content_type="application/octet-stream")

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


def build_app(config: PortalConfig) -> web.Application:
    """The aiohttp application of a local portal (opens its data directory)."""
    portal = _Portal(config)
    app = web.Application(client_max_size=config.max_upload_bytes + 64 * 1024)
    app.add_routes(
        [
            web.get("/s5/account/register", portal.register_get),
            web.post("/s5/account/register", portal.register_post),
            web.get("/s5/account/login", portal.login_get),
            web.post("/s5/account/login", portal.login_post),
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
