"""LangChain's standard integration tests for ChatFabstir, against the reference host
running the real SmolLM2-135M model (started by a fixture on 127.0.0.1, port 0)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_fabstir.host import LlamaEngine, ReferenceHost
from tests.chat_model_features import ChatFabstirFeatures
from tests.conftest import ThreadedHost

pytestmark = pytest.mark.llama

_HOST: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def llama_reference_host(llama_engine: LlamaEngine) -> Iterator[str]:
    """One reference host for the module, on its own thread: the standard suite calls
    the sync API, which must not share a loop with the host it talks to."""
    # Encrypted (the default path), against the node-faithful host.
    th = ThreadedHost(
        ReferenceHost(llama_engine, rate_limit_per_minute=None, host_key="0x" + "5a" * 32)
    )
    _HOST["url"] = th.host.url
    yield th.host.url
    th.stop()


class TestChatFabstirIntegration(ChatFabstirFeatures, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"host_url": _HOST["url"], "temperature": 0.0, "max_tokens": 160}

    @property
    def tool_choice_value(self) -> str | None:
        return "any"

    # JSON mode constrains the answer to *some* JSON object (the plumbing is checked by
    # the test: the output parses). The 135M model answers "a JSON object with 'setup' and
    # 'punchline'" with nested keys of its own invention, so the shape check fails.
    @pytest.mark.xfail(reason="SmolLM2-135M invents nested keys in free JSON mode", strict=False)
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
