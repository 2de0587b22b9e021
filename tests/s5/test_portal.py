"""The local portal and S5PortalClient together, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import blake3
import httpx
import pytest
from aiohttp import web

from langchain_fabstir.errors import (
    AuthenticationError,
    IntegrityError,
    RevisionConflictError,
    StorageError,
)
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import (
    CID,
    BlobNotFoundError,
    Ed25519KeyPair,
    PortalRequestError,
    RegistryEntry,
    S5Identity,
    S5PortalClient,
)
from langchain_fabstir.s5.encoding import b64url_decode, b64url_encode

from .conftest import CountingTransport, make_client


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def auth(client: S5PortalClient) -> dict[str, str]:
    assert client.auth_token is not None
    return {"Authorization": f"Bearer {client.auth_token.get_secret_value()}"}


# --- accounts -------------------------------------------------------------------------


async def test_register_then_login(portal: LocalPortal, identity: S5Identity) -> None:
    kp = identity.portal_account_key_pair()
    async with make_client(portal.url) as c:
        token = await c.register(kp, email="a@example.com")
        secret = token.get_secret_value()
        assert secret.startswith("S5A") and secret not in repr(token) and secret not in repr(c)
        with pytest.raises(PortalRequestError):  # registering twice is refused
            await c.register(kp)
        token2 = await c.login(kp)
        assert token2.get_secret_value() != secret
        assert (await c.upload(b"x")).size == 1


async def test_login_unknown_account_and_ensure_account(portal: LocalPortal) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x05" * 32)
    async with make_client(portal.url) as c:
        with pytest.raises(StorageError):
            await c.login(kp)
        assert c.auth_token is None
        await c.ensure_account(kp)  # registers
        await c.ensure_account(kp)  # logs in
        assert c.auth_token is not None


async def test_challenge_must_be_signed_for_this_portal(portal: LocalPortal) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x06" * 32)
    pub = b64url_encode(kp.registry_key)
    async with httpx.AsyncClient(base_url=portal.url) as http:
        r = await http.get("/s5/account/register", params={"pubKey": pub})
        challenge = b64url_decode(r.json()["challenge"])
        wrong_host = b"\x01" + challenge + blake3.blake3(b"evil.example:443").digest()
        r = await http.post(
            "/s5/account/register",
            json={
                "pubKey": pub,
                "response": b64url_encode(wrong_host),
                "signature": b64url_encode(kp.sign(wrong_host)),
            },
        )
        assert r.status_code == 400 and "host" in r.text
        # a good response with a bad signature
        r = await http.get("/s5/account/register", params={"pubKey": pub})
        challenge = b64url_decode(r.json()["challenge"])
        host = portal.url.removeprefix("http://")
        good = b"\x01" + challenge + blake3.blake3(host.encode()).digest()
        r = await http.post(
            "/s5/account/register",
            json={
                "pubKey": pub,
                "response": b64url_encode(good),
                "signature": b64url_encode(bytes(64)),
            },
        )
        assert r.status_code == 401 and r.text == "Invalid signature"


async def test_closed_registration_needs_invite(data_dir: Path) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x07" * 32)
    async with (
        LocalPortal(data_dir, open_registration=False, registration_tokens={"invite-1"}) as portal,
        make_client(portal.url) as c,
    ):
        with pytest.raises(AuthenticationError):
            await c.register(kp)
        await c.register(kp, invite_token="invite-1")
        assert c.auth_token is not None


# --- blobs ----------------------------------------------------------------------------


async def test_upload_download_and_redirect(client: S5PortalClient, portal: LocalPortal) -> None:
    data = b"Hello, world!"
    cid = await client.upload(data)
    assert str(cid) == "blobb53pfycyq6lwes6ogtnjpmhsc75nucnizzye34dyu2cmnz7s7n6mnbu"
    assert await client.download(cid) == data
    assert await client.download(cid.to_string("z")) == data
    assert await client.download_hash(cid.hash) == data
    async with httpx.AsyncClient(base_url=portal.url) as http:
        r = await http.get(f"/s5/blob/{cid}")
        assert r.status_code == 307 and r.headers["location"] == f"/s5/download/{cid}"
        r = await http.get(f"/s5/blob/{cid.to_string('u')}", follow_redirects=True)
        assert r.content == data
        # raw-body upload, and the reply is the Dart node's legacy raw CID in base58
        r = await http.post("/s5/upload", content=b"raw bytes", headers=auth(client))
        reply = r.json()["cid"]
        assert reply.startswith("z") and CID.parse(reply) == CID.from_bytes(b"raw bytes")
        r = await http.get("/s5/download/not-a-cid")
        assert r.status_code == 400


async def test_token_by_cookie_and_query(client: S5PortalClient, portal: LocalPortal) -> None:
    assert client.auth_token is not None
    token = client.auth_token.get_secret_value()
    async with httpx.AsyncClient(base_url=portal.url) as http:
        r = await http.post(
            "/s5/upload", content=b"c", headers={"Cookie": f"s5-auth-token={token}"}
        )
        assert r.status_code == 200
        r = await http.post("/s5/upload", content=b"q", params={"auth_token": token})
        assert r.status_code == 200
        r = await http.post("/s5/upload", content=b"n", params={"auth_token": "S5Awrong"})
        assert r.status_code == 401


async def test_upload_needs_auth(portal: LocalPortal) -> None:
    async with make_client(portal.url) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.upload(b"x")
        assert info.value.host_url == portal.url


async def test_missing_blob(client: S5PortalClient) -> None:
    with pytest.raises(BlobNotFoundError):
        await client.download(CID.from_bytes(b"never stored"))


async def test_tampered_blob_on_disk_is_detected(client: S5PortalClient, data_dir: Path) -> None:
    cid = await client.upload(b"original content")
    path = data_dir / "blobs" / cid.hash.hex()[:2] / cid.hash.hex()
    assert path.read_bytes() == b"original content"
    path.write_bytes(b"Original content")  # same size, other bytes
    with pytest.raises(IntegrityError):
        await client.download(cid)
    with pytest.raises(IntegrityError):
        await client.download_hash(cid.hash)


async def test_oversize_upload_is_refused_with_413(data_dir: Path, identity: S5Identity) -> None:
    async with LocalPortal(data_dir, max_upload_bytes=1000) as portal:
        async with make_client(portal.url) as c:
            await c.ensure_account(identity.portal_account_key_pair())
            await c.upload(bytes(1000))
            with pytest.raises(PortalRequestError) as info:
                await c.upload(bytes(1001))
            assert info.value.details["status"] == 413
            async with httpx.AsyncClient(base_url=portal.url) as http:
                r = await http.post("/s5/upload", content=bytes(5000), headers=auth(c))
                assert r.status_code == 413
                r = await http.post("/s5/registry", content=bytes(20_000), headers=auth(c))
                assert r.status_code == 413


async def test_reply_cid_that_does_not_match_is_refused() -> None:
    async def lying_upload(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"cid": str(CID.from_bytes(b"something else"))})

    app = web.Application()
    app.router.add_post("/s5/upload", lying_upload)
    async with serve(app) as url, make_client(url, auth_token="t") as c:
        with pytest.raises(IntegrityError):
            await c.upload(b"my data")


async def test_transient_5xx_is_retried_then_succeeds() -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return web.Response(status=503, text="busy")
        return web.Response(body=b"payload")

    app = web.Application()
    app.router.add_get("/s5/download/{cid}", flaky)
    async with serve(app) as url, make_client(url, max_attempts=3) as c:
        assert await c.download(CID.from_bytes(b"payload")) == b"payload"
    assert calls == 3


async def test_portal_down_retried_then_storage_error_and_nothing_lost(
    data_dir: Path, identity: S5Identity
) -> None:
    portal = LocalPortal(data_dir)
    await portal.start()
    url, port = portal.url, portal.port
    transport = CountingTransport()
    client = make_client(url, transport=transport, max_attempts=3)
    try:
        await client.ensure_account(identity.portal_account_key_pair())
        kept = await client.upload(b"kept")
        await portal.stop()
        before = transport.requests
        with pytest.raises(StorageError) as info:
            await client.upload(b"new")
        err = info.value
        assert type(err) is StorageError and err.is_retryable
        assert transport.requests - before == 3
        assert err.details["attempts"] == 3
        assert url in str(err) and err.host_url == url
        async with LocalPortal(data_dir, port=port):
            assert await client.download(kept) == b"kept"
            assert await client.download(await client.upload(b"new")) == b"new"
    finally:
        await client.aclose()
        await portal.stop()


# --- registry -------------------------------------------------------------------------


async def test_registry_round_trip_and_stale_revision(client: S5PortalClient) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x08" * 32)
    assert await client.registry_get(kp.registry_key) is None
    first = RegistryEntry.create(kp, b"one", 1)
    await client.registry_set(first)
    await client.registry_set(first)  # an identical resend is fine
    assert await client.registry_get(kp.public_key) == first
    await client.registry_set(RegistryEntry.create(kp, b"two", 5))
    with pytest.raises(RevisionConflictError):
        await client.registry_set(RegistryEntry.create(kp, b"late", 5))
    with pytest.raises(RevisionConflictError):
        await client.registry_set(RegistryEntry.create(kp, b"older", 2))
    got = await client.registry_get(kp.registry_key)
    assert got is not None and got.data == b"two" and got.revision == 5


async def test_bad_registry_signature_is_refused(
    client: S5PortalClient, portal: LocalPortal
) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x09" * 32)
    bad = RegistryEntry.create(kp, b"data", 1).with_signature(bytes(64))
    with pytest.raises(IntegrityError):
        await client.registry_set(bad)
    assert await client.registry_get(kp.registry_key) is None
    async with httpx.AsyncClient(base_url=portal.url) as http:
        r = await http.post("/s5/registry", json=bad.to_json(), headers=auth(client))
        assert r.status_code == 400 and r.text == "Invalid signature"
        too_long = bad.to_json() | {"data": b64url_encode(bytes(65))}
        r = await http.post("/s5/registry", json=too_long, headers=auth(client))
        assert r.status_code == 400 and "64" in r.text
        good = RegistryEntry.create(kp, b"data", 1)
        r = await http.post("/s5/registry", json=good.to_json())
        assert r.status_code == 401  # writes need auth
        r = await http.get("/s5/registry", params={"pk": b64url_encode(kp.registry_key)})
        assert r.status_code == 404 and r.content == b""


async def test_client_refuses_a_forged_entry_from_the_portal(
    client: S5PortalClient, data_dir: Path
) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x0a" * 32)
    await client.registry_set(RegistryEntry.create(kp, b"\x1e" + bytes(32), 1))
    with sqlite3.connect(data_dir / "portal.sqlite3") as db:
        db.execute(
            "UPDATE registry SET data=? WHERE pk=?", (b"\x1e" + b"\x01" * 32, kp.registry_key)
        )
    with pytest.raises(IntegrityError):
        await client.registry_get(kp.registry_key)


async def test_registry_and_blobs_survive_restart(data_dir: Path, identity: S5Identity) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x0b" * 32)
    async with LocalPortal(data_dir) as portal, make_client(portal.url) as c:
        await c.ensure_account(identity.portal_account_key_pair())
        cid = await c.upload(b"durable")
        await c.registry_set(RegistryEntry.create(kp, b"x", 3))
        token = c.auth_token
    async with LocalPortal(data_dir) as portal, make_client(portal.url, auth_token=token) as c:
        assert await c.download(cid) == b"durable"
        entry = await c.registry_get(kp.registry_key)
        assert entry is not None and entry.revision == 3
        await c.upload(b"token still valid")
        await c.login(identity.portal_account_key_pair())


async def test_garbage_requests_get_client_errors(
    client: S5PortalClient, portal: LocalPortal
) -> None:
    headers = auth(client)
    async with httpx.AsyncClient(base_url=portal.url, headers=headers) as http:
        cases = [
            http.get("/s5/registry", params={"pk": "%%%"}),
            http.get("/s5/registry"),
            http.get("/s5/account/register", params={"pubKey": "AAAA"}),
            http.post("/s5/registry", content=b"not json"),
            http.post("/s5/registry", json=[1, 2]),
            http.post("/s5/registry", json={"pk": "x", "revision": 2**70}),
            http.post("/s5/account/login", json={"pubKey": 5}),
            http.post("/s5/account/register", json="string"),
            http.post("/s5/upload", files={"other": ("f", b"x")}),
        ]
        for response in await asyncio.gather(*cases):
            assert 400 <= response.status_code < 500, response.text
