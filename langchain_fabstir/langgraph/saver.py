"""``S5CheckpointSaver``: LangGraph checkpoints on S5, end-to-end encrypted.

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

Passes ``langgraph-checkpoint-conformance``'s base capabilities (put, put_writes,
get_tuple, list, delete_thread).
"""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
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

from langchain_fabstir.errors import IntegrityError
from langchain_fabstir.s5 import S5FileSystem, S5Identity, blake3_hash
from langchain_fabstir.storage.access import S5Access, SealedLog, blocking, on_background

__all__ = ["DEFAULT_ROOT", "S5CheckpointSaver"]

DEFAULT_ROOT = "home/langgraph/checkpoints"
_Typed = tuple[str, bytes]


def thread_dir_name(thread_id: str) -> str:
    """A path segment for ``thread_id`` (base64url, or a hash for very long ids).

    >>> thread_dir_name("user-42")
    'tdXNlci00Mg'
    """
    raw = thread_id.encode("utf-8")
    if len(raw) <= 180:
        return "t" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return "h" + blake3_hash(raw).hex()


@dataclass
class _Thread:
    """The fold of one thread's log."""

    epoch: bytes = b""
    folded: int = 0
    checkpoints: dict[str, dict[str, tuple[_Typed, _Typed, str | None]]] = field(
        default_factory=dict
    )
    blobs: dict[tuple[str, str, Any], _Typed] = field(default_factory=dict)
    writes: dict[tuple[str, str], dict[tuple[str, int], tuple[str, str, _Typed, str]]] = field(
        default_factory=dict
    )
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fold(self, raw: bytes, where: str) -> None:
        try:
            rec = cbor2.loads(raw)
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


class S5CheckpointSaver(BaseCheckpointSaver[int]):
    """LangGraph checkpoint saver on S5 (see the module docstring).

    Args:
        fs: an authenticated :class:`~langchain_fabstir.s5.S5FileSystem`, or ...
        portal_url: ... a portal URL with
        seed_phrase: the user's S5 seed phrase (``SecretStr``), or
        identity: an :class:`~langchain_fabstir.s5.S5Identity`.
        root: where checkpoints live in the user's tree.
        serde: serializer of checkpoints, metadata and writes (default JsonPlus).
        seal_records, seal_bytes: compaction thresholds of each thread's log.
        max_cached_threads: threads whose folded state stays in memory.
    """

    def __init__(
        self,
        fs: S5FileSystem | None = None,
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
        self._owns_access = access is None
        self._access = access or S5Access(
            fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity
        )
        self._seal = (seal_records, seal_bytes)
        self._max_cached = max(1, max_cached_threads)
        self._threads: OrderedDict[str, tuple[SealedLog, _Thread]] = OrderedDict()
        self._indexed: set[str] = set()

    def __repr__(self) -> str:
        return f"S5CheckpointSaver({self._access.portal_url!r}, root={self.root!r})"

    # --- storage (background loop only) ------------------------------------------

    async def _thread(self, thread_id: str) -> tuple[SealedLog, _Thread]:
        found = self._threads.get(thread_id)
        if found is not None:
            self._threads.move_to_end(thread_id)
            return found
        path = f"{self.root}/threads/{thread_dir_name(thread_id)}"
        log = SealedLog(
            await self._access.fs(),
            path,
            await self._access.write_key(path),
            seal_records=self._seal[0],
            seal_bytes=self._seal[1],
            cache_bytes=4 * 1024 * 1024,
        )
        pair = (log, _Thread())
        self._threads[thread_id] = pair
        while len(self._threads) > self._max_cached:
            self._threads.popitem(last=False)
        return pair

    async def _state(self, thread_id: str) -> _Thread:
        log, state = await self._thread(thread_id)
        async with state.lock:
            snap = await log.read(state.folded)
            if snap.epoch != state.epoch or snap.count < state.folded:
                fresh = _Thread(epoch=snap.epoch, lock=state.lock)
                if state.folded:
                    snap = await log.read(0)
                state = fresh
                self._threads[thread_id] = (log, state)
            for raw in snap.records:
                state.fold(raw, f"thread {thread_id!r}")
            state.folded = snap.count
        return state

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
            "k": "c",
            "ns": ns,
            "id": checkpoint["id"],
            "p": conf.get("checkpoint_id"),
            "cp": list(self.serde.dumps_typed(body)),
            "md": list(self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))),
            "b": blobs,
        }
        await self._index(thread_id)
        log, _ = await self._thread(thread_id)
        await log.append(cbor2.dumps(record))
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
        log, state = await self._thread(thread_id)
        known = state.writes.get((ns, cid), {})
        if items and all(i[0] >= 0 and (task_id, i[0]) in known for i in items):
            return  # already stored (LangGraph retries put_writes after failures)
        record = {"k": "w", "ns": ns, "id": cid, "t": task_id, "tp": task_path, "w": items}
        await log.append(cbor2.dumps(record))

    async def _delete_thread(self, thread_id: str) -> None:
        log, _ = await self._thread(thread_id)
        await log.clear()
        self._threads.pop(thread_id, None)
        fs = await self._access.fs()
        await fs.delete(f"{self.root}/index/{thread_dir_name(thread_id)}")
        self._indexed.discard(thread_id)

    # --- async API ---------------------------------------------------------------

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

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        if self._owns_access:
            self._access.close()
