"""LangChain's standard unit tests for FabstirEmbeddings (no network), and its fields."""

from __future__ import annotations

import pytest
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from langchain_fabstir import FabstirEmbeddings


class TestFabstirEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[FabstirEmbeddings]:
        return FabstirEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"host_url": "http://127.0.0.1:1", "model": "all-MiniLM-L6-v2"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"FABSTIR_HOST_URL": "http://127.0.0.1:8080"},
            {},
            {"host_url": "http://127.0.0.1:8080"},
        )


def test_fields_are_checked_and_described() -> None:
    with pytest.raises(ValidationError):
        FabstirEmbeddings(host_url="http://127.0.0.1:1", batch_size=97)  # nodes take <= 96
    with pytest.raises(ValidationError):
        FabstirEmbeddings(host_url="http://127.0.0.1:1", dimensions=0)
    with pytest.raises(ValidationError):
        FabstirEmbeddings(host_url=["http://127.0.0.1:1", " "])
    for name, field in FabstirEmbeddings.model_fields.items():
        assert field.description, name
    emb = FabstirEmbeddings(host_url="http://127.0.0.1:1")
    assert (emb.model, emb.dimensions, emb.batch_size, emb.normalize) == (
        "all-MiniLM-L6-v2",
        384,
        96,
        True,
    )


def test_batches_stay_within_the_nodes_limits() -> None:
    emb = FabstirEmbeddings(host_url="http://127.0.0.1:1")
    batches = emb._batches([f"t{i}" for i in range(200)])
    assert [len(b) for b in batches] == [96, 96, 8]
    # Texts that JSON-escape to 6x their size: each request body stays near 1 MB.
    heavy = ["\x01" * 8000] * 96
    sizes = [sum(len(t) * 6 for t in b) for b in emb._batches(heavy)]
    assert len(sizes) > 1 and max(sizes) <= 1024 * 1024
