"""Storage of the local S5 portal: blobs on disk by hash, accounts and registry in SQLite.

Layout of ``data_dir``::

    blobs/ab/ab12...ef        one file per blob, named by the hex BLAKE3 hash
    portal.sqlite3            accounts, tokens (hashed), registry entries

Blob writes are atomic (a ``.tmp-*`` file under ``blobs/``, ``fsync``, ``os.replace``), so a
crash never leaves a half-written blob under its final name; temporary files a crash leaves
behind are removed when the store opens. One process owns a data directory at a time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import blake3

from langchain_fabstir.s5.cid import blake3_hash
from langchain_fabstir.s5.registry import RegistryEntry

__all__ = ["BlobStore", "BlobWriter", "PortalDB"]

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"


class BlobWriter:
    """One blob being written: bytes go to a temporary file and into the hash as they come.

    :meth:`commit` makes it a blob (atomically, under its hash); :meth:`abort` (or a failed
    commit) removes the temporary file, so a refused or cut upload leaves nothing behind.
    Calls block on disk I/O: the portal runs them in a worker thread.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        fd, tmp = tempfile.mkstemp(dir=store.root, prefix=_TMP_PREFIX)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hasher = blake3.blake3()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._hasher.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> bytes:
        """Store the bytes written under their BLAKE3 hash (idempotent); return the hash."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            hash32 = self._hasher.digest()
            path = self._store.path_for(hash32)
            if path.exists():
                self._tmp.unlink(missing_ok=True)
                return hash32
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, path)
            return hash32
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the bytes written so far."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


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
        self.remove_orphans()

    def remove_orphans(self) -> int:
        """Delete ``.tmp-*`` files a crash left behind (call only while no upload runs)."""
        removed = 0
        for pattern in (f"{_TMP_PREFIX}*", f"*/{_TMP_PREFIX}*"):
            for orphan in self.root.glob(pattern):
                if orphan.is_file():
                    orphan.unlink(missing_ok=True)
                    removed += 1
        if removed:
            logger.info("removed %d unfinished upload(s) from %s", removed, self.root)
        return removed

    def path_for(self, hash32: bytes) -> Path:
        """Where the blob with this hash lives."""
        name = hash32.hex()
        return self.root / name[:2] / name

    def writer(self) -> BlobWriter:
        """A :class:`BlobWriter` for a blob whose bytes arrive in pieces."""
        return BlobWriter(self)

    def put(self, data: bytes) -> bytes:
        """Store ``data`` (atomically, idempotently); return its BLAKE3 hash."""
        if self.path_for(blake3_hash(data)).exists():
            return blake3_hash(data)
        writer = self.writer()
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

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

    A token is valid until revoked (:meth:`revoke_token`, :meth:`revoke_tokens`) or, with
    ``token_ttl`` (seconds), until it is that old; an expired token is deleted when seen.
    """

    def __init__(self, path: Path, *, token_ttl: float | None = None) -> None:
        if token_ttl is not None and token_ttl <= 0:
            raise ValueError("token_ttl must be positive (or None: tokens do not expire)")
        self.token_ttl = token_ttl
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
        """The account key of a valid token, or ``None`` (unknown, revoked or expired)."""
        token_hash = blake3_hash(token.encode("utf-8"))
        row = self._conn.execute(
            "SELECT pubkey, created FROM tokens WHERE token_hash=?", (token_hash,)
        ).fetchone()
        if row is None:
            return None
        if self.token_ttl is not None and time.time() - int(row[1]) >= self.token_ttl:
            self._conn.execute("DELETE FROM tokens WHERE token_hash=?", (token_hash,))
            return None
        return bytes(row[0])

    def revoke_token(self, token: str) -> bool:
        """Make ``token`` invalid; ``True`` if it existed."""
        cursor = self._conn.execute(
            "DELETE FROM tokens WHERE token_hash=?", (blake3_hash(token.encode("utf-8")),)
        )
        return cursor.rowcount > 0

    def revoke_tokens(self, pubkey: bytes) -> int:
        """Make every token of the account ``pubkey`` invalid; how many there were."""
        cursor = self._conn.execute("DELETE FROM tokens WHERE pubkey=?", (pubkey,))
        return cursor.rowcount

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
