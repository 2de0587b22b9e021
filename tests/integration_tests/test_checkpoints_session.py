"""Checkpoint proofs made by sessions, co-signed by the reference host, verified, and
delivered to LangChain callbacks (issue: checkpoints)."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir.callbacks import (
    AsyncFabstirCheckpointHandler,
    FabstirCheckpointHandler,
    get_fabstir_checkpoint_callback,
)
from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.checkpoints import (
    CheckpointProof,
    address_of,
    verify_checkpoints,
    verify_host_signature,
    verify_proof_signature,
)
from langchain_fabstir.errors import CheckpointError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.conftest import ThreadedHost

HOST_KEY = "0x" + "42" * 32
USER_KEY = "0x" + "11" * 32


def history_dicts(messages: list[Any]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def counting_host(**kw: Any) -> ReferenceHost:
    """Echo host answering ' 0', ' 1', ... (one token each): boundaries are predictable."""
    tokens = [f" {i}" for i in range(1000)]
    return ReferenceHost(EchoEngine(tokens), rate_limit_per_minute=None, **kw)


@pytest.mark.parametrize("interval", [3, 7, 25, 1000])
async def test_proofs_at_the_right_boundaries(interval: int) -> None:
    async with counting_host(host_key=HOST_KEY) as host:
        config = SessionConfig(checkpoint_interval=interval)
        async with SessionManager(config, host_url=host.url, private_key=USER_KEY) as manager:
            events: list[CheckpointProof] = []
            manager.on("checkpoint", events.append)
            session = await manager.create_session(system_prompt="count")
            for q in ("first", "second"):
                await manager.prompt(session.id, q, max_tokens=20)
            proofs = manager.get_checkpoint_proofs(session.id)
            history = await manager.get_conversation_history(session.id)
    total = 40
    assert [p.token_count for p in proofs] == list(range(interval, total + 1, interval))
    assert [p.checkpoint_number for p in proofs] == list(range(1, len(proofs) + 1))
    assert events == proofs and session.checkpoint_count == len(proofs)
    # Anyone holding the history can recompute every hash.
    verify_checkpoints(history_dicts(history), proofs)
    for p in proofs:
        verify_host_signature(p, host.host_address or "")
        verify_proof_signature(p, address_of(USER_KEY))
    if interval == 3:
        # A checkpoint inside an answer cuts the assistant message: the boundary is
        # mid-message, after exactly `interval` tokens of the answer.
        first = proofs[0]
        assert first.boundary.message_index == 2
        assert first.boundary.char_offset == len(" 0 1 2")


async def test_tampering_is_detected() -> None:
    async with counting_host() as host:
        config = SessionConfig(checkpoint_interval=5)
        async with SessionManager(config, host_url=host.url) as manager:
            s = await manager.create_session()
            await manager.prompt(s.id, "go", max_tokens=12)
            await manager.prompt(s.id, "again", max_tokens=12)
            proofs = manager.get_checkpoint_proofs(s.id)
            history = history_dicts(await manager.get_conversation_history(s.id))
    verify_checkpoints(history, proofs)
    tampered = [dict(m) for m in history]
    tampered[1]["content"] = tampered[1]["content"].replace("1", "7")
    with pytest.raises(CheckpointError):
        verify_checkpoints(tampered, proofs)
    reordered = [proofs[1], proofs[0], *proofs[2:]]
    with pytest.raises(CheckpointError):
        verify_checkpoints(history, reordered)


class ForgingHost(ReferenceHost):
    """Announces one address and signs with another key."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(EchoEngine([f" {i}" for i in range(100)]), host_key=HOST_KEY, **kw)
        self.host_address = address_of("0x" + "77" * 32)


async def test_forged_host_signature_is_refused() -> None:
    async with ForgingHost(rate_limit_per_minute=None) as host:
        config = SessionConfig(checkpoint_interval=4)
        async with SessionManager(config, host_url=host.url) as manager:
            failures: list[CheckpointError] = []
            manager.on("checkpoint_failed", failures.append)
            s = await manager.create_session()
            result = await manager.prompt(s.id, "go", max_tokens=10)
            assert result.text  # a warning by default: the answer still arrives
            assert failures and failures[0].code == "CHECKPOINT_FAILED"
            assert "signature" in failures[0].message or failures[0].details
            assert all(p.host_signature is None for p in manager.get_checkpoint_proofs(s.id))

        strict = SessionConfig(checkpoint_interval=4, require_verified_checkpoints=True)
        async with SessionManager(strict, host_url=host.url) as manager:
            s = await manager.create_session()
            with pytest.raises(CheckpointError):
                await manager.prompt(s.id, "go", max_tokens=10)


async def test_create_checkpoint_on_demand_and_end_session_returns_all() -> None:
    async with counting_host() as host:
        async with SessionManager(SessionConfig(checkpoint_interval=1000), host_url=host.url) as m:
            s = await m.create_session(system_prompt="sys")
            await m.prompt(s.id, "q", max_tokens=5)
            proof = await m.create_checkpoint(s.id)
            assert proof.checkpoint_number == 1 and proof.token_count == 5
            summary = await m.end_session(s.id)
            history = history_dicts(await m.get_conversation_history(s.id))
    assert [p.checkpoint_number for p in summary.checkpoint_proofs] == [1]
    verify_checkpoints(history, summary.checkpoint_proofs)


# --- LangChain callbacks ----------------------------------------------------------------


def chat(url: str, interval: int = 4) -> ChatFabstir:
    return ChatFabstir(
        host_url=url,
        max_tokens=10,
        session_config=SessionConfig(checkpoint_interval=interval),
    )


async def test_async_paths_deliver_every_proof() -> None:
    async with counting_host(host_key=HOST_KEY) as host:
        llm = chat(host.url)
        handler = AsyncFabstirCheckpointHandler()
        msg = await llm.ainvoke("go", config={"callbacks": [handler]})
        assert [p.token_count for p in handler.proofs] == [4, 8]
        assert all(p.host_signature for p in handler.proofs)
        assert len(msg.response_metadata["fabstir_checkpoints"]) == 2

        handler = AsyncFabstirCheckpointHandler()
        chunks = [c async for c in llm.astream("go", config={"callbacks": [handler]})]
        carrying = [c for c in chunks if c.response_metadata.get("fabstir_checkpoints")]
        assert len(carrying) == 2  # the chunks that complete the checkpoints
        assert [p.token_count for p in handler.proofs] == [4, 8]

        with get_fabstir_checkpoint_callback() as cb:
            await llm.ainvoke("go")
        assert [p.checkpoint_number for p in cb.proofs] == [1, 2]


async def test_sync_paths_deliver_every_proof() -> None:
    th = ThreadedHost(counting_host(host_key=HOST_KEY))
    try:
        llm = chat(th.host.url)
        handler = FabstirCheckpointHandler()
        await asyncio.to_thread(llm.invoke, "go", config={"callbacks": [handler]})
        assert [p.token_count for p in handler.proofs] == [4, 8]
        handler = FabstirCheckpointHandler()
        await asyncio.to_thread(lambda: list(llm.stream("go", config={"callbacks": [handler]})))
        assert [p.token_count for p in handler.proofs] == [4, 8]
    finally:
        th.stop()


class State(TypedDict):
    question: str
    answer: str


async def test_langgraph_node_and_astream_events() -> None:
    async with counting_host(host_key=HOST_KEY) as host:
        llm = chat(host.url, interval=3)

        async def node(state: State) -> State:
            msg = await llm.ainvoke(state["question"])
            return {"question": state["question"], "answer": str(msg.content)}

        graph = StateGraph(State)
        graph.add_node("model", node)
        graph.add_edge(START, "model")
        graph.add_edge("model", END)
        app = graph.compile()

        handler = AsyncFabstirCheckpointHandler()
        out = await app.ainvoke({"question": "go", "answer": ""}, {"callbacks": [handler]})
        assert out["answer"].startswith(" 0 1 2")
        assert [p.token_count for p in handler.proofs] == [3, 6, 9]

        events = [
            e
            async for e in app.astream_events({"question": "go", "answer": ""}, version="v2")
            if e["event"] == "on_custom_event" and e["name"] == "fabstir_checkpoint"
        ]
        assert [e["data"]["tokenCount"] for e in events] == [3, 6, 9]

        chain = RunnableLambda(lambda q: q) | llm
        events = [
            e
            async for e in chain.astream_events("go", version="v2")
            if e["event"] == "on_custom_event"
        ]
        assert len(events) == 3
