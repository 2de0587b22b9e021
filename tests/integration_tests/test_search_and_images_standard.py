"""LangChain's standard integration tests for FabstirSearchRetriever and
FabstirImageGenerationTool, against the reference host on 127.0.0.1 calling the sidecars
written for the tests (their own loop thread: the suites call the sync API too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests, ToolsIntegrationTests

from langchain_fabstir import FabstirImageGenerationTool, FabstirSearchRetriever
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.sidecars import LoopThread, diffusion_sidecar, search_sidecar

_HOST: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def sidecar_host() -> Iterator[str]:
    lt = LoopThread()
    search = lt.enter(search_sidecar())
    diffusion = lt.enter(diffusion_sidecar())
    host = lt.enter(
        ReferenceHost(
            EchoEngine(),
            rate_limit_per_minute=None,
            embedder=None,
            search_upstream=search.url,
            diffusion_upstream=diffusion.url,
        )
    )
    _HOST["url"] = host.url
    yield host.url
    lt.close()


class TestFabstirSearchRetrieverIntegration(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[FabstirSearchRetriever]:
        return FabstirSearchRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"host_url": _HOST["url"]}

    @property
    def retriever_query_example(self) -> str:
        return "what is langchain"


class TestFabstirImageGenerationToolIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self) -> type[FabstirImageGenerationTool]:
        return FabstirImageGenerationTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"host_url": _HOST["url"], "size": "256x256"}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a lighthouse at dusk", "seed": 7}
