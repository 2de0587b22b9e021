"""LangChain's standard unit tests for FabstirImageGenerationTool (no network), and the
retriever's and the tool's fields."""

from __future__ import annotations

import pytest
from langchain_tests.unit_tests import ToolsUnitTests
from pydantic import ValidationError

from langchain_fabstir import FabstirImageGenerationTool, FabstirSearchRetriever


class TestFabstirImageGenerationToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> type[FabstirImageGenerationTool]:
        return FabstirImageGenerationTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"host_url": "http://127.0.0.1:1", "size": "512x512"}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a lighthouse at dusk", "size": "256x256", "seed": 7}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"FABSTIR_HOST_URL": "http://127.0.0.1:8080"},
            {},
            {"host_url": "http://127.0.0.1:8080"},
        )


def test_fields_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", "http://127.0.0.1:8080")
    assert FabstirSearchRetriever().host_url == "http://127.0.0.1:8080"
    assert FabstirSearchRetriever(host_url=["http://a", "http://b"]).k == 10
    for bad in ({"k": 0}, {"k": 21}, {"host_url": [" "]}, {"timeout": 0}):
        with pytest.raises(ValidationError):
            FabstirSearchRetriever(**bad)
    for bad_tool in ({"size": "100x100"}, {"steps": 101}, {"host_url": ""}):
        with pytest.raises(ValidationError):
            FabstirImageGenerationTool(**bad_tool)
    tool = FabstirImageGenerationTool()
    assert tool.response_format == "content_and_artifact"
    assert tool.name == "fabstir_image_generation"
