"""A LangGraph chat graph whose memory lives on S5 (``S5CheckpointSaver``).

By default everything runs in this process: a local S5 portal in a temporary directory
(port 0) and a reference host with the deterministic echo engine. Point it at real
services with environment variables::

    FABSTIR_HOST_URL=http://127.0.0.1:8080 \\
    FABSTIR_PORTAL_URL=http://127.0.0.1:5050 FABSTIR_S5_SEED="15 words ..." \\
    python examples/langgraph_memory.py

The graph is invoked twice with the same ``thread_id``; the second time with a brand-new
saver object (as after a restart), which finds the first turn on S5 and sends it to the
model as context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, MessagesState, StateGraph

from langchain_fabstir import SessionManager
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.langgraph.saver import S5CheckpointSaver
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import generate_phrase, seed_phrase_from_env

ROLES = {"human": "user", "ai": "assistant", "system": "system"}


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[tuple[str, str]]:
    """(host URL, portal URL): from the environment, or started here."""
    async with contextlib.AsyncExitStack() as stack:
        host_url = os.environ.get("FABSTIR_HOST_URL")
        if not host_url:
            host = await stack.enter_async_context(ReferenceHost(EchoEngine()))
            host_url = host.url
        portal_url = os.environ.get("FABSTIR_PORTAL_URL")
        if not portal_url:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="fabstir-portal-"))
            portal = await stack.enter_async_context(LocalPortal(data, port=0))
            portal_url = portal.url
        yield host_url, portal_url


def build_graph(manager: SessionManager, session_id: str, saver: S5CheckpointSaver) -> Any:
    async def chat(state: MessagesState) -> dict[str, list[BaseMessage]]:
        *earlier, last = state["messages"]
        context = [{"role": ROLES[m.type], "content": m.text} for m in earlier]
        # The graph's state is the memory: send it as the context, record nothing.
        result = await manager.prompt(session_id, last.text, context=context, record=False)
        usage = {
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens,
        }
        return {"messages": [AIMessage(result.text, usage_metadata=usage)]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    return builder.compile(checkpointer=saver)


async def main() -> None:
    phrase = seed_phrase_from_env() or generate_phrase()
    config: RunnableConfig = {"configurable": {"thread_id": "example-thread"}}
    async with services() as (host_url, portal_url):
        print(f"host: {host_url}\nportal: {portal_url}")
        async with SessionManager(host_url=host_url) as manager:
            session = await manager.create_session(max_tokens=64)
            turns = ["Hi, my name is Ada.", "What is my name?"]
            for turn, text in enumerate(turns, 1):
                # A fresh saver each turn: the memory comes from S5, not from this process.
                saver = S5CheckpointSaver(portal_url=portal_url, seed_phrase=phrase)
                graph = build_graph(manager, session.id, saver)
                out = await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
                reply = out["messages"][-1]
                print(f"\nturn {turn}, user: {text}")
                print(f"turn {turn}, model: {reply.text}")
                print(
                    f"turn {turn}: the thread holds {len(out['messages'])} messages; the "
                    f"model read {reply.usage_metadata['input_tokens']} prompt tokens"
                )
                await saver.aclose()
            await manager.end_session(session.id)
        saver = S5CheckpointSaver(portal_url=portal_url, seed_phrase=phrase)
        checkpoints = [c async for c in saver.alist(config)]
        await saver.aclose()
    assert len(out["messages"]) == 4, "the second turn should see the first"
    print(f"\n{len(checkpoints)} checkpoints of thread 'example-thread' are stored on S5.")


if __name__ == "__main__":
    asyncio.run(main())
