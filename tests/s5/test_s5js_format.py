"""Directories as s5.js writes them: encryption state, sharded (HAMT) directories, entry order.

s5.js cannot run here (its npm package is not on the registry this machine reaches), so the
fixtures are written by small encoders in this file that follow s5.js's source
(``src/fs/fs5.ts``, ``src/fs/dirv1``, ``src/fs/hamt``); the entry order is checked against
Node's own ``localeCompare`` whenever ``node`` is on PATH.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import unicodedata
from typing import Any

import blake3
import cbor2
import pytest

from langchain_fabstir.errors import StorageError
from langchain_fabstir.s5 import (
    DirV1,
    FileRef,
    InvalidDirectoryError,
    S5FileSystem,
    S5Identity,
    S5PortalClient,
    ShardedDirectoryError,
)
from langchain_fabstir.s5.collation import s5js_sort_key
from langchain_fabstir.s5.crypto import derive_hash_int, derive_hash_string
from langchain_fabstir.s5.registry import Ed25519KeyPair, RegistryEntry

DIRV1 = b"\x5f\x5d"
ENCRYPTED = b"\x8d\x01"


def write_key(identity: S5Identity, *names: str) -> bytes:
    """FS5 write key of ``home/...`` from the seed (S5.md section 3), computed here."""
    key = derive_hash_int(identity.fs_root_key, 1)
    for name in names:
        key = derive_hash_string(key, name)
    return key


async def stored_blob(client: S5PortalClient, key: bytes) -> tuple[bytes, int]:
    """The raw directory blob behind the registry entry of write key ``key``."""
    entry = await client.registry_get(Ed25519KeyPair.from_seed(key).registry_key)
    assert entry is not None
    return await client.download_hash(entry.data[1:33]), entry.revision


async def replace_directory(client: S5PortalClient, key: bytes, blob: bytes) -> None:
    """Point a directory's registry entry at ``blob`` (revision + 1), as s5.js does."""
    pair = Ed25519KeyPair.from_seed(key)
    current = await client.registry_get(pair.registry_key)
    cid = await client.upload(blob)
    revision = 0 if current is None else current.revision
    await client.registry_set(RegistryEntry.create(pair, b"\x1e" + cid.hash, revision + 1))


def s5js_dir_blob(files: dict[str, dict[int, Any]], header: dict[str, Any] | None = None) -> bytes:
    """A plain DirV1 blob as s5.js writes a sub-directory (never encrypted)."""
    return DIRV1 + cbor2.dumps(["S5.pro", header or {}, {}, files])


# --- finding 16: a write keeps the directory's encryption state ---------------------------


async def test_default_write_keeps_an_s5js_directory_plain(
    client: S5PortalClient, identity: S5Identity
) -> None:
    plain = S5FileSystem(client, identity, encrypt_files=False, encrypt_directories=False)
    await plain.put("home/js/first.txt", b"linked")  # links home/js into home
    note = b"written by s5.js"
    note_cid = await client.upload(note)
    js_key = write_key(identity, "home", "js")
    await replace_directory(
        client,
        js_key,
        s5js_dir_blob({"note.txt": {3: note_cid.hash, 4: len(note), 6: "text/plain", 7: 1}}),
    )

    fs = S5FileSystem(client, identity)  # default settings: encrypting
    await fs.put("home/js/py.txt", b"from python")

    blob, _ = await stored_blob(client, js_key)
    assert blob[:2] == DIRV1, "the s5.js directory was re-encrypted; s5.js cannot read it"
    directory = DirV1.decode(blob)
    assert sorted(directory.files) == ["note.txt", "py.txt"]
    assert await fs.get("home/js/note.txt") == note
    assert await fs.get("home/js/py.txt") == b"from python"

    # a directory the default client creates is encrypted; an s5.js-compatible write into it
    # keeps it encrypted (never decrypts), and the root stays encrypted
    await fs.put("home/private/a.txt", b"secret")
    compat = S5FileSystem(client, identity, s5js_compatible=True)
    await compat.put("home/private/b.txt", b"shared")
    assert (await stored_blob(client, write_key(identity, "home", "private")))[0][:2] == ENCRYPTED
    assert (await stored_blob(client, write_key(identity)))[0][:2] == ENCRYPTED
    assert [e.name for e in await fs.list("home/private")] == ["a.txt", "b.txt"]


async def test_s5js_compatible_is_one_option(client: S5PortalClient, identity: S5Identity) -> None:
    compat = S5FileSystem(client, identity, s5js_compatible=True)
    assert compat.encrypt_files is False and compat.encrypt_directories is False
    info = await compat.put("home/shared/x.txt", b"plain", media_type="text/plain")
    assert not info.encrypted
    blob, _ = await stored_blob(client, write_key(identity, "home", "shared"))
    assert blob[:2] == DIRV1
    default = S5FileSystem(client, identity)
    assert default.encrypt_files and default.encrypt_directories
    with pytest.raises(ValueError, match="s5js_compatible"):
        S5FileSystem(client, identity, s5js_compatible=True, encrypt_files=True)


# --- finding 17: sharded (HAMT) directories are read, and refused for writes -------------

HAMT_CONFIG = {"bitsPerLevel": 5, "hashFunction": 1, "maxInlineEntries": 1000}


def slot(key: str, depth: int) -> int:
    """s5.js's slot of a key: hashFunction 1 = first 8 bytes of BLAKE3, big-endian."""
    digest = blake3.blake3(key.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> (5 * depth)) & 31


def hamt_node(entries: list[tuple[str, Any]], depth: int, nested: dict[int, bytes]) -> Any:
    """A node map as s5.js's ``_prepareNodeForSerialization`` builds it; slots listed in
    ``nested`` hold a reference to a child node blob instead of a leaf."""
    buckets: dict[int, list[list[Any]]] = {}
    for key, value in entries:
        buckets.setdefault(slot(key, depth), []).append([key, value])
    bitmap = 0
    children: list[dict[str, Any]] = []
    for index in sorted(buckets):
        bitmap |= 1 << index
        if index in nested:
            children.append({"type": "node", "cid": b"\x1e" + nested[index]})
        else:
            children.append({"type": "leaf", "entries": buckets[index]})
    return {"bitmap": bitmap, "children": children, "count": len(entries), "depth": depth}


async def make_sharded_directory(
    client: S5PortalClient, identity: S5Identity
) -> tuple[dict[str, bytes], list[str]]:
    """home/big as s5.js leaves it after passing 1,000 entries; returns real files and dirs."""
    plain = S5FileSystem(client, identity, encrypt_files=False, encrypt_directories=False)
    await plain.put("home/big/placeholder.txt", b"x")  # links home/big into home
    contents = {f"file-{i:04d}.txt": f"content {i}".encode() for i in range(1100)}
    real = {name: contents[name] for name in ("file-0003.txt", "file-0777.txt", "file-1099.txt")}
    for data in real.values():
        await client.upload(data)
    dirs = [f"sub-{i:02d}" for i in range(5)]
    entries: list[tuple[str, Any]] = [
        (f"f:{name}", {"hash": blake3.blake3(data).digest(), "size": len(data)})
        for name, data in contents.items()
    ] + [
        # s5.js writes registry links without their key (link.hash is undefined)
        (f"d:{name}", {"link": {"type": "mutable_registry_ed25519", "hash": cbor2.undefined}})
        for name in dirs
    ]
    # one root slot is split into a child node one level down, stored as its own blob
    deep = slot("f:file-0003.txt", 0)
    in_deep = [(k, v) for k, v in entries if slot(k, 0) == deep]
    child = cbor2.dumps(hamt_node(in_deep, 1, {}))
    await client.upload(child)
    root = hamt_node(entries, 0, {deep: blake3.blake3(child).digest()})
    hamt = cbor2.dumps({"version": 1, "config": HAMT_CONFIG, "root": root})
    hamt_cid = await client.upload(hamt)
    header = {
        "sharding": {
            "type": "hamt",
            "config": HAMT_CONFIG,
            "root": {"cid": b"\x1e" + hamt_cid.hash, "totalEntries": len(entries), "depth": 1},
        }
    }
    await replace_directory(client, write_key(identity, "home", "big"), s5js_dir_blob({}, header))
    return real, dirs


async def test_sharded_directory_is_read(client: S5PortalClient, identity: S5Identity) -> None:
    real, dirs = await make_sharded_directory(client, identity)
    fs = S5FileSystem(client, identity)
    listing = await fs.list("home/big")
    assert len(listing) == 1105
    assert [e.name for e in listing if e.kind == "directory"] == dirs
    names = [e.name for e in listing]
    assert names == sorted(names, key=s5js_sort_key) and "file-0500.txt" in names
    for name, data in real.items():
        assert await fs.get(f"home/big/{name}") == data
        info = await fs.stat(f"home/big/{name}")
        assert info is not None and info.size == len(data) and not info.encrypted
    assert await fs.exists("home/big/sub-02")
    assert await fs.exists("home/big/file-0500.txt")
    assert not await fs.exists("home/big/nothing.txt")
    assert await fs.get("home/big/placeholder.txt") is None  # s5.js moved it out


async def test_sharded_directory_refuses_writes_and_stays_intact(
    client: S5PortalClient, identity: S5Identity
) -> None:
    real, _ = await make_sharded_directory(client, identity)
    big = write_key(identity, "home", "big")
    before = await stored_blob(client, big)
    fs = S5FileSystem(client, identity)
    with pytest.raises(ShardedDirectoryError) as caught:
        await fs.put("home/big/new.txt", b"new")
    assert caught.value.code == "SHARDED_DIRECTORY" and "home/big" in caught.value.message
    with pytest.raises(ShardedDirectoryError):
        await fs.delete("home/big/file-0003.txt")
    with pytest.raises(ShardedDirectoryError):
        await fs.put("home/big/brand-new-dir/x.txt", b"x")
    assert await stored_blob(client, big) == before
    assert await fs.get("home/big/file-0003.txt") == real["file-0003.txt"]
    assert await fs.get("home/big/new.txt") is None


async def test_unknown_sharding_is_an_error_not_an_empty_directory(
    client: S5PortalClient, identity: S5Identity
) -> None:
    plain = S5FileSystem(client, identity, encrypt_files=False, encrypt_directories=False)
    await plain.put("home/odd/a.txt", b"a")
    odd = s5js_dir_blob({}, {"sharding": {"type": "btree", "root": {"cid": b"\x1e" * 33}}})
    await replace_directory(client, write_key(identity, "home", "odd"), odd)
    with pytest.raises(InvalidDirectoryError):
        await plain.list("home/odd")
    missing = {"sharding": {"type": "hamt", "root": {"cid": b"\x1e" + bytes(32)}}}
    await replace_directory(client, write_key(identity, "home", "odd"), s5js_dir_blob({}, missing))
    with pytest.raises(StorageError):
        await plain.list("home/odd")


# --- finding 18: entries in s5.js's order (localeCompare) ---------------------------------

NAMES = [
    "readme.md", "README.md", "Readme.md", "_config", "-dash", "a-b", "a_b", "a.b", "ab",
    "aB", "Ab", "AB", "a b", "file10.txt", "file9.txt", "file_9.txt", "File9.txt", "é.txt",
    "e.txt", "E.txt", "É.txt", "ea.txt", "über", "uber", "Uber", "zebra", "Zebra", "~tilde",
    "$cash", "#hash", "(paren)", "0zero", "9nine", "été", "ete", "éte", "etÉ",
]  # fmt: skip
# Node 20 (ICU 78), en-US: NAMES.sort((a, b) => a.localeCompare(b))
LOCALE_ORDER = [
    "_config", "-dash", "(paren)", "#hash", "~tilde", "$cash", "0zero", "9nine", "a b", "a_b",
    "a-b", "a.b", "ab", "aB", "Ab", "AB", "e.txt", "E.txt", "é.txt", "É.txt", "ea.txt", "ete",
    "etÉ", "éte", "été", "file_9.txt", "file10.txt", "file9.txt", "File9.txt", "readme.md",
    "Readme.md", "README.md", "uber", "Uber", "über", "zebra", "Zebra",
]  # fmt: skip


def node_sort(names: list[str]) -> list[str] | None:
    """``names`` sorted by Node's ``localeCompare`` (``None`` without node)."""
    node = shutil.which("node")
    if node is None:
        return None
    script = (
        "const a = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "a.sort((x, y) => x.localeCompare(y)); process.stdout.write(JSON.stringify(a));"
    )
    done = subprocess.run(
        [node, "-e", script],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "LC_ALL": "en_US.UTF-8"},
    )
    result: list[str] = json.loads(done.stdout)
    return result


def test_dirv1_bytes_follow_s5js_order() -> None:
    ref = FileRef(hash=bytes(32), size=1)
    shuffled = random.Random(1).sample(NAMES, len(NAMES))
    directory = DirV1(files={name: ref for name in shuffled})
    expected = s5js_dir_blob({name: {3: bytes(32), 4: 1} for name in LOCALE_ORDER})
    assert directory.encode() == expected
    assert list(DirV1.decode(expected).files) == LOCALE_ORDER
    assert sorted(NAMES, key=s5js_sort_key) == LOCALE_ORDER


def test_order_matches_node_locale_compare() -> None:
    """Node is the oracle: the fixed vector, and 2,000 random names of the covered set."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH (the fixed vector above still checks the order)")
    assert node_sort(NAMES) == LOCALE_ORDER
    rng = random.Random(11)
    accented = [
        c
        for c in map(chr, range(0xC0, 0x250))
        if (d := unicodedata.normalize("NFD", c)) != c
        and d[0].isascii()
        and all(0x300 <= ord(m) <= 0x362 for m in d[1:])
    ]
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + accented
    names = list({"".join(rng.choices(alphabet, k=rng.randint(1, 6))) for _ in range(2000)})
    assert sorted(names, key=s5js_sort_key) == node_sort(names)


async def test_listing_follows_s5js_order(client: S5PortalClient, identity: S5Identity) -> None:
    compat = S5FileSystem(client, identity, s5js_compatible=True)
    for name in ("b.txt", "B.txt", "_a.txt", "a.txt"):
        await compat.put(f"home/order/{name}", b"x")
    assert [e.name for e in await compat.list("home/order")] == [
        "_a.txt",
        "a.txt",
        "b.txt",
        "B.txt",
    ]
    blob, _ = await stored_blob(client, write_key(identity, "home", "order"))
    assert list(DirV1.decode(blob).files) == ["_a.txt", "a.txt", "b.txt", "B.txt"]
