"""Folds of many :class:`~langchain_fabstir.storage.sealed_log.SealedLog` logs, cached.

A reader that keeps state per log (the LangGraph saver per thread, the store per
namespace) holds, for each key, the log and the *fold* of the records it has read: an
object with ``fold(raw, where)`` that applies one record. :class:`FoldedLogs` keeps those
in a least-recently-used cache of at most ``max_entries`` logs and brings a fold up to date
by reading only the records appended since (one registry read when nothing changed). A
log that was cleared or rewritten (a new epoch, or fewer records than were folded) is
folded again from a fresh state.

Details and examples: :class:`FoldedLogs`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from langchain_fabstir.storage.sealed_log import SealedLog

__all__ = ["Fold", "FoldedLog", "FoldedLogs"]


class Fold(Protocol):
    """State built from a log's records, one record at a time."""

    def fold(self, raw: bytes, where: str) -> None:
        """Apply one record (``where`` names the log in error messages)."""


K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Fold)


@dataclass
class FoldedLog(Generic[S]):
    """One cached log: the fold of its records ``0 .. folded - 1`` of ``epoch``.

    Hold ``lock`` to keep the fold from being brought up to date meanwhile (e.g. around
    a :meth:`SealedLog.rewrite` of the log).
    """

    log: SealedLog
    state: S
    epoch: bytes = b""
    folded: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FoldedLogs(Generic[K, S]):
    """A bounded LRU cache of logs and their folds of sealed logs.

    Runnable, against a local portal (the logs live on the package's background loop):

    >>> import asyncio, tempfile
    >>> from langchain_fabstir.portal import LocalPortal
    >>> from langchain_fabstir.s5 import generate_phrase
    >>> from langchain_fabstir.storage.access import S5Access, on_background
    >>> class Words:
    ...     def __init__(self) -> None:
    ...         self.words: list[str] = []
    ...     def fold(self, raw: bytes, where: str) -> None:
    ...         self.words.append(raw.decode())
    >>> async def demo():
    ...     async with LocalPortal(tempfile.mkdtemp()) as portal:
    ...         access = S5Access(portal_url=portal.url, seed_phrase=generate_phrase())
    ...         async def open_log(name: str) -> SealedLog:
    ...             path = f"home/words/{name}"
    ...             return SealedLog(await access.fs(), path, await access.write_key(path))
    ...         logs = FoldedLogs(open_log, Words, where=lambda name: name, max_entries=1)
    ...         async def run():
    ...             log = (await logs.entry("a")).log
    ...             await log.extend([b"tea", b"cake"])
    ...             first = list((await logs.current("a")).words)
    ...             await log.append(b"jam")                     # only this one is read
    ...             second = list((await logs.current("a")).words)
    ...             await log.clear()                            # a new epoch: a fresh fold
    ...             third = list((await logs.current("a")).words)
    ...             await logs.current("b")                      # "a" leaves the cache
    ...             return first, second, third, list(logs)
    ...         try:
    ...             return await on_background(run())
    ...         finally:
    ...             await access.aclose()
    >>> asyncio.run(demo())
    (['tea', 'cake'], ['tea', 'cake', 'jam'], [], ['b'])

    Use it only on the loop that owns the logs (the background loop).

    Args:
        open_log: the log of a key (called when the key is not cached).
        new_state: an empty fold.
        where: the name of a key's log in error messages.
        max_entries: logs kept (at least one); the least recently used go first.
    """

    def __init__(
        self,
        open_log: Callable[[K], Awaitable[SealedLog]],
        new_state: Callable[[], S],
        *,
        where: Callable[[K], str],
        max_entries: int,
    ) -> None:
        self._open_log = open_log
        self._new_state = new_state
        self._where = where
        self.max_entries = max(1, max_entries)
        self._entries: OrderedDict[K, FoldedLog[S]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The cached keys, least recently used first."""
        return iter(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    async def entry(self, key: K) -> FoldedLog[S]:
        """The cached log of ``key`` (opened, with an empty fold, if it is not cached);
        its fold is not brought up to date: see :meth:`current`."""
        found = self._entries.get(key)
        if found is None:
            log = await self._open_log(key)
            found = self._entries.get(key)  # opened by another caller meanwhile?
            if found is None:
                found = self._entries[key] = FoldedLog(log, self._new_state())
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                return found
        self._entries.move_to_end(key)
        return found

    async def current(self, key: K) -> S:
        """The fold of ``key``'s log, brought up to date: the records appended since the
        last call are folded in; after a clear or a rewrite, the whole log into a fresh
        state. A log evicted meanwhile stays evicted (the cache stays bounded)."""
        entry = await self.entry(key)
        async with entry.lock:
            snap = await entry.log.read(entry.folded)
            if snap.epoch != entry.epoch or snap.count < entry.folded:
                if entry.folded:
                    snap = await entry.log.read(0)
                entry.state, entry.epoch, entry.folded = self._new_state(), snap.epoch, 0
            where = self._where(key)
            for raw in snap.records:
                entry.state.fold(raw, where)
            entry.folded = snap.count
            return entry.state

    def discard(self, key: K) -> None:
        """Forget ``key``'s log and fold (if cached)."""
        self._entries.pop(key, None)
