"""``S5Store``: LangGraph long-term memory (a ``BaseStore``) on S5, end-to-end encrypted.

Setup, a runnable example, the storage layout, LangGraph semantics, semantic search,
costs, TTL, format and errors: :class:`S5Store`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import heapq
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import cbor2
import numpy as np
from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)
from langgraph.store.base.embed import ensure_embeddings, get_text_at_path, tokenize_path
from pydantic import SecretStr

from langchain_fabstir._json import MAX_VALUE_DEPTH, check_value_depth, loads_cbor_untrusted
from langchain_fabstir._sync import background_loop
from langchain_fabstir.errors import (
    DimensionMismatchError,
    IntegrityError,
    StorageError,
    ValueTooDeepError,
)
from langchain_fabstir.langgraph.filters import matches, namespace_matches
from langchain_fabstir.langgraph.saver import thread_dir_name
from langchain_fabstir.s5 import S5FileSystem, S5Identity
from langchain_fabstir.storage.access import S5Access, SealedLog, blocking, on_background
from langchain_fabstir.storage.folded_logs import FoldedLog, FoldedLogs
from langchain_fabstir.storage.sealed_log import upgrade_record as upgrade

__all__ = ["DEFAULT_ROOT", "FORMAT_VERSION", "UPGRADES", "S5Store", "namespace_dir_name"]

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "home/langgraph/store"

FORMAT_VERSION = 1
"""The format of the records this release writes (each record carries it as ``"v"``)."""

UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``UPGRADES[n]`` turns a format-``n`` record into a format ``n + 1`` one (a release that
changes the format bumps :data:`FORMAT_VERSION` and adds the step here)."""

_READ_AHEAD = 8  # namespaces read concurrently by a search, a listing or a batch of gets
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MINUTE_US = 60_000_000
Namespace = tuple[str, ...]


def namespace_dir_name(namespace: Namespace) -> str:
    """The path segment of a namespace's log (as the saver names thread logs).

    >>> namespace_dir_name(("users", "ada"))
    'tWyJ1c2VycyIsImFkYSJd'
    """
    return thread_dir_name(json.dumps(list(namespace), ensure_ascii=False, separators=(",", ":")))


def _datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _record(kind: str, **fields: Any) -> bytes:
    return cbor2.dumps({"v": FORMAT_VERSION, "k": kind, **fields})


def _check_depth(key: str, ns: Namespace, value: Any, record: bytes | None = None) -> None:
    """Refuse a value that nests too deep (before encoding it), or whose record could not
    be decoded again (after): one such record would make the whole namespace unreadable."""
    try:
        if record is None:
            check_value_depth(value, MAX_VALUE_DEPTH)
        else:
            loads_cbor_untrusted(record)
    except ValueError:
        raise ValueTooDeepError(
            f"the value for key {key!r} in {ns!r} nests containers deeper than the store "
            f"can read back (at most {MAX_VALUE_DEPTH} levels): flatten it, or store the "
            "deep part as a string",
            details={"namespace": list(ns), "key": key, "max_depth": MAX_VALUE_DEPTH},
        ) from None


def _decode(raw: bytes, where: str) -> dict[str, Any]:
    try:
        rec = loads_cbor_untrusted(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise IntegrityError(f"{where} holds a record that is not CBOR") from exc
    if not isinstance(rec, dict):
        raise IntegrityError(f"{where} holds a record that is not a map")
    try:
        return upgrade(rec, current=FORMAT_VERSION, upgrades=UPGRADES, what=where)
    except KeyError as exc:  # no upgrade from that format: not a record of this store
        raise IntegrityError(f"{where} holds a record of no known format") from exc


@dataclass
class _Entry:
    value: dict[str, Any]
    created: int  # microseconds since the epoch
    updated: int
    ttl: float | None  # minutes
    expires: int | None
    vectors: np.ndarray | None = None  # (n, dims) float32, L2-normalised: the indexed texts

    def live(self, now: int) -> bool:
        return self.expires is None or self.expires > now


@dataclass
class _Space:
    """The fold of one namespace's log."""

    items: dict[str, _Entry] = field(default_factory=dict)

    def fold(self, raw: bytes, where: str) -> None:
        rec = _decode(raw, where)
        try:
            kind, at = rec["k"], int(rec["t"])
            if kind == "p":
                key, value, ttl = str(rec["key"]), rec["val"], rec["ttl"]
                if not isinstance(value, dict):
                    raise TypeError("value is not a map")
                ttl = None if ttl is None else float(ttl)
                vectors = _vectors(rec.get("x"))
                prev = self.items.get(key)
                created = prev.created if prev is not None and prev.live(at) else at
                expires = None if ttl is None else at + int(ttl * _MINUTE_US)
                self.items[key] = _Entry(
                    value,
                    int(rec.get("c", created)),
                    at,
                    ttl,
                    int(rec["e"]) if rec.get("e") is not None else expires,
                    vectors,
                )
            elif kind == "d":
                self.items.pop(str(rec["key"]), None)
            elif kind == "r":
                for key in rec["keys"]:
                    entry = self.items.get(str(key))
                    if entry is not None and entry.ttl is not None and entry.live(at):
                        entry.expires = max(entry.expires or 0, at + int(entry.ttl * _MINUTE_US))
            else:
                raise ValueError(f"unknown record kind {kind!r}")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise IntegrityError(f"{where} holds a bad record: {exc}") from exc

    def records(self, now: int) -> list[bytes]:
        """Records (current format) that fold back into the live items (a compaction)."""
        return [
            _record(
                "p",
                key=k,
                val=e.value,
                t=e.updated,
                ttl=e.ttl,
                c=e.created,
                e=e.expires,
                **({} if e.vectors is None else {"x": _pack(e.vectors)}),
            )
            for k, e in sorted(self.items.items(), key=lambda kv: kv[1].updated)
            if e.live(now)
        ]


def _pack(vectors: np.ndarray) -> dict[str, Any]:
    """Vectors as stored in a put record: ``{"d": dims, "f32": little-endian float32s}``."""
    return {"d": int(vectors.shape[1]), "f32": vectors.astype("<f4").tobytes()}


def _vectors(packed: Any) -> np.ndarray | None:
    if packed is None:
        return None
    dims, raw = packed["d"], packed["f32"]
    if type(dims) is not int or dims < 1 or not isinstance(raw, bytes) or len(raw) % (4 * dims):
        raise ValueError("malformed vectors")
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dims).astype(np.float32)


def _normalised(vectors: list[list[float]], dims: int, where: str) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dims:
        got = array.shape[-1] if array.ndim >= 1 and array.size else 0
        raise DimensionMismatchError(
            f"the index's embeddings gave vectors of {got} dimensions for {where}; the "
            f"index config says dims={dims}"
        )
    if not np.isfinite(array).all():
        raise DimensionMismatchError(f"the index's embeddings gave NaN/inf for {where}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


class S5Store(BaseStore):
    """LangGraph ``BaseStore`` on S5, end-to-end encrypted.

    Setup and use (sync or async; the sync methods work inside a running event loop too)::

        from langchain_fabstir.langgraph import S5Store

        store = S5Store(portal_url="http://127.0.0.1:5050", seed_phrase=phrase,
                        ttl={"default_ttl": 60 * 24 * 30, "refresh_on_read": True})
        store.put(("users", "ada", "memories"), "m1", {"text": "likes tea", "topic": "food"})
        store.get(("users", "ada", "memories"), "m1").value          # {'text': 'likes tea', ...}
        store.search(("users", "ada"), filter={"topic": "food"}, limit=5)
        store.list_namespaces(prefix=("users",), max_depth=2)        # [('users', 'ada')]
        graph = builder.compile(checkpointer=saver, store=store)     # nodes: runtime.store

    Runnable, against a local portal (the async twins; the portal runs on this loop, so the
    blocking ones would wait for themselves here):

    >>> import asyncio, tempfile
    >>> from langchain_fabstir.portal import LocalPortal
    >>> from langchain_fabstir.s5 import generate_phrase
    >>> async def demo():
    ...     async with LocalPortal(tempfile.mkdtemp()) as portal:
    ...         store = S5Store(portal_url=portal.url, seed_phrase=generate_phrase())
    ...         await store.aput(("users", "ada"), "tea", {"likes": "green", "cups": 3})
    ...         await store.aput(("users", "bob"), "tea", {"likes": "black", "cups": 1})
    ...         item = await store.aget(("users", "ada"), "tea")
    ...         found = await store.asearch(("users",), filter={"cups": {"$gt": 2}})
    ...         spaces = await store.alist_namespaces(prefix=("users",))
    ...         await store.aclose()
    ...         return item.value, [i.namespace for i in found], spaces
    >>> asyncio.run(demo())
    ({'likes': 'green', 'cups': 3}, [('users', 'ada')], [('users', 'ada'), ('users', 'bob')])

    Storage: every namespace is one :class:`~langchain_fabstir.storage.sealed_log.SealedLog`
    at ``{root}/ns/<name>`` (``<name>`` is the namespace mapped as the saver maps thread ids;
    the path only derives the log's keys and is listed nowhere, and every blob is encrypted,
    so the portal sees neither namespaces nor keys nor values). Its records are puts, deletes
    and TTL refreshes (CBOR, each with its format version :data:`FORMAT_VERSION`); an item is
    the fold of its namespace's records. A ``put`` costs one O(1) append at any namespace size,
    and several processes may write one namespace at once (registry compare-and-swap: nothing
    is lost). A second log, ``{root}/namespaces``, lists every namespace ever written (for
    prefix ``search`` and ``list_namespaces``); a ``get`` reads only its own namespace. Folded
    namespaces are cached (``max_cached_namespaces``, least recently used) and brought up to
    date incrementally, so memory is bounded by the namespaces in use, not by the store (plus
    the names of all namespaces, kept to serve prefix searches).

    Semantics, as LangGraph's stores have them:

    * A batch applies its puts first (the last put of a key wins), then its reads, so a read
      sees the writes of its own batch (as ``PostgresStore`` does). ``created_at`` is kept
      across updates; ``updated_at`` is the time of the last put.
    * ``PutOp.index`` is ignored without an ``index`` config (as in LangGraph's stores).
    * ``search`` returns the items under ``namespace_prefix`` that match ``filter`` (equality,
      nested dicts, lists, and the operators ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``,
      ``$lte`` as ``InMemoryStore`` has them; a range operator on a value that is not a number
      does not match), newest ``updated_at`` first, then ``offset``/``limit``. Without an
      ``index`` config ``query`` is ignored, as in LangGraph's stores: results are not ranked
      by it and their ``score`` is ``None``.

    Semantic search (``index=``, LangGraph's ``IndexConfig``, as ``InMemoryStore`` and
    ``PostgresStore`` take it): ``{"embed": ..., "dims": 384, "fields": ["text"]}``, ``embed``
    an ``Embeddings`` (e.g. :class:`~langchain_fabstir.FabstirEmbeddings`), an embedding
    function (sync or async) or a ``"provider:model"`` string. On every ``put`` the texts at
    ``fields`` (JSON paths, default ``["$"]``: the whole value; the put's ``index=[...]``
    overrides them, ``index=False`` indexes nothing) are embedded and the vectors (float32,
    length ``dims``, checked) are written in the same sealed record as the value, so they are
    encrypted on S5 like it and an update reindexes the item. ``search(prefix, query=...)``
    ranks the items that pass ``filter`` by cosine similarity to the query's embedding (an
    item's best field), best first, with ``score``; items without vectors (put with
    ``index=False``, or before the index was configured) follow, unscored, as in
    ``InMemoryStore``. Search embeds the query once and compares it in memory with the
    namespaces' vectors (numpy): measured on a local portal, a warm search over 1,000 items
    takes about 12 ms (mostly the check that the namespace is up to date) plus the query's
    embedding (``make bench``, ``store_search``). A batch's puts are
    embedded before anything is written: when embedding fails (its error, e.g.
    ``EMBEDDING_FAILED``, or ``DIMENSION_MISMATCH`` for vectors that are not ``dims`` long),
    nothing of the batch is stored.
    * ``list_namespaces`` lists the namespaces holding at least one live item (after prefix /
      suffix conditions with ``"*"`` wildcards, truncated to ``max_depth``), sorted, then
      ``offset``/``limit``.

    Costs: a ``get`` reads one namespace (one registry read when its items are cached, plus
    its head and new segments when they changed). ``search`` and ``list_namespaces`` read the
    index and then every namespace under the prefix (eight at a time): on a local portal, about
    10 ms per namespace, so a search over 200 namespaces takes a couple of seconds; keep
    namespaces that are searched together under a narrow prefix. Memory after such a search is
    bounded by ``max_cached_namespaces`` (measured: 200 namespaces of 20 items of 1 KB each
    leave 0.9 MB held with 8 cached, 7.5 MB with 128, 11.4 MB unbounded).

    TTL (``ttl=TTLConfig``; times in minutes, as LangGraph has them): an item written with a
    TTL expires that long after its last write, or its last read when reads refresh it
    (``refresh_on_read``, default ``True``; per call ``refresh_ttl=``). Expired items are never
    returned, even before a sweep removes them (``omit_expired`` is always on). A refresh is
    a write on S5: every ``get``/``search`` that returns items with a TTL appends one record to
    each namespace it read from (batched: one append per namespace per batch, whatever the
    number of items). Pass ``refresh_on_read=False`` where reads are hot and exact sliding
    expiry does not matter. :meth:`S5Store.sweep_ttl` rewrites each namespace's log keeping
    only its live items (expired items, deleted items, overwritten values and refreshes go:
    a compaction), atomically and without losing a concurrent write;
    ``start_ttl_sweeper()`` runs it every ``sweep_interval_minutes`` in the background.
    ``clock`` (seconds since the epoch, ``time.time`` by default) is the store's notion of now.

    Format: every record carries its format version (:data:`FORMAT_VERSION`); older formats
    are upgraded when read, newer ones refused with ``StorageError`` (upgrade the package);
    :meth:`S5Store.setup` rewrites stored records into the current format.

    Errors: :class:`~langchain_fabstir.errors.StorageError` (portal unreachable or refusing),
    :class:`~langchain_fabstir.errors.IntegrityError` (a reply or record that does not
    verify: a portal cannot forge or alter what the store reads),
    :class:`~langchain_fabstir.errors.AuthenticationError` (the portal refused the account),
    :class:`~langchain_fabstir.errors.ValueTooDeepError` (``VALUE_TOO_DEEP``: a ``put`` whose
    value nests more than :data:`~langchain_fabstir._json.MAX_VALUE_DEPTH` (256) levels, or
    that CBOR could not decode again; the whole batch is refused before anything is written,
    so one value can never make a namespace unreadable).

    Args:
        fs: where the store lives: an :class:`~langchain_fabstir.storage.access.S5Access`
            (``S5Store(S5Access.from_portal(url, seed_phrase=...))``; shared with a saver
            and histories), or an authenticated :class:`~langchain_fabstir.s5.S5FileSystem`.
        portal_url, seed_phrase, identity: instead, a shorthand that makes an access (as
            :class:`~langchain_fabstir.storage.access.S5Access` takes them; the seed
            phrase as ``SecretStr``, never printed); the store closes it.
        root: where the store lives in the user's tree.
        ttl: a LangGraph ``TTLConfig`` (``default_ttl`` minutes for puts without ``ttl=``,
            ``refresh_on_read``, ``sweep_interval_minutes`` for :meth:`start_ttl_sweeper`).
        clock: seconds since the epoch (``time.time``); tests inject their own.
        seal_records, seal_bytes: compaction thresholds of each namespace's log.
        max_cached_namespaces: namespaces whose folded items stay in memory.
        access: the same as an access in ``fs``.
        index: LangGraph's ``IndexConfig`` (``embed``, ``dims``, ``fields``) for semantic
            ``search(..., query=...)`` (see the class docstring).
    """

    supports_ttl = True

    def __init__(
        self,
        fs: S5Access | S5FileSystem | None = None,
        *,
        portal_url: str | None = None,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
        root: str = DEFAULT_ROOT,
        ttl: TTLConfig | None = None,
        clock: Callable[[], float] = time.time,
        seal_records: int = 128,
        seal_bytes: int = 64 * 1024,
        max_cached_namespaces: int = 128,
        access: S5Access | None = None,
        index: IndexConfig | None = None,
    ) -> None:
        self.root = root.strip("/")
        self.index_config: IndexConfig | None = None
        self.embeddings: Embeddings | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        if index:
            if type(index.get("dims")) is not int or index["dims"] < 1:
                raise ValueError("index needs 'dims': the length of the embedding vectors")
            self.index_config = index
            self.embeddings = ensure_embeddings(index.get("embed"))
            self._fields = [
                (p, p if p == "$" else tokenize_path(p))  # "$": the whole value, as LangGraph
                for p in (index.get("fields") or ["$"])
            ]
        self.ttl_config = ttl
        self.clock = clock
        self._access, self._owns_access = S5Access.resolve(
            access, fs=fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity
        )
        self._seal = (seal_records, seal_bytes)
        self._spaces: FoldedLogs[Namespace, _Space] = FoldedLogs(
            lambda ns: self._log(f"{self.root}/ns/{namespace_dir_name(ns)}"),
            _Space,
            where=lambda ns: f"store namespace {ns!r}",
            max_entries=max_cached_namespaces,
        )
        self._index_log: SealedLog | None = None
        self._index: dict[Namespace, None] = {}  # every namespace ever written, in order
        self._index_at: tuple[bytes, int] = (b"", 0)  # (epoch, records folded)
        self._index_lock: asyncio.Lock | None = None
        self._sweeper: concurrent.futures.Future[None] | None = None
        self._sweeper_stop: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"S5Store({self._access.portal_url!r}, root={self.root!r})"

    def _now(self) -> int:
        return int(self.clock() * 1_000_000)

    # --- logs (background loop only) ---------------------------------------------

    async def _log(self, path: str) -> SealedLog:
        return SealedLog(
            await self._access.fs(),
            path,
            await self._access.write_key(path),
            seal_records=self._seal[0],
            seal_bytes=self._seal[1],
            # The fold holds what a namespace's segments hold; their cache would only
            # serve a refold after a rewrite, which names new segments anyway.
            cache_bytes=256 * 1024,
        )

    async def _space_log(self, namespace: Namespace) -> FoldedLog[_Space]:
        """The namespace's log and items (cached, not brought up to date)."""
        return await self._spaces.entry(namespace)

    async def _space(self, namespace: Namespace) -> _Space:
        """The namespace's items, brought up to date (one registry read if unchanged)."""
        return await self._spaces.current(namespace)

    async def _load_spaces(
        self, namespaces: list[Namespace]
    ) -> AsyncIterator[tuple[Namespace, _Space]]:
        """``(namespace, items)`` in order, read ``_READ_AHEAD`` namespaces at a time."""
        for at in range(0, len(namespaces), _READ_AHEAD):
            chunk = namespaces[at : at + _READ_AHEAD]
            spaces = await asyncio.gather(*(self._space(ns) for ns in chunk))
            for pair in zip(chunk, spaces, strict=True):
                yield pair

    async def _namespaces(self) -> list[Namespace]:
        """Every namespace ever written (the index log, folded incrementally)."""
        if self._index_lock is None:
            self._index_lock = asyncio.Lock()
        async with self._index_lock:
            if self._index_log is None:
                self._index_log = await self._log(f"{self.root}/namespaces")
            epoch, folded = self._index_at
            snap = await self._index_log.read(folded)
            if snap.epoch != epoch or snap.count < folded:
                snap = await self._index_log.read(0)  # rewritten (a sweep): refold
                self._index = {}
            for raw in snap.records:
                rec = _decode(raw, "store namespace index")
                try:
                    if rec["k"] != "n":
                        raise ValueError(f"unknown record kind {rec['k']!r}")
                    ns = tuple(str(label) for label in rec["ns"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise IntegrityError(
                        f"store namespace index holds a bad record: {exc}"
                    ) from exc
                self._index[ns] = None
            self._index_at = (snap.epoch, snap.count)
            return list(self._index)

    async def _ensure_indexed(self, namespaces: Iterable[Namespace]) -> None:
        """Add new namespaces to the index (before their first item is written, so that
        an item is never in a namespace that prefix searches cannot find)."""
        wanted = [ns for ns in dict.fromkeys(namespaces) if ns not in self._index]
        if not wanted:
            return
        known = set(await self._namespaces())
        missing = [ns for ns in wanted if ns not in known]
        if missing:
            assert self._index_log is not None
            await self._index_log.extend([_record("n", ns=list(ns)) for ns in missing])
            for ns in missing:
                self._index[ns] = None

    # --- batch -------------------------------------------------------------------

    async def _batch(self, ops: list[Op]) -> list[Result]:
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, PutOp) and not op.namespace:
                raise InvalidNamespaceError("Namespace cannot be empty.")
            if not isinstance(op, (GetOp, SearchOp, ListNamespacesOp, PutOp)):
                raise ValueError(f"unknown operation type {type(op).__name__}")
        puts: dict[tuple[Namespace, str], PutOp] = {}
        for op in ops:
            if isinstance(op, PutOp):
                puts[(tuple(op.namespace), str(op.key))] = op
        if puts:
            await self._apply_puts(list(puts.values()))
        now = self._now()
        refresh: dict[Namespace, dict[str, None]] = {}
        wanted = list(dict.fromkeys(tuple(op.namespace) for op in ops if isinstance(op, GetOp)))
        loaded = {
            ns: space async for ns, space in self._load_spaces(wanted[: self._spaces.max_entries])
        }
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                space = loaded.get(tuple(op.namespace)) or await self._space(tuple(op.namespace))
                results.append(self._get(op, space, now, refresh))
            elif isinstance(op, SearchOp):
                results.append(await self._search(op, now, refresh))
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._list_namespaces(op, now))
            else:
                results.append(None)
        if refresh:
            await asyncio.gather(
                *(self._refresh(ns, list(keys), now) for ns, keys in refresh.items())
            )
        return results

    async def _embed_puts(self, puts: list[PutOp]) -> dict[int, np.ndarray]:
        """The vectors of each indexed put (by position), embedded in one call."""
        if self.embeddings is None or self.index_config is None:
            return {}
        texts: list[str] = []
        owners: list[int] = []
        for i, op in enumerate(puts):
            if op.value is None or op.index is False or not isinstance(op.value, Mapping):
                continue
            paths = self._fields if op.index is None else [(p, tokenize_path(p)) for p in op.index]
            for _, tokens in paths:
                for text in get_text_at_path(op.value, tokens):
                    texts.append(text)
                    owners.append(i)
        if not texts:
            return {}
        vectors = await self.embeddings.aembed_documents(texts)
        if len(vectors) != len(texts):
            raise DimensionMismatchError(
                f"the index's embeddings gave {len(vectors)} vectors for {len(texts)} texts"
            )
        array = _normalised(vectors, self.index_config["dims"], "the items put")
        out: dict[int, list[np.ndarray]] = {}
        for row, owner in zip(array, owners, strict=True):
            out.setdefault(owner, []).append(row)
        return {i: np.stack(rows) for i, rows in out.items()}

    async def _apply_puts(self, puts: list[PutOp]) -> None:
        now = self._now()
        by_space: dict[Namespace, list[bytes]] = {}
        embedded = await self._embed_puts(puts)
        for number, op in enumerate(puts):
            ns = tuple(op.namespace)
            if op.value is None:
                record = _record("d", key=str(op.key), t=now)
            else:
                if not isinstance(op.value, Mapping):
                    raise TypeError(f"a store value must be a mapping, not {type(op.value)}")
                ttl = op.ttl
                if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
                    raise ValueError(f"ttl must be a positive number of minutes, not {ttl!r}")
                _check_depth(op.key, ns, op.value)
                try:
                    record = _record(
                        "p",
                        key=str(op.key),
                        val=dict(op.value),
                        t=now,
                        ttl=None if ttl is None else float(ttl),
                        **({"x": _pack(embedded[number])} if number in embedded else {}),
                    )
                except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
                    raise TypeError(
                        f"the value for key {op.key!r} in {ns!r} cannot be stored: {exc}"
                    ) from exc
                _check_depth(op.key, ns, op.value, record)
            by_space.setdefault(ns, []).append(record)
        # Index only where an item appears (a delete alone adds no namespace).
        await self._ensure_indexed(tuple(op.namespace) for op in puts if op.value is not None)

        async def write(ns: Namespace, records: list[bytes]) -> None:
            await (await self._space_log(ns)).log.extend(records)

        await asyncio.gather(*(write(ns, recs) for ns, recs in by_space.items()))

    async def _refresh(self, namespace: Namespace, keys: list[str], now: int) -> None:
        await (await self._space_log(namespace)).log.append(_record("r", keys=keys, t=now))

    @staticmethod
    def _note_refresh(
        refresh: dict[Namespace, dict[str, None]],
        ns: Namespace,
        key: str,
        entry: _Entry,
        wanted: bool,
    ) -> None:
        if wanted and entry.ttl is not None:
            refresh.setdefault(ns, {})[key] = None

    def _get(
        self, op: GetOp, space: _Space, now: int, refresh: dict[Namespace, dict[str, None]]
    ) -> Item | None:
        ns = tuple(op.namespace)
        entry = space.items.get(str(op.key))
        if entry is None or not entry.live(now):
            return None
        self._note_refresh(refresh, ns, str(op.key), entry, op.refresh_ttl)
        return Item(
            value=copy.deepcopy(entry.value),
            key=str(op.key),
            namespace=ns,
            created_at=_datetime(entry.created),
            updated_at=_datetime(entry.updated),
        )

    async def _search(
        self, op: SearchOp, now: int, refresh: dict[Namespace, dict[str, None]]
    ) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        offset, limit = max(0, op.offset), max(0, op.limit)
        if limit == 0:
            return []
        keep = offset + limit
        if op.query and self.embeddings is not None and self.index_config is not None:
            return await self._ranked(op, prefix, offset, keep, now, refresh)
        # Newest first; only the best ``offset + limit`` are kept while scanning.
        best: list[tuple[int, Namespace, str, _Entry]] = []
        under = [ns for ns in await self._namespaces() if ns[: len(prefix)] == prefix]
        async for ns, space in self._load_spaces(under):
            found = [
                (-e.updated, ns, k, e)
                for k, e in space.items.items()
                if e.live(now) and (not op.filter or matches(e.value, op.filter))
            ]
            if found:
                best = heapq.nsmallest(keep, [*best, *found], key=lambda t: t[:3])
        out = []
        for _, ns, key, entry in best[offset:]:
            self._note_refresh(refresh, ns, key, entry, op.refresh_ttl)
            out.append(
                SearchItem(
                    namespace=ns,
                    key=key,
                    value=copy.deepcopy(entry.value),
                    created_at=_datetime(entry.created),
                    updated_at=_datetime(entry.updated),
                )
            )
        return out

    async def _ranked(
        self,
        op: SearchOp,
        prefix: Namespace,
        offset: int,
        keep: int,
        now: int,
        refresh: dict[Namespace, dict[str, None]],
    ) -> list[SearchItem]:
        """``search`` with a ``query``: by cosine similarity (an item's best field), best
        first; unscored items (no vectors) after them, newest first."""
        assert self.embeddings is not None and self.index_config is not None
        query = _normalised(
            [await self.embeddings.aembed_query(str(op.query))],
            self.index_config["dims"],
            "the query",
        )[0]
        scored: list[tuple[float, Namespace, str, _Entry]] = []
        unscored: list[tuple[int, Namespace, str, _Entry]] = []
        under = [ns for ns in await self._namespaces() if ns[: len(prefix)] == prefix]
        async for ns, space in self._load_spaces(under):
            found: list[tuple[str, _Entry]] = []
            rows: list[np.ndarray] = []
            owners: list[int] = []
            plain: list[tuple[int, Namespace, str, _Entry]] = []
            for k, e in space.items.items():
                if not e.live(now) or (op.filter and not matches(e.value, op.filter)):
                    continue
                if e.vectors is not None and e.vectors.shape[1] == query.shape[0]:
                    rows.append(e.vectors)
                    owners.extend([len(found)] * len(e.vectors))
                    found.append((k, e))
                else:
                    plain.append((-e.updated, ns, k, e))
            if found:
                sims = np.concatenate(rows) @ query
                best = np.full(len(found), -np.inf, dtype=np.float32)
                np.maximum.at(best, np.asarray(owners), sims)
                top = np.argsort(-best)[:keep]
                batch = [(float(best[i]), ns, found[i][0], found[i][1]) for i in top]
                scored = heapq.nlargest(keep, [*scored, *batch], key=lambda t: t[0])
            if plain and len(scored) < keep:
                unscored = heapq.nsmallest(keep, [*unscored, *plain], key=lambda t: t[:3])
        ranked: list[tuple[float | None, Namespace, str, _Entry]] = list(scored)
        ranked += [(None, ns, k, e) for _, ns, k, e in unscored[: keep - len(ranked)]]
        out = []
        for score, ns, key, entry in ranked[offset:keep]:
            self._note_refresh(refresh, ns, key, entry, op.refresh_ttl)
            out.append(
                SearchItem(
                    namespace=ns,
                    key=key,
                    value=copy.deepcopy(entry.value),
                    created_at=_datetime(entry.created),
                    updated_at=_datetime(entry.updated),
                    score=score,
                )
            )
        return out

    async def _live(self, namespace: Namespace, now: int) -> bool:
        space = await self._space(namespace)
        return any(e.live(now) for e in space.items.values())

    async def _list_namespaces(self, op: ListNamespacesOp, now: int) -> list[Namespace]:
        conditions = op.match_conditions or ()
        candidates = sorted(
            ns
            for ns in await self._namespaces()
            if all(namespace_matches(condition, ns) for condition in conditions)
        )
        offset, limit = max(0, op.offset), max(0, op.limit)
        out: list[Namespace] = []
        seen: set[Namespace] = set()
        for ns in candidates:  # sorted, so truncated names come out sorted as well
            if len(out) >= offset + limit:
                break
            shown = ns if op.max_depth is None else ns[: op.max_depth]
            if shown in seen or not await self._live(ns, now):
                continue
            seen.add(shown)
            out.append(shown)
        return out[offset:]

    # --- TTL sweep ---------------------------------------------------------------

    async def _sweep(self) -> int:
        removed = 0
        now = self._now()
        for ns in await self._namespaces():
            cached = await self._space_log(ns)
            where = f"store namespace {ns!r}"
            gone = 0

            def transform(records: list[bytes], where: str = where) -> list[bytes] | None:
                nonlocal gone
                folded = _Space()
                for raw in records:
                    folded.fold(raw, where)
                kept = folded.records(now)
                gone = sum(1 for e in folded.items.values() if not e.live(now))
                return None if len(kept) == len(records) else kept

            async with cached.lock:
                if await cached.log.rewrite(transform):
                    removed += gone
        if self._index_log is not None:
            await self._index_log.rewrite(
                lambda records: (
                    None
                    if len({bytes(r) for r in records}) == len(records)
                    else list(dict.fromkeys(bytes(r) for r in records))
                )
            )
        return removed

    async def _setup(self) -> int:
        def stale(records: list[bytes]) -> bool:
            versions = [loads_cbor_untrusted(r).get("v", 0) for r in records]
            return any(v != FORMAT_VERSION for v in versions)

        def reindex(records: list[bytes]) -> list[bytes] | None:
            if not stale(records):
                return None
            names = [_decode(r, "store namespace index")["ns"] for r in records]
            return [_record("n", ns=list(ns)) for ns in dict.fromkeys(map(tuple, names))]

        await self._namespaces()
        assert self._index_log is not None
        await self._index_log.rewrite(reindex)
        migrated = 0
        for ns in await self._namespaces():
            cached = await self._space_log(ns)
            where = f"store namespace {ns!r}"

            def transform(records: list[bytes], where: str = where) -> list[bytes] | None:
                if not stale(records):
                    return None
                folded = _Space()
                for raw in records:
                    folded.fold(raw, where)
                return folded.records(0)  # every item, expired or not: a sweep decides

            async with cached.lock:
                migrated += await cached.log.rewrite(transform)
        return migrated

    async def _sweep_forever(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                removed = await self._sweep()
                logger.debug("S5Store TTL sweep removed %d expired items", removed)
            except StorageError as exc:  # the portal is down: try again next time
                logger.warning("S5Store TTL sweep failed: %s", exc)

    # --- public API --------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` (puts first, then reads; see the class docstring), blocking."""
        return blocking(self._batch(list(ops)))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` (puts first, then reads; see the module docstring)."""
        return await on_background(self._batch(list(ops)))

    def setup(self) -> int:
        """Blocking :meth:`asetup`."""
        return blocking(self._setup())

    async def asetup(self) -> int:
        """Bring stored records to this release's format (:data:`FORMAT_VERSION`).

        Optional: older formats are upgraded on the fly when read, and newer ones are
        refused with ``StorageError`` (upgrade langchain-fabstir). ``setup`` makes the
        upgrade permanent: each namespace log holding older records is rewritten
        atomically (a concurrent write is not lost; every item is kept, expired or not).
        Returns how many namespaces were rewritten. Safe to run again."""
        return await on_background(self._setup())

    def sweep_ttl(self) -> int:
        """Blocking :meth:`asweep_ttl`."""
        return blocking(self._sweep())

    async def asweep_ttl(self) -> int:
        """Compact every namespace's log to its live items (expired and deleted items,
        old values and refreshes are dropped), each in one atomic rewrite that loses no
        concurrent write. Returns how many expired items were removed. Costs a full read
        of each namespace, and a rewrite of those that had anything to drop."""
        return await on_background(self._sweep())

    def start_ttl_sweeper(
        self, sweep_interval_minutes: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Run :meth:`asweep_ttl` every ``sweep_interval_minutes`` (default: the
        ``TTLConfig``'s, else 5) on the package's background loop until
        :meth:`stop_ttl_sweeper`. A failed sweep is logged and tried again next time.
        Returns the sweeper's future (the running one if already started)."""
        if self._sweeper is not None and not self._sweeper.done():
            return self._sweeper
        interval = sweep_interval_minutes
        if interval is None:
            interval = (self.ttl_config or {}).get("sweep_interval_minutes") or 5
        if interval <= 0:
            raise ValueError("sweep_interval_minutes must be positive")

        stop = self._sweeper_stop = asyncio.Event()
        self._sweeper = asyncio.run_coroutine_threadsafe(
            self._sweep_forever(interval * 60, stop), background_loop()
        )
        return self._sweeper

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper (a sweep in progress finishes first); whether it stopped
        within ``timeout`` seconds (``None``: wait as long as it takes)."""
        sweeper = self._sweeper
        if sweeper is None or sweeper.done():
            return True
        if self._sweeper_stop is not None:
            background_loop().call_soon_threadsafe(self._sweeper_stop.set)
        try:
            sweeper.result(timeout)
        except concurrent.futures.CancelledError:
            pass
        except concurrent.futures.TimeoutError:
            return False
        self._sweeper = None
        return True

    async def aclose(self) -> None:
        """Stop the sweeper and close the HTTP client this store opened (if it did)."""
        await asyncio.to_thread(self.stop_ttl_sweeper, 30)
        if self._owns_access:
            await self._access.aclose()

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        self.stop_ttl_sweeper(30)
        if self._owns_access:
            self._access.close()

    def __enter__(self) -> S5Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> S5Store:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
