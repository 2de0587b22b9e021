"""S5CheckpointSaver: langgraph-checkpoint-conformance, a real StateGraph, sync + async."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.graph import END, START, StateGraph

from langchain_fabstir.langgraph.saver import S5CheckpointSaver
from langchain_fabstir.s5 import generate_phrase

from .conftest import ThreadedPortal


def make_saver(portal: ThreadedPortal, phrase: str | None = None) -> S5CheckpointSaver:
    return S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase or generate_phrase())


async def test_conformance_base_and_extended_capabilities(portal: ThreadedPortal) -> None:
    @checkpointer_test(name="S5CheckpointSaver")
    async def s5_saver() -> AsyncIterator[S5CheckpointSaver]:
        saver = make_saver(portal)
        yield saver
        await saver.aclose()

    failures: list[str] = []

    def record(cap: str, test: str, passed: bool, error: str | None) -> None:
        if not passed:
            failures.append(f"{cap}.{test}: {error}")

    report = await validate(s5_saver, progress=ProgressCallbacks(on_test_result=record))
    assert not failures, "\n".join(failures)
    assert report.passed_all_base(), report.to_dict()
    counts = {name: r.tests_passed for name, r in report.results.items() if r.detected}
    print("conformance:", counts)  # the capability list, for the record
    assert set(counts) == {
        "put",
        "put_writes",
        "get_tuple",
        "list",
        "delete_thread",
        "delete_for_runs",
        "copy_thread",
        "prune",
    }
    assert all(r.tests_failed == 0 for r in report.results.values()), report.to_dict()
    assert sum(counts.values()) >= 70


class Counter(TypedDict):
    said: Annotated[list[str], operator.add]
    turns: int


def build_graph(saver: S5CheckpointSaver) -> Any:
    def respond(state: Counter) -> dict[str, Any]:
        heard = state["said"][-1]
        return {
            "said": [f"reply {state.get('turns', 0) + 1} to {heard}"],
            "turns": state.get("turns", 0) + 1,
        }

    builder = StateGraph(Counter)
    builder.add_node("respond", respond)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    return builder.compile(checkpointer=saver)


async def test_state_graph_remembers_across_invocations_and_savers(
    portal: ThreadedPortal, phrase: str
) -> None:
    saver = make_saver(portal, phrase)
    graph = build_graph(saver)
    cfg: RunnableConfig = {"configurable": {"thread_id": "user-42"}}
    await graph.ainvoke({"said": ["hello"]}, cfg)
    out = await graph.ainvoke({"said": ["again"]}, cfg)
    assert out["turns"] == 2
    assert out["said"] == ["hello", "reply 1 to hello", "again", "reply 2 to again"]
    other = await graph.ainvoke({"said": ["fresh"]}, {"configurable": {"thread_id": "x"}})
    assert other["turns"] == 1
    await saver.aclose()

    # A brand-new saver (another process, in effect) sees the same thread.
    again = make_saver(portal, phrase)
    graph2 = build_graph(again)
    out = await graph2.ainvoke({"said": ["third"]}, cfg)
    assert out["turns"] == 3 and out["said"][-1] == "reply 3 to third"
    history = [s async for s in graph2.aget_state_history(cfg)]
    assert len(history) >= 6  # input + loop checkpoints of three invocations
    # A different seed phrase sees nothing.
    stranger = make_saver(portal)
    assert await stranger.aget_tuple(cfg) is None
    await again.aclose()
    await stranger.aclose()


async def test_sync_graph_invoke_inside_running_loop(portal: ThreadedPortal, phrase: str) -> None:
    saver = make_saver(portal, phrase)
    graph = build_graph(saver)
    cfg: RunnableConfig = {"configurable": {"thread_id": "sync-thread"}}
    # Blocking calls from inside this test's running event loop.
    graph.invoke({"said": ["one"]}, cfg)
    out = graph.invoke({"said": ["two"]}, cfg)
    assert out["turns"] == 2
    listed = list(saver.list(cfg))
    assert len(listed) >= 4
    assert [t.checkpoint["id"] for t in listed] == sorted(
        (t.checkpoint["id"] for t in listed), reverse=True
    )
    assert saver.get_tuple(cfg) is not None
    all_threads = list(saver.list(None))
    assert {t.config["configurable"]["thread_id"] for t in all_threads} == {"sync-thread"}
    saver.delete_thread("sync-thread")
    assert saver.get_tuple(cfg) is None
    assert list(saver.list(None)) == []
    saver.close()


async def test_concurrent_savers_lose_no_checkpoints(portal: ThreadedPortal, phrase: str) -> None:
    a, b = make_saver(portal, phrase), make_saver(portal, phrase)
    tid = "shared"

    async def writer(saver: S5CheckpointSaver, n: int) -> list[str]:
        ids = []
        for step in range(n):
            cp = generate_checkpoint(channel_values={"v": step}, channel_versions={"v": step + 1})
            await saver.aput(
                generate_config(tid), cp, generate_metadata(step=step), {"v": step + 1}
            )
            ids.append(cp["id"])
        return ids

    ids_a, ids_b = await asyncio.gather(writer(a, 8), writer(b, 8))
    fresh = make_saver(portal, phrase)
    listed = [t.checkpoint["id"] async for t in fresh.alist(generate_config(tid))]
    assert sorted(listed) == sorted(ids_a + ids_b)
    for saver in (a, b, fresh):
        await saver.aclose()


async def test_delete_thread_seen_by_other_saver_cache(portal: ThreadedPortal, phrase: str) -> None:
    a, b = make_saver(portal, phrase), make_saver(portal, phrase)
    cfg = generate_config("t-del")
    stored = await a.aput(cfg, generate_checkpoint(), generate_metadata(), {})
    assert (await b.aget_tuple(cfg)) is not None  # b now caches the thread's fold
    await a.adelete_thread("t-del")
    cp2 = generate_checkpoint()
    await a.aput(generate_config("t-del"), cp2, generate_metadata(step=5), {})
    got = await b.aget_tuple(generate_config("t-del"))
    assert got is not None and got.checkpoint["id"] == cp2["id"]
    assert await b.aget_tuple(stored) is None  # the old checkpoint is gone for b too
    await a.aclose()
    await b.aclose()


async def test_thread_cache_stays_bounded_when_a_refold_races_an_eviction(
    portal: ThreadedPortal, phrase: str
) -> None:
    from langchain_fabstir.storage.access import on_background

    a = make_saver(portal, phrase)
    b = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase, max_cached_threads=2)
    cfgs = [generate_config(f"t{i}") for i in range(3)]
    for cfg in cfgs:
        await a.aput(cfg, generate_checkpoint(), generate_metadata(), {})
    assert await b.aget_tuple(cfgs[0]) is not None  # b caches t0's fold
    await a.adelete_thread("t0")  # a new epoch: b's next read of t0 refolds it
    await a.aput(cfgs[0], generate_checkpoint(), generate_metadata(), {})

    async def together() -> list[Any]:
        # t0's read is in flight while t1 and t2 enter the cache and evict t0.
        return list(await asyncio.gather(*(b.aget_tuple(cfg) for cfg in cfgs)))

    assert all(t is not None for t in await on_background(together()))
    assert len(b._threads) <= 2
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize("bad", [b"\xff\x00garbage", b"\xa1ak\x61x"])
async def test_corrupt_record_is_a_typed_error(
    portal: ThreadedPortal, phrase: str, bad: bytes
) -> None:
    from langchain_fabstir.errors import IntegrityError

    saver = make_saver(portal, phrase)
    await saver.aput(generate_config("t"), generate_checkpoint(), generate_metadata(), {})

    async def inject() -> None:
        log = (await saver._thread("t")).log
        await log.append(bad)

    from langchain_fabstir.storage.access import on_background

    await on_background(inject())
    fresh = make_saver(portal, phrase)
    with pytest.raises(IntegrityError) as info:
        await fresh.aget_tuple(generate_config("t"))
    assert info.value.code == "INTEGRITY_ERROR"
    await saver.aclose()
    await fresh.aclose()
