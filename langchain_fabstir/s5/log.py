"""An append-only log of small records on :class:`~langchain_fabstir.s5.fs.S5FileSystem`.

Made for chat histories and checkpoints: appending record N+1 never rewrites records 1..N.

Details and examples: :class:`S5AppendLog`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_fabstir.s5.dirv1 import DirV1, FileRef
from langchain_fabstir.s5.fs import S5FileSystem, _is_encrypted, _timestamp, split_path

__all__ = ["LogRecord", "S5AppendLog"]


@dataclass(frozen=True)
class LogRecord:
    """One record of an :class:`S5AppendLog`."""

    seq: int
    data: bytes
    media_type: str | None
    timestamp: float | None


def _chunk_name(chunk: int) -> str:
    return f"c{chunk:08d}"


def _record_name(seq: int) -> str:
    return f"{seq:012d}"


def _chunk_index(name: str) -> int | None:
    return int(name[1:]) if name.startswith("c") and name[1:].isdigit() else None


def _record_seq(name: str) -> int | None:
    return int(name) if name.isdigit() else None


class S5AppendLog:
    """Append-only, chunked record log in the directory ``dir_path``.

    Layout under the log's directory ``D`` (``chunk_size`` = C, default 256)::

        D/c00000000/000000000000     record 0      (each record is its own encrypted blob)
        D/c00000000/000000000001     record 1
        ...
        D/c00000001/000000000256     record C      (a new chunk directory every C records)

    Why chunks: a DirV1 blob is rewritten whole on every change, so one flat directory with
    10,000 records would re-upload a ~600 KB listing per append (O(n) per append, O(n^2) in
    total). With chunks an append rewrites only the tail chunk (at most C entries), and the log
    directory itself changes once per C appends (it lists n/C chunks). Chunk directories are
    registry-linked, so their updates never touch ``D`` or anything above it. Reading the whole
    log costs one listing, n/C chunk listings and n record downloads, run concurrently.

    Appends are safe with several writers: each one is a compare-and-swap on the tail chunk's
    registry entry, retried on conflict; sequence numbers are assigned inside the swap, so two
    writers never take the same number. Encrypted records (the default) carry a random nonce,
    so a record whose write landed but whose reply was lost is recognised on retry by its hash
    and not appended twice.

    Example::

        log = S5AppendLog(fs, "home/chats/session-1/messages")
        seq = await log.append(b'{"role": "user", "content": "hi"}')
        records = await log.read()           # [LogRecord(seq=0, data=b'{...}', ...)]
        last_ten = await log.tail(10)

    Args:
        fs: the file system to write into.
        dir_path: the log's directory, under ``home/`` or ``archive/``.
        chunk_size: records per chunk directory (fixed for the life of the log).
        read_concurrency: parallel downloads while reading.
    """

    def __init__(
        self,
        fs: S5FileSystem,
        dir_path: str,
        *,
        chunk_size: int = 256,
        read_concurrency: int = 16,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.fs = fs
        self.parts = split_path(dir_path)
        self.path = "/".join(self.parts)
        self.chunk_size = chunk_size
        self._sem = asyncio.Semaphore(max(1, read_concurrency))
        self._tail_chunk: int | None = None

    def __repr__(self) -> str:
        return f"S5AppendLog({self.path!r}, chunk_size={self.chunk_size})"

    async def _chunks(self) -> list[int]:
        directory, _ = await self.fs._load(self.fs._keys(self.parts))
        return sorted(i for i in map(_chunk_index, directory.dirs) if i is not None)

    async def _load_chunk(self, chunk: int) -> DirV1:
        async with self._sem:
            directory, _ = await self.fs._load(self.fs._keys((*self.parts, _chunk_name(chunk))))
        return directory

    async def append(self, data: bytes, *, media_type: str | None = "application/json") -> int:
        """Append one record; return its sequence number (0-based)."""
        return (await self.extend([data], media_type=media_type))[0]

    async def extend(
        self, items: Sequence[bytes], *, media_type: str | None = "application/json"
    ) -> list[int]:
        """Append several records in order (one directory update per chunk touched)."""
        if not items:
            return []
        encrypt = self.fs.encrypt_files
        refs = await asyncio.gather(
            *(self.fs._store_content(bytes(item), media_type, encrypt) for item in items)
        )
        seqs: list[int | None] = [None] * len(refs)
        if self._tail_chunk is None:
            chunks = await self._chunks()
            self._tail_chunk = chunks[-1] if chunks else 0
        chunk = self._tail_chunk
        while any(s is None for s in seqs):
            pending = [(i, refs[i]) for i, s in enumerate(seqs) if s is None]
            keys = await self.fs._ensure_dir((*self.parts, _chunk_name(chunk)))
            placer = _Placer(chunk, self.chunk_size, pending, dedupe=encrypt)
            placed = await self.fs._update(keys, placer)
            for index, seq in placed:
                seqs[index] = seq
            if any(s is None for s in seqs):
                chunk += 1
        self._tail_chunk = chunk
        return [s for s in seqs if s is not None]

    async def read(self, start: int = 0, *, limit: int | None = None) -> list[LogRecord]:
        """Records with ``seq >= start`` in order (at most ``limit`` of them)."""
        first = max(0, start) // self.chunk_size
        chunks = [c for c in await self._chunks() if c >= first]
        listings = await asyncio.gather(*(self._load_chunk(c) for c in chunks))
        refs: list[tuple[int, FileRef]] = []
        for listing in listings:
            for name, ref in listing.files.items():
                seq = _record_seq(name)
                if seq is not None and seq >= start:
                    refs.append((seq, ref))
        refs.sort(key=lambda item: item[0])
        if limit is not None:
            refs = refs[: max(0, limit)]

        async def fetch(seq: int, ref: FileRef) -> LogRecord:
            async with self._sem:
                data = await self.fs._read_content(ref)
            return LogRecord(
                seq, data, ref.media_type, _timestamp(ref.timestamp, ref.timestamp_nanos)
            )

        return list(await asyncio.gather(*(fetch(seq, ref) for seq, ref in refs)))

    async def count(self) -> int:
        """Number of records (one past the highest sequence number)."""
        chunks = await self._chunks()
        for chunk in reversed(chunks):
            seqs = [
                s for s in map(_record_seq, (await self._load_chunk(chunk)).files) if s is not None
            ]
            if seqs:
                return max(seqs) + 1
        return 0

    async def tail(self, n: int) -> list[LogRecord]:
        """The last ``n`` records."""
        total = await self.count()
        return await self.read(max(0, total - n)) if n > 0 else []

    async def clear(self) -> None:
        """Delete every record (the log can be appended to again afterwards)."""
        await self.fs.delete(self.path, recursive=True)
        self._tail_chunk = None


class _Placer:
    """Directory mutation of :meth:`S5AppendLog.extend`: re-runnable on every retry."""

    def __init__(
        self, chunk: int, size: int, pending: list[tuple[int, FileRef]], dedupe: bool
    ) -> None:
        self.chunk = chunk
        self.size = size
        self.pending = pending
        self.dedupe = dedupe

    def __call__(self, directory: DirV1) -> tuple[bool, list[tuple[int, int]]]:
        seqs = [s for s in map(_record_seq, directory.files) if s is not None]
        next_seq = max(seqs) + 1 if seqs else self.chunk * self.size
        limit = (self.chunk + 1) * self.size
        by_hash = (
            {ref.hash: name for name, ref in directory.files.items() if _is_encrypted(ref)}
            if self.dedupe
            else {}
        )
        placed: list[tuple[int, int]] = []
        changed = False
        for index, ref in self.pending:
            landed = by_hash.get(ref.hash)
            if landed is not None and _record_seq(landed) is not None:
                placed.append((index, int(landed)))
                continue
            if next_seq >= limit:
                continue  # the chunk is full; later items may still be found landed
            directory.files[_record_name(next_seq)] = ref
            placed.append((index, next_seq))
            next_seq += 1
            changed = True
        return changed, placed
