"""An FS5-compatible, end-to-end encrypted file tree on an S5 portal.

Only paths under ``home/`` and ``archive/`` exist. Every directory is one registry entry,
signed with that directory's write key, whose data is ``0x1e || blake3(directory blob)``;
a change uploads a new DirV1 blob and sets revision+1, reloading and retrying (tenacity) when
another writer got there first (:class:`~langchain_fabstir.errors.RevisionConflictError`).

Details and examples: :class:`S5FileSystem`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir.errors import InvalidPathError, RevisionConflictError, StorageError
from langchain_fabstir.s5.cid import CID, MULTIHASH_BLAKE3, MULTIHASH_BLAKE3_DEFAULT
from langchain_fabstir.s5.client import S5PortalClient
from langchain_fabstir.s5.collation import s5js_sort_key
from langchain_fabstir.s5.crypto import (
    ENCRYPTION_HEADER,
    decrypt_mutable,
    derive_hash_int,
    derive_hash_string,
    encrypt_mutable,
)
from langchain_fabstir.s5.dirv1 import LINK_ED25519, DirRef, DirV1, FileRef
from langchain_fabstir.s5.hamt import ShardedDirectoryError, read_hamt, sharding_root
from langchain_fabstir.s5.registry import Ed25519KeyPair, RegistryEntry
from langchain_fabstir.s5.seed import S5Identity

__all__ = ["DirEntry", "FileInfo", "InvalidPathError", "S5FileSystem", "ShardedDirectoryError"]

T = TypeVar("T")
ROOTS = ("home", "archive")
ENC_MARK = "fabstir"
ENC_ALGORITHM = "xchacha20-poly1305"
_FILE_KEY_TWEAK = "fabstir/file-content/v1"


@dataclass(frozen=True)
class FileInfo:
    """What :meth:`S5FileSystem.stat` and :meth:`~S5FileSystem.put` report about a file."""

    path: str
    size: int
    media_type: str | None
    timestamp: float | None
    encrypted: bool
    cid: CID


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`S5FileSystem.list`."""

    name: str
    kind: Literal["file", "directory"]
    size: int | None = None
    media_type: str | None = None
    timestamp: float | None = None


@dataclass
class _Loaded:
    """A directory as stored: its contents (HAMT entries merged in), registry revision,
    whether its blob was encrypted (``None``: no blob yet) and whether s5.js sharded it."""

    directory: DirV1
    revision: int
    encrypted: bool | None
    sharded: bool


@dataclass(frozen=True)
class _Keys:
    path: tuple[str, ...]
    write_key: bytes
    key_pair: Ed25519KeyPair
    enc_key: bytes


def split_path(path: str, *, allow_root: bool = True) -> tuple[str, ...]:
    """Normalise ``path`` into segments; raise :class:`InvalidPathError` if not allowed."""
    if not isinstance(path, str):
        raise InvalidPathError("a path must be a string")
    parts = tuple(p for p in path.strip().split("/") if p)
    if not parts or parts[0] not in ROOTS:
        raise InvalidPathError(f"path {path!r} must start with home/ or archive/")
    for part in parts:
        if part in (".", "..") or "\x00" in part or len(part.encode("utf-8")) > 255:
            raise InvalidPathError(f"path {path!r} has an invalid segment {part[:40]!r}")
    if not allow_root and len(parts) < 2:
        raise InvalidPathError(f"path {path!r} names a top-level directory, not a file")
    return parts


def _plain_size(ref: FileRef) -> int:
    mark = (ref.extra or {}).get(ENC_MARK)
    if isinstance(mark, dict) and isinstance(mark.get("size"), int):
        return int(mark["size"])
    return ref.size


def _is_encrypted(ref: FileRef) -> bool:
    mark = (ref.extra or {}).get(ENC_MARK)
    return isinstance(mark, dict) and mark.get("enc") == ENC_ALGORITHM


def _timestamp(seconds: int | None, nanos: int | None) -> float | None:
    return None if seconds is None else seconds + (nanos or 0) / 1e9


class S5FileSystem:
    """FS5 tree of one identity on one portal, end-to-end encrypted.

    Keys follow from the identity and the path alone (``dhi``/``dhs`` as in S5.md)::

        root write key   fsk = dhi(fsRootKey, 1)      root encryption key = dhi(fsk, 1)
        child write key  dhs(parent write key, name)  child encryption key = dhi(write key, 0x5e)
        file content key dhs(fsk, "fabstir/file-content/v1")    (one key for every file)

    so a read of ``home/a/b/f`` costs one registry lookup and two downloads, at any depth.

    Where this departs from s5.js (the Fabstir fork, DirV1):

    * File contents are encrypted by default (S5 mutable format, key derived from the seed as
      above, random nonce per write); the FileRef's ``hash``/``size`` describe the stored
      ciphertext and key 22 holds ``{"fabstir": {"enc": "xchacha20-poly1305", "size": n}}``.
      s5.js puts per-file keys inside the directory, which hides nothing.
    * New sub-directory blobs are encrypted too (s5.js encrypts only the root), so file names and
      sizes stay private.
    * A linked directory without a registry entry reads as empty (s5.js writes an empty entry
      when it creates a directory; we save those round trips).
    * :meth:`delete` only unlinks; blobs stay on the portal (encrypted, unreachable). Deleting a
      directory also empties every directory below it, because keys derive from paths and a
      re-created directory would otherwise show its old contents.

    s5.js compatibility:

    * ``S5FileSystem(client, identity, s5js_compatible=True)`` is the one switch for a tree that
      s5.js (the Fabstir SDK) reads and writes too: files and new sub-directories are written in
      the clear, as s5.js writes them (the root stays encrypted, as in s5.js). Use it only for
      data meant to be shared with s5.js; the portal then sees file names, sizes and contents.
    * Whatever the settings, a directory keeps the encryption state it has: a write never
      encrypts a directory stored in the clear (s5.js, which has no key for encrypted
      sub-directories, keeps reading its own files) and never decrypts an encrypted one. The
      ``encrypt_directories`` setting applies to directories this client creates.
    * Directory entries are written in s5.js's order (``localeCompare``; see
      :func:`~langchain_fabstir.s5.collation.s5js_sort_key`), so the same directory serializes to
      the same bytes in both clients.
    * Directories that s5.js sharded into a hash tree (HAMT, at 1,000 entries) are read
      (:mod:`~langchain_fabstir.s5.hamt`); changing one raises :class:`ShardedDirectoryError`
      (code ``SHARDED_DIRECTORY``) and leaves it untouched, until writing them is supported.

    Example::

        fs = S5FileSystem(client, identity)
        await fs.put("home/notes/today.txt", b"hi", media_type="text/plain")
        assert await fs.get("home/notes/today.txt") == b"hi"
        [entry.name for entry in await fs.list("home/notes")]     # ['today.txt']

    Args:
        client: an authenticated :class:`S5PortalClient`.
        identity: the :class:`S5Identity` whose seed derives every key.
        s5js_compatible: write what s5.js reads (plain files and new sub-directories); the
            defaults of the two options below become ``False``.
        encrypt_files: default for :meth:`put` (``True`` unless ``s5js_compatible``: the
            portal sees only ciphertext).
        encrypt_directories: encrypt the blobs of sub-directories this client creates
            (``True`` unless ``s5js_compatible``). Existing directories keep their state;
            the root is always encrypted.
        max_attempts: attempts of one directory update under revision conflicts.
    """

    def __init__(
        self,
        client: S5PortalClient,
        identity: S5Identity,
        *,
        s5js_compatible: bool = False,
        encrypt_files: bool | None = None,
        encrypt_directories: bool | None = None,
        max_attempts: int = 12,
    ) -> None:
        if s5js_compatible and (encrypt_files or encrypt_directories):
            raise ValueError(
                "s5js_compatible=True writes plain files and directories; do not combine it "
                "with encrypt_files=True or encrypt_directories=True"
            )
        self.client = client
        self.s5js_compatible = s5js_compatible
        self.encrypt_files = not s5js_compatible if encrypt_files is None else encrypt_files
        self.encrypt_directories = (
            not s5js_compatible if encrypt_directories is None else encrypt_directories
        )
        self.max_attempts = max_attempts
        fsk = derive_hash_int(identity.fs_root_key, 1)
        self._root = _Keys(
            (),
            fsk,
            Ed25519KeyPair.from_seed(fsk),
            derive_hash_int(fsk, 1),
        )
        self._file_key = derive_hash_string(fsk, _FILE_KEY_TWEAK)
        self._keys_cache: dict[tuple[str, ...], _Keys] = {(): self._root}
        self._linked: set[tuple[str, ...]] = set()
        self._locks: weakref.WeakValueDictionary[tuple[str, ...], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def __repr__(self) -> str:
        return f"S5FileSystem({self.client.portal_url!r})"

    # --- keys and directory blobs -------------------------------------------------

    def _keys(self, parts: tuple[str, ...]) -> _Keys:
        cached = self._keys_cache.get(parts)
        if cached is not None:
            return cached
        parent = self._keys(parts[:-1])
        write_key = derive_hash_string(parent.write_key, parts[-1])
        keys = _Keys(
            parts,
            write_key,
            Ed25519KeyPair.from_seed(write_key),
            derive_hash_int(write_key, 0x5E),
        )
        if len(self._keys_cache) < 4096:
            self._keys_cache[parts] = keys
        return keys

    def directory_public_key(self, path: str) -> bytes:
        """The 33-byte registry key of the directory at ``path`` (``0xed || pk``)."""
        return self._keys(split_path(path)).key_pair.registry_key

    async def _load(self, keys: _Keys) -> tuple[DirV1, int]:
        """The directory at ``keys`` (sharded entries merged in) and its registry revision."""
        loaded = await self._load_state(keys)
        return loaded.directory, loaded.revision

    async def _load_state(self, keys: _Keys) -> _Loaded:
        entry = await self.client.registry_get(keys.key_pair.registry_key)
        if entry is None:
            return _Loaded(DirV1(), 0, None, False)
        data = entry.data
        if len(data) >= 33 and data[0] in (MULTIHASH_BLAKE3, MULTIHASH_BLAKE3_DEFAULT):
            hash32 = data[1:33]
        elif len(data) >= 35 and data[:2] == b"\x5b\x82":
            hash32 = data[3:35]
        else:
            raise StorageError(
                f"directory entry of /{'/'.join(keys.path)} does not point at a blob",
                host_url=self.client.portal_url,
            )
        blob = await self.client.download_hash(hash32)
        encrypted = blob[:2] == ENCRYPTION_HEADER
        if encrypted:
            blob = decrypt_mutable(blob, keys.enc_key)
        directory = DirV1.decode(blob)
        root = sharding_root(directory.header)
        if root is None:
            return _Loaded(directory, entry.revision, encrypted, "sharding" in directory.header)
        hamt = await read_hamt(self.client.download_hash, root)
        directory.files.update(hamt.files)
        for name, link in hamt.dirs.items():
            if link is None:  # s5.js keeps no key in HAMT links: it derives from the path
                link = bytes([LINK_ED25519]) + self._keys((*keys.path, name)).key_pair.public_key
            directory.dirs[name] = DirRef(link)
        return _Loaded(directory, entry.revision, encrypted, True)

    async def _store(
        self, keys: _Keys, directory: DirV1, revision: int, encrypted: bool | None = None
    ) -> None:
        """Upload ``directory`` and point its registry entry at it (revision ``revision``).

        ``encrypted`` is the state of the stored blob being replaced: it is kept. A new
        directory is encrypted when it is the root or ``encrypt_directories`` is set.
        """
        blob = directory.encode()
        if encrypted is None:
            encrypted = self.encrypt_directories or not keys.path
        if encrypted:
            blob = encrypt_mutable(blob, keys.enc_key)
        cid = await self.client.upload(blob)
        entry = RegistryEntry.create(keys.key_pair, cid.multihash, revision)
        await self.client.registry_set(entry)

    async def _update(self, keys: _Keys, mutate: Callable[[DirV1], tuple[bool, T]]) -> T:
        """Load, ``mutate`` (returns ``(changed, result)``), store at revision+1; retry races."""
        lock = self._locks.get(keys.path)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[keys.path] = lock
        async with lock:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.max_attempts),
                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                retry=retry_if_exception_type(RevisionConflictError),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    loaded = await self._load_state(keys)
                    changed, result = mutate(loaded.directory)
                    if changed and loaded.sharded:
                        raise ShardedDirectoryError(
                            f"/{'/'.join(keys.path)} is a sharded directory (s5.js stores "
                            "directories of 1,000 entries or more as a hash tree); this "
                            "client reads it but cannot change it yet: write with s5.js, "
                            "or into another directory",
                            host_url=self.client.portal_url,
                            details={"path": "/".join(keys.path)},
                        )
                    if changed:
                        await self._store(
                            keys, loaded.directory, loaded.revision + 1, loaded.encrypted
                        )
                    return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ensure_dir(self, parts: tuple[str, ...]) -> _Keys:
        """Link every directory of ``parts`` into its parent (cached once done)."""
        for depth in range(1, len(parts) + 1):
            sub = parts[:depth]
            if sub in self._linked:
                continue
            child = self._keys(sub)
            link = bytes([LINK_ED25519]) + child.key_pair.public_key
            name = sub[-1]

            where = "/".join(sub)

            def link_child(
                d: DirV1, name: str = name, link: bytes = link, where: str = where
            ) -> tuple[bool, None]:
                if name in d.files:
                    raise InvalidPathError(f"/{where} is a file, not a directory")
                if name in d.dirs and d.dirs[name].link == link:
                    return False, None
                now = time.time_ns()
                d.dirs[name] = DirRef(link, now // 10**9, now % 10**9)
                return True, None

            await self._update(self._keys(sub[:-1]), link_child)
            self._linked.add(sub)
        return self._keys(parts)

    # --- file contents ------------------------------------------------------------

    async def _store_content(self, data: bytes, media_type: str | None, encrypt: bool) -> FileRef:
        """Upload ``data`` (encrypted when asked) and describe it as a FileRef."""
        blob = encrypt_mutable(data, self._file_key) if encrypt else data
        cid = await self.client.upload(blob)
        now = time.time_ns()
        extra: dict[str, Any] | None = (
            {ENC_MARK: {"enc": ENC_ALGORITHM, "size": len(data)}} if encrypt else None
        )
        return FileRef(cid.hash, cid.size, media_type, now // 10**9, now % 10**9, extra)

    async def _read_content(self, ref: FileRef) -> bytes:
        """Download, verify and (if marked encrypted) decrypt the blob of ``ref``."""
        blob = await self.client.download(CID(ref.hash, ref.size))
        if _is_encrypted(ref):
            return decrypt_mutable(blob, self._file_key)
        return blob

    # --- public API ---------------------------------------------------------------

    async def put(
        self,
        path: str,
        data: bytes,
        *,
        media_type: str | None = None,
        encrypt: bool | None = None,
    ) -> FileInfo:
        """Write ``data`` at ``path`` (replacing any file there); return what was stored."""
        parts = split_path(path, allow_root=False)
        keys = await self._ensure_dir(parts[:-1])
        do_encrypt = self.encrypt_files if encrypt is None else encrypt
        ref = await self._store_content(bytes(data), media_type, do_encrypt)
        name = parts[-1]

        def add(d: DirV1) -> tuple[bool, None]:
            if name in d.dirs:
                raise InvalidPathError(f"{path!r} is a directory")
            d.files[name] = ref
            return True, None

        await self._update(keys, add)
        return FileInfo(
            "/".join(parts),
            len(data),
            media_type,
            _timestamp(ref.timestamp, ref.timestamp_nanos),
            do_encrypt,
            CID(ref.hash, ref.size),
        )

    async def stat(self, path: str) -> FileInfo | None:
        """Metadata of the file at ``path``, or ``None``."""
        parts = split_path(path, allow_root=False)
        directory, _ = await self._load(self._keys(parts[:-1]))
        ref = directory.files.get(parts[-1])
        if ref is None:
            return None
        return FileInfo(
            "/".join(parts),
            _plain_size(ref),
            ref.media_type,
            _timestamp(ref.timestamp, ref.timestamp_nanos),
            _is_encrypted(ref),
            CID(ref.hash, ref.size),
        )

    async def get(self, path: str) -> bytes | None:
        """The contents of the file at ``path`` (decrypted and verified), or ``None``."""
        parts = split_path(path, allow_root=False)
        directory, _ = await self._load(self._keys(parts[:-1]))
        ref = directory.files.get(parts[-1])
        if ref is None:
            return None
        return await self._read_content(ref)

    async def list(self, dir_path: str) -> list[DirEntry]:
        """Entries of the directory at ``dir_path`` (empty if absent), sorted by name as s5.js
        sorts them."""
        directory, _ = await self._load(self._keys(split_path(dir_path)))
        entries = [
            DirEntry(name, "directory", timestamp=_timestamp(ref.timestamp, ref.timestamp_nanos))
            for name, ref in directory.dirs.items()
        ] + [
            DirEntry(
                name,
                "file",
                _plain_size(ref),
                ref.media_type,
                _timestamp(ref.timestamp, ref.timestamp_nanos),
            )
            for name, ref in directory.files.items()
        ]
        return sorted(entries, key=lambda e: s5js_sort_key(e.name))

    async def delete(self, path: str, *, recursive: bool = False) -> bool:
        """Remove the file or directory at ``path``; ``False`` if nothing was there.

        A non-empty directory needs ``recursive=True`` (its whole subtree is emptied).
        """
        parts = split_path(path, allow_root=False)
        parent = self._keys(parts[:-1])
        directory, _ = await self._load(parent)
        name = parts[-1]
        if name in directory.dirs:
            await self._clear_tree(parts, recursive)
        elif name not in directory.files:
            return False

        def remove(d: DirV1) -> tuple[bool, bool]:
            found = d.files.pop(name, None) is not None
            found = d.dirs.pop(name, None) is not None or found
            return found, found

        removed = await self._update(parent, remove)
        self._linked = {p for p in self._linked if p[: len(parts)] != parts}
        return removed

    async def _clear_tree(self, parts: tuple[str, ...], recursive: bool) -> None:
        keys = self._keys(parts)
        directory, _ = await self._load(keys)
        if not directory.dirs and not directory.files:
            return
        if not recursive:
            raise InvalidPathError(f"directory /{'/'.join(parts)} is not empty")
        for name in list(directory.dirs):
            await self._clear_tree((*parts, name), True)

        def clear(d: DirV1) -> tuple[bool, None]:
            changed = bool(d.dirs or d.files)
            d.dirs.clear()
            d.files.clear()
            return changed, None

        await self._update(keys, clear)

    async def exists(self, path: str) -> bool:
        """True when ``path`` names a file or a linked directory."""
        parts = split_path(path)
        if len(parts) == 1:
            return True
        directory, _ = await self._load(self._keys(parts[:-1]))
        return parts[-1] in directory.files or parts[-1] in directory.dirs
