"""S5FileSystem and S5AppendLog against a real LocalPortal on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import (
    DirV1,
    InvalidPathError,
    S5AppendLog,
    S5FileSystem,
    S5Identity,
    S5PortalClient,
)
from langchain_fabstir.s5.crypto import decrypt_mutable, derive_hash_int, derive_hash_string
from langchain_fabstir.s5.registry import Ed25519KeyPair

from .conftest import make_client


def blob_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


@pytest.fixture
async def second_fs(portal: LocalPortal, identity: S5Identity) -> AsyncIterator[S5FileSystem]:
    """Another writer of the same tree: its own client and FS object (own locks, caches)."""
    async with make_client(portal.url) as c:
        await c.login(identity.portal_account_key_pair())
        yield S5FileSystem(c, identity)


async def test_put_get_list_stat_delete(fs: S5FileSystem) -> None:
    info = await fs.put("home/notes/a.txt", b"alpha", media_type="text/plain")
    assert info.size == 5 and info.encrypted and info.path == "home/notes/a.txt"
    await fs.put("/home//notes/b.json", b'{"x": 1}', media_type="application/json")
    await fs.put("archive/old/c.bin", b"\x00\x01")
    assert await fs.get("home/notes/a.txt") == b"alpha"
    assert await fs.get("archive/old/c.bin") == b"\x00\x01"
    listing = await fs.list("home/notes")
    assert [(e.name, e.kind, e.size, e.media_type) for e in listing] == [
        ("a.txt", "file", 5, "text/plain"),
        ("b.json", "file", 8, "application/json"),
    ]
    assert [(e.name, e.kind) for e in await fs.list("home")] == [("notes", "directory")]
    stat = await fs.stat("home/notes/a.txt")
    assert stat is not None and stat.size == 5 and stat.timestamp is not None
    await fs.put("home/notes/a.txt", b"alpha v2")  # overwrite
    assert await fs.get("home/notes/a.txt") == b"alpha v2"
    assert await fs.delete("home/notes/a.txt") is True
    assert await fs.delete("home/notes/a.txt") is False
    assert await fs.get("home/notes/a.txt") is None
    assert [e.name for e in await fs.list("home/notes")] == ["b.json"]
    assert await fs.get("home/nothing/here") is None
    assert await fs.list("home/nothing") == []
    assert await fs.exists("home/notes/b.json") and not await fs.exists("home/notes/zz")


async def test_paths_outside_home_and_archive_are_refused(fs: S5FileSystem) -> None:
    for bad in ["etc/passwd", "", "/", "home", "home/../x", "home/./x", "homework/x"]:
        with pytest.raises(InvalidPathError) as info:
            await fs.put(bad, b"x")
        assert info.value.code == "INVALID_PATH"
    with pytest.raises(InvalidPathError):
        await fs.get("tmp/x")
    await fs.put("home/d/f", b"x")
    with pytest.raises(InvalidPathError):
        await fs.put("home/d", b"x")  # a directory
    with pytest.raises(InvalidPathError):
        await fs.put("home/d/f/g", b"x")  # below a file


async def test_delete_directory(fs: S5FileSystem) -> None:
    await fs.put("home/tree/sub/leaf.txt", b"leaf")
    await fs.put("home/tree/top.txt", b"top")
    with pytest.raises(InvalidPathError):
        await fs.delete("home/tree")
    assert await fs.delete("home/tree", recursive=True)
    assert await fs.list("home") == []
    # keys derive from paths: a re-created directory must not show the old contents
    await fs.put("home/tree/new.txt", b"new")
    assert [e.name for e in await fs.list("home/tree")] == ["new.txt"]
    assert await fs.get("home/tree/sub/leaf.txt") is None


async def test_two_concurrent_writers_to_one_directory_both_land(
    fs: S5FileSystem, second_fs: S5FileSystem
) -> None:
    await fs.put("home/shared/seed", b"0")

    async def writer(f: S5FileSystem, tag: str) -> None:
        await asyncio.gather(*(f.put(f"home/shared/{tag}{i}", tag.encode()) for i in range(4)))

    await asyncio.gather(writer(fs, "a"), writer(second_fs, "b"))
    names = [e.name for e in await fs.list("home/shared")]
    assert names == sorted(["seed", *(f"a{i}" for i in range(4)), *(f"b{i}" for i in range(4))])
    assert await second_fs.get("home/shared/a3") == b"a"


async def test_portal_restart_keeps_files(data_dir: Path, identity: S5Identity) -> None:
    kp = identity.portal_account_key_pair()
    async with LocalPortal(data_dir) as portal, make_client(portal.url) as c:
        await c.ensure_account(kp)
        await S5FileSystem(c, identity).put("home/keep/me.txt", b"still here")
    async with LocalPortal(data_dir) as portal, make_client(portal.url) as c:
        await c.login(kp)
        fs = S5FileSystem(c, identity)
        assert await fs.get("home/keep/me.txt") == b"still here"
        await fs.put("home/keep/more.txt", b"more")
        assert [e.name for e in await fs.list("home/keep")] == ["me.txt", "more.txt"]


async def test_blob_directory_holds_no_plaintext(fs: S5FileSystem, data_dir: Path) -> None:
    marker = b"TOP-SECRET-CONTENT-7f3a"
    name = "secret-name-9c1e.txt"
    await fs.put(f"home/private/{name}", marker * 20, media_type="text/x-secret")
    log = S5AppendLog(fs, "home/private/log")
    await log.append(marker)
    blobs = [p.read_bytes() for p in blob_files(data_dir)]
    assert blobs
    for blob in blobs:
        assert marker not in blob and name.encode() not in blob and b"text/x-secret" not in blob
    # the scan can fail: a file written in the clear is visible on disk
    await fs.put("home/public/plain.txt", marker, encrypt=False)
    assert any(marker in p.read_bytes() for p in blob_files(data_dir))
    assert await fs.get("home/public/plain.txt") == marker


async def test_layout_follows_fs5_key_derivation(
    fs: S5FileSystem, client: S5PortalClient, identity: S5Identity
) -> None:
    await fs.put("home/chat/x.json", b"{}")
    fsk = derive_hash_int(identity.fs_root_key, 1)
    home_key = derive_hash_string(fsk, "home")
    chat_key = derive_hash_string(home_key, "chat")
    root_entry = await client.registry_get(Ed25519KeyPair.from_seed(fsk).registry_key)
    assert root_entry is not None and root_entry.data[0] == 0x1E and len(root_entry.data) == 33
    root_blob = await client.download_hash(root_entry.data[1:])
    assert root_blob[:2] == b"\x8d\x01"
    root = DirV1.decode(decrypt_mutable(root_blob, derive_hash_int(fsk, 1)))
    assert root.dirs["home"].link == b"\xed" + Ed25519KeyPair.from_seed(home_key).public_key
    chat_entry = await client.registry_get(Ed25519KeyPair.from_seed(chat_key).registry_key)
    assert chat_entry is not None
    chat_blob = await client.download_hash(chat_entry.data[1:])
    chat = DirV1.decode(decrypt_mutable(chat_blob, derive_hash_int(chat_key, 0x5E)))
    assert list(chat.files) == ["x.json"]


async def test_plain_directories_for_s5js(client: S5PortalClient, identity: S5Identity) -> None:
    fs = S5FileSystem(client, identity, encrypt_directories=False, encrypt_files=False)
    await fs.put("home/open/readme.txt", b"hello")
    key = fs.directory_public_key("home/open")
    entry = await client.registry_get(key)
    assert entry is not None
    blob = await client.download_hash(entry.data[1:])
    assert blob[:2] == b"\x5f\x5d" and b"readme.txt" in blob
    assert await fs.get("home/open/readme.txt") == b"hello"


async def test_other_identity_sees_nothing(client: S5PortalClient, fs: S5FileSystem) -> None:
    await fs.put("home/mine.txt", b"mine")
    other = S5FileSystem(client, S5Identity.from_secret(b"another user's secret key"))
    assert await other.get("home/mine.txt") is None
    assert await other.list("home") == []


# --- append log -----------------------------------------------------------------------


async def test_append_log_order_chunks_and_reads(fs: S5FileSystem) -> None:
    log = S5AppendLog(fs, "home/sessions/s1/messages", chunk_size=3)
    assert await log.count() == 0 and await log.read() == []
    seqs = [await log.append(f"m{i}".encode()) for i in range(5)]
    seqs += await log.extend([b"m5", b"m6", b"m7", b"m8", b"m9"])
    assert seqs == list(range(10))
    records = await log.read()
    assert [r.data for r in records] == [f"m{i}".encode() for i in range(10)]
    assert [r.seq for r in records] == list(range(10))
    assert records[0].media_type == "application/json" and records[0].timestamp is not None
    assert [r.data for r in await log.read(4, limit=3)] == [b"m4", b"m5", b"m6"]
    assert [r.seq for r in await log.tail(2)] == [8, 9]
    assert await log.count() == 10
    chunks = await fs.list("home/sessions/s1/messages")
    assert [c.name for c in chunks] == ["c00000000", "c00000001", "c00000002", "c00000003"]
    for chunk in chunks:
        assert len(await fs.list(f"home/sessions/s1/messages/{chunk.name}")) <= 3
    # a fresh log object (another process) continues where the log ends
    again = S5AppendLog(fs, "home/sessions/s1/messages", chunk_size=3)
    assert await again.append(b"m10") == 10
    await again.clear()
    assert await again.count() == 0
    assert await again.append(b"fresh") == 0


async def test_append_does_not_rewrite_earlier_records(fs: S5FileSystem, data_dir: Path) -> None:
    log = S5AppendLog(fs, "home/big", chunk_size=64)
    await log.extend([b"r%d" % i for i in range(20)])
    before = {p.name for p in blob_files(data_dir)}
    await log.append(b"r20")
    added = {p.name for p in blob_files(data_dir)} - before
    # one record blob plus the new version of the tail chunk's listing, nothing else
    assert len(added) == 2
    record_names = [e.name for e in await fs.list("home/big/c00000000")]
    assert len(record_names) == 21


async def test_concurrent_appenders_get_unique_sequence_numbers(
    fs: S5FileSystem, second_fs: S5FileSystem
) -> None:
    a = S5AppendLog(fs, "home/log", chunk_size=4)
    b = S5AppendLog(second_fs, "home/log", chunk_size=4)

    async def run(log: S5AppendLog, tag: str) -> list[int]:
        return [await log.append(f"{tag}{i}".encode()) for i in range(5)]

    seqs_a, seqs_b = await asyncio.gather(run(a, "a"), run(b, "b"))
    assert sorted(seqs_a + seqs_b) == list(range(10))
    data = [r.data for r in await a.read()]
    assert sorted(data) == sorted(
        [f"a{i}".encode() for i in range(5)] + [f"b{i}".encode() for i in range(5)]
    )
    # each writer's records keep their own order
    assert [d for d in data if d.startswith(b"a")] == [f"a{i}".encode() for i in range(5)]
