"""ChatFabstir.astream and .stream through a connection cut mid-answer: every token once,
and the chunk after the cut says the answer was resumed."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_fabstir import ChatFabstir, SessionConfig
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.conftest import ThreadedHost
from tests.faults.proxy import CutAfterFrames, FaultProxy
from tests.faults.test_resilience import SCRIPT, numbers


def chat(port: int) -> ChatFabstir:
    return ChatFabstir(
        host_url=f"http://127.0.0.1:{port}",
        max_tokens=150,
        session_config=SessionConfig(compression_enabled=False),
    )


async def test_astream_survives_a_cut() -> None:
    async with ReferenceHost(EchoEngine(SCRIPT, delay=0.001), rate_limit_per_minute=None) as host:
        async with FaultProxy("127.0.0.1", host.port) as proxy:
            llm = chat(proxy.port)
            clean = "".join([str(c.content) async for c in llm.astream("go")])
            assert numbers(clean) == list(range(150))
            # greeting + ack are frames too: cut 40 frames into the answer
            proxy.set_fault(CutAfterFrames(40), scope="current")  # the pooled socket
            chunks = [c async for c in llm.astream("go")]
            proxy.release()
    text = "".join(str(c.content) for c in chunks)
    assert proxy.cut_happened.is_set()
    assert text == clean  # every token exactly once, in order
    notes = [
        c.response_metadata["fabstir_resumed"]
        for c in chunks
        if "fabstir_resumed" in c.response_metadata
    ]
    assert len(notes) == 1 and notes[0]["mode"] == "exact"
    assert chunks[-1].response_metadata["fabstir_resumes"][0]["mode"] == "exact"
    assert host.resumes == 1


async def test_sync_stream_survives_a_cut() -> None:
    th = ThreadedHost(ReferenceHost(EchoEngine(SCRIPT, delay=0.001), rate_limit_per_minute=None))
    try:
        async with FaultProxy("127.0.0.1", th.host.port) as proxy:
            llm = chat(proxy.port)

            def run() -> list[Any]:
                return list(llm.stream("go"))

            await asyncio.to_thread(run)  # warm: the session's socket now exists
            proxy.set_fault(CutAfterFrames(60), scope="current")
            chunks = await asyncio.to_thread(run)
            proxy.release()
        assert numbers("".join(str(c.content) for c in chunks)) == list(range(150))
        assert th.host.resumes == 1
    finally:
        th.stop()
