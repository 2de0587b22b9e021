"""LangChain's standard vector store tests against FabstirVectorStore on the reference host,
with the real all-MiniLM-L6-v2 (the suite's 6-dimension fake embeddings do not fit a host:
nodes take exactly 384 dimensions)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from langchain_fabstir import FabstirEmbeddings, FabstirVectorStore
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder
from tests.conftest import ThreadedHost

_HOST: dict[str, str] = {}


@pytest.fixture(scope="module")
def rag_host_url() -> Iterator[str]:
    host = ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=MiniLMEmbedder().load())
    th = ThreadedHost(host)
    _HOST["url"] = host.url
    yield host.url
    th.stop()


class TestFabstirVectorStoreStandard(VectorStoreIntegrationTests):
    @staticmethod
    def get_embeddings() -> Embeddings:
        return FabstirEmbeddings(host_url=_HOST["url"])

    @pytest.fixture
    def vectorstore(self, rag_host_url: str) -> Iterator[FabstirVectorStore]:  # type: ignore[override]
        store = FabstirVectorStore(self.get_embeddings(), host_url=rag_host_url)
        try:
            yield store
        finally:
            store.close()
