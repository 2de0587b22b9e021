"""S5Store semantic search (``index=``, LangGraph's IndexConfig) against a real LocalPortal and
the reference host's ``/v1/embed`` with the real all-MiniLM-L6-v2, on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from langgraph.store.base import PutOp, SearchOp

from langchain_fabstir import FabstirEmbeddings
from langchain_fabstir.errors import DimensionMismatchError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder
from langchain_fabstir.langgraph import S5Store
from langchain_fabstir.storage.access import on_background
from tests.conftest import ThreadedHost

from .conftest import ThreadedPortal

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NS = ("users", "ada", "memories")
MEMORIES = {
    "tea": {"text": "Ada likes green tea in the morning.", "topic": "food"},
    "cat": {"text": "Ada has a grey cat called Babbage.", "topic": "pets"},
    "job": {"text": "Ada works as a compiler engineer.", "topic": "work"},
}


@pytest.fixture(scope="module")
def embed_url() -> Iterator[str]:
    host = ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=MiniLMEmbedder().load())
    th = ThreadedHost(host)
    yield host.url
    th.stop()


class Counting(Embeddings):
    """FabstirEmbeddings, counting the texts embedded (to see what is reused from S5)."""

    def __init__(self, url: str) -> None:
        self.inner = FabstirEmbeddings(host_url=url)
        self.texts: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += texts
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.texts.append(text)
        return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += texts
        return await self.inner.aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        self.texts.append(text)
        return await self.inner.aembed_query(text)


def make(portal: ThreadedPortal, phrase: str, embed: Any, **index: Any) -> S5Store:
    config: dict[str, Any] = {"embed": embed, "dims": 384, "fields": ["text"], **index}
    return S5Store(portal_url=portal.url, seed_phrase=phrase, index=config)  # type: ignore[arg-type]


async def test_query_ranks_by_similarity_with_scores(
    portal: ThreadedPortal, phrase: str, embed_url: str
) -> None:
    store = make(portal, phrase, FabstirEmbeddings(host_url=embed_url))
    for key, value in MEMORIES.items():
        await store.aput(NS, key, value)
    found = await store.asearch(("users", "ada"), query="What does Ada drink?")
    assert found[0].key == "tea"
    scores = [i.score for i in found]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert [i.key for i in await store.asearch(NS, query="kitten", limit=1)] == ["cat"]
    assert [i.key for i in await store.asearch(NS, query="kitten", limit=1, offset=1)] != ["cat"]
    # filter first, then ranking
    only = await store.asearch(NS, query="kitten", filter={"topic": {"$ne": "pets"}})
    assert {i.key for i in only} == {"tea", "job"}
    await store.aclose()


async def test_put_reindexes_and_index_false_is_unscored(
    portal: ThreadedPortal, phrase: str, embed_url: str
) -> None:
    store = make(portal, phrase, FabstirEmbeddings(host_url=embed_url))
    for key, value in MEMORIES.items():
        await store.aput(NS, key, value)
    query = "Which pet does Ada have?"
    assert (await store.asearch(NS, query=query, limit=1))[0].key == "cat"
    # The cat is gone, and the job memory now speaks of a dog: re-put reindexes.
    await store.aput(NS, "cat", {"text": "Ada reads novels on the train.", "topic": "pets"})
    await store.aput(NS, "job", {"text": "Ada walks her dog Lovelace every evening."})
    assert (await store.asearch(NS, query=query, limit=1))[0].key == "job"
    # index=False: kept, not ranked (after the scored ones, score None, as InMemoryStore)
    await store.aput(NS, "plain", {"text": "Ada has a hamster."}, index=False)
    found = await store.asearch(NS, query="hamster")
    assert found[-1].key == "plain" and found[-1].score is None
    assert all(i.score is not None for i in found[:-1])
    # index=[...] on the put overrides the config's fields
    await store.aput(NS, "note", {"text": "unrelated words", "about": "a hamster"}, index=["about"])
    assert (await store.asearch(NS, query="hamster", limit=1))[0].key == "note"
    await store.aclose()


async def test_vectors_are_kept_on_s5_beside_the_items(
    portal: ThreadedPortal, phrase: str, embed_url: str
) -> None:
    writer = make(portal, phrase, Counting(embed_url))
    await writer.abatch([PutOp(NS, k, v) for k, v in MEMORIES.items()])
    await writer.aclose()
    emb = Counting(embed_url)
    reader = make(portal, phrase, emb)  # a new instance: nothing cached
    found = await reader.asearch(NS, query="What does Ada drink?", limit=1)
    assert found[0].key == "tea" and found[0].score is not None
    assert emb.texts == ["What does Ada drink?"]  # the items' vectors came from S5
    # Sealed: neither the vectors' bytes (as the store packs them) nor the texts are anywhere
    # on the portal in clear.
    space = await on_background(reader._space(NS))
    kept = space.items["tea"].vectors
    assert kept is not None and kept.shape == (1, 384)
    raw = kept.astype("<f4").tobytes()
    blobs = [p.read_bytes() for p in portal.data_dir.rglob("*") if p.is_file()]
    assert blobs and not any(raw[:32] in b or b"green tea" in b for b in blobs)
    # a compaction (TTL sweep rewrites the logs) keeps the vectors
    await reader.aput(NS, "tea", {"text": "Ada likes green tea in the morning.", "topic": "x"})
    await reader.asweep_ttl()
    third = make(portal, phrase, Counting(embed_url))
    again = await third.abatch([SearchOp(NS, query="kitten", limit=1)])
    assert again[0][0].key == "cat"  # type: ignore[index]
    await reader.aclose()
    await third.aclose()


async def test_embed_function_and_dimension_checks(
    portal: ThreadedPortal, phrase: str, embed_url: str
) -> None:
    inner = FabstirEmbeddings(host_url=embed_url)

    def embed(texts: list[str]) -> list[list[float]]:  # a plain function, as LangGraph allows
        return inner.embed_documents(texts)

    store = make(portal, phrase, embed)
    store.put(NS, "tea", MEMORIES["tea"])
    assert store.search(NS, query="drink")[0].score is not None
    wrong = make(portal, phrase, lambda texts: [[1.0, 0.0]] * len(texts))
    with pytest.raises(DimensionMismatchError):
        wrong.put(NS, "bad", {"text": "two dimensions"})
    assert store.get(NS, "bad") is None  # nothing was written
    with pytest.raises(ValueError, match="dims"):
        S5Store(portal_url=portal.url, seed_phrase=phrase, index={"embed": embed})  # type: ignore[typeddict-item]
    store.close()
    wrong.close()


def test_readme_snippet_runs(
    portal: ThreadedPortal, phrase: str, embed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", embed_url)
    monkeypatch.setenv("FABSTIR_PORTAL_URL", portal.url)
    monkeypatch.setenv("FABSTIR_S5_SEED", phrase)
    text = README.read_text("utf-8")
    start = text.index("\n## Semantic memory (S5Store index)\n")
    section = text[start : text.find("\n## ", start + 1)]
    blocks = [body for lang, body in FENCE.findall(section) if lang == "python"]
    assert len(blocks) == 1
    namespace: dict[str, object] = {"__name__": "fabstir_docs"}
    exec(compile(blocks[0], "README.md[semantic memory]", "exec"), namespace)
    assert namespace["shown"] == "cat"


@pytest.mark.parametrize("fields", [["text"], ["text", "alt"], None])
async def test_ranking_matches_langgraphs_inmemorystore(
    portal: ThreadedPortal, phrase: str, embed_url: str, fields: list[str] | None
) -> None:
    """Parity with LangGraph's own InMemoryStore, same IndexConfig and items."""
    from langgraph.store.memory import InMemoryStore

    emb = FabstirEmbeddings(host_url=embed_url)
    config: Any = {"embed": emb, "dims": 384}
    if fields is not None:
        config["fields"] = fields
    ours = S5Store(
        portal_url=portal.url,
        seed_phrase=phrase,
        index=config,
        root=f"home/parity/{len(fields or [])}",
    )
    theirs = InMemoryStore(index=config)
    ops = [PutOp(NS, k, v) for k, v in MEMORIES.items()]
    ops.append(PutOp(NS, "two", {"text": "Ada bakes bread.", "alt": "Ada owns a parrot."}))
    await ours.abatch(ops)
    await theirs.abatch(ops)
    for query in ["What does Ada drink?", "pets", "her profession", "baking"]:
        for kwargs in ({}, {"limit": 2, "offset": 1}, {"filter": {"topic": "food"}}):
            a = await ours.asearch(NS, query=query, **kwargs)  # type: ignore[arg-type]
            b = await theirs.asearch(NS, query=query, **kwargs)  # type: ignore[arg-type]
            assert [i.key for i in a] == [i.key for i in b], (query, kwargs)
            for x, y in zip(a, b, strict=True):
                assert x.score == pytest.approx(y.score, abs=1e-4)
    await ours.aclose()
