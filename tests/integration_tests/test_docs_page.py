"""docs/chat/fabstir.mdx: every fenced ``python`` block runs, in order, in one namespace,
against a reference host with the real SmolLM2 model (the page's ``FABSTIR_HOST_URL``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_fabstir.host import LlamaEngine, ReferenceHost
from tests.conftest import ThreadedHost

pytestmark = pytest.mark.llama

PAGE = Path(__file__).resolve().parents[2] / "docs" / "chat" / "fabstir.mdx"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SECTIONS = [
    "## Overview",
    "### Model features",
    "## Setup",
    "## Instantiation",
    "## Invocation",
    "## Streaming",
    "## Tool calling",
    "## Structured output",
    "## Token usage",
    "## API reference",
]


def python_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == "python"]


@pytest.fixture(scope="module")
def page_host(llama_engine: LlamaEngine) -> Iterator[str]:
    th = ThreadedHost(ReferenceHost(llama_engine, rate_limit_per_minute=None))
    yield th.host.url
    th.stop()


def test_page_has_the_integration_page_sections() -> None:
    text = PAGE.read_text("utf-8")
    for heading in SECTIONS:
        assert re.search(rf"^{re.escape(heading)}$", text, re.M), heading
    assert len(python_blocks(text)) >= 9


@pytest.mark.timeout(240)
def test_every_python_snippet_runs(page_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", page_host)
    monkeypatch.delenv("FABSTIR_PRIVATE_KEY", raising=False)
    namespace: dict[str, object] = {"__name__": "fabstir_docs"}
    for number, block in enumerate(python_blocks(PAGE.read_text("utf-8")), 1):
        code = compile(block, f"{PAGE.name}[python block {number}]", "exec")
        exec(code, namespace)
    profile = namespace["profile"]
    assert isinstance(profile, dict) and profile["max_input_tokens"] > 0
    assert namespace["ai_msg"].tool_calls  # type: ignore[attr-defined]
    assert type(namespace["joke"]).__name__ == "Joke"
