"""``S5CheckpointSaver``: LangGraph checkpoints on S5, end-to-end encrypted.

Details and examples: :class:`S5CheckpointSaver`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import cbor2
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from pydantic import SecretStr

from langchain_fabstir._json import check_utf8, loads_cbor_untrusted
from langchain_fabstir.errors import IntegrityError, StorageError
from langchain_fabstir.s5 import S5FileSystem, S5Identity, blake3_hash
from langchain_fabstir.storage.access import S5Access, SealedLog, blocking, on_background
from langchain_fabstir.storage.folded_logs import FoldedLog, FoldedLogs
from langchain_fabstir.storage.sealed_log import upgrade_record as upgrade

__all__ = ["DEFAULT_ROOT", "FORMAT_VERSION", "UPGRADES", "S5CheckpointSaver", "upgrade_record"]

DEFAULT_ROOT = "home/langgraph/checkpoints"
_Typed = tuple[str, bytes]

FORMAT_VERSION = 1
"""The format of the records this release writes (each record carries it as ``"v"``).

0: records without ``"v"`` (releases before the format was versioned): same shape as 1.
"""

UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: lambda rec: rec}
"""``UPGRADES[n]`` turns a format-``n`` record into a format ``n + 1`` one. A release that
changes the format bumps :data:`FORMAT_VERSION` and adds the step here; reading applies
the steps on the fly and :meth:`S5CheckpointSaver.setup` rewrites stored records."""


def upgrade_record(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """``rec`` in the current format (``StorageError`` for a format from the future)."""
    return upgrade(
        rec, current=FORMAT_VERSION, upgrades=UPGRADES, what=f"checkpoint log of {where}"
    )


def thread_dir_name(thread_id: str) -> str:
    """A path segment for ``thread_id`` (base64url, or a hash for very long ids);
    ``LONE_SURROGATE`` for an id UTF-8 cannot carry.

    >>> thread_dir_name("user-42")
    'tdXNlci00Mg'
    """
    check_utf8(thread_id, "the thread id")
    raw = thread_id.encode("utf-8")
    if len(raw) <= 180:
        return "t" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return "h" + blake3_hash(raw).hex()


@dataclass
class _Thread:
    """The fold of one thread's log."""

    checkpoints: dict[str, dict[str, tuple[_Typed, _Typed, str | None]]] = field(
        default_factory=dict
    )
    blobs: dict[tuple[str, str, Any], _Typed] = field(default_factory=dict)
    writes: dict[tuple[str, str], dict[tuple[str, int], tuple[str, str, _Typed, str]]] = field(
        default_factory=dict
    )

    def fold(self, raw: bytes, where: str) -> None:
        try:
            rec = loads_cbor_untrusted(raw)
            if not isinstance(rec, dict):
                raise ValueError("not a map")
            rec = upgrade_record(rec, where)
            ns, cid = str(rec["ns"]), str(rec["id"])
            if rec["k"] == "c":
                parent = rec["p"]
                self.checkpoints.setdefault(ns, {})[cid] = (
                    (str(rec["cp"][0]), bytes(rec["cp"][1])),
                    (str(rec["md"][0]), bytes(rec["md"][1])),
                    None if parent is None else str(parent),
                )
                for channel, version, kind, data in rec["b"]:
                    self.blobs[(ns, str(channel), version)] = (str(kind), bytes(data))
            elif rec["k"] == "w":
                task_id, task_path = str(rec["t"]), str(rec["tp"])
                stored = self.writes.setdefault((ns, cid), {})
                for idx, channel, kind, data in rec["w"]:
                    key = (task_id, int(idx))
                    if key[1] >= 0 and key in stored:
                        continue
                    stored[key] = (task_id, str(channel), (str(kind), bytes(data)), task_path)
            else:
                raise ValueError(f"unknown record kind {rec['k']!r}")
        except (cbor2.CBORDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise IntegrityError(f"checkpoint log of {where} holds a bad record: {exc}") from exc


def fold_records(records: Sequence[bytes], where: str) -> _Thread:
    """The fold of ``records`` (a fresh :class:`_Thread`)."""
    state = _Thread()
    for raw in records:
        state.fold(raw, where)
    return state


def state_records(
    state: _Thread,
    serde: SerializerProtocol,
    keep: Callable[[str, str], bool] = lambda ns, cid: True,
) -> list[bytes]:
    """Records (current format) that fold back into ``state`` restricted to the
    checkpoints ``keep(ns, checkpoint_id)`` accepts, each with every channel value it
    references and its pending writes. Used to delete, prune, copy and migrate."""
    out: list[bytes] = []
    written: set[tuple[str, str, Any]] = set()
    for ns, found in state.checkpoints.items():
        for cid in sorted(found):
            if not keep(ns, cid):
                continue
            cp_typed, md_typed, parent = found[cid]
            versions = cast(dict[str, Any], serde.loads_typed(cp_typed)).get("channel_versions", {})
            blobs = []
            for channel, version in versions.items():
                key = (ns, channel, version)
                blob = state.blobs.get(key)
                if blob is not None and key not in written:
                    written.add(key)
                    blobs.append([channel, version, blob[0], blob[1]])
            record = {
                "v": FORMAT_VERSION,
                "k": "c",
                "ns": ns,
                "id": cid,
                "p": parent,
                "cp": list(cp_typed),
                "md": list(md_typed),
                "b": blobs,
            }
            out.append(cbor2.dumps(record))
            by_task: dict[tuple[str, str], list[list[Any]]] = {}
            for (task_id, idx), (_, channel, typed, task_path) in state.writes.get(
                (ns, cid), {}
            ).items():
                by_task.setdefault((task_id, task_path), []).append(
                    [idx, channel, typed[0], typed[1]]
                )
            for (task_id, task_path), items in by_task.items():
                writes = {
                    "v": FORMAT_VERSION,
                    "k": "w",
                    "ns": ns,
                    "id": cid,
                    "t": task_id,
                    "tp": task_path,
                    "w": items,
                }
                out.append(cbor2.dumps(writes))
    return out


class S5CheckpointSaver(BaseCheckpointSaver[int]):
    """LangGraph checkpoint saver on S5, end-to-end encrypted.

    Setup and use::

        from langgraph.graph import START, MessagesState, StateGraph
        from langchain_fabstir.langgraph.saver import S5CheckpointSaver

        saver = S5CheckpointSaver(portal_url="http://127.0.0.1:5050", seed_phrase=phrase)
        graph = builder.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "user-42"}}
        graph.invoke({"messages": [("user", "Hi, I'm Ada")]}, config)
        graph.invoke({"messages": [("user", "What's my name?")]}, config)   # remembers

    Sync (``invoke``, ``get_tuple``, ``list``, ``put``, ``put_writes``, ``delete_thread``) and
    async (``ainvoke``, ``a*``) both work, the sync ones even inside a running event loop.

    Storage: each thread is one :class:`~langchain_fabstir.storage.sealed_log.SealedLog` at
    ``{root}/threads/<thread>`` whose records are ``put`` and ``put_writes`` events (CBOR,
    values serialized with the saver's ``serde``, ``JsonPlusSerializer`` by default); a thread's
    state is the fold of its events. Channel values are stored per channel version, as
    LangGraph's own savers do, so unchanged channels are not written again. ``put`` and
    ``put_writes`` cost O(1) uploads at any thread length; several processes may write one
    thread at once (registry compare-and-swap). The fold is cached per thread and brought up
    to date incrementally (one registry read when nothing changed); a ``delete_thread`` by
    another process is noticed through the log's epoch. ``{root}/index/`` lists the threads,
    for ``list(None)``.

    Passes ``langgraph-checkpoint-conformance``: the base capabilities (put, put_writes,
    get_tuple, list, delete_thread) and the extended ones (delete_for_runs, copy_thread,
    prune), each with a sync twin. A log is append-only; deleting runs and pruning rewrite a
    thread's log in one atomic swap (:meth:`SealedLog.rewrite`) that loses no concurrent
    append.

    Format: every record carries its format version (:data:`FORMAT_VERSION`); older formats
    are upgraded when read, newer ones refused with ``StorageError`` (upgrade the package);
    :meth:`S5CheckpointSaver.setup` rewrites stored records into the current format.

    Args:
        fs: where checkpoints live: an :class:`~langchain_fabstir.storage.access.S5Access`
            (``S5CheckpointSaver(S5Access.from_portal(url, seed_phrase=...))``; shared
            with histories and stores), or an authenticated
            :class:`~langchain_fabstir.s5.S5FileSystem`.
        portal_url, seed_phrase, identity: instead, a shorthand that makes an access (as
            :class:`~langchain_fabstir.storage.access.S5Access` takes them); the saver
            closes it.
        access: the same as an access in ``fs``.
        root: where checkpoints live in the user's tree.
        serde: serializer of checkpoints, metadata and writes (default JsonPlus).
        seal_records, seal_bytes: compaction thresholds of each thread's log.
        max_cached_threads: threads whose folded state stays in memory.
    """

    def __init__(
        self,
        fs: S5Access | S5FileSystem | None = None,
        *,
        portal_url: str | None = None,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
        root: str = DEFAULT_ROOT,
        serde: SerializerProtocol | None = None,
        seal_records: int = 64,
        seal_bytes: int = 64 * 1024,
        max_cached_threads: int = 128,
        access: S5Access | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.root = root.strip("/")
        self._access, self._owns_access = S5Access.resolve(
            access, fs=fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity
        )
        self._seal = (seal_records, seal_bytes)
        self._threads: FoldedLogs[str, _Thread] = FoldedLogs(
            self._open_log,
            _Thread,
            where=lambda thread_id: f"thread {thread_id!r}",
            max_entries=max_cached_threads,
        )
        self._indexed: set[str] = set()

    def __repr__(self) -> str:
        return f"S5CheckpointSaver({self._access.portal_url!r}, root={self.root!r})"

    # --- storage (background loop only) ------------------------------------------

    async def _open_log(self, thread_id: str) -> SealedLog:
        path = f"{self.root}/threads/{thread_dir_name(thread_id)}"
        return SealedLog(
            await self._access.fs(),
            path,
            await self._access.write_key(path),
            seal_records=self._seal[0],
            seal_bytes=self._seal[1],
            cache_bytes=4 * 1024 * 1024,
        )

    async def _thread(self, thread_id: str) -> FoldedLog[_Thread]:
        """The thread's log and fold (cached, not brought up to date)."""
        return await self._threads.entry(thread_id)

    async def _state(self, thread_id: str) -> _Thread:
        """The thread's fold, brought up to date (one registry read if unchanged)."""
        return await self._threads.current(thread_id)

    async def _index(self, thread_id: str) -> None:
        if thread_id in self._indexed:
            return
        fs = await self._access.fs()
        name = thread_dir_name(thread_id)
        await fs.put(f"{self.root}/index/{name}", thread_id.encode("utf-8"))
        self._indexed.add(thread_id)

    async def _thread_ids(self) -> list[str]:
        fs = await self._access.fs()
        ids = []
        for entry in await fs.list(f"{self.root}/index"):
            if entry.kind == "file":
                data = await fs.get(f"{self.root}/index/{entry.name}")
                if data is not None:
                    ids.append(data.decode("utf-8", "replace"))
        return ids

    def _tuple(self, thread_id: str, ns: str, cid: str, state: _Thread) -> CheckpointTuple:
        cp_typed, md_typed, parent = state.checkpoints[ns][cid]
        checkpoint = cast(dict[str, Any], self.serde.loads_typed(cp_typed))
        values: dict[str, Any] = {}
        for channel, version in checkpoint.get("channel_versions", {}).items():
            blob = state.blobs.get((ns, channel, version))
            if blob is not None and blob[0] != "empty":
                values[channel] = self.serde.loads_typed(blob)
        checkpoint["channel_values"] = values
        stored = state.writes.get((ns, cid), {})
        ordered = sorted(stored, key=lambda k: writes_sort_key(stored[k][3], *k))
        pending = [
            (stored[k][0], stored[k][1], self.serde.loads_typed(stored[k][2])) for k in ordered
        ]

        def config(checkpoint_id: str) -> RunnableConfig:
            return {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            }

        return CheckpointTuple(
            config=config(cid),
            checkpoint=cast(Checkpoint, checkpoint),
            metadata=cast(CheckpointMetadata, self.serde.loads_typed(md_typed)),
            parent_config=config(parent) if parent else None,
            pending_writes=pending,
        )

    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config.get("configurable", {})
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        state = await self._state(thread_id)
        found = state.checkpoints.get(ns, {})
        cid = get_checkpoint_id(config)
        if cid is None:
            if not found:
                return None
            cid = max(found)
        elif cid not in found:
            return None
        return self._tuple(thread_id, ns, cid, state)

    async def _list(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> list[CheckpointTuple]:
        conf = (config or {}).get("configurable", {})
        threads = [str(conf["thread_id"])] if "thread_id" in conf else await self._thread_ids()
        want_ns = conf.get("checkpoint_ns")
        want_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        out: list[CheckpointTuple] = []
        for thread_id in threads:
            state = await self._state(thread_id)
            for ns, found in state.checkpoints.items():
                if want_ns is not None and ns != want_ns:
                    continue
                for cid in sorted(found, reverse=True):
                    if (want_id and cid != want_id) or (before_id and cid >= before_id):
                        continue
                    if limit is not None and len(out) >= limit:
                        return out
                    if filter:
                        metadata = self.serde.loads_typed(found[cid][1])
                        if not all(metadata.get(k) == v for k, v in filter.items()):
                            continue
                    out.append(self._tuple(thread_id, ns, cid, state))
        return out

    async def _put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        body = dict(cast(dict[str, Any], checkpoint))
        values: dict[str, Any] = body.pop("channel_values", {}) or {}
        blobs = [
            [k, v, *(self.serde.dumps_typed(values[k]) if k in values else ("empty", b""))]
            for k, v in new_versions.items()
        ]
        record = {
            "v": FORMAT_VERSION,
            "k": "c",
            "ns": ns,
            "id": checkpoint["id"],
            "p": conf.get("checkpoint_id"),
            "cp": list(self.serde.dumps_typed(body)),
            "md": list(self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))),
            "b": blobs,
        }
        await self._index(thread_id)
        await (await self._thread(thread_id)).log.append(cbor2.dumps(record))
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        cid = str(conf["checkpoint_id"])
        items: list[tuple[int, str, str, bytes]] = [
            (WRITES_IDX_MAP.get(channel, idx), channel, *self.serde.dumps_typed(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        thread = await self._thread(thread_id)
        known = thread.state.writes.get((ns, cid), {})
        if items and all(i[0] >= 0 and (task_id, i[0]) in known for i in items):
            return  # already stored (LangGraph retries put_writes after failures)
        record = {
            "v": FORMAT_VERSION,
            "k": "w",
            "ns": ns,
            "id": cid,
            "t": task_id,
            "tp": task_path,
            "w": items,
        }
        await thread.log.append(cbor2.dumps(record))

    async def _delete_thread(self, thread_id: str) -> None:
        await (await self._thread(thread_id)).log.clear()
        self._threads.discard(thread_id)
        fs = await self._access.fs()
        await fs.delete(f"{self.root}/index/{thread_dir_name(thread_id)}")
        self._indexed.discard(thread_id)

    async def _rewrite(
        self, thread_id: str, keep: Callable[[_Thread, str, str], bool], *, always: bool = False
    ) -> bool:
        """Rewrite a thread's log keeping the checkpoints ``keep`` accepts (atomic: see
        :meth:`SealedLog.rewrite`; appends made meanwhile are not lost)."""
        thread = await self._thread(thread_id)
        where = f"thread {thread_id!r}"

        def transform(records: list[bytes]) -> list[bytes] | None:
            folded = fold_records(records, where)
            dropped = any(
                not keep(folded, ns, cid)
                for ns, found in folded.checkpoints.items()
                for cid in found
            )
            stale = always and any(
                loads_cbor_untrusted(r).get("v", 0) != FORMAT_VERSION for r in records
            )
            if not dropped and not stale:
                return None
            return state_records(folded, self.serde, lambda ns, cid: keep(folded, ns, cid))

        async with thread.lock:
            return await thread.log.rewrite(transform)

    def _run_id(self, state: _Thread, ns: str, cid: str) -> Any:
        metadata = self.serde.loads_typed(state.checkpoints[ns][cid][1])
        return metadata.get("run_id") if isinstance(metadata, dict) else None

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        wanted = {str(r) for r in run_ids}
        if not wanted:
            return
        for thread_id in await self._thread_ids():
            await self._rewrite(
                thread_id,
                lambda st, ns, cid: str(self._run_id(st, ns, cid)) not in wanted,
            )

    async def _copy_thread(self, source: str, target: str) -> None:
        state = await self._state(source)
        records = state_records(state, self.serde)
        if not records:
            return
        await self._index(target)
        await (await self._thread(target)).log.extend(records)

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        for thread_id in map(str, thread_ids):
            if strategy == "delete":
                await self._delete_thread(thread_id)
            else:
                await self._rewrite(thread_id, lambda st, ns, cid: cid == max(st.checkpoints[ns]))

    async def _setup(self) -> int:
        fs = await self._access.fs()
        meta_path = f"{self.root}/format"
        stored = await fs.get(meta_path)
        if stored is not None:
            try:
                version = int(stored.decode("ascii"))
            except ValueError as exc:
                raise IntegrityError(f"{meta_path} does not hold a format number") from exc
            if version > FORMAT_VERSION:
                raise StorageError(
                    f"the checkpoints at {self.root} are in format {version}, written by a "
                    f"newer langchain-fabstir (this one knows up to {FORMAT_VERSION}): "
                    "upgrade langchain-fabstir",
                    details={"format": version, "supported": FORMAT_VERSION},
                )
        migrated = 0
        for thread_id in await self._thread_ids():
            if await self._rewrite(thread_id, lambda st, ns, cid: True, always=True):
                migrated += 1
        if stored != str(FORMAT_VERSION).encode("ascii"):
            await fs.put(meta_path, str(FORMAT_VERSION).encode("ascii"))
        return migrated

    # --- async API ---------------------------------------------------------------

    async def asetup(self) -> int:
        """Bring stored checkpoints to this release's format (:data:`FORMAT_VERSION`).

        Optional: records of older formats are upgraded on the fly when read, and
        records of newer formats are refused with ``StorageError``. ``setup`` makes the
        upgrade permanent: each thread whose log holds older records is rewritten
        atomically (nothing written meanwhile is lost), then ``{root}/format`` records
        the format. Returns how many threads were rewritten. Safe to run again.
        """
        return await on_background(self._setup())

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata ``run_id`` is in
        ``run_ids``, in every thread and namespace."""
        await on_background(self._delete_for_runs(list(run_ids)))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (all namespaces, with values and pending writes) of
        ``source_thread_id`` into ``target_thread_id``. A missing source copies nothing."""
        await on_background(self._copy_thread(str(source_thread_id), str(target_thread_id)))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep only the newest checkpoint of each namespace (with its
        channel values and pending writes); ``"delete"``: delete the threads.

        Graphs with ``DeltaChannel`` channels rebuild them from ancestor checkpoints,
        which ``keep_latest`` removes: prune those only with ``"delete"``.
        """
        await on_background(self._prune(list(thread_ids), strategy))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint named by ``config`` (the latest of the thread when no id)."""
        return await on_background(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints matching the arguments, newest first."""
        for item in await on_background(self._list(config, filter, before, limit)):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint``; return the config that names it."""
        return await on_background(self._put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes for the checkpoint in ``config``."""
        await on_background(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of ``thread_id``."""
        await on_background(self._delete_thread(str(thread_id)))

    async def aclose(self) -> None:
        """Close the HTTP client this saver opened (if it opened one)."""
        if self._owns_access:
            await self._access.aclose()

    # --- sync API ----------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Blocking :meth:`aget_tuple`."""
        return blocking(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Blocking :meth:`alist`."""
        yield from blocking(self._list(config, filter, before, limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Blocking :meth:`aput`."""
        return blocking(self._put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Blocking :meth:`aput_writes`."""
        blocking(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """Blocking :meth:`adelete_thread`."""
        blocking(self._delete_thread(str(thread_id)))

    def setup(self) -> int:
        """Blocking :meth:`asetup`."""
        return blocking(self._setup())

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Blocking :meth:`adelete_for_runs`."""
        blocking(self._delete_for_runs(list(run_ids)))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Blocking :meth:`acopy_thread`."""
        blocking(self._copy_thread(str(source_thread_id), str(target_thread_id)))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Blocking :meth:`aprune`."""
        blocking(self._prune(list(thread_ids), strategy))

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        if self._owns_access:
            self._access.close()
