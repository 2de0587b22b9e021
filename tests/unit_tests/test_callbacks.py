"""Checkpoint callback handlers, through real LangChain and LangGraph runs.

The chat model here is a small fake defined in this file: it streams a scripted answer
and attaches checkpoint proofs the way the Fabstir chat model does (chunk metadata, the
final message's list, custom events). The proofs themselves are real: a
``CheckpointTracker`` makes them from the same answer, so collected proofs can be
verified against the conversation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from langchain_fabstir import callbacks as callbacks_module
from langchain_fabstir.callbacks import (
    CHECKPOINT_EVENT,
    AsyncFabstirCheckpointHandler,
    FabstirCheckpointHandler,
    get_fabstir_checkpoint_callback,
)
from langchain_fabstir.checkpoints import (
    CheckpointProof,
    CheckpointTracker,
    sign_proof,
    verify_checkpoints,
)

PROMPT = "Tell me a story"
WORDS = [f"w{i} " for i in range(20)]


def make_script(
    session_id: str = "cb-1", interval: int = 3
) -> tuple[list[tuple[str, dict[str, Any] | None]], list[dict[str, Any]], list[dict[str, str]]]:
    """``(word, proof dict or None)`` per chunk, every proof, and the final history."""
    tracker = CheckpointTracker(session_id, checkpoint_interval=interval)
    tracker.add_message("user", PROMPT)
    tracker.add_message("assistant")
    script: list[tuple[str, dict[str, Any] | None]] = []
    for word in WORDS:
        proof = tracker.on_tokens(word, 1)
        script.append((word, proof.to_dict() if proof else None))
    last = tracker.checkpoint()
    script.append(("", last.to_dict()))
    return script, [p.to_dict() for p in tracker.proofs], tracker.history()


SCRIPT, PROOFS, HISTORY = make_script()


class ProofEmittingChatModel(BaseChatModel):
    """Streams ``script``; each chunk carries its proof in ``response_metadata``."""

    script: list[tuple[str, dict[str, Any] | None]]
    all_proofs: list[dict[str, Any]]
    final_list: bool = True  # whether the final message lists the proofs
    emit_events: bool = True  # whether invoke dispatches custom events

    @property
    def _llm_type(self) -> str:
        return "proof-emitting-fake"

    def _chunks(self) -> Iterator[ChatGenerationChunk]:
        for i, (word, proof) in enumerate(self.script):
            metadata: dict[str, Any] = {}
            if proof is not None:
                metadata["fabstir_checkpoint"] = proof
            if i == len(self.script) - 1:
                metadata["fabstir_checkpoints"] = list(self.all_proofs)
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=word, response_metadata=metadata)
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks()  # BaseChatModel.stream reports each to the handlers

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            await asyncio.sleep(0)  # a real await point between chunks
            yield chunk

    def _result(self) -> ChatResult:
        message = AIMessage(
            content="".join(word for word, _ in self.script),
            response_metadata=(
                {"fabstir_checkpoints": list(self.all_proofs)} if self.final_list else {}
            ),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager is not None and self.emit_events:
            events = CallbackManager(
                handlers=run_manager.handlers,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )
            for proof in self.all_proofs:
                events.on_custom_event(CHECKPOINT_EVENT, proof, run_id=run_manager.run_id)
        return self._result()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager is not None and self.emit_events:
            events = AsyncCallbackManager(
                handlers=run_manager.handlers,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )
            for proof in self.all_proofs:
                await events.on_custom_event(CHECKPOINT_EVENT, proof, run_id=run_manager.run_id)
        return self._result()


def model() -> ProofEmittingChatModel:
    return ProofEmittingChatModel(script=SCRIPT, all_proofs=PROOFS)


def keys(proofs: list[CheckpointProof]) -> list[tuple[str, int]]:
    return [p.key for p in proofs]


EXPECTED_KEYS = [("cb-1", n) for n in range(1, len(PROOFS) + 1)]


def test_the_script_has_several_proofs_that_verify() -> None:
    assert len(PROOFS) == 7  # 20 tokens at interval 3: 6 mid-stream + the final one
    verify_checkpoints(HISTORY, PROOFS)


# --- sync and async model runs ---------------------------------------------------------


def test_invoke_collects_final_message_list_and_custom_events_once() -> None:
    handler = FabstirCheckpointHandler()
    seen: list[CheckpointProof] = []
    handler_with_hook = FabstirCheckpointHandler(on_proof=seen.append)
    result = model().invoke(PROMPT, config={"callbacks": [handler, handler_with_hook]})
    assert result.content == "".join(WORDS)
    assert keys(handler.proofs) == EXPECTED_KEYS
    assert handler.errors == [] and handler.conflicts == []
    assert keys(seen) == EXPECTED_KEYS  # once each, although each arrived twice
    verify_checkpoints(HISTORY, handler.proofs_for("cb-1"))


def test_custom_events_alone_are_collected() -> None:
    # the final message carries nothing: proofs arrive through on_custom_event only
    only_events = ProofEmittingChatModel(script=SCRIPT, all_proofs=PROOFS, final_list=False)
    handler = FabstirCheckpointHandler()
    only_events.invoke(PROMPT, config={"callbacks": [handler]})
    assert keys(handler.proofs) == EXPECTED_KEYS


def test_invoke_collects_from_the_final_message_alone() -> None:
    handler = FabstirCheckpointHandler()
    silent = ProofEmittingChatModel(script=SCRIPT, all_proofs=PROOFS, emit_events=False)
    silent.invoke(PROMPT, config={"callbacks": [handler]})
    assert keys(handler.proofs) == EXPECTED_KEYS


def test_stream_collects_each_proof_from_its_chunk() -> None:
    handler = FabstirCheckpointHandler()
    arrivals: list[int] = []
    counted = FabstirCheckpointHandler(on_proof=lambda p: arrivals.append(p.checkpoint_number))
    chunks = []
    for chunk in model().stream(PROMPT, config={"callbacks": [handler, counted]}):
        chunks.append(chunk)
        carried = chunk.response_metadata.get("fabstir_checkpoint")
        if carried is not None:  # already collected when the chunk reaches the caller
            assert handler.latest == CheckpointProof.from_dict(carried)
    assert "".join(str(c.content) for c in chunks) == "".join(WORDS)
    assert keys(handler.proofs) == EXPECTED_KEYS
    assert arrivals == list(range(1, len(PROOFS) + 1))  # in stream order
    # the merged final message mangles the single-proof key; that is ignored quietly
    assert handler.errors == [] and handler.conflicts == []
    verify_checkpoints(HISTORY, handler.proofs)


async def test_astream_with_the_async_handler() -> None:
    handler = AsyncFabstirCheckpointHandler()
    async for chunk in model().astream(PROMPT, config={"callbacks": [handler]}):
        carried = chunk.response_metadata.get("fabstir_checkpoint")
        if carried is not None:
            assert handler.latest == CheckpointProof.from_dict(carried)
    assert keys(handler.proofs) == EXPECTED_KEYS
    assert handler.latest is not None and handler.latest.checkpoint_number == len(PROOFS)
    verify_checkpoints(HISTORY, handler.proofs)


async def test_ainvoke_with_both_handlers() -> None:
    sync_handler, async_handler = FabstirCheckpointHandler(), AsyncFabstirCheckpointHandler()
    await model().ainvoke(PROMPT, config={"callbacks": [sync_handler, async_handler]})
    assert keys(sync_handler.proofs) == keys(async_handler.proofs) == EXPECTED_KEYS


# --- the context manager ----------------------------------------------------------------


def test_context_manager_collects_runs_inside_the_block_only() -> None:
    with get_fabstir_checkpoint_callback() as cb:
        list(model().stream(PROMPT))
        assert keys(cb.proofs) == EXPECTED_KEYS
        with get_fabstir_checkpoint_callback() as inner:
            other_script, other_proofs, _ = make_script("cb-2", interval=5)
            ProofEmittingChatModel(script=other_script, all_proofs=other_proofs).invoke(PROMPT)
        assert {p.session_id for p in inner.proofs} == {"cb-2"}
        assert len(cb.proofs_for("cb-2")) == len(other_proofs)  # the outer block sees it too
    count = len(cb.proofs)
    model().invoke(PROMPT)  # after the block: not collected
    assert len(cb.proofs) == count
    hooks_before = len(callbacks_module._hook_vars)
    for _ in range(5):
        with get_fabstir_checkpoint_callback():
            pass
    assert len(callbacks_module._hook_vars) == hooks_before  # no new hook per use


def test_context_manager_follows_runs_in_worker_threads() -> None:
    with get_fabstir_checkpoint_callback() as cb:
        model().batch([PROMPT] * 4)  # batch runs each input in a worker thread
    assert keys(cb.proofs) == EXPECTED_KEYS


# --- LangGraph and astream_events -------------------------------------------------------


class State(TypedDict):
    count: int


def sync_graph() -> Any:
    def node(state: State) -> dict[str, int]:
        for proof in PROOFS:
            dispatch_custom_event(CHECKPOINT_EVENT, proof)
        return {"count": len(PROOFS)}

    builder = StateGraph(State)
    builder.add_node("emit", node)
    builder.add_edge(START, "emit")
    builder.add_edge("emit", END)
    return builder.compile()


def async_graph() -> Any:
    async def node(state: State) -> dict[str, int]:
        for proof in PROOFS:
            await adispatch_custom_event(CHECKPOINT_EVENT, proof)
        await adispatch_custom_event("something_else", {"ignored": True})
        return {"count": len(PROOFS)}

    builder = StateGraph(State)
    builder.add_node("emit", node)
    builder.add_edge(START, "emit")
    builder.add_edge("emit", END)
    return builder.compile()


def test_langgraph_node_dispatching_custom_events() -> None:
    handler = FabstirCheckpointHandler()
    assert sync_graph().invoke({"count": 0}, config={"callbacks": [handler]}) == {
        "count": len(PROOFS)
    }
    assert keys(handler.proofs) == EXPECTED_KEYS
    with get_fabstir_checkpoint_callback() as cb:
        sync_graph().invoke({"count": 0})
    assert keys(cb.proofs) == EXPECTED_KEYS


async def test_async_langgraph_node_and_astream_events_v2() -> None:
    handler = AsyncFabstirCheckpointHandler()
    events = [
        event
        async for event in async_graph().astream_events(
            {"count": 0}, config={"callbacks": [handler]}, version="v2"
        )
    ]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == [CHECKPOINT_EVENT] * len(PROOFS) + ["something_else"]
    assert [e["data"] for e in custom[:-1]] == PROOFS
    assert keys(handler.proofs) == EXPECTED_KEYS  # the other event was not taken


async def test_chat_model_astream_events_carry_proofs_in_chunks() -> None:
    handler = AsyncFabstirCheckpointHandler()
    stream_chunks = [
        event["data"]["chunk"]
        async for event in model().astream_events(
            PROMPT, config={"callbacks": [handler]}, version="v2"
        )
        if event["event"] == "on_chat_model_stream"
    ]
    carried = [
        c.response_metadata["fabstir_checkpoint"]
        for c in stream_chunks
        if "fabstir_checkpoint" in c.response_metadata
    ]
    assert carried == PROOFS
    assert keys(handler.proofs) == EXPECTED_KEYS


async def test_graph_node_streaming_the_model_inside_the_context_manager() -> None:
    async def node(state: State) -> dict[str, int]:
        count = 0
        async for _ in model().astream(PROMPT):
            count += 1
        return {"count": count}

    builder = StateGraph(State)
    builder.add_node("chat", node)
    builder.add_edge(START, "chat")
    builder.add_edge("chat", END)
    with get_fabstir_checkpoint_callback() as cb:
        await builder.compile().ainvoke({"count": 0})
    assert keys(cb.proofs) == EXPECTED_KEYS
    verify_checkpoints(HISTORY, cb.proofs)


# --- robustness -------------------------------------------------------------------------


def test_concurrent_delivery_from_many_threads_keeps_each_proof_once() -> None:
    handler = FabstirCheckpointHandler()
    arrivals: list[int] = []
    counted = FabstirCheckpointHandler(on_proof=lambda p: arrivals.append(p.checkpoint_number))

    def deliver(i: int) -> None:
        for proof in PROOFS[i % 3 :] + PROOFS:
            for h in (handler, counted):
                h.on_custom_event(CHECKPOINT_EVENT, proof, run_id=None)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(deliver, range(32)))
    assert sorted(keys(handler.proofs)) == EXPECTED_KEYS
    assert sorted(arrivals) == list(range(1, len(PROOFS) + 1))


def test_malformed_conflicting_and_later_signed_proofs() -> None:
    handler = FabstirCheckpointHandler()
    handler.on_custom_event(CHECKPOINT_EVENT, {"not": "a proof"}, run_id=None)
    handler.on_custom_event(CHECKPOINT_EVENT, "garbage", run_id=None)
    assert handler.proofs == [] and len(handler.errors) == 2
    assert all(e.code == "CHECKPOINT_FAILED" for e in handler.errors)

    first = CheckpointProof.from_dict(PROOFS[0])
    handler.on_custom_event(CHECKPOINT_EVENT, first, run_id=None)
    rival = first.model_copy(update={"conversation_hash": "0x" + "ee" * 32})
    handler.on_custom_event(CHECKPOINT_EVENT, rival.to_dict(), run_id=None)
    assert handler.proofs == [first]
    assert handler.conflicts == [(first, rival)]

    signed = sign_proof(first, "0x" + "5a" * 32)
    handler.on_custom_event(CHECKPOINT_EVENT, [signed.to_dict()], run_id=None)
    assert handler.proofs[0].signature == signed.signature  # filled in, still one proof
    assert len(handler.proofs) == 1

    handler.on_custom_event("other_event", PROOFS[1], run_id=None)
    assert len(handler.proofs) == 1
    handler.clear()
    assert handler.proofs == [] and handler.errors == [] and handler.latest is None


def test_chunks_without_proofs_and_non_chat_chunks_are_ignored() -> None:
    handler = FabstirCheckpointHandler()
    handler.on_llm_new_token("x", chunk=None, run_id=None)
    handler.on_llm_new_token(
        "x", chunk=ChatGenerationChunk(message=AIMessageChunk(content="x")), run_id=None
    )
    assert handler.proofs == [] and handler.errors == []


@pytest.mark.parametrize("handler_cls", [FabstirCheckpointHandler, AsyncFabstirCheckpointHandler])
def test_repr_is_short(handler_cls: type) -> None:
    assert repr(handler_cls()).endswith("(proofs=0)")
