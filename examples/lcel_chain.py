"""A LangChain Expression Language chain on Fabstir: prompt | ChatFabstir | parser, streamed.

Run it as is: with no ``FABSTIR_HOST_URL`` set, it starts a reference host with the real
SmolLM2-135M model in this process (127.0.0.1, a free port). Point it at any Fabstir host
with ``FABSTIR_HOST_URL=http://host:8080 python examples/lcel_chain.py``.
"""

from __future__ import annotations

import asyncio

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.host import local_host


async def main() -> None:
    async with local_host() as host_url:
        llm = ChatFabstir(host_url=host_url, temperature=0.2, max_tokens=40)
        prompt = ChatPromptTemplate.from_messages(
            [
                ("system", "You are a concise assistant. Answer in one or two sentences."),
                ("human", "{question}"),
            ]
        )
        chain = prompt | llm | StrOutputParser()

        question = "Why is the sky blue?"
        print(f"Question: {question}")
        print("Answer: ", end="", flush=True)
        pieces = 0
        async for piece in chain.astream({"question": question}):
            print(piece, end="", flush=True)  # text as the host generates it
            pieces += 1
        print(f"\n({pieces} streamed pieces)")

        # The same chain, several questions at once (each call gets its own session).
        topics = ["the moon", "the sea"]
        answers = await chain.abatch([{"question": f"One fact about {t}?"} for t in topics])
        for topic, answer in zip(topics, answers, strict=True):
            print(f"\nOne fact about {topic}: {answer.strip()}")


if __name__ == "__main__":
    asyncio.run(main())
