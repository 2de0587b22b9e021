"""A chat that remembers: ``RunnableWithMessageHistory`` around a ChatFabstir chain.

Fabstir hosts keep no memory between prompts; the history lives on the client and is
sent with every prompt as the conversation context. Here it is kept on S5 by
:func:`get_history`: an :class:`S5ChatMessageHistory`, end-to-end encrypted with keys
from the user's seed phrase, appended message by message (no rewrite per turn).

Run it as is: with no ``FABSTIR_HOST_URL`` set, it starts a reference host with the real
SmolLM2-135M model in this process (127.0.0.1, a free port); with no
``FABSTIR_PORTAL_URL`` it starts a local S5 portal in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import AsyncIterator

from langchain_core._api import LangChainDeprecationWarning
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.history import RunnableWithMessageHistory

from langchain_fabstir import ChatFabstir, S5ChatMessageHistory
from langchain_fabstir.chat_message_histories import S5Access
from langchain_fabstir.host import local_host

# RunnableWithMessageHistory and the in-memory history are deprecated in langchain-core
# 1.x in favour of LangGraph persistence; they still work and are widely used.
warnings.filterwarnings("ignore", category=LangChainDeprecationWarning)

_S5: dict[str, S5Access] = {}


def get_history(session_id: str) -> BaseChatMessageHistory:
    """The message history of one conversation, on S5 (one shared portal client)."""
    return S5ChatMessageHistory(session_id, access=_S5["access"])


@contextlib.asynccontextmanager
async def s5_portal() -> AsyncIterator[str]:
    """``FABSTIR_PORTAL_URL`` if set, else a local S5 portal in a temporary directory."""
    url = os.environ.get("FABSTIR_PORTAL_URL")
    if url:
        yield url
        return
    import tempfile

    from langchain_fabstir.portal import LocalPortal

    with tempfile.TemporaryDirectory() as data:
        async with LocalPortal(data, port=0) as portal:
            yield portal.url


async def main() -> None:
    from langchain_fabstir.s5 import generate_phrase, seed_phrase_from_env

    async with local_host() as host_url, s5_portal() as portal_url:
        phrase = seed_phrase_from_env() or generate_phrase()
        _S5["access"] = S5Access(portal_url=portal_url, seed_phrase=phrase)
        llm = ChatFabstir(host_url=host_url, temperature=0.0, max_tokens=40)
        prompt = ChatPromptTemplate.from_messages(
            [
                ("system", "You are a helpful assistant. Answer in one short sentence."),
                MessagesPlaceholder("history"),
                ("human", "{input}"),
            ]
        )
        chat = RunnableWithMessageHistory(
            prompt | llm,
            get_history,
            input_messages_key="input",
            history_messages_key="history",
        )
        config = RunnableConfig(configurable={"session_id": "demo-user"})

        for text in ["Hi! My name is Ada and I love sailing.", "What did I say my name was?"]:
            print(f"User: {text}")
            print("Assistant: ", end="", flush=True)
            async for chunk in chat.astream({"input": text}, config):
                print(chunk.content, end="", flush=True)
            print("\n")

        messages = await get_history("demo-user").aget_messages()
        print(f"History of 'demo-user' on S5 ({portal_url}): {len(messages)} messages")
        for m in messages:
            print(f"  {type(m).__name__:>14}: {str(m.content)[:60]!r}")
        await _S5["access"].aclose()


if __name__ == "__main__":
    asyncio.run(main())
