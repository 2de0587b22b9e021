"""Storage of the local S5 portal: blobs on disk by hash, accounts and registry in SQLite.

Layout of ``data_dir``::

    blobs/ab/ab12...ef        one file per blob, named by the hex BLAKE3 hash
    portal.sqlite3            accounts, tokens (hashed), registry entries

Blob writes are atomic (temporary file in the same directory, ``fsync``, ``os.replace``), so a
crash never leaves a half-written blob under its final name. One process owns a data
directory at a time.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path

from langchain_fabstir.s5.cid import blake3_hash
from langchain_fabstir.s5.registry import RegistryEntry

__all__ = ["BlobStore", "PortalDB"]


class BlobStore:
    """Content-addressed blob files under ``root/blobs``.

    >>> import tempfile, pathlib
    >>> store = BlobStore(pathlib.Path(tempfile.mkdtemp()))
    >>> h = store.put(b"abc")
    >>> store.get(h)
    b'abc'
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, hash32: bytes) -> Path:
        """Where the blob with this hash lives."""
        name = hash32.hex()
        return self.root / name[:2] / name

    def put(self, data: bytes) -> bytes:
        """Store ``data`` (atomically, idempotently); return its BLAKE3 hash."""
        hash32 = blake3_hash(data)
        path = self.path_for(hash32)
        if path.exists():
            return hash32
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return hash32

    def get(self, hash32: bytes) -> bytes | None:
        """The stored bytes (as found on disk, unverified), or ``None``."""
        try:
            return self.path_for(hash32).read_bytes()
        except FileNotFoundError:
            return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    pubkey BLOB PRIMARY KEY, label TEXT, email TEXT, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash BLOB PRIMARY KEY, pubkey BLOB NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS registry (
    pk BLOB PRIMARY KEY, revision TEXT NOT NULL, data BLOB NOT NULL, signature BLOB NOT NULL);
"""


class PortalDB:
    """Accounts, auth tokens (stored as BLAKE3 hashes) and registry entries in SQLite.

    Revisions are unsigned 64-bit, so they are stored as decimal text and compared in Python.
    Calls are synchronous and short; the portal makes them from its event loop thread, which
    also makes each read-compare-write of the registry atomic.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    # accounts
    def has_account(self, pubkey: bytes) -> bool:
        row = self._conn.execute("SELECT 1 FROM accounts WHERE pubkey=?", (pubkey,)).fetchone()
        return row is not None

    def add_account(self, pubkey: bytes, label: str | None, email: str | None) -> None:
        self._conn.execute(
            "INSERT INTO accounts(pubkey, label, email, created) VALUES (?,?,?,?)",
            (pubkey, label, email, int(time.time())),
        )

    def add_token(self, token: str, pubkey: bytes) -> None:
        self._conn.execute(
            "INSERT INTO tokens(token_hash, pubkey, created) VALUES (?,?,?)",
            (blake3_hash(token.encode("utf-8")), pubkey, int(time.time())),
        )

    def token_owner(self, token: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT pubkey FROM tokens WHERE token_hash=?", (blake3_hash(token.encode("utf-8")),)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # registry
    def registry_get(self, pk: bytes) -> RegistryEntry | None:
        row = self._conn.execute(
            "SELECT revision, data, signature FROM registry WHERE pk=?", (pk,)
        ).fetchone()
        if row is None:
            return None
        return RegistryEntry(pk, int(row[0]), bytes(row[1]), bytes(row[2]))

    def registry_put(self, entry: RegistryEntry) -> None:
        self._conn.execute(
            "INSERT INTO registry(pk, revision, data, signature) VALUES (?,?,?,?) "
            "ON CONFLICT(pk) DO UPDATE SET revision=excluded.revision, data=excluded.data, "
            "signature=excluded.signature",
            (entry.pk, str(entry.revision), entry.data, entry.signature),
        )
