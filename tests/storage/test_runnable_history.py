"""S5ChatMessageHistory inside RunnableWithMessageHistory (a lambda model and a real host)."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from langchain_fabstir import SessionManager
from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.storage.access import S5Access

from .conftest import ThreadedPortal

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langgraph_memory.py"


def with_history(model: RunnableLambda, access: S5Access) -> RunnableWithMessageHistory:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RunnableWithMessageHistory is deprecated in core 1.x
        return RunnableWithMessageHistory(
            model, lambda session_id: S5ChatMessageHistory(session_id, access=access)
        )


def count_model(messages: list[BaseMessage]) -> AIMessage:
    return AIMessage(
        f"heard {messages[-1].content} after {len(messages) - 1} earlier messages",
        usage_metadata={"input_tokens": len(messages), "output_tokens": 1, "total_tokens": 2},
    )


async def test_invoke_and_stream_turns_are_stored(portal: ThreadedPortal, phrase: str) -> None:
    access = S5Access(portal_url=portal.url, seed_phrase=phrase)
    chain = with_history(RunnableLambda(count_model), access)
    cfg: RunnableConfig = {"configurable": {"session_id": "rwmh"}}
    first = await chain.ainvoke([HumanMessage("one")], cfg)
    second = chain.invoke([HumanMessage("two")], cfg)  # sync, inside a running loop
    assert first.content == "heard one after 0 earlier messages"
    assert second.content == "heard two after 2 earlier messages"

    def streaming(messages: list[BaseMessage]) -> Iterator[AIMessageChunk]:
        for word in ("streamed", " ", "reply"):
            yield AIMessageChunk(content=word, id="run-x")

    streamer = with_history(RunnableLambda(streaming), access)
    chunks = list(streamer.stream([HumanMessage("three")], cfg))  # sync generator model
    assert "".join(str(c.content) for c in chunks) == "streamed reply"

    stored = await S5ChatMessageHistory("rwmh", access=access).aget_messages()
    assert [type(m).__name__ for m in stored] == [
        "HumanMessage",
        "AIMessage",
        "HumanMessage",
        "AIMessage",
        "HumanMessage",
        "AIMessageChunk",
    ]
    assert stored[-1].content == "streamed reply"
    assert isinstance(stored[1], AIMessage) and stored[1].usage_metadata is not None
    await access.aclose()


async def test_reference_host_model_remembers_the_conversation(
    portal: ThreadedPortal, phrase: str
) -> None:
    access = S5Access(portal_url=portal.url, seed_phrase=phrase)
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        async with SessionManager(host_url=host.url) as manager:
            session = await manager.create_session(model="echo")

            async def call_host(messages: list[BaseMessage]) -> AIMessage:
                result = await manager.prompt(session.id, str(messages[-1].content))
                return AIMessage(result.text, response_metadata={"turns": len(messages)})

            chain = with_history(RunnableLambda(call_host), access)
            cfg: RunnableConfig = {"configurable": {"session_id": session.id}}
            a = await chain.ainvoke([HumanMessage("hello host")], cfg)
            b = await chain.ainvoke([HumanMessage("second prompt")], cfg)
    assert a.content == "Echo: hello host" and b.content == "Echo: second prompt"
    assert b.response_metadata["turns"] == 3  # the history reached the model
    stored = await S5ChatMessageHistory(session.id, access=access).aget_messages()
    assert [m.content for m in stored] == [
        "hello host",
        "Echo: hello host",
        "second prompt",
        "Echo: second prompt",
    ]
    await access.aclose()


async def test_langgraph_memory_example_runs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABSTIR_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), stdout=asyncio.subprocess.PIPE, env=env
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "turn 2: the thread holds 4 messages" in text
    assert "checkpoints of thread 'example-thread' are stored on S5" in text
