"""The local portal against hostile peers (issue 11, findings 8-12), over real sockets.

Peers are raw asyncio sockets that send bodies in pieces, stall, relay logins with a forged
``Host`` header or flood challenges. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import blake3
import httpx
import pytest

from langchain_fabstir._compat import timeout
from langchain_fabstir.cli import main, start_portal_process
from langchain_fabstir.errors import AuthenticationError, StorageError
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import CID, Ed25519KeyPair, S5Identity, S5PortalClient
from langchain_fabstir.s5.encoding import b64url_decode, b64url_encode
from langchain_fabstir.s5.registry import RegistryEntry

from .conftest import make_client

# How long a piecewise sender waits, after its first piece, for a reply that must not come yet.
EARLY_REPLY_WINDOW = 0.3


class RawReply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }


async def read_reply(reader: asyncio.StreamReader, bound: float = 20.0) -> RawReply:
    """One HTTP/1.1 reply with Content-Length (what the portal sends), read whole."""
    async with timeout(bound):
        head = await reader.readuntil(b"\r\n\r\n")
        reply = RawReply(head)
        body = await reader.readexactly(int(reply.headers.get("content-length", "0")))
    reply.body = body
    return reply


async def send_in_pieces(port: int, head: bytes, pieces: list[bytes]) -> RawReply:
    """Send ``head`` and the first piece, check no reply comes yet, then send the rest.

    A server that answers before the body is complete has stored (or parsed) a truncated
    body: that is reported as an ``AssertionError``.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + pieces[0])
        await writer.drain()
        try:
            early = await asyncio.wait_for(reader.read(1), EARLY_REPLY_WINDOW)
        except asyncio.TimeoutError:
            early = b""
        if early:
            rest = await asyncio.wait_for(reader.read(4096), 5)
            raise AssertionError(f"replied before the body was complete: {early + rest!r}")
        for piece in pieces[1:]:
            writer.write(piece)
            await writer.drain()
        return await read_reply(reader)
    finally:
        writer.close()


def token_of(client: S5PortalClient) -> str:
    assert client.auth_token is not None
    return client.auth_token.get_secret_value()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def chunked(pieces: list[bytes]) -> list[bytes]:
    """The pieces in HTTP chunked transfer coding (one chunk each, then the last chunk)."""
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


# --- 8: bodies are read to their end ----------------------------------------------------


@pytest.mark.parametrize("size", [100_000, 3_000_000])
async def test_raw_upload_sent_in_pieces_is_stored_whole(
    client: S5PortalClient, portal: LocalPortal, size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    head = (
        f"POST /s5/upload HTTP/1.1\r\nHost: {portal.url[7:]}\r\n"
        f"Authorization: Bearer {token_of(client)}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    reply = await send_in_pieces(portal.port, head, split(data, 16_384))
    assert reply.status == 200, reply.body
    cid = CID.parse(httpx.Response(200, content=reply.body).json()["cid"])
    assert cid == CID.from_bytes(data)
    assert await client.download(cid) == data


async def test_chunked_upload_is_stored_whole_or_refused_with_413(
    data_dir: Path, identity: S5Identity
) -> None:
    async with LocalPortal(data_dir, max_upload_bytes=1_000_000) as portal:
        async with make_client(portal.url) as c:
            await c.ensure_account(identity.portal_account_key_pair())
            head = (
                f"POST /s5/upload HTTP/1.1\r\nHost: {portal.url[7:]}\r\n"
                f"Authorization: Bearer {token_of(c)}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            data = b"chunked body " * 50_000  # 650,000 bytes
            reply = await send_in_pieces(portal.port, head, chunked(split(data, 65_536)))
            assert reply.status == 200, reply.body
            cid = CID.parse(httpx.Response(200, content=reply.body).json()["cid"])
            assert cid == CID.from_bytes(data) and await c.download(cid) == data

            too_big = bytes(1_500_000)
            reply = await send_in_pieces(portal.port, head, chunked(split(too_big, 65_536)))
            assert reply.status == 413
            # nothing of it was kept, not even a temporary file
            assert not list((data_dir / "blobs").glob("**/.tmp-*"))
            assert not (data_dir / "blobs" / CID.from_bytes(too_big).hash.hex()[:2]).exists()


async def test_json_in_two_segments_is_read_whole(
    client: S5PortalClient, portal: LocalPortal
) -> None:
    kp = Ed25519KeyPair.from_seed(b"\x21" * 32)
    body = httpx.Request(
        "POST", "http://x", json=RegistryEntry.create(kp, b"two segments", 1).to_json()
    ).content
    head = (
        f"POST /s5/registry HTTP/1.1\r\nHost: {portal.url[7:]}\r\n"
        f"Authorization: Bearer {token_of(client)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reply = await send_in_pieces(portal.port, head, [body[:40], body[40:]])
    assert reply.status == 204, reply.body
    entry = await client.registry_get(kp.registry_key)
    assert entry is not None and entry.data == b"two segments"


# --- 9: logins are bound to the portal's public URL -----------------------------------


async def test_login_relayed_through_a_forged_host_header_is_refused(
    portal: LocalPortal,
) -> None:
    victim = Ed25519KeyPair.from_seed(b"\x22" * 32)
    pub = b64url_encode(victim.registry_key)
    evil = "evil.example:443"
    async with httpx.AsyncClient(base_url=portal.url, headers={"Host": evil}) as relay:
        r = await relay.get("/s5/account/register", params={"pubKey": pub})
        challenge = b64url_decode(r.json()["challenge"])
        # what the victim signs on evil.example, thinking it is registering there
        response = b"\x01" + challenge + blake3.blake3(evil.encode()).digest()
        r = await relay.post(
            "/s5/account/register",
            json={
                "pubKey": pub,
                "response": b64url_encode(response),
                "signature": b64url_encode(victim.sign(response)),
            },
        )
        assert r.status_code == 400 and "host" in r.text, r.text
        assert "authToken" not in r.text


async def test_public_url_is_the_host_logins_are_signed_for(
    data_dir: Path, identity: S5Identity
) -> None:
    kp = identity.portal_account_key_pair()
    async with LocalPortal(data_dir, public_url="https://s5.example.org/") as portal:
        async with make_client(portal.url) as direct:
            with pytest.raises(StorageError) as info:  # signed for 127.0.0.1:<port>
                await direct.register(kp)
            assert "host" in str(info.value.details.get("excerpt", ""))
        # a client that knows the portal as https://s5.example.org (a reverse proxy)
        async with httpx.AsyncClient(base_url=portal.url) as http:
            pub = b64url_encode(kp.registry_key)
            r = await http.get("/s5/account/register", params={"pubKey": pub})
            challenge = b64url_decode(r.json()["challenge"])
            response = b"\x01" + challenge + blake3.blake3(b"s5.example.org").digest()
            r = await http.post(
                "/s5/account/register",
                json={
                    "pubKey": pub,
                    "response": b64url_encode(response),
                    "signature": b64url_encode(kp.sign(response)),
                },
            )
            assert r.status_code == 200 and r.json()["authToken"].startswith("S5A")
    with pytest.raises(ValueError, match="public_url"):
        LocalPortal(data_dir, public_url="ftp://nowhere")


# --- 11: idle, half-sent and stalled connections are reaped ---------------------------


async def wait_closed_by_server(reader: asyncio.StreamReader, bound: float) -> None:
    """Read (and drop) until the server closes the connection; fail after ``bound`` s."""
    async with timeout(bound):
        try:
            while await reader.read(65_536):
                pass
        except ConnectionError:
            pass


async def open_small_window(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a small receive buffer, so a reader that stops reading stalls soon."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def test_idle_half_sent_and_stalled_connections_are_closed(
    data_dir: Path, identity: S5Identity
) -> None:
    async with LocalPortal(data_dir, idle_timeout=0.5, body_timeout=0.5) as portal:
        async with make_client(portal.url) as c:
            await c.ensure_account(identity.portal_account_key_pair())
            big = await c.upload(bytes(8 * 1024 * 1024))
            token = token_of(c)
        host = portal.url[7:]
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(50):  # idle: connect, send nothing
            conns.append(await asyncio.open_connection("127.0.0.1", portal.port))
        for _ in range(50):  # a request line that never ends
            r, w = await asyncio.open_connection("127.0.0.1", portal.port)
            w.write(b"GET /s5/download/zabc HTTP/1.1\r\nHost: " + host.encode())
            conns.append((r, w))
        for path in ("/s5/upload", "/s5/registry"):  # a body that stops arriving
            r, w = await asyncio.open_connection("127.0.0.1", portal.port)
            w.write(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: 1000\r\n\r\n{'x' * 10}".encode()
            )
            conns.append((r, w))
        # a keep-alive connection, idle after one answered request
        r, w = await asyncio.open_connection("127.0.0.1", portal.port)
        w.write(f"GET /s5/registry?pk=AAAA HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert (await read_reply(r)).status == 400
        conns.append((r, w))
        # a download the client stops reading (the server must not wait on it forever)
        slow_reader, slow_writer = await open_small_window(portal.port)
        slow_writer.write(f"GET /s5/download/{big} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await slow_reader.readuntil(b"\r\n\r\n")
        started = time.monotonic()
        try:
            await asyncio.gather(*(wait_closed_by_server(r, 10.0) for r, _ in conns))
            # the stalled download: drain what the kernel buffered, then the server closed it
            await wait_closed_by_server(slow_reader, 15.0)
        finally:
            for _, w in [*conns, (slow_reader, slow_writer)]:
                w.close()
        assert time.monotonic() - started < 15.0
        # the portal still serves
        async with httpx.AsyncClient(base_url=portal.url) as http:
            assert (await http.get(f"/s5/download/{big}")).content == bytes(8 * 1024 * 1024)


# --- 12: challenges, orphans, sizes and tokens ----------------------------------------


@asynccontextmanager
async def client_from(address: str, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose connections come from ``address`` (another loopback address)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=base_url, transport=transport) as http:
        yield http


async def test_challenge_flood_does_not_evict_another_clients_challenge(
    data_dir: Path, identity: S5Identity
) -> None:
    kp = identity.portal_account_key_pair()
    async with LocalPortal(data_dir) as portal:
        async with make_client(portal.url) as c:
            await c.register(kp)
        pub = b64url_encode(kp.registry_key)
        async with client_from("127.0.0.2", portal.url) as victim:
            r = await victim.get("/s5/account/login", params={"pubKey": pub})
            challenge = b64url_decode(r.json()["challenge"])

            # the attacker (127.0.0.1) asks for 10,000 anonymous challenges, pipelined
            async def flood(count: int) -> int:
                reader, writer = await asyncio.open_connection("127.0.0.1", portal.port)
                ok = 0
                try:
                    for i in range(count):
                        stranger = b64url_encode(bytes([0xED]) + i.to_bytes(32, "big"))
                        writer.write(
                            f"GET /s5/account/register?pubKey={stranger} HTTP/1.1\r\n"
                            f"Host: {portal.url[7:]}\r\n\r\n".encode()
                        )
                    for _ in range(count):
                        ok += (await read_reply(reader)).status == 200
                finally:
                    writer.close()
                return ok

            assert sum(await asyncio.gather(*(flood(1_000) for _ in range(10)))) == 10_000

            response = b"\x02" + challenge + blake3.blake3(portal.url[7:].encode()).digest()
            r = await victim.post(
                "/s5/account/login",
                json={
                    "pubKey": pub,
                    "response": b64url_encode(response),
                    "signature": b64url_encode(kp.sign(response)),
                },
            )
            assert r.status_code == 200, r.text


async def test_orphaned_temporary_files_are_removed_at_start(
    data_dir: Path, identity: S5Identity
) -> None:
    async with LocalPortal(data_dir) as portal, make_client(portal.url) as c:
        await c.ensure_account(identity.portal_account_key_pair())
        kept = await c.upload(b"kept across the crash")
        token = c.auth_token
    shard = data_dir / "blobs" / kept.hash.hex()[:2]
    orphans = [shard / ".tmp-crashed1", data_dir / "blobs" / ".tmp-crashed2"]
    for orphan in orphans:
        orphan.write_bytes(b"half an upload")
    async with LocalPortal(data_dir) as portal, make_client(portal.url, auth_token=token) as c:
        assert not any(o.exists() for o in orphans)
        assert await c.download(kept) == b"kept across the crash"


async def test_cid_with_the_right_hash_and_a_wrong_size_is_refused(
    client: S5PortalClient, portal: LocalPortal
) -> None:
    cid = await client.upload(b"sized content")
    async with httpx.AsyncClient(base_url=portal.url) as http:
        wrong = CID(cid.hash, cid.size + 1000)
        r = await http.get(f"/s5/download/{wrong}")
        assert r.status_code == 404 and r.content != b"sized content"
        assert (await http.get(f"/s5/download/{cid}")).content == b"sized content"
    assert await client.download_hash(cid.hash) == b"sized content"  # size 0: unknown


async def test_tokens_expire_and_can_be_revoked(data_dir: Path, identity: S5Identity) -> None:
    kp = identity.portal_account_key_pair()
    async with LocalPortal(data_dir, token_ttl=3600) as portal:
        async with make_client(portal.url) as c:
            await c.register(kp)
            await c.upload(b"fresh token")
            with sqlite3.connect(data_dir / "portal.sqlite3") as db:  # two hours later
                db.execute("UPDATE tokens SET created = ?", (int(time.time()) - 7200,))
            with pytest.raises(AuthenticationError):
                await c.upload(b"expired token")

            await c.login(kp)
            token = token_of(c)
            async with httpx.AsyncClient(base_url=portal.url) as http:
                bearer = {"Authorization": f"Bearer {token}"}
                assert (await http.post("/s5/upload", content=b"a", headers=bearer)).is_success
                r = await http.post("/s5/account/logout", headers=bearer)
                assert r.status_code == 204
                r = await http.post("/s5/upload", content=b"b", headers=bearer)
                assert r.status_code == 401
                r = await http.post("/s5/account/logout", headers=bearer)
                assert r.status_code == 401
            # every token of an account, from the store
            await c.login(kp)
            async with make_client(portal.url) as c2:
                await c2.login(kp)
                assert portal.db.revoke_tokens(kp.registry_key) == 2
                with pytest.raises(AuthenticationError):
                    await c.upload(b"revoked")
                with pytest.raises(AuthenticationError):
                    await c2.upload(b"revoked too")


# --- 10: downloads stream from disk (memory measured in a portal subprocess) ----------


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_downloads_not_read_by_clients_do_not_grow_portal_memory(
    tmp_path: Path, identity: S5Identity
) -> None:
    clients, size = 12, 32 * 1024 * 1024
    proc, url = await asyncio.to_thread(start_portal_process, str(tmp_path / "portal"))
    try:
        async with make_client(url) as c:
            await c.ensure_account(identity.portal_account_key_pair())
            cid = await c.upload(bytes(size))
        port = int(url.rsplit(":", 1)[1])
        before = rss_mib(proc.pid)
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
        try:
            for _, writer in conns:
                writer.write(f"GET /s5/download/{cid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for reader, _ in conns:  # each download has started; then nobody reads on
                async with timeout(30):
                    await reader.readuntil(b"\r\n\r\n")
                    await reader.readexactly(1024 * 1024)
            growth = rss_mib(proc.pid) - before
        finally:
            for _, writer in conns:
                writer.close()
        # 12 x 32 MiB requested: a portal that holds each blob in memory grows by >= 384 MiB
        assert growth < 64, f"portal memory grew by {growth:.0f} MiB"
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


async def test_cli_portal_limits(
    tmp_path: Path, identity: S5Identity, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--max-upload-mib", "1", "--idle-timeout", "0.5", "--body-timeout", "0.5"]
    proc, url = await asyncio.to_thread(start_portal_process, str(tmp_path / "portal"), extra=args)
    try:
        async with make_client(url) as c:
            await c.ensure_account(identity.portal_account_key_pair())
            await c.upload(bytes(1024 * 1024))
            with pytest.raises(StorageError) as info:
                await c.upload(bytes(1024 * 1024 + 1))
            assert info.value.details["status"] == 413
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        try:
            await wait_closed_by_server(reader, 10.0)  # idle: closed after about 0.5 s
        finally:
            writer.close()
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    with pytest.raises(SystemExit):
        main(["portal", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--public-url", "--max-upload-mib", "--idle-timeout", "--body-timeout"):
        assert option in help_text
