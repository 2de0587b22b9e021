"""A Python user and an s5.js user with the same seed phrase see the same FS5 tree.

The node side (``tests/s5/s5js/interop.mjs``) runs the real s5.js (Enhanced s5.js, npm
``@julesl23/s5js``, the S5 client the Fabstir SDK uses): its seed-phrase identity, its portal
account registration and its FS5 directory code, against a real :class:`LocalPortal` on
127.0.0.1. Only the transport is the script's own: ``S5.create()`` needs a P2P WebSocket
peer and keeps the registry on the P2P network, which an HTTP portal does not offer, so the
script hands FS5 an object that uses the portal's HTTP upload, download and registry.

Python writes with ``s5js_compatible=True`` (plain files and new sub-directories: s5.js
encrypts only the root directory and cannot read our encrypted files or sub-directories).

s5.js is installed into ``tests/s5/s5js/node_modules`` on first use (``npm install``). Set
``FABSTIR_S5JS_PACKAGE`` to a tarball or directory of an s5.js build to install that instead
of the registry's copy (for registries that do not carry the package).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5FileSystem, S5Identity

from .conftest import make_client

NODE_DIR = Path(__file__).parent / "s5js"
PACKAGE = "@julesl23/s5js"
INSTALL_TIMEOUT = 180.0
NODE_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 60)


def _pinned_version() -> str:
    manifest = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    return str(manifest["dependencies"][PACKAGE])


def _installed_version() -> str | None:
    manifest = NODE_DIR / "node_modules" / PACKAGE / "package.json"
    if not manifest.is_file():
        return None
    return str(json.loads(manifest.read_text(encoding="utf-8")).get("version"))


@pytest.fixture(scope="session")
def s5js() -> Path:
    """The interop script, with s5.js installed next to it (installs on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run s5.js (not found on PATH)")
    pinned = _pinned_version()
    if _installed_version() != pinned:
        local = os.environ.get("FABSTIR_S5JS_PACKAGE")
        cmd = [npm, "install", "--no-audit", "--no-fund", "--no-package-lock"]
        if local:
            cmd += ["--no-save", local]
        try:
            done = subprocess.run(
                cmd,
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm install of {PACKAGE} took over {INSTALL_TIMEOUT:.0f}s")
        output = done.stdout + done.stderr
        if done.returncode != 0 and "E404" in output and not local:
            pytest.skip(
                f"{PACKAGE}@{pinned} is not on the configured npm registry (E404); set "
                "FABSTIR_S5JS_PACKAGE to a tarball of an s5.js build to run this test"
            )
        assert done.returncode == 0, f"npm install failed:\n{output[-4000:]}"
        assert _installed_version() == pinned, f"installed {_installed_version()}, not {pinned}"
    return NODE_DIR / "interop.mjs"


async def run_s5js(script: Path, portal_url: str, phrase: str, ops: list[dict[str, Any]]) -> Any:
    """Run the ops through s5.js with the seed phrase ``phrase``; return its results."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        portal_url,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=script.parent,
        env={**os.environ, "S5_SEED_PHRASE": phrase},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(ops).encode()), NODE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"s5.js did not finish within {NODE_TIMEOUT:.0f}s")
    assert proc.returncode == 0, f"s5.js failed:\n{err.decode(errors='replace')[-4000:]}"
    results = json.loads(out)
    assert isinstance(results, list) and len(results) == len(ops)
    return results


def listing(result: dict[str, Any]) -> list[tuple[str, str, int | None, str | None]]:
    return sorted((e["name"], e["type"], e["size"], e["mediaType"]) for e in result["entries"])


@pytest.fixture
def phrase() -> str:
    return S5Identity.generate()[1]


@pytest.fixture
async def plain_fs(portal: LocalPortal, phrase: str) -> AsyncIterator[S5FileSystem]:
    """Python's view of the tree, written the way s5.js can read it."""
    identity = S5Identity.from_phrase(phrase)
    async with make_client(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        yield S5FileSystem(client, identity, s5js_compatible=True)


async def test_python_writes_s5js_reads(
    s5js: Path, portal: LocalPortal, phrase: str, plain_fs: S5FileSystem
) -> None:
    conversation = {"id": "7", "messages": [{"role": "user", "content": "héllo"}]}
    await plain_fs.put(
        "home/notes/hello.txt", "grüße from python".encode(), media_type="text/plain"
    )
    await plain_fs.put(
        "home/sessions/0xabc/7/conversation.json",
        json.dumps(conversation).encode(),
        media_type="application/json",
    )
    await plain_fs.put(
        "home/notes/blob.bin", bytes(range(256)), media_type="application/octet-stream"
    )
    await plain_fs.put("archive/old.txt", b"archived", media_type="text/plain")

    results = await run_s5js(
        s5js,
        portal.url,
        phrase,
        [
            {"op": "list", "path": "home"},
            {"op": "list", "path": "home/notes"},
            {"op": "get", "path": "home/notes/hello.txt"},
            {"op": "get", "path": "home/sessions/0xabc/7/conversation.json"},
            {"op": "get", "path": "home/notes/blob.bin"},
            {"op": "get", "path": "archive/old.txt"},
            {"op": "get", "path": "home/notes/absent.txt"},
        ],
    )
    assert listing(results[0]) == [
        ("notes", "directory", None, None),
        ("sessions", "directory", None, None),
    ]
    assert listing(results[1]) == [
        ("blob.bin", "file", 256, "application/octet-stream"),
        ("hello.txt", "file", len("grüße from python".encode()), "text/plain"),
    ]
    assert results[2] == {"kind": "text", "text": "grüße from python"}
    assert results[3] == {"kind": "json", "json": conversation}
    assert base64.b64decode(results[4]["base64"]) == bytes(range(256))
    assert results[5] == {"kind": "text", "text": "archived"}
    assert results[6] == {"kind": "missing"}


async def test_s5js_writes_python_reads(
    s5js: Path, portal: LocalPortal, phrase: str, plain_fs: S5FileSystem
) -> None:
    await run_s5js(
        s5js,
        portal.url,
        phrase,
        [
            {"op": "put", "path": "home/js/note.txt", "text": "from node ✓"},
            {"op": "put", "path": "home/js/deep/er/raw.bin", "base64": "AAEC/w=="},
            {"op": "put", "path": "home/js/obj.cbor", "json": {"n": 1, "list": ["a", "b"]}},
        ],
    )
    assert [(e.name, e.kind) for e in await plain_fs.list("home")] == [("js", "directory")]
    assert [(e.name, e.kind, e.size, e.media_type) for e in await plain_fs.list("home/js")] == [
        ("deep", "directory", None, None),
        ("note.txt", "file", len("from node ✓".encode()), "text/plain"),
        ("obj.cbor", "file", len(cbor2.dumps({"n": 1, "list": ["a", "b"]})), "application/cbor"),
    ]
    assert await plain_fs.get("home/js/note.txt") == "from node ✓".encode()
    assert await plain_fs.get("home/js/deep/er/raw.bin") == b"\x00\x01\x02\xff"
    raw = await plain_fs.get("home/js/obj.cbor")
    assert raw is not None and cbor2.loads(raw) == {"n": 1, "list": ["a", "b"]}
    stat = await plain_fs.stat("home/js/note.txt")
    assert stat is not None and not stat.encrypted


async def test_both_write_the_same_directories(
    s5js: Path, portal: LocalPortal, phrase: str, plain_fs: S5FileSystem
) -> None:
    """Alternating writers: each one's update builds on the other's directory revisions."""
    await plain_fs.put("home/shared/a.txt", b"python 1", media_type="text/plain")
    await run_s5js(
        s5js,
        portal.url,
        phrase,
        [
            {"op": "put", "path": "home/shared/b.txt", "text": "node 1"},
            {"op": "put", "path": "home/shared/a.txt", "text": "node overwrote"},
        ],
    )
    await plain_fs.put("home/shared/c.txt", b"python 2", media_type="text/plain")
    assert await plain_fs.delete("home/shared/b.txt") is True
    results = await run_s5js(
        s5js,
        portal.url,
        phrase,
        [
            {"op": "list", "path": "home/shared"},
            {"op": "get", "path": "home/shared/a.txt"},
            {"op": "get", "path": "home/shared/c.txt"},
            {"op": "get", "path": "home/shared/b.txt"},
        ],
    )
    assert [e["name"] for e in results[0]["entries"]] == ["a.txt", "c.txt"]
    assert results[1] == {"kind": "text", "text": "node overwrote"}
    assert results[2] == {"kind": "text", "text": "python 2"}
    assert results[3] == {"kind": "missing"}
    assert await plain_fs.get("home/shared/a.txt") == b"node overwrote"


async def test_other_seed_phrase_sees_nothing(
    s5js: Path, portal: LocalPortal, phrase: str, plain_fs: S5FileSystem
) -> None:
    """The tree comes from the phrase: s5.js with another phrase sees only its own files."""
    await plain_fs.put("home/private.txt", b"mine", media_type="text/plain")
    other = S5Identity.generate()[1]
    results = await run_s5js(
        s5js,
        portal.url,
        other,
        [
            {"op": "put", "path": "home/theirs.txt", "text": "theirs"},
            {"op": "list", "path": "home"},
            {"op": "get", "path": "home/private.txt"},
        ],
    )
    assert listing(results[1]) == [("theirs.txt", "file", 6, "text/plain")]
    assert results[2] == {"kind": "missing"}
    assert [e.name for e in await plain_fs.list("home")] == ["private.txt"]


async def test_s5js_cannot_read_encrypted_defaults(
    s5js: Path, portal: LocalPortal, phrase: str
) -> None:
    """Documents the departure in ``s5/fs.py``: our default encrypted files hide from s5.js."""
    identity = S5Identity.from_phrase(phrase)
    async with make_client(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        fs = S5FileSystem(client, identity, encrypt_directories=False)  # files encrypted
        await fs.put("home/secret.txt", b"top secret", media_type="text/plain")
    results = await run_s5js(s5js, portal.url, phrase, [{"op": "get", "path": "home/secret.txt"}])
    assert results[0]["kind"] == "bytes"  # s5.js hands back the stored ciphertext as is
    stored = base64.b64decode(results[0]["base64"])
    assert stored[:2] == b"\x8d\x01" and b"top secret" not in stored
