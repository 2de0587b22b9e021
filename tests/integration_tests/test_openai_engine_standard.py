"""LangChain's standard integration tests (the group every chat model runs) for
ChatFabstir through a reference host whose engine is ``openai``: the host forwards to an
OpenAI-compatible server on 127.0.0.1 that serves the real SmolLM2 model.

Tool calling and structured output through this path are covered in
``test_openai_engine.py`` (they ride on ``response_format``, passed to the upstream).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_fabstir.host import LlamaEngine, OpenAIEngine, ReferenceHost
from tests.chat_model_features import ChatFabstirFeatures
from tests.openai_upstream import OpenAIUpstream

pytestmark = pytest.mark.llama

_HOST: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def openai_engine_host(llama_engine: LlamaEngine) -> Iterator[str]:
    """Upstream and host on one event loop in a thread: the standard suite calls the
    sync API, which must not share a loop with the servers it talks to."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    upstream = OpenAIUpstream(llama_engine)

    async def start() -> ReferenceHost:
        await upstream.start()
        engine = OpenAIEngine(upstream.url)  # the upstream's port is known now
        return await ReferenceHost(engine, rate_limit_per_minute=None).start()

    async def stop(host: ReferenceHost) -> None:
        await host.stop()
        assert isinstance(host.engine, OpenAIEngine)
        await host.engine.aclose()
        await upstream.stop()

    host = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    _HOST["url"] = host.url
    try:
        yield host.url
    finally:
        asyncio.run_coroutine_threadsafe(stop(host), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


class TestChatFabstirOverOpenAIEngine(ChatFabstirFeatures, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"host_url": _HOST["url"], "temperature": 0.0, "max_tokens": 160}

    # The always-on group: the feature-gated tests (tools, structured output, JSON mode)
    # run against the llama host in test_chat_models_standard.py.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False
