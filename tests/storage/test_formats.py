"""Issue 15: the saver's extended capabilities through their sync twins, and a format
version in what the saver and the history write, with ``setup()`` migrating stored data so
that a later release reads what this one wrote. Real LocalPortal on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)

import langchain_fabstir.chat_message_histories as history_module
import langchain_fabstir.langgraph.saver as saver_module
from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
from langchain_fabstir.errors import StorageError
from langchain_fabstir.langgraph.saver import S5CheckpointSaver
from langchain_fabstir.storage.access import on_background

from .conftest import ThreadedPortal


def ids(saver: S5CheckpointSaver, thread: str, ns: str = "") -> list[str]:
    return [t.checkpoint["id"] for t in saver.list(generate_config(thread, checkpoint_ns=ns))]


async def test_sync_twins_of_delete_for_runs_copy_thread_and_prune(
    portal: ThreadedPortal, phrase: str
) -> None:
    saver = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase)
    # Blocking calls from inside this test's running loop (the notebook case).
    parent = None
    stored = []
    for step, run in enumerate(["run-a", "run-b", "run-b"]):
        config = generate_config("t1")
        if parent:
            config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
        cp = generate_checkpoint(channel_values={"step": step}, channel_versions={"step": step + 1})
        parent = saver.put(config, cp, generate_metadata(step=step, run_id=run), {"step": step + 1})
        stored.append(parent)
    saver.put_writes(stored[-1], [("ch", "w")], "task-1")

    saver.copy_thread("t1", "t2")
    assert ids(saver, "t2") == ids(saver, "t1") and len(ids(saver, "t1")) == 3
    latest = saver.get_tuple(generate_config("t2"))
    assert latest is not None and latest.checkpoint["channel_values"] == {"step": 2}
    assert [(w[1], w[2]) for w in latest.pending_writes or []] == [("ch", "w")]

    saver.delete_for_runs(["run-a"])  # every thread
    for thread in ("t1", "t2"):
        runs = [t.metadata.get("run_id") for t in saver.list(generate_config(thread))]
        assert runs == ["run-b", "run-b"]

    saver.prune(["t1"], strategy="keep_latest")
    assert ids(saver, "t1") == [stored[-1]["configurable"]["checkpoint_id"]]
    kept = saver.get_tuple(generate_config("t1"))
    # The kept checkpoint is complete: its values (written by earlier checkpoints) and
    # its writes survive the pruning of the checkpoints that wrote them.
    assert kept is not None and kept.checkpoint["channel_values"] == {"step": 2}
    assert [(w[1], w[2]) for w in kept.pending_writes or []] == [("ch", "w")]
    assert len(ids(saver, "t2")) == 2  # untouched

    saver.prune(["t2"], strategy="delete")
    assert ids(saver, "t2") == []
    with pytest.raises(ValueError, match="unknown prune strategy"):
        saver.prune(["t1"], strategy="keep_some")
    saver.close()


async def raw_records(saver: S5CheckpointSaver, thread: str) -> list[dict[str, Any]]:
    async def read() -> list[bytes]:
        log = (await saver._thread(thread)).log
        return (await log.read()).records

    return [cbor2.loads(r) for r in await on_background(read())]


async def test_saver_format_version_and_setup_after_a_simulated_upgrade(
    portal: ThreadedPortal, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saver = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase)
    cp = generate_checkpoint(channel_values={"x": 1}, channel_versions={"x": 1})
    stored = await saver.aput(generate_config("t"), cp, generate_metadata(step=1), {"x": 1})
    await saver.aput_writes(stored, [("ch", "val")], "task")
    assert [r["v"] for r in await raw_records(saver, "t")] == [1, 1]

    # What the release before this one wrote (no "v") still reads.
    old = dict((await raw_records(saver, "t"))[0])
    old.pop("v")
    old["id"] = "0" + old["id"][1:]  # an older checkpoint of the same thread

    async def append_old() -> None:
        log = (await saver._thread("t")).log
        await log.append(cbor2.dumps(old))

    await on_background(append_old())
    fresh = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase)
    assert len([t async for t in fresh.alist(generate_config("t"))]) == 2

    # A later release: format 2, one upgrade step. It reads what this one wrote...
    steps: list[int] = []

    def one_to_two(rec: dict[str, Any]) -> dict[str, Any]:
        steps.append(rec["v"])
        return rec

    monkeypatch.setattr(saver_module, "FORMAT_VERSION", 2)
    monkeypatch.setitem(saver_module.UPGRADES, 1, one_to_two)
    later = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase)
    got = await later.aget_tuple(stored)
    assert got is not None and got.checkpoint["channel_values"] == {"x": 1}
    assert [(w[1], w[2]) for w in got.pending_writes or []] == [("ch", "val")]
    assert steps  # through the upgrade path
    # ... and its setup() rewrites the stored records into its format, once.
    assert await later.asetup() == 1
    assert {r["v"] for r in await raw_records(later, "t")} == {2}
    assert await later.asetup() == 0
    steps.clear()
    again = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase)
    assert (await again.aget_tuple(stored)) is not None and steps == []
    monkeypatch.undo()

    # This release meets data of that later release: a clear refusal, not garbage.
    today = S5CheckpointSaver(portal_url=portal.url, seed_phrase=phrase)
    with pytest.raises(StorageError, match="newer langchain-fabstir") as info:
        await today.aget_tuple(stored)
    assert info.value.code == "STORAGE_ERROR" and info.value.details["format"] == 2
    with pytest.raises(StorageError, match="format 2"):
        today.setup()
    for s in (saver, fresh, later, again, today):
        await s.aclose()


async def test_history_format_version_and_setup_after_a_simulated_upgrade(
    portal: ThreadedPortal, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = S5ChatMessageHistory("s-1", portal_url=portal.url, seed_phrase=phrase)
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello", id="a1")])

    async def raw() -> list[dict[str, Any]]:
        async def read() -> list[bytes]:
            return (await (await history._get_log()).read()).records

        return [json.loads(r) for r in await on_background(read())]

    assert [r["v"] for r in await raw()] == [1, 1]

    # The previous release's records (no "v") read as before.
    async def append_unversioned() -> None:
        old = {"type": "human", "data": {"content": "from the old release", "type": "human"}}
        await (await history._get_log()).append(json.dumps(old).encode())

    await on_background(append_unversioned())
    assert [m.content for m in await history.aget_messages()][-1] == "from the old release"

    # A later release (format 2) that moved something into additional_kwargs.
    def one_to_two(rec: dict[str, Any]) -> dict[str, Any]:
        data = {**rec["data"], "additional_kwargs": {"upgraded": True}}
        return {**rec, "data": data}

    monkeypatch.setattr(history_module, "FORMAT_VERSION", 2)
    monkeypatch.setitem(history_module.UPGRADES, 1, one_to_two)
    later = S5ChatMessageHistory("s-1", portal_url=portal.url, seed_phrase=phrase)
    messages = await later.aget_messages()
    assert [m.content for m in messages] == ["hi", "hello", "from the old release"]
    assert all(m.additional_kwargs == {"upgraded": True} for m in messages)
    assert messages[1].id == "a1"
    assert later.setup() is True  # the sync twin, inside a running loop
    assert [r["v"] for r in await raw()] == [2, 2, 2]
    assert await later.asetup() is False
    assert [m.content for m in await later.aget_messages()] == [
        "hi",
        "hello",
        "from the old release",
    ]
    monkeypatch.undo()

    with pytest.raises(StorageError, match="newer langchain-fabstir"):
        await history.aget_messages()
    for h in (history, later):
        await h.aclose()
