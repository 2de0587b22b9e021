"""FabstirEmbeddings against the reference host's ``POST /v1/embed`` with the real
all-MiniLM-L6-v2 (numpy), hostile hosts written for the test, and failover between hosts.
Everything listens on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import numpy as np
import pytest
from aiohttp import web

from langchain_fabstir import FabstirEmbeddings
from langchain_fabstir.discovery import HostDiscovery
from langchain_fabstir.errors import (
    ConnectionFailedError,
    DimensionMismatchError,
    EmbeddingError,
    FabstirError,
    InvalidRequestError,
    ModelNotAvailableError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder
from tests._support.docs import run_snippets
from tests.conftest import ThreadedHost

CAT, KITTEN, TAX = (
    "The cat sat on the mat.",
    "A kitten dozed upon a carpet.",
    "Quarterly tax filings are due in April.",
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    """The real model, loaded once for the module (~1 s, 91 MB)."""
    return MiniLMEmbedder().load()


@pytest.fixture
async def embed_host(minilm: MiniLMEmbedder) -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=minilm) as host:
        yield host


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- the real model through the host ------------------------------------------------------


async def test_semantic_ranking_and_normalised_vectors(
    embed_host: ReferenceHost, minilm: MiniLMEmbedder
) -> None:
    emb = FabstirEmbeddings(host_url=embed_host.url)
    cat, kitten, tax = await emb.aembed_documents([CAT, KITTEN, TAX])
    assert len(cat) == 384
    for v in (cat, kitten, tax):
        assert math.isclose(math.sqrt(_dot(v, v)), 1.0, abs_tol=1e-6)
    assert _dot(cat, kitten) > 0.5 > 0.1 > _dot(cat, tax)
    # The figures measured independently with plain numpy on the same weights.
    assert abs(_dot(cat, kitten) - 0.56) < 0.01 and abs(_dot(cat, tax) + 0.03) < 0.01
    # The client's vectors are the model's (sentence-transformers rule: mean pooling, then
    # L2 normalisation), computed here directly.
    direct, _ = minilm.embed([CAT])
    direct = direct[0] / np.linalg.norm(direct[0])
    assert np.allclose(cat, direct, atol=1e-6)
    query = await emb.aembed_query("Where did the cat sit?")
    assert _dot(query, cat) > _dot(query, tax)


async def test_normalize_false_returns_the_nodes_vectors(embed_host: ReferenceHost) -> None:
    raw = await FabstirEmbeddings(host_url=embed_host.url, normalize=False).aembed_query(CAT)
    assert not math.isclose(math.sqrt(_dot(raw, raw)), 1.0, abs_tol=1e-3)  # as nodes send it


async def test_more_than_96_texts_are_split_and_kept_in_order(
    embed_host: ReferenceHost,
) -> None:
    texts = [f"note {i}" for i in range(200)]
    emb = FabstirEmbeddings(host_url=embed_host.url)
    vectors = await emb.aembed_documents(texts)
    assert len(vectors) == 200
    assert embed_host.embed_route.requests == 3  # 96 + 96 + 8
    alone = await emb.aembed_documents([texts[150]])
    assert np.allclose(vectors[150], alone[0], atol=1e-6)
    small = FabstirEmbeddings(host_url=embed_host.url, batch_size=7)
    assert np.allclose(await small.aembed_documents(texts[:15]), vectors[:15], atol=1e-6)
    assert embed_host.embed_route.requests == 4 + 3


def test_sync_api(minilm: MiniLMEmbedder) -> None:
    th = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=minilm))
    try:
        emb = FabstirEmbeddings(host_url=th.host.url)
        docs = emb.embed_documents([CAT, TAX])
        assert len(docs) == 2 and len(emb.embed_query(KITTEN)) == 384
    finally:
        th.stop()


# --- validation: the node's rules and error shapes, mapped to typed errors ---------------


async def test_host_refusals_are_typed_errors(embed_host: ReferenceHost) -> None:
    with pytest.raises(InvalidRequestError, match="chain_id must be 84532") as info:
        await FabstirEmbeddings(host_url=embed_host.url, chain_id=1).aembed_query(CAT)
    assert info.value.code == "INVALID_REQUEST" and info.value.details["status"] == 400
    with pytest.raises(ModelNotAvailableError, match="Model 'nope' not found") as missing:
        await FabstirEmbeddings(host_url=embed_host.url, model="nope").aembed_query(CAT)
    assert missing.value.code == "MODEL_NOT_AVAILABLE"
    # What every node refuses is refused before anything is sent.
    before = embed_host.embed_route.requests
    for bad in ("   ", "x" * 8193):
        with pytest.raises(InvalidRequestError, match=r"texts\[1\]"):
            await FabstirEmbeddings(host_url=embed_host.url).aembed_documents([CAT, bad])
    assert embed_host.embed_route.requests == before
    assert await FabstirEmbeddings(host_url=embed_host.url).aembed_documents([]) == []


async def test_a_host_without_embeddings_is_a_typed_error() -> None:
    async with ReferenceHost(EchoEngine(), embedder=None) as host:
        emb = FabstirEmbeddings(host_url=host.url, max_retries=0)
        with pytest.raises(EmbeddingError, match="Model manager not initialized") as info:
            await emb.aembed_query(CAT)
    assert info.value.code == "EMBEDDING_FAILED" and info.value.is_retryable


async def test_the_route_answers_as_a_node_does(embed_host: ReferenceHost) -> None:
    url = f"{embed_host.url}/v1/embed"
    async with httpx.AsyncClient() as client:
        ok = await client.post(url, json={"texts": ["hello", "world"]})
        body = ok.json()
        assert ok.status_code == 200
        assert set(body) == {
            "embeddings",
            "model",
            "provider",
            "totalTokens",
            "cost",
            "chainId",
            "chainName",
            "nativeToken",
        }
        assert body["model"] == "all-MiniLM-L6-v2" and body["chainId"] == 84532
        assert body["chainName"] == "Base Sepolia" and body["nativeToken"] == "ETH"
        assert body["cost"] == 0.0 and body["provider"] == "host"
        first = body["embeddings"][0]
        assert set(first) == {"embedding", "text", "tokenCount"} and first["text"] == "hello"
        assert len(first["embedding"]) == 384 and first["tokenCount"] == 3  # [CLS] hello [SEP]
        assert body["totalTokens"] == 6

        async def refused(payload: object, status: int, **kw: object) -> str:
            r = await client.post(url, json=payload, **kw)  # type: ignore[arg-type]
            assert r.status_code == status, r.text
            return r.json()["error"] if status not in (415, 422) else r.text

        assert await refused({"texts": []}, 400) == (
            "Validation error: Validation error for texts: texts array must contain at least 1 item"
        )
        assert await refused({"texts": ["a"] * 97}, 400) == (
            "Validation error: Validation error for texts: texts array cannot contain more "
            "than 96 items (got 97)"
        )
        assert await refused({"texts": ["a", " \n"]}, 400) == (
            "Validation error: Validation error for texts[1]: text cannot be empty or "
            "contain only whitespace"
        )
        assert "got 8193 characters" in await refused({"texts": ["é" * 4096 + "a"]}, 400)
        assert "chain_id must be 84532" in await refused({"texts": ["a"], "chainId": 1}, 400)
        assert await refused({"texts": ["a"], "model": "x"}, 404) == (
            "Model 'x' not found. Available models: all-MiniLM-L6-v2"
        )
        assert "missing field `texts`" in await refused({"text": ["a"]}, 422)
        assert "Failed to deserialize" in await refused({"texts": [1]}, 422)
        r = await client.post(url, content=b"{", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "Failed to parse" in r.text
        r = await client.post(url, content=b'{"texts":["a"]}')
        assert r.status_code == 415
        deep = await client.post(
            url, content=b"[" * 100_000, headers={"Content-Type": "application/json"}
        )
        assert deep.status_code == 400
        longest = await client.post(url, json={"texts": ["word " * 1638]})  # 8190 bytes
        assert longest.status_code == 200  # cut at the tokenizer's 128 tokens, as a node does
        assert longest.json()["embeddings"][0]["tokenCount"] == 128
        default = await client.post(url, json={"texts": ["a"], "model": "default", "chainId": 5611})
        assert default.status_code == 200 and default.json()["chainName"] == "opBNB Testnet"


# --- hostile hosts -----------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/embed", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _answer(vectors: list[list[float]], texts: list[str]) -> dict[str, object]:
    return {
        "embeddings": [
            {"embedding": v, "text": t, "tokenCount": 3}
            for v, t in zip(vectors, texts, strict=False)
        ],
        "model": "all-MiniLM-L6-v2",
    }


async def _texts(request: web.Request) -> list[str]:
    return list((await request.json())["texts"])


async def test_wrong_dimensions_are_a_typed_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        texts = await _texts(request)
        return web.json_response(_answer([[0.1] * 383 for _ in texts], texts))

    async with hostile(handler) as url:
        emb = FabstirEmbeddings(host_url=url, max_retries=0)
        with pytest.raises(DimensionMismatchError, match="383 dimensions, expected 384") as info:
            await emb.aembed_query(CAT)
        assert info.value.code == "DIMENSION_MISMATCH" and not info.value.is_retryable
        # dimensions=None accepts any size, but one size for all.
        assert len(await FabstirEmbeddings(host_url=url, dimensions=None).aembed_query(CAT)) == 383


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[" * 50_000, "nests deeper"),
        (b'{"embeddings": 5}', "without an 'embeddings' list"),
        (b'{"embeddings": []}', "0 embeddings for 1 texts"),
        (b'{"embeddings": [{"embedding": [NaN' + b", 0.1" * 383 + b"]}]}", "non-finite"),
        (b'{"embeddings": [{"embedding": ["a"' + b", 0.1" * 383 + b"]}]}", "other than numbers"),
        (
            b'{"embeddings": [{"text": "other", "embedding": [0.1' + b", 0.1" * 383 + b"]}]}",
            "another text",
        ),
    ],
)
async def test_malformed_answers_are_protocol_errors(body: bytes, match: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with hostile(handler) as url:
        with pytest.raises(ProtocolError, match=match) as info:
            await FabstirEmbeddings(host_url=url, max_retries=0).aembed_query(CAT)
    assert info.value.code == "PROTOCOL_ERROR"


async def test_a_huge_answer_is_cut_off() -> None:
    sent = {"bytes": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"embeddings": [{"embedding": [')
        chunk = b"0.1," * 16384
        with contextlib.suppress(ConnectionError):
            for _ in range(16_000):  # up to 1 GiB, unless the client hangs up
                await response.write(chunk)
                sent["bytes"] += len(chunk)
        return response

    async with hostile(handler) as url:
        with pytest.raises(ProtocolError, match="more than") as info:
            await FabstirEmbeddings(host_url=url, max_retries=0).aembed_query(CAT)
    assert info.value.details["limit"] < 200_000
    assert sent["bytes"] < 64 * 1024 * 1024  # the client hung up long before


async def test_a_silent_host_times_out_and_a_busy_one_rate_limits() -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await release.wait()  # never answers within the client's timeout
        return web.json_response({})

    async with hostile(silent) as url:
        emb = FabstirEmbeddings(host_url=url, timeout=0.3, max_retries=0)
        with pytest.raises(ResponseTimeoutError):
            await emb.aembed_query(CAT)
        release.set()

    async def busy(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "Rate limit exceeded"}, status=429, headers={"Retry-After": "7"}
        )

    async with hostile(busy) as url:
        with pytest.raises(RateLimitedError) as info:
            await FabstirEmbeddings(host_url=url, max_retries=0).aembed_query(CAT)
    assert info.value.retry_after == 7.0 and info.value.code == "RATE_LIMITED"


# --- failover ----------------------------------------------------------------------------


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: refused


async def test_failover_to_the_second_host(embed_host: ReferenceHost) -> None:
    dead = _dead_url()
    emb = FabstirEmbeddings(host_url=[dead, embed_host.url])
    assert len(await emb.aembed_documents([CAT, KITTEN])) == 2
    assert embed_host.embed_route.requests == 1
    with pytest.raises(ConnectionFailedError):
        await FabstirEmbeddings(host_url=dead, max_retries=0).aembed_query(CAT)
    # A host without an embedding model (503) is skipped the same way.
    async with ReferenceHost(EchoEngine(), embedder=None) as bare:
        emb = FabstirEmbeddings(host_url=[bare.url, embed_host.url])
        assert len(await emb.aembed_query(CAT)) == 384
    assert embed_host.embed_route.requests == 2


async def test_hosts_from_discovery(embed_host: ReferenceHost) -> None:
    dead = _dead_url()
    async with HostDiscovery([dead, embed_host.url], use_env=False) as discovery:
        emb = FabstirEmbeddings(discovery=discovery)
        assert len(await emb.aembed_query(CAT)) == 384
        assert embed_host.embed_route.requests == 1
        assert [h.url for h in discovery.hosts if h.healthy] == [embed_host.url]
    # Nothing usable: discovery's own error, with the reason for every host.
    async with HostDiscovery([dead], use_env=False) as discovery:
        with pytest.raises(FabstirError, match="no host available"):
            await FabstirEmbeddings(discovery=discovery).aembed_query(CAT)


def test_no_host_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABSTIR_HOST_URL", raising=False)
    with pytest.raises(InvalidRequestError, match="needs a host"):
        FabstirEmbeddings().embed_query(CAT)


# --- the docs page and the README snippet run ------------------------------------------


@pytest.fixture(scope="module")
def threaded_embed_host(minilm: MiniLMEmbedder) -> Iterator[str]:
    th = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=minilm))
    yield th.host.url
    th.stop()


@pytest.mark.parametrize(
    ("page", "section", "expected"),
    [
        ("docs/text_embedding/fabstir.mdx", None, CAT),
        ("README.md", "## Embeddings", True),
    ],
)
def test_doc_snippets_run(
    page: str,
    section: str | None,
    expected: object,
    threaded_embed_host: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", threaded_embed_host)
    namespace = run_snippets(page, section)
    assert namespace["shown"] == expected  # the page's own claim (retrieval, ranking)
