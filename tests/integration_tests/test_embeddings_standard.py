"""LangChain's standard integration tests for FabstirEmbeddings, against the reference host
serving the real all-MiniLM-L6-v2 on 127.0.0.1 (its own thread: the suite calls the sync API)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_fabstir import FabstirEmbeddings
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.conftest import ThreadedHost

_HOST: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def embed_reference_host() -> Iterator[str]:
    th = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None))
    _HOST["url"] = th.host.url
    yield th.host.url
    th.stop()


class TestFabstirEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[FabstirEmbeddings]:
        return FabstirEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"host_url": _HOST["url"]}
