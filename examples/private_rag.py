"""Private RAG on a Fabstir host: FabstirEmbeddings + FabstirVectorStore + ChatFabstir.

A document is cut into chunks, embedded by the host (``/v1/embed``, all-MiniLM-L6-v2),
kept in the host's memory for one session (``uploadVectors``: never on chain, never in
S5, no other session sees it), searched there (``searchVectors``), and the chunks found
are put in front of the question the chat model answers.

What crosses the network in clear: the chunks, their vectors and the query vectors (host
RAG frames have no encrypted form), and the texts sent to ``/v1/embed``. On an encrypted
session the store refuses to send them unless ``allow_plaintext=True`` (set below, so that
the example also runs against an encrypting host given by ``FABSTIR_HOST_URL``).

Run it as is: with no ``FABSTIR_HOST_URL`` it starts a reference host with the real SmolLM2
and all-MiniLM-L6-v2 models in this process (127.0.0.1, a free port).
"""

from __future__ import annotations

import asyncio

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_fabstir import ChatFabstir, FabstirEmbeddings, FabstirVectorStore
from langchain_fabstir.host import local_host

DOCUMENT = """\
Korvo Island lies forty kilometres off the coast and has about two hundred inhabitants.

The lighthouse of Korvo Island is painted bright green. It was built in 1897 by the
engineer Ada Lindqvist and its lamp can be seen from thirty kilometres away.

The island's ferry leaves the harbour every Tuesday and Friday at seven in the morning.

Korvo Island is known for its wild blueberries, which are picked in August.
"""


async def main() -> None:
    async with local_host() as host_url:
        chunks = [part.replace("\n", " ") for part in DOCUMENT.split("\n\n") if part.strip()]
        store = FabstirVectorStore(
            FabstirEmbeddings(host_url=host_url), host_url=host_url, allow_plaintext=True
        )
        try:
            ids = await store.aadd_texts(chunks, metadatas=[{"source": "korvo.txt"}] * len(chunks))
            print(f"Stored {len(ids)} chunks in the host's session memory")

            question = "What colour is the lighthouse of Korvo Island?"
            found = await store.asimilarity_search_with_score(question, k=1)
            for doc, score in found:
                print(f"Retrieved ({score:.2f}): {doc.page_content}")

            llm = ChatFabstir(host_url=host_url, temperature=0.0, max_tokens=40)
            prompt = ChatPromptTemplate.from_messages(
                [
                    ("system", "You answer questions from the given text, in one sentence."),
                    ("human", "Text: {context}\n\nQuestion: {question}"),
                ]
            )
            retriever = store.as_retriever(search_kwargs={"k": 1})

            async def context(q: str) -> str:
                return "\n".join(d.page_content for d in await retriever.ainvoke(q))

            chain = prompt | llm | StrOutputParser()
            answer = await chain.ainvoke({"context": await context(question), "question": question})
            print(f"Question: {question}")
            print(f"Answer: {answer.strip()}")
        finally:
            await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
