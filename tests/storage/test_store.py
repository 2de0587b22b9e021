"""S5Store (LangGraph BaseStore on S5) against a real LocalPortal on 127.0.0.1.

Operations (sync and async), parity of filters and namespace listing with LangGraph's
InMemoryStore, TTL with an injected clock, the sweeper, concurrent writers, persistence
across instances and processes, a LangGraph graph using the store, isolation between
seeds, and a hostile portal.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

import cbor2
import pytest
from aiohttp import ClientSession, web
from langchain_core.runnables import RunnableLambda
from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

import langchain_fabstir
import langchain_fabstir.langgraph.store as store_module
from langchain_fabstir.errors import IntegrityError, StorageError
from langchain_fabstir.langgraph import S5Store
from langchain_fabstir.s5 import S5FileSystem, S5Identity, S5PortalClient, generate_phrase
from langchain_fabstir.storage.access import on_background

from .conftest import ThreadedPortal

REPO = str(Path(__file__).resolve().parents[2])


class Clock:
    """The store's clock, moved by the test (seconds since the epoch)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


def make_store(portal: ThreadedPortal, phrase: str, **kwargs: Any) -> S5Store:
    return S5Store(portal_url=portal.url, seed_phrase=phrase, **kwargs)


async def log_count(store: S5Store, namespace: tuple[str, ...]) -> int:
    """Records in a namespace's log (to see a compaction)."""

    async def count() -> int:
        log = (await store._space_log(namespace)).log
        return await log.count()

    return await on_background(count())


def test_exported_from_the_package() -> None:
    assert langchain_fabstir.S5Store is S5Store
    assert "S5Store" in langchain_fabstir.__all__


async def test_put_get_update_delete_sync_and_async(portal: ThreadedPortal, phrase: str) -> None:
    clock = Clock()
    store = make_store(portal, phrase, clock=clock)
    ns = ("users", "ada", "memories")
    # Blocking calls from inside this test's running loop, then the async twins.
    store.put(ns, "tea", {"likes": "green", "nested": {"cups": [1, 2]}})
    item = store.get(ns, "tea")
    assert item is not None
    assert item.value == {"likes": "green", "nested": {"cups": [1, 2]}}
    assert item.namespace == ns and item.key == "tea"
    assert (
        item.created_at
        == item.updated_at
        == datetime.fromtimestamp(clock.now, item.created_at.tzinfo)
    )
    item.value["nested"]["cups"].append(3)  # the caller's copy, not the store's
    assert (await store.aget(ns, "tea")).value["nested"]["cups"] == [1, 2]  # type: ignore[union-attr]

    clock.advance(1)
    await store.aput(ns, "tea", {"likes": "black"})
    updated = await store.aget(ns, "tea")
    assert updated is not None and updated.value == {"likes": "black"}
    assert updated.created_at == item.created_at  # kept across updates
    assert (updated.updated_at - item.updated_at).total_seconds() == 60

    assert store.get(ns, "missing") is None
    assert store.get(("nobody",), "tea") is None
    store.delete(ns, "tea")
    assert await store.aget(ns, "tea") is None
    await store.aput(ns, "tea", {"again": True})
    again = store.get(ns, "tea")
    assert again is not None and again.value == {"again": True}
    await store.adelete(ns, "tea")
    assert store.search(ns) == []
    assert store.list_namespaces() == []  # a namespace without live items is not listed
    await store.aclose()


async def test_batch_puts_first_index_accepted_and_bad_input(
    portal: ThreadedPortal, phrase: str
) -> None:
    store = make_store(portal, phrase)
    ns = ("docs",)
    results = await store.abatch(
        [
            GetOp(ns, "a"),
            PutOp(ns, "a", {"text": "one"}, index=["text"]),
            PutOp(ns, "b", {"text": "two"}, index=False),
            PutOp(ns, "a", {"text": "three"}),  # the last put of a key wins
            SearchOp(ns, filter={"text": "two"}),
            ListNamespacesOp(),
            PutOp(ns, "b", None),  # delete
        ]
    )
    got, *_puts, found, spaces, _ = results
    assert got is not None and got.value == {"text": "three"}  # type: ignore[union-attr]
    assert found == []  # b was deleted by the same batch, before its reads
    assert spaces == [ns]
    assert [i.key for i in store.search(ns)] == ["a"]
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(("a.b",), "k", {"x": 1})])
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp((), "k", {"x": 1})])
    with pytest.raises(TypeError, match="cannot be stored"):
        store.put(ns, "k", {"x": object()})
    assert store.get(ns, "k") is None
    store.delete(("never", "written"), "k")  # a delete alone adds no namespace to the index
    assert await on_background(store._namespaces()) == [ns]
    await store.aclose()


NAMESPACES = [
    ("users", "ada", "memories"),
    ("users", "ada", "prefs"),
    ("users", "bob", "memories"),
    ("users", "bob", "prefs", "v1"),
    ("docs", "v1"),
    ("docs", "drafts", "v1"),
    ("solo",),
]

VALUES = [
    {"kind": "a", "n": 1, "tags": ["x", "y"], "meta": {"lang": "en", "score": 0.5}},
    {"kind": "b", "n": 5, "tags": ["x"], "meta": {"lang": "fr", "score": 2}},
    {"kind": "a", "n": 10, "meta": {"lang": "en", "score": 1}},
    {"kind": "c", "n": "not a number"},
]

FILTERS: list[dict[str, Any]] = [
    {"kind": "a"},
    {"kind": {"$eq": "b"}},
    {"kind": {"$ne": "a"}},
    {"n": {"$gt": 1}},
    {"n": {"$gte": 1, "$lte": 5}},
    {"n": {"$lt": 10}},
    {"meta": {"lang": "en"}},
    {"meta": {"score": {"$gte": 1}}},
    {"tags": ["x", "y"]},
    {"tags": ["x"]},
    {"kind": "a", "n": 10},
    {"missing": None},
]


async def fill(store: Any, values: list[dict[str, Any]] = VALUES) -> None:
    ops = []
    for ns in NAMESPACES:
        for j, value in enumerate(values):
            ops.append(PutOp(ns, f"k{j}", value))
    await store.abatch(ops)


async def test_search_and_list_namespaces_match_in_memory_store(
    portal: ThreadedPortal, phrase: str
) -> None:
    store = make_store(portal, phrase)
    memory, numeric = InMemoryStore(), InMemoryStore()
    await fill(store)
    await fill(memory)
    await fill(numeric, VALUES[:3])

    def keys(items: list[Any]) -> list[tuple[tuple[str, ...], str]]:
        return sorted((i.namespace, i.key) for i in items)

    for prefix in [("users",), ("users", "ada"), ("docs",), ("solo",), ("none",), ()]:
        assert keys(await store.asearch(prefix, limit=1000)) == keys(
            await memory.asearch(prefix, limit=1000)
        ), prefix
        for flt in FILTERS:
            ours = keys(await store.asearch(prefix, filter=flt, limit=1000))
            # InMemoryStore raises on a range operator over a value that is not a number
            # (k3's "n"); S5Store treats it as no match: compare with a store without k3.
            ranged = isinstance(flt.get("n"), dict) and any(
                op in flt["n"] for op in ("$gt", "$gte", "$lt", "$lte")
            )
            reference = numeric if ranged else memory
            theirs = keys(await reference.asearch(prefix, filter=flt, limit=1000))
            assert ours == theirs, (prefix, flt)
    with pytest.raises(ValueError, match="operator"):
        await store.asearch(("users",), filter={"n": {"$regex": "x"}})

    listings: list[dict[str, Any]] = [
        {},
        {"prefix": ("users",)},
        {"prefix": ("users", "*", "prefs")},
        {"suffix": ("v1",)},
        {"suffix": ("*", "v1")},
        {"prefix": ("users",), "suffix": ("memories",)},
        {"max_depth": 1},
        {"max_depth": 2},
        {"prefix": ("users",), "max_depth": 2},
        {"limit": 2},
        {"limit": 2, "offset": 2},
        {"offset": 5},
        {"max_depth": 2, "limit": 2, "offset": 1},
    ]
    for kwargs in listings:
        assert await store.alist_namespaces(**kwargs) == await memory.alist_namespaces(**kwargs), (
            kwargs
        )
    assert store.list_namespaces(prefix=("users",), max_depth=2) == [
        ("users", "ada"),
        ("users", "bob"),
    ]
    await store.aclose()


async def test_search_order_limit_offset_and_query(portal: ThreadedPortal, phrase: str) -> None:
    clock = Clock()
    store = make_store(portal, phrase, clock=clock)
    for i in range(6):
        clock.advance(1)
        await store.aput(("mem", f"t{i % 2}"), f"k{i}", {"i": i, "text": f"note {i}"})
    clock.advance(1)
    await store.aput(("mem", "t0"), "k0", {"i": 0, "text": "rewritten"})  # newest now
    newest_first = ["k0", "k5", "k4", "k3", "k2", "k1"]
    assert [i.key for i in await store.asearch(("mem",))] == newest_first
    assert [i.key for i in await store.asearch(("mem",), limit=2, offset=1)] == ["k5", "k4"]
    assert [i.key for i in await store.asearch(("mem",), offset=5)] == ["k1"]
    assert await store.asearch(("mem",), offset=6) == []
    assert await store.asearch(("mem",), limit=0) == []
    # ``query`` without an embedding index does not rank or filter: same order, no score.
    found = await store.asearch(("mem",), query="rewritten", limit=3)
    assert [i.key for i in found] == newest_first[:3]
    assert all(i.score is None for i in found)
    await store.aclose()


async def test_ttl_expiry_refresh_and_sweep_with_injected_clock(
    portal: ThreadedPortal, phrase: str
) -> None:
    clock = Clock()
    store = make_store(portal, phrase, clock=clock, ttl={"default_ttl": 10})
    ns = ("sessions", "ada")
    await store.aput(ns, "short", {"v": 1})  # default_ttl: 10 minutes
    await store.aput(ns, "pinned", {"v": 2}, ttl=None)  # never expires
    await store.aput(ns, "long", {"v": 3}, ttl=30)
    clock.advance(8)
    assert (await store.aget(ns, "short", refresh_ttl=False)) is not None
    clock.advance(3)  # 11 minutes after the write: expired, before any sweep
    assert await store.aget(ns, "short") is None
    assert {i.key for i in await store.asearch(ns)} == {"pinned", "long"}

    # Reads refresh (refresh_on_read defaults to True): "long" lives 30 min from each read.
    clock.advance(25)  # 36 min after its write, 25 after the last read... which was a search
    assert await store.aget(ns, "long") is not None  # refreshed at minute 11 -> 41
    clock.advance(29)  # minute 65: 29 after the refresh of minute 36
    assert await store.aget(ns, "long", refresh_ttl=False) is not None
    clock.advance(2)  # minute 67: 31 after the last refreshing read
    assert await store.aget(ns, "long") is None

    # An item whose namespaces' items all expired: not listed.
    other = ("tmp",)
    await store.aput(other, "x", {"v": 0}, ttl=1)
    assert other in await store.alist_namespaces()
    clock.advance(2)
    assert other not in await store.alist_namespaces()
    assert ns in await store.alist_namespaces()

    # Another instance (another process) sees the same expiry and refreshes.
    twin = make_store(portal, phrase, clock=clock)
    assert {i.key for i in await twin.asearch(ns, refresh_ttl=False)} == {"pinned"}

    # A put after expiry is a new item (new created_at).
    before = await log_count(store, ns)
    assert before > 3  # puts and refresh records
    clock.advance(1)
    await store.aput(ns, "short", {"v": 4}, ttl=5)
    fresh = await store.aget(ns, "short", refresh_ttl=False)
    assert fresh is not None and fresh.created_at == fresh.updated_at

    # The sweep compacts each log to its live items.
    removed = await store.asweep_ttl()
    assert removed == 2  # "long" and "x" (the old "short" was replaced by a put)
    assert await log_count(store, ns) == 2
    assert await log_count(store, other) == 0
    assert {i.key for i in await twin.asearch(ns, refresh_ttl=False)} == {"pinned", "short"}
    kept = await twin.aget(ns, "short", refresh_ttl=False)
    assert kept is not None and kept.created_at == fresh.created_at
    clock.advance(6)  # the compacted record kept its expiry
    assert await twin.aget(ns, "short") is None
    assert await store.asweep_ttl() == 1
    assert await store.asweep_ttl() == 0  # nothing left to drop: no rewrite
    await twin.aclose()
    await store.aclose()


async def test_refresh_on_read_is_one_append_per_namespace_per_batch(
    portal: ThreadedPortal, phrase: str
) -> None:
    clock = Clock()
    store = make_store(portal, phrase, clock=clock, ttl={"default_ttl": 10})
    one, two = ("r", "one"), ("r", "two")
    await store.abatch(
        [
            PutOp(one, "a", {"v": 1}, ttl=10),
            PutOp(one, "b", {"v": 2}, ttl=10),
            PutOp(two, "c", {"v": 3}, ttl=10),
            PutOp(two, "pinned", {"v": 4}),
        ]
    )
    counts = [await log_count(store, one), await log_count(store, two)]
    clock.advance(9)
    await store.abatch(
        [GetOp(one, "a"), GetOp(one, "b"), SearchOp(one), GetOp(two, "c"), GetOp(one, "zz")]
    )
    assert [await log_count(store, one), await log_count(store, two)] == [
        counts[0] + 1,
        counts[1] + 1,
    ]
    clock.advance(9)  # 18 minutes after the puts, 9 after the batch's refresh
    assert {i.key for i in await store.asearch(("r",), refresh_ttl=False)} == {
        "a",
        "b",
        "c",
        "pinned",
    }
    await store.aget(two, "pinned")  # no TTL: nothing to refresh
    assert await log_count(store, two) == counts[1] + 1
    lazy = make_store(portal, phrase, clock=clock, ttl={"refresh_on_read": False})
    assert (await lazy.aget(one, "a")) is not None
    assert await log_count(store, one) == counts[0] + 1
    await lazy.aclose()
    await store.aclose()


async def test_background_sweeper_compacts_and_stops(portal: ThreadedPortal, phrase: str) -> None:
    swept = threading.Event()

    class Watched(S5Store):
        async def _sweep(self) -> int:
            removed = await super()._sweep()
            if removed:
                swept.set()
            return removed

    clock = Clock()
    store = Watched(
        portal_url=portal.url,
        seed_phrase=phrase,
        clock=clock,
        ttl={"default_ttl": 1, "sweep_interval_minutes": 1},
    )
    ns = ("cache",)
    await store.aput(ns, "gone", {"v": 1})
    await store.aput(ns, "kept", {"v": 2}, ttl=None)
    clock.advance(2)
    future = store.start_ttl_sweeper(sweep_interval_minutes=0.001)  # every 60 ms
    assert store.start_ttl_sweeper() is future  # already running
    assert await asyncio.to_thread(swept.wait, 30)
    assert await asyncio.to_thread(store.stop_ttl_sweeper, 30)
    assert future.done()
    assert await log_count(store, ns) == 1
    assert [i.key for i in await store.asearch(ns)] == ["kept"]
    with pytest.raises(ValueError):
        store.start_ttl_sweeper(0)
    await store.aclose()


async def test_concurrent_writers_on_one_namespace_lose_nothing(
    portal: ThreadedPortal, phrase: str
) -> None:
    first = make_store(portal, phrase)
    second = make_store(portal, phrase)
    ns = ("shared", "team")

    async def write(store: S5Store, tag: str) -> None:
        for i in range(8):
            await store.aput(ns, f"{tag}{i}", {"by": tag, "i": i})

    await asyncio.gather(write(first, "a"), write(second, "b"), first.asweep_ttl())
    keys = {i.key for i in await first.asearch(ns, limit=100)}
    assert keys == {f"{t}{i}" for t in "ab" for i in range(8)}
    assert {i.key for i in await second.asearch(ns, limit=100)} == keys
    # A sweep (a rewrite) racing with writes loses none of them either.
    await asyncio.gather(write(second, "c"), first.asweep_ttl(), first.asweep_ttl())
    assert len(await first.asearch(ns, limit=100)) == 24
    assert await first.alist_namespaces() == [ns]
    await first.aclose()
    await second.aclose()


async def test_get_reads_one_namespace_and_cache_is_bounded(
    portal: ThreadedPortal, phrase: str
) -> None:
    store = make_store(portal, phrase)
    await store.abatch([PutOp(("n", str(i)), "k", {"i": i}) for i in range(12)])
    reader = make_store(portal, phrase, max_cached_namespaces=3)
    assert (await reader.aget(("n", "7"), "k")).value == {"i": 7}  # type: ignore[union-attr]
    assert list(reader._spaces) == [("n", "7")]  # no other namespace was loaded
    assert len(await reader.asearch(("n",), limit=100)) == 12
    assert len(reader._spaces) <= 3
    assert len(await reader.alist_namespaces(limit=100)) == 12
    assert len(reader._spaces) <= 3
    await store.aclose()
    await reader.aclose()


async def test_persistence_across_processes(portal: ThreadedPortal, phrase: str) -> None:
    store = make_store(portal, phrase)
    await store.aput(("proc", "parent"), "hello", {"from": "parent"})
    script = (
        "import sys\n"
        "from langchain_fabstir.langgraph import S5Store\n"
        "s = S5Store(portal_url=sys.argv[1], seed_phrase=sys.argv[2])\n"
        "print(s.get(('proc', 'parent'), 'hello').value['from'])\n"
        "s.put(('proc', 'child'), 'hi', {'from': 'child'})\n"
        "s.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, portal.url, phrase],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "parent"
    item = await store.aget(("proc", "child"), "hi")
    assert item is not None and item.value == {"from": "child"}
    assert await store.alist_namespaces(prefix=("proc",)) == [
        ("proc", "child"),
        ("proc", "parent"),
    ]
    await store.aclose()


class State(TypedDict):
    user: str
    said: str
    reply: str


def build_graph(store: S5Store) -> Any:
    def remember(state: State, runtime: Runtime[None]) -> dict[str, Any]:
        assert runtime.store is not None
        ns = ("memories", state["user"])
        known = [m.value["fact"] for m in runtime.store.search(ns)]
        if state["said"].startswith("I like "):
            runtime.store.put(ns, f"f{len(known)}", {"fact": state["said"][7:]})
        return {"reply": ", ".join(known)}

    def first(item: Any) -> str:
        return f" | first: {item.value['fact']}" if item else ""

    def recall(state: State) -> dict[str, Any]:
        item = get_store().get(("memories", state["user"]), "f0")
        return {"reply": state["reply"] + first(item)}

    async def arecall(state: State) -> dict[str, Any]:
        item = await get_store().aget(("memories", state["user"]), "f0")
        return {"reply": state["reply"] + first(item)}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_node("recall", RunnableLambda(recall, afunc=arecall))
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    return builder.compile(store=store)


async def test_langgraph_graph_uses_the_store(portal: ThreadedPortal, phrase: str) -> None:
    store = make_store(portal, phrase)
    graph = build_graph(store)
    await graph.ainvoke({"user": "ada", "said": "I like tea", "reply": ""})
    await graph.ainvoke({"user": "ada", "said": "I like rain", "reply": ""})
    await graph.ainvoke({"user": "bob", "said": "I like cats", "reply": ""})
    await store.aclose()
    # A new store (another process, in effect) and the sync path inside a running loop.
    again = make_store(portal, phrase)
    out = await asyncio.to_thread(
        build_graph(again).invoke, {"user": "ada", "said": "hi", "reply": ""}
    )
    assert set(out["reply"].split(" | ")[0].split(", ")) == {"tea", "rain"}
    assert out["reply"].endswith("| first: tea")
    assert again.list_namespaces(prefix=("memories",)) == [
        ("memories", "ada"),
        ("memories", "bob"),
    ]
    await again.aclose()


async def test_another_seed_reads_and_writes_nothing(portal: ThreadedPortal, phrase: str) -> None:
    owner = make_store(portal, phrase)
    ns = ("private",)
    await owner.aput(ns, "secret", {"pin": 1234})
    stranger = make_store(portal, generate_phrase())
    assert await stranger.aget(ns, "secret") is None
    assert await stranger.asearch(ns) == []
    assert await stranger.alist_namespaces() == []
    await stranger.aput(ns, "secret", {"pin": 0})
    await stranger.aput(ns, "planted", {"x": 1})
    item = await owner.aget(ns, "secret")
    assert item is not None and item.value == {"pin": 1234}
    assert [i.key for i in await owner.asearch(ns)] == ["secret"]
    # Nothing the portal stores names a namespace or a value in clear.
    blobs = await asyncio.to_thread(everything_stored, portal.data_dir)
    assert len(blobs) > 1000
    assert b"private" not in blobs and b"planted" not in blobs and b"secret" not in blobs
    await owner.aclose()
    await stranger.aclose()


def everything_stored(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())


class HostilePortal:
    """An aiohttp proxy to a real portal that, once ``mode`` is set, answers registry
    reads or downloads with garbage: not JSON, a forged entry, or bytes of another blob."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: str | None = None
        self.runner: web.AppRunner | None = None
        self.session: ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if self.mode == "registry-not-json" and path == "/s5/registry" and request.method == "GET":
            return web.Response(status=200, text="<html>gateway</html>")
        if self.mode == "registry-forged" and path == "/s5/registry" and request.method == "GET":
            pk = request.query.get("pk", "")
            body = {"pk": pk, "revision": 7, "data": "AQID", "signature": "A" * 86}
            return web.json_response(body)
        assert self.session is not None
        async with self.session.request(
            request.method,
            self.upstream + request.path_qs,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read(),
            allow_redirects=False,
        ) as reply:
            body = await reply.read()
            if self.mode == "download-garbage" and path.startswith("/s5/download/"):
                body = bytes(b ^ 0x5A for b in body)
            headers = {
                k: v
                for k, v in reply.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=reply.status, body=body, headers=headers)

    async def __aenter__(self) -> str:
        self.session = ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None and self.session is not None
        await self.runner.cleanup()
        await self.session.close()


@pytest.fixture
async def hostile(portal: ThreadedPortal) -> AsyncIterator[tuple[HostilePortal, str]]:
    proxy = HostilePortal(portal.url)
    async with proxy as url:
        yield proxy, url


@pytest.mark.parametrize(
    ("mode", "error", "code", "says"),
    [
        ("registry-not-json", StorageError, "STORAGE_ERROR", "malformed JSON"),
        ("registry-forged", IntegrityError, "INTEGRITY_ERROR", "signature does not verify"),
        ("download-garbage", IntegrityError, "INTEGRITY_ERROR", "does not match its hash"),
    ],
)
async def test_hostile_portal_replies_are_typed_errors(
    hostile: tuple[HostilePortal, str],
    portal: ThreadedPortal,
    phrase: str,
    mode: str,
    error: type[StorageError],
    code: str,
    says: str,
) -> None:
    proxy, url = hostile
    identity = S5Identity.from_phrase(phrase)
    async with S5PortalClient(portal.url) as direct:  # log in where the account lives
        await direct.ensure_account(identity.portal_account_key_pair())
        token = direct.auth_token
    client = S5PortalClient(url, auth_token=token, max_attempts=2, backoff_initial=0.01)
    store = S5Store(S5FileSystem(client, identity))
    await store.aput(("m",), "k", {"v": 1})  # through the proxy, honest so far
    reader = S5Store(S5FileSystem(client, identity))  # nothing cached
    proxy.mode = mode
    with pytest.raises(error, match=says) as caught:
        await asyncio.wait_for(reader.aget(("m",), "k"), 60)
    assert caught.value.code == code
    with pytest.raises(StorageError):
        await asyncio.wait_for(reader.asearch(("m",)), 60)
    proxy.mode = None  # the portal behaves again: so does the store, nothing was lost
    item = await reader.aget(("m",), "k")
    assert item is not None and item.value == {"v": 1}
    await store.aclose()
    await reader.aclose()
    await client.aclose()


async def raw_versions(store: S5Store, namespace: tuple[str, ...]) -> list[Any]:
    async def read() -> list[Any]:
        log = (await store._space_log(namespace)).log
        return [cbor2.loads(r).get("v") for r in (await log.read()).records]

    return await on_background(read())


async def test_format_version_and_setup_after_a_simulated_upgrade(
    portal: ThreadedPortal, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    store = make_store(portal, phrase, clock=clock)
    ns = ("fmt",)
    await store.aput(ns, "a", {"v": 1})
    await store.aput(ns, "b", {"v": 2}, ttl=1)
    await store.adelete(ns, "a")
    await store.aput(ns, "a", {"v": 3})
    assert await raw_versions(store, ns) == [1, 1, 1, 1]
    assert await store.asetup() == 0  # already current: nothing rewritten

    # A later release: format 2, one upgrade step. It reads what this one wrote...
    steps: list[int] = []

    def one_to_two(rec: dict[str, Any]) -> dict[str, Any]:
        steps.append(rec["v"])
        return rec

    monkeypatch.setattr(store_module, "FORMAT_VERSION", 2)
    monkeypatch.setitem(store_module.UPGRADES, 1, one_to_two)
    later = make_store(portal, phrase, clock=clock)
    got = await later.aget(ns, "a")
    assert got is not None and got.value == {"v": 3} and steps
    clock.advance(2)  # "b" expires; setup keeps it all the same (a sweep decides)
    # ... and its setup() rewrites the stored records into its format, once.
    assert await later.asetup() == 1
    assert await raw_versions(later, ns) == [2, 2]
    assert await later.asetup() == 0
    steps.clear()
    again = make_store(portal, phrase, clock=clock)
    assert (await again.aget(ns, "a", refresh_ttl=False)).value == {"v": 3}  # type: ignore[union-attr]
    assert await again.alist_namespaces() == [ns] and steps == []
    assert await again.asweep_ttl() == 1  # "b"
    monkeypatch.undo()

    # This release meets data of that later release: a clear refusal, not garbage.
    today = make_store(portal, phrase, clock=clock)
    with pytest.raises(StorageError, match="newer langchain-fabstir") as info:
        await today.aget(ns, "a")
    assert info.value.code == "STORAGE_ERROR" and info.value.details["format"] == 2
    with pytest.raises(StorageError, match="format 2"):
        today.setup()
    for s in (store, later, again, today):
        await s.aclose()
