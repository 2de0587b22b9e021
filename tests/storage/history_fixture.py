"""Writes ``data/history_before_merging.cbor``: a history as the code before segment merging
(commit 157b33b) stored it, for ``test_history_load.py``.

Run with that code first on the path (e.g. a worktree of the commit)::

    PYTHONPATH=/tmp/old python tests/storage/history_fixture.py

The file (CBOR) holds the user's seed phrase (a throwaway one), the history's blobs and
registry entry; the test puts them into a fresh portal and reads the history with today's code.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import cbor2
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

FIXTURE = Path(__file__).with_name("data") / "history_before_merging.cbor"
SESSION = "before-merging"
SEAL_RECORDS = 3
COUNT = 30


def fixture_messages() -> list[BaseMessage]:
    """The messages of the fixture's history, in order."""
    out: list[BaseMessage] = [SystemMessage("be brief", id="s0")]
    for i in range(1, COUNT):
        if i % 5 == 0:
            out.append(ToolMessage(f"result {i}", tool_call_id=f"call-{i}", artifact={"n": i}))
        elif i % 2:
            out.append(HumanMessage(f"question {i} ✓", id=f"h{i}"))
        else:
            out.append(
                AIMessage(
                    f"answer {i}",
                    id=f"a{i}",
                    tool_calls=[{"name": "f", "args": {"i": i}, "id": f"call-{i + 1}"}]
                    if i % 4 == 0
                    else [],
                    usage_metadata={"input_tokens": i, "output_tokens": 2, "total_tokens": i + 2},
                    response_metadata={"model_name": "m", "finish_reason": "stop"},
                )
            )
    return out


async def write() -> None:
    from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
    from langchain_fabstir.portal import LocalPortal
    from langchain_fabstir.s5 import blake3_hash, generate_phrase
    from langchain_fabstir.storage.access import on_background

    phrase = generate_phrase()
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalPortal(tmp) as portal:
            history = S5ChatMessageHistory(
                SESSION, portal_url=portal.url, seed_phrase=phrase, seal_records=SEAL_RECORDS
            )
            messages = fixture_messages()
            await history.aadd_messages(messages[:10])  # one append that seals three
            for message in messages[10:]:
                await history.aadd_messages([message])
            assert await history.aget_messages() == messages
            log = await on_background(history._get_log())
            head = await on_background(log._load())
            live = {log._head[0], *(seg.hash for seg in head[0].segments)}  # the rest: orphans
            await history.aclose()
        blobs = [p.read_bytes() for p in sorted((Path(tmp) / "blobs").rglob("*")) if p.is_file()]
        blobs = [b for b in blobs if blake3_hash(b) in live]
        db = sqlite3.connect(Path(tmp) / "portal.sqlite3")
        registry = db.execute("SELECT pk, revision, data, signature FROM registry").fetchall()
        db.close()
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_bytes(
        cbor2.dumps(
            {
                "phrase": phrase,
                "session": SESSION,
                "blobs": blobs,
                "registry": [[pk, int(rev), data, sig] for pk, rev, data, sig in registry],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(write())
