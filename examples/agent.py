"""A LangGraph ReAct agent with one tool, on Fabstir, streaming its tokens.

The agent (``create_react_agent`` from ``langgraph.prebuilt``) asks ChatFabstir for a
tool call; the reference host constrains decoding to the tool-call envelope (the
``tools`` extension), so even a 135M-parameter model produces a valid call. The tool's
result then goes back to the model, which answers in text, token by token.

Small models tend to call a tool again and again, and to imitate the tool-call JSON they
see in the conversation. So once a tool has answered, :func:`choose_model` gives the
model no tools and a compact prompt with the results: a common pattern for small models.

Run it as is: with no ``FABSTIR_HOST_URL`` set, it starts a reference host with the real
SmolLM2-135M model in this process (127.0.0.1, a free port).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.host import local_host

# create_react_agent is deprecated in favour of langchain's create_agent (a separate
# package); it works the same and ships with langgraph.
warnings.filterwarnings("ignore", message=".*create_react_agent has been moved.*")


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is 21 degrees and sunny in {city}."


TOOLS = [get_weather]


def with_tool_results(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The question and the tool results in one prompt, for the final answer."""
    system = [m for m in messages if isinstance(m, SystemMessage)]
    question = next(m.content for m in reversed(messages) if isinstance(m, HumanMessage))
    results = "\n".join(f"- {m.name}: {m.content}" for m in messages if isinstance(m, ToolMessage))
    text = f"{question}\n\nTool results:\n{results}\n\nAnswer in one sentence using these results."
    return [*system, HumanMessage(text)]


def make_model_chooser(llm: ChatFabstir) -> Any:
    """The agent's model for each step: with the tools, or (after a tool answered)
    without them, to answer in words."""

    def choose_model(state: dict[str, Any], runtime: Any) -> Runnable[Any, Any]:
        if isinstance(state["messages"][-1], ToolMessage):
            return RunnableLambda(with_tool_results) | llm  # answer in words
        return llm.bind_tools(TOOLS)

    return choose_model


async def main() -> None:
    async with local_host() as host_url:
        llm = ChatFabstir(host_url=host_url, temperature=0.0, max_tokens=48)
        agent = create_react_agent(
            make_model_chooser(llm), TOOLS, prompt="You are a helpful assistant."
        )
        question = "What is the weather in Paris?"
        print(f"User: {question}")
        answering = False
        async for message, _meta in agent.astream(
            {"messages": [HumanMessage(question)]},
            {"recursion_limit": 8},
            stream_mode="messages",
        ):
            if isinstance(message, ToolMessage):
                print(f"[tool result] {message.content}")
            elif isinstance(message, AIMessageChunk):
                for call in message.tool_calls:
                    print(f"[tool call] {call['name']}({call['args']})")
                if message.content:
                    if not answering:
                        print("Assistant: ", end="", flush=True)
                        answering = True
                    print(message.content, end="", flush=True)  # token by token
        print()


if __name__ == "__main__":
    asyncio.run(main())
