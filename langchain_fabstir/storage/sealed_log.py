"""An append-only S5 record log whose appends cost O(1) and whose reads take a few blobs.

Layout (all blobs encrypted with a key derived from the log's path; see :class:`SealedLog`)::

    registry entry (key derived from the path) --> head blob (CID)
    head = {epoch, count, segments: [(cid, first, count), ...], tail: [record, ...],
            recent write ids}
    segment blob = {first, records: [record, ...]}     (immutable, "sealed")

* **Append**: read the registry entry (and the head, unless it is the one we hold), add
  the records to the tail, upload the new head, then swap the registry entry to it with
  ``revision + 1``. The portal refuses a stale revision, so two writers never lose each
  other's records (the loser reloads and retries, with tenacity). The head holds at most
  ``seal_records`` records / ``seal_bytes`` bytes of tail plus one small line per segment,
  so the 10,000th append uploads about as much as the 10th.
* **Compaction**: when the tail fills, its records are *sealed* into one segment blob and
  the head keeps only the segment's CID. Sealed segments are then *merged* as the log grows:
  ``merge_fanout`` adjacent segments of one tier (by record count) become one segment of
  a higher tier (the same blob format, so any reader reads it), up to
  ``max_segment_bytes``. Reading ``n`` records therefore downloads the head and a few
  segments per tier (run concurrently with a bound; segments never change, so they are
  cached by hash), not ``n`` blobs; each record is rewritten once per tier, and an append
  merges at most one group more than it seals (a log written before merging existed is
  compacted a group per append).
* **Crash safety**: new blobs are uploaded first; the registry swap is the only step that
  publishes them, and it is atomic. A process killed at any point, in the middle of a merge
  too, leaves the previous head (or the new one), never a torn log. Merged-away and
  orphaned blobs stay on the portal, harmless.
* **Lost replies**: every append carries a random write id, and the head remembers the last
  few; an append whose swap landed but whose reply was lost finds its id on retry and is
  not applied twice.
* **Clear** writes an empty head with a new random ``epoch``: readers that cache folded
  state (:class:`~langchain_fabstir.storage.folded_logs.FoldedLogs`) notice the epoch change.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir._json import loads_cbor_untrusted
from langchain_fabstir.errors import IntegrityError, RevisionConflictError, StorageError
from langchain_fabstir.s5 import CID, InvalidCIDError, RegistryEntry, S5FileSystem, blake3_hash
from langchain_fabstir.s5.crypto import decrypt_mutable, derive_hash_string, encrypt_mutable
from langchain_fabstir.s5.registry import Ed25519KeyPair

__all__ = ["LogSnapshot", "SealedLog"]

_VERSION = 1
_RECENT_WRITES = 32
_MAX_YIELDS = 4


class _YieldTurn(Exception):
    """Raised inside an append attempt to step aside for a writer that lost a swap."""


@dataclass(frozen=True)
class LogSnapshot:
    """What :meth:`SealedLog.read` returns: ``records`` are seqs ``start .. count - 1``."""

    epoch: bytes
    count: int
    start: int
    records: list[bytes]


@dataclass(frozen=True)
class _Segment:
    hash: bytes
    size: int
    first: int
    count: int


@dataclass
class _Head:
    epoch: bytes = b""
    count: int = 0
    segments: list[_Segment] = field(default_factory=list)
    tail: list[bytes] = field(default_factory=list)
    writes: list[tuple[bytes, int, int]] = field(default_factory=list)

    @property
    def tail_first(self) -> int:
        return self.count - len(self.tail)

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "v": _VERSION,
                "e": self.epoch,
                "n": self.count,
                "s": [[s.hash, s.size, s.first, s.count] for s in self.segments],
                "t": self.tail,
                "w": [list(w) for w in self.writes],
            }
        )

    @classmethod
    def decode(cls, raw: bytes, where: str) -> _Head:
        try:
            obj = loads_cbor_untrusted(raw)
            if obj["v"] != _VERSION:
                raise ValueError(f"unknown log version {obj['v']!r}")
            head = cls(
                epoch=_typed(obj["e"], bytes),
                count=_typed(obj["n"], int),
                segments=[_Segment(_typed(h, bytes), *map(_int, r)) for h, *r in obj["s"]],
                tail=[_typed(r, bytes) for r in obj["t"]],
                writes=[(_typed(w, bytes), _int(a), _int(b)) for w, a, b in obj["w"]],
            )
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"log head of {where} is malformed: {exc}") from exc
        expected = 0
        for seg in head.segments:
            if seg.first != expected or seg.count < 1 or len(seg.hash) != 32:
                raise IntegrityError(f"log head of {where} has inconsistent segments")
            expected += seg.count
        if expected != head.tail_first:
            raise IntegrityError(f"log head of {where} does not add up")
        return head


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    value = _typed(value, int)
    if value < 0:
        raise ValueError("negative count")
    return int(value)


class SealedLog:
    """Append-only log of byte records at ``path`` of ``fs`` (see the module docstring).

    Use it only on the loop that owns ``fs`` (the background loop, via
    :class:`~langchain_fabstir.storage.access.S5Access`).

    Args:
        fs: the file system whose identity derives the log's keys.
        path: a path under ``home/`` or ``archive/``; only used to derive keys (the log
            is not listed in any directory).
        write_key: the FS5 write key of ``path`` (``S5Access.write_key``).
        seal_records: seal the tail into a segment once it holds this many records.
        seal_bytes: ... or this many bytes.
        max_attempts: compare-and-swap attempts of one append under contention.
        read_concurrency: parallel segment downloads.
        cache_bytes: budget of the in-memory cache of (immutable) segments.
        merge_fanout: merge this many adjacent segments of one tier into one (tier ``t``:
            segments of ``merge_fanout ** t`` to ``merge_fanout ** (t + 1) - 1`` records);
            ``0`` or ``1``: never merge.
        max_segment_bytes: segments whose blobs add up to more are not merged.
    """

    def __init__(
        self,
        fs: S5FileSystem,
        path: str,
        write_key: bytes,
        *,
        seal_records: int = 128,
        seal_bytes: int = 32 * 1024,
        max_attempts: int = 40,
        read_concurrency: int = 16,
        cache_bytes: int = 16 * 1024 * 1024,
        merge_fanout: int = 8,
        max_segment_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        if seal_records < 1 or seal_bytes < 1:
            raise ValueError("seal_records and seal_bytes must be positive")
        if merge_fanout < 0 or max_segment_bytes < 1:
            raise ValueError("merge_fanout must be >= 0 and max_segment_bytes positive")
        self.fs = fs
        self.path = path
        self.seal_records = seal_records
        self.seal_bytes = seal_bytes
        self.max_attempts = max_attempts
        self.merge_fanout = merge_fanout
        self.max_segment_bytes = max_segment_bytes
        self._key_pair = Ed25519KeyPair.from_seed(
            derive_hash_string(write_key, "fabstir/sealed-log/v1/head")
        )
        self._enc_key = derive_hash_string(write_key, "fabstir/sealed-log/v1/encryption")
        self._beacon_pair = Ed25519KeyPair.from_seed(
            derive_hash_string(write_key, "fabstir/sealed-log/v1/beacon")
        )
        self._writer_id = os.urandom(16)
        self._sem = asyncio.Semaphore(max(1, read_concurrency))
        self._head: tuple[bytes, _Head] | None = None  # (blob hash, head) last seen
        self._segments: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._cached_bytes = 0
        self._cache_budget = cache_bytes
        self._sealed_memo: dict[bytes, _Segment] = {}
        self._writing = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SealedLog({self.path!r})"

    # --- head --------------------------------------------------------------------

    async def _load(self) -> tuple[_Head, int]:
        client = self.fs.client
        entry = await client.registry_get(self._key_pair.registry_key)
        if entry is None:
            return _Head(), 0
        try:
            cid = CID.from_cid_bytes(entry.data)
        except InvalidCIDError as exc:
            raise IntegrityError(f"log entry of {self.path} does not name a blob") from exc
        if self._head is not None and self._head[0] == cid.hash:
            return self._head[1], entry.revision
        blob = await client.download(cid)
        head = _Head.decode(decrypt_mutable(blob, self._enc_key), self.path)
        self._head = (cid.hash, head)
        return head, entry.revision

    async def _store(self, head: _Head, revision: int) -> None:
        blob = encrypt_mutable(head.encode(), self._enc_key)
        cid = await self.fs.client.upload(blob)
        await self.fs.client.registry_set(
            RegistryEntry.create(self._key_pair, cid.to_bytes(), revision)
        )
        self._head = (cid.hash, head)

    # --- segments ----------------------------------------------------------------

    def _remember(self, seg_hash: bytes, records: list[bytes]) -> None:
        size = sum(map(len, records))
        if size > self._cache_budget:
            return
        self._segments[seg_hash] = records
        self._cached_bytes += size
        while self._cached_bytes > self._cache_budget:
            _, dropped = self._segments.popitem(last=False)
            self._cached_bytes -= sum(map(len, dropped))

    async def _seal(self, first: int, records: list[bytes]) -> _Segment:
        plain = cbor2.dumps({"v": _VERSION, "f": first, "r": records})
        memo_key = blake3_hash(plain)
        seg = self._sealed_memo.get(memo_key)
        if seg is None:
            cid = await self.fs.client.upload(encrypt_mutable(plain, self._enc_key))
            seg = _Segment(cid.hash, cid.size, first, len(records))
            if len(self._sealed_memo) > 256:
                self._sealed_memo.clear()
            self._sealed_memo[memo_key] = seg
        self._remember(seg.hash, records)
        return seg

    async def _segment_records(self, seg: _Segment) -> list[bytes]:
        cached = self._segments.get(seg.hash)
        if cached is not None:
            self._segments.move_to_end(seg.hash)
            return cached
        async with self._sem:
            blob = await self.fs.client.download(CID(seg.hash, seg.size))
        try:
            obj = loads_cbor_untrusted(decrypt_mutable(blob, self._enc_key))
            records = [_typed(r, bytes) for r in obj["r"]]
            ok = obj["f"] == seg.first and len(records) == seg.count
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"a segment of log {self.path} is malformed") from exc
        if not ok:
            raise IntegrityError(f"a segment of log {self.path} does not match its head")
        self._remember(seg.hash, records)
        return records

    # --- public API --------------------------------------------------------------

    def _compact(self, head: _Head) -> list[tuple[int, list[bytes]]]:
        """Split the full part of ``head.tail`` off into segments to seal."""
        out: list[tuple[int, list[bytes]]] = []
        first = head.tail_first
        tail = head.tail
        while tail and (len(tail) >= self.seal_records or sum(map(len, tail)) >= self.seal_bytes):
            take, size = 0, 0
            while take < len(tail) and take < self.seal_records and size < self.seal_bytes:
                size += len(tail[take])
                take += 1
            out.append((first, tail[:take]))
            first += take
            tail = tail[take:]
        head.tail = tail
        return out

    def _tier(self, seg: _Segment) -> int:
        # By record count: a merge of ``fanout`` segments of tier t always lands in a
        # higher tier, so each record is rewritten once per tier (blob sizes are padded:
        # eight small segments can make a blob no larger than one).
        tier, bound = 0, self.merge_fanout
        while seg.count >= bound:
            tier, bound = tier + 1, bound * self.merge_fanout
        return tier

    def _merge_plan(self, segments: Sequence[_Segment]) -> int | None:
        """Where the ``merge_fanout`` segments to merge next start: the first group of
        that many adjacent segments of the lowest tier that has one (within
        ``max_segment_bytes``), or ``None``. The group slides along a run of one tier, so
        large segments at a run's start do not keep the small ones after them unmerged."""
        fanout = self.merge_fanout
        if fanout < 2:
            return None
        tiers = [self._tier(seg) for seg in segments]
        best: tuple[int, int] | None = None
        start = 0
        while start < len(segments):
            stop = start
            while stop < len(segments) and tiers[stop] == tiers[start]:
                stop += 1
            if stop - start >= fanout and (best is None or tiers[start] < best[0]):
                size = sum(seg.size for seg in segments[start : start + fanout])
                for first in range(start, stop - fanout + 1):
                    if first > start:
                        size += segments[first + fanout - 1].size - segments[first - 1].size
                    if size <= self.max_segment_bytes:
                        best = (tiers[start], first)
                        break
            start = stop
        return None if best is None else best[1]

    async def _merge(self, head: _Head, budget: int) -> None:
        """Merge up to ``budget`` groups of ``head.segments`` (see :meth:`_merge_plan`)
        into new segment blobs, uploaded before the head that names them.

        Merging only saves later reads work: a group that cannot be downloaded or
        uploaded now (a portal error, a segment that does not verify) is left as it is,
        and the append goes on (a later one merges it)."""
        for _ in range(budget):
            start = self._merge_plan(head.segments)
            if start is None:
                return
            group = head.segments[start : start + self.merge_fanout]
            try:
                parts = await asyncio.gather(*(self._segment_records(seg) for seg in group))
                merged = await self._seal(group[0].first, [r for part in parts for r in part])
            except StorageError:
                return
            head.segments[start : start + self.merge_fanout] = [merged]

    async def extend(self, records: Sequence[bytes]) -> range:
        """Append ``records`` in order, atomically; return their sequence numbers."""
        items = [bytes(r) for r in records]
        if not items:
            return range(0)
        async with self._writing:
            return await self._extend(items)

    async def _extend(self, items: list[bytes]) -> range:
        write_id = os.urandom(16)
        yielded = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=0.005, max=0.25),
            retry=retry_if_exception_type((RevisionConflictError, _YieldTurn)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                (head, revision), beacon = await asyncio.gather(self._load(), self._beacon())
                for wid, first, count in head.writes:
                    if wid == write_id:  # our swap landed, its reply was lost
                        return range(first, first + count)
                if beacon == (revision, True) and yielded < _MAX_YIELDS:
                    yielded += 1  # another writer lost against exactly this head: let it in
                    raise _YieldTurn
                first = head.count
                new = _Head(
                    epoch=head.epoch or os.urandom(16),
                    count=head.count + len(items),
                    segments=list(head.segments),
                    tail=[*head.tail, *items],
                    writes=[*head.writes, (write_id, first, len(items))][-_RECENT_WRITES:],
                )
                to_seal = self._compact(new)
                sealed = await asyncio.gather(*(self._seal(f, r) for f, r in to_seal))
                new.segments.extend(sealed)
                await self._merge(new, 1 + len(sealed))
                try:
                    await self._store(new, revision + 1)
                except RevisionConflictError:
                    await self._claim(revision + 1)
                    raise
                return range(first, first + len(items))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- fairness beacon -----------------------------------------------------------
    # A writer that loses a swap posts "I lost against revision R" in a second registry
    # entry; a writer about to build on revision R steps aside once (a short random
    # wait) so that the loser gets in. Without it, a writer that appends back to back
    # (and holds the head it just wrote, one round trip less) starves the others.

    async def _beacon(self) -> tuple[int, bool] | None:
        entry = await self.fs.client.registry_get(self._beacon_pair.registry_key)
        if entry is None or len(entry.data) != 24:
            return None
        return int.from_bytes(entry.data[16:], "big"), entry.data[:16] != self._writer_id

    async def _claim(self, revision: int) -> None:
        data = self._writer_id + revision.to_bytes(8, "big")
        stamp = time.time_ns() // 1000
        try:
            await self.fs.client.registry_set(RegistryEntry.create(self._beacon_pair, data, stamp))
        except RevisionConflictError:
            pass  # another loser posted at the same moment; its claim serves as well

    async def append(self, record: bytes) -> int:
        """Append one record; return its sequence number."""
        return (await self.extend([record]))[0]

    async def read(self, start: int = 0) -> LogSnapshot:
        """A consistent snapshot of the records with ``seq >= start``."""
        head, _ = await self._load()
        start = max(0, start)
        wanted = [s for s in head.segments if s.first + s.count > start]
        parts = await asyncio.gather(*(self._segment_records(s) for s in wanted))
        records: list[bytes] = []
        for seg, part in zip(wanted, parts, strict=True):
            records.extend(part[max(0, start - seg.first) :])
        records.extend(head.tail[max(0, start - head.tail_first) :])
        return LogSnapshot(head.epoch, head.count, min(start, head.count), records)

    async def count(self) -> int:
        """How many records the log holds."""
        return (await self._load())[0].count

    async def epoch(self) -> bytes:
        """The log's current epoch (empty for a log never written)."""
        return (await self._load())[0].epoch

    async def rewrite(self, transform: Callable[[list[bytes]], list[bytes] | None]) -> bool:
        """Replace the whole log by ``transform(records)`` in one atomic swap (a new epoch).

        ``transform`` sees every record of the log as it is at that moment and returns
        the records to keep (or ``None``: leave the log as it is). An append that lands
        meanwhile makes the swap fail and the rewrite starts over on the new records, so
        nothing written concurrently is lost. Returns whether the log was rewritten.
        Used for deletions (a log is otherwise append-only) and format migrations.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=0.005, max=0.25),
            retry=retry_if_exception_type(RevisionConflictError),
            reraise=True,
        )
        async with self._writing:
            async for attempt in retrying:
                with attempt:
                    head, revision = await self._load()
                    parts = await asyncio.gather(
                        *(self._segment_records(seg) for seg in head.segments)
                    )
                    records = [r for part in parts for r in part] + list(head.tail)
                    kept = transform(records)
                    if kept is None:
                        return False
                    new = _Head(
                        epoch=os.urandom(16), count=len(kept), tail=[bytes(r) for r in kept]
                    )
                    new.segments.extend(
                        await asyncio.gather(*(self._seal(f, r) for f, r in self._compact(new)))
                    )
                    await self._merge(new, len(new.segments))
                    await self._store(new, revision + 1)
                    return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def clear(self) -> None:
        """Empty the log (a new epoch); segments already written stay unreachable."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=0.005, max=0.25),
            retry=retry_if_exception_type(RevisionConflictError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                head, revision = await self._load()
                if head.count == 0:
                    return
                await self._store(_Head(epoch=os.urandom(16)), revision + 1)


def upgrade_record(
    rec: dict[str, Any],
    *,
    current: int,
    upgrades: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]],
    what: str,
) -> dict[str, Any]:
    """``rec`` brought to format ``current`` (its ``"v"``; none is format 0) by the
    ``upgrades`` steps (``upgrades[n]``: format ``n`` -> ``n + 1``); a record of a newer
    format is ``StorageError`` naming ``what`` holds it. The result's ``"v"`` is ``current``.
    """
    version = rec.get("v", 0)
    if not isinstance(version, int) or version > current:
        raise StorageError(
            f"{what} holds a record of format {version!r}, written by a newer "
            f"langchain-fabstir (this one reads formats up to {current}): upgrade "
            "langchain-fabstir to read it",
            details={"format": version, "supported": current},
        )
    while version < current:
        rec = upgrades[version]({**rec, "v": version})  # a step sees the format it reads
        version += 1
    return {**rec, "v": current}
