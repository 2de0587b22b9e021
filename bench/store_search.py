"""S5Store semantic search (issue 23, item 6).

Latency of ``S5Store.asearch(namespace, query=...)`` over 1,000 items indexed with the real
all-MiniLM-L6-v2 through a reference host's ``/v1/embed`` (the query is embedded there too),
against a local portal: median of 20 warm searches (namespace folded in memory), and of 3
cold ones (a fresh store instance: the sealed log and its vectors are read back from S5).
Beside it, LangGraph's ``InMemoryStore`` with the same embeddings and items, interleaved in
the same run; the figure is S5Store warm over InMemoryStore (aim <= 1.5: the query's
embedding round trip dominates both). Also reported: the warm search with the query's vector
memoised (the store's own cost: fold check on S5, cosine over 1,000 vectors, ranking).

Run alone: ``python -m bench.run store_search``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from langchain_core.embeddings import Embeddings
from langgraph.store.base import PutOp
from langgraph.store.memory import InMemoryStore

from bench.common import entry
from langchain_fabstir import FabstirEmbeddings
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder
from langchain_fabstir.langgraph import S5Store
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import generate_phrase

ITEMS, WARM, COLD = 1000, 20, 3
NS = ("users", "ada", "memories")
TOPICS = [
    "tea",
    "cats",
    "compilers",
    "rivers",
    "tax",
    "gardens",
    "trains",
    "music",
    "bread",
    "stars",
]
QUERIES = ["What does Ada drink?", "Which pet is there?", "When is tax due?", "Any music?"]


class _Memo(Embeddings):
    """The embeddings with query vectors memoised (to time the store alone)."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.cached: dict[str, list[float]] = {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError

    async def aembed_query(self, text: str) -> list[float]:
        if text not in self.cached:
            self.cached[text] = await self.inner.aembed_query(text)
        return self.cached[text]


def _memories() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"m{i}", {"text": f"Memory {i}: Ada thought about {TOPICS[i % 10]} on day {i // 10}."})
        for i in range(ITEMS)
    ]


async def store_search_1000() -> dict[str, Any]:
    engine = MiniLMEmbedder().load()
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            LocalPortal(tmp) as portal,
            ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=engine) as host,
        ):
            emb = FabstirEmbeddings(host_url=host.url)
            index: Any = {"embed": emb, "dims": 384, "fields": ["text"]}
            phrase = generate_phrase()
            store = S5Store(portal_url=portal.url, seed_phrase=phrase, index=index)
            memory = InMemoryStore(index=index)
            items = _memories()
            watch = time.perf_counter()
            await store.abatch([PutOp(NS, k, v) for k, v in items])
            put_s = time.perf_counter() - watch
            await memory.abatch([PutOp(NS, k, v) for k, v in items])

            async def timed(target: Any, query: str) -> float:
                start = time.perf_counter()
                found = await target.asearch(NS, query=query, limit=5)
                assert len(found) == 5 and found[0].score is not None
                return (time.perf_counter() - start) * 1000

            await timed(store, QUERIES[0])  # warm-up: fold, connections
            await timed(memory, QUERIES[0])
            s5_ms: list[float] = []
            mem_ms: list[float] = []
            for n in range(WARM):
                query = QUERIES[n % len(QUERIES)]
                s5_ms.append(await timed(store, query))
                mem_ms.append(await timed(memory, query))
            cold_ms = []
            for n in range(COLD):
                fresh = S5Store(portal_url=portal.url, seed_phrase=phrase, index=index)
                cold_ms.append(await timed(fresh, QUERIES[n % len(QUERIES)]))
                await fresh.aclose()
            # The store's own cost: the same searches with the query's vector memoised.
            memo = _Memo(emb)
            store.embeddings = memo
            for query in QUERIES:
                await memo.aembed_query(query)
            own_ms = [await timed(store, QUERIES[n % len(QUERIES)]) for n in range(WARM)]
            await store.aclose()
    warm, peer = statistics.median(s5_ms), statistics.median(mem_ms)
    ratio = warm / peer
    return entry(
        "s5store_search_1000_items_over_inmemory",
        round(ratio, 2),
        "ratio",
        target="<= 1.5",
        passed=ratio <= 1.5,
        s5store_warm_ms=round(warm, 1),
        inmemory_ms=round(peer, 1),
        s5store_cold_ms=round(statistics.median(cold_ms), 1),
        s5store_warm_query_vector_memoised_ms=round(statistics.median(own_ms), 2),
        put_1000_items_s=round(put_s, 2),
        items=ITEMS,
        model="all-MiniLM-L6-v2 (numpy) via /v1/embed",
    )


BENCHMARKS = [store_search_1000]
