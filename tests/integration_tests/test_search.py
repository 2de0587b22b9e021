"""FabstirSearchRetriever against the reference host's ``POST /v1/search``, which really calls a
search API written for the tests (Brave's JSON shape, 127.0.0.1); hostile search APIs and
hostile hosts; failover. Everything listens on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from aiohttp import web

from langchain_fabstir import FabstirSearchRetriever
from langchain_fabstir.discovery import HostDiscovery
from langchain_fabstir.errors import (
    ConnectionFailedError,
    InvalidRequestError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    SearchError,
    SearchUnavailableError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.search import SearchRoute
from tests._support.docs import run_snippets
from tests.sidecars import (
    LoopThread,
    Sidecar,
    brave_results,
    hostile_host,
    search_sidecar,
)


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    async with search_sidecar() as sc:
        yield sc


@pytest.fixture
async def search_host(sidecar: Sidecar) -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(
        EchoEngine(), rate_limit_per_minute=None, embedder=None, search_upstream=sidecar.url
    ) as host:
        yield host


# --- through the reference host and its search API -------------------------------------


async def test_documents_from_the_hosts_search(
    search_host: ReferenceHost, sidecar: Sidecar
) -> None:
    retriever = FabstirSearchRetriever(host_url=search_host.url, k=3)
    docs = await retriever.ainvoke("rust async runtimes")
    assert [d.page_content for d in docs] == [
        f"Result {i} about rust async runtimes." for i in range(3)
    ]
    assert docs[0].metadata == {
        "title": "rust async runtimes - result 0",
        "url": "https://example.org/0",
        "source": "brave",
        "published_date": "2 days ago",
    }
    assert "published_date" not in docs[1].metadata  # the API gave no age
    # The host really asked the search API, as a node asks Brave.
    assert sidecar.requests[-1]["query"] == {"q": "rust async runtimes", "count": "3"}
    assert sidecar.requests[-1]["headers"]["Accept"] == "application/json"
    # k per call; the host answers a repeated query from its cache (by query only, as a
    # node does: it holds the 3 results of the first search), the retriever keeps <= k.
    assert len(await retriever.ainvoke("Rust async runtimes ", k=1)) == 1
    assert len(await retriever.ainvoke("other query", k=20)) == 20
    assert search_host.search_route.upstream_calls == 2


def test_sync_invoke() -> None:
    lt = LoopThread()
    try:
        sc = lt.enter(search_sidecar())
        host = lt.enter(ReferenceHost(EchoEngine(), embedder=None, search_upstream=sc.url))
        docs = FabstirSearchRetriever(host_url=host.url, k=2).invoke("langchain")
        assert [d.metadata["url"] for d in docs] == [
            "https://example.org/0",
            "https://example.org/1",
        ]
    finally:
        lt.close()


async def test_the_route_answers_as_a_node_does(
    search_host: ReferenceHost, sidecar: Sidecar
) -> None:
    url = f"{search_host.url}/v1/search"
    async with httpx.AsyncClient() as client:
        ok = await client.post(url, json={"query": "rust async", "requestId": "r1"})
        body = ok.json()
        assert ok.status_code == 200
        assert set(body) == {
            "query",
            "results",
            "resultCount",
            "searchTimeMs",
            "provider",
            "cached",
            "chainId",
            "chainName",
        }
        assert body["resultCount"] == len(body["results"]) == 10  # numResults defaults to 10
        assert body["provider"] == "brave" and body["cached"] is False
        assert body["chainId"] == 84532 and body["chainName"] == "Base Sepolia"
        assert body["results"][0] == {
            "title": "rust async - result 0",
            "url": "https://example.org/0",
            "snippet": "Result 0 about rust async.",
            "publishedDate": "2 days ago",
            "source": "brave",
        }
        assert "publishedDate" not in body["results"][1]
        again = (await client.post(url, json={"query": " RUST async", "chainId": 7})).json()
        assert again["cached"] is True and again["searchTimeMs"] == 0
        assert again["chainName"] == "Unknown" and again["query"] == " RUST async"
        assert len(sidecar.requests) == 1

        async def refused(payload: object, status: int, **kw: object) -> str:
            r = await client.post(url, json=payload, **kw)  # type: ignore[arg-type]
            assert r.status_code == status, r.text
            return r.json()["error"] if status not in (415, 422) else r.text

        assert await refused({"query": " \n"}, 400) == "Query cannot be empty"
        assert await refused({"query": "é" * 250 + "a"}, 400) == (
            "Query too long (max 500 characters)"  # bytes, as the node counts
        )
        assert await refused({"query": "a", "numResults": 0}, 400) == (
            "num_results must be at least 1"
        )
        assert await refused({"query": "a", "numResults": 21}, 400) == (
            "num_results cannot exceed 20"
        )
        assert "missing field `query`" in await refused({"q": "a"}, 422)
        assert "Failed to deserialize" in await refused({"query": "a", "numResults": -1}, 422)
        r = await client.post(url, content=b'{"query":"a"}')
        assert r.status_code == 415
        deep = await client.post(
            url, content=b"[" * 100_000, headers={"Content-Type": "application/json"}
        )
        assert deep.status_code == 400
    assert len(sidecar.requests) == 1  # nothing refused reached the search API


async def test_a_host_without_a_search_api_is_a_typed_error() -> None:
    async with ReferenceHost(EchoEngine(), embedder=None) as host:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{host.url}/v1/search", json={"query": "a"})
        assert r.status_code == 503 and r.json() == {"error": "Search service not available"}
        # Asked once: a host without search does not get it on a retry (max_retries=2).
        started = time.monotonic()
        with pytest.raises(SearchUnavailableError, match="Search service not available") as info:
            await FabstirSearchRetriever(host_url=host.url).ainvoke("a")
    assert info.value.code == "SEARCH_UNAVAILABLE" and info.value.details["status"] == 503
    assert time.monotonic() - started < 1.0  # no backoff before giving up


# --- hostile search APIs: the host answers the node's 500, bounded --------------------


async def _deep(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=b'{"web": {"results": ' + b"[" * 100_000, content_type="application/json"
    )


async def _not_brave(request: web.Request) -> web.StreamResponse:
    return web.json_response({"results": [{"title": "t", "url": "u", "snippet": "s"}]})


async def _bad_item(request: web.Request) -> web.StreamResponse:
    return web.json_response({"web": {"results": [{"title": 5, "url": "u", "description": "d"}]}})


async def _failing(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "quota"}, status=402)


@pytest.mark.parametrize("handler", [_deep, _not_brave, _bad_item, _failing])
async def test_a_broken_search_api_is_the_nodes_500(
    search_host: ReferenceHost, sidecar: Sidecar, handler: object
) -> None:
    sidecar.handler = handler  # type: ignore[assignment]
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{search_host.url}/v1/search", json={"query": "q"})
    assert r.status_code == 500 and r.json() == {"error": "Provider unavailable: all"}
    with pytest.raises(SearchError, match="Provider unavailable") as info:
        await FabstirSearchRetriever(host_url=search_host.url, max_retries=0).ainvoke("q2")
    assert info.value.code == "SEARCH_FAILED" and info.value.is_retryable


async def test_a_huge_or_slow_search_api_is_cut_off(
    search_host: ReferenceHost, sidecar: Sidecar
) -> None:
    sent = {"bytes": 0}

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"web": {"results": [{"title": "')
        with contextlib.suppress(ConnectionError):
            for _ in range(16_000):  # up to 1 GiB, unless the host hangs up
                await response.write(b"x" * 65536)
                sent["bytes"] += 65536
        return response

    sidecar.handler = huge
    retriever = FabstirSearchRetriever(host_url=search_host.url, max_retries=0)
    with pytest.raises(SearchError, match="Provider unavailable"):
        await retriever.ainvoke("huge")
    assert sent["bytes"] < 16 * 1024 * 1024  # the host stopped reading at its 2 MB cap

    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response(brave_results("q", 1))

    sidecar.handler = slow
    search_host.search_route.timeout = 0.5  # nodes: 10 s
    started = time.monotonic()
    with pytest.raises(SearchError, match="Provider unavailable"):
        await retriever.ainvoke("slow")
    assert time.monotonic() - started < 5.0
    release.set()


async def test_the_hosts_rate_limit_is_a_typed_error(sidecar: Sidecar) -> None:
    host = ReferenceHost(EchoEngine(), embedder=None)
    host.search_route = SearchRoute(sidecar.url, rate_limit_per_minute=2)
    async with host:
        retriever = FabstirSearchRetriever(host_url=host.url, max_retries=0)
        await retriever.ainvoke("one")
        await retriever.ainvoke("two")
        await retriever.ainvoke("one")  # from the cache: no search spent
        with pytest.raises(RateLimitedError, match="Rate limited, retry after") as info:
            await retriever.ainvoke("three")
    assert info.value.retry_after is not None and 1 <= info.value.retry_after <= 30
    assert len(sidecar.requests) == 2


async def test_the_hosts_cache_is_bounded_in_bytes(sidecar: Sidecar) -> None:
    async def fat(request: web.Request) -> web.StreamResponse:
        results = brave_results(request.query["q"], 20)
        for item in results["web"]["results"]:
            item["description"] = "d" * 90_000  # 1.8 MB an answer, under the 2 MB read cap
        return web.json_response(results)

    sidecar.handler = fat
    host = ReferenceHost(EchoEngine(), embedder=None)
    host.search_route = SearchRoute(sidecar.url, cache_max_bytes=4 * 1024 * 1024)
    async with host:
        retriever = FabstirSearchRetriever(host_url=host.url, k=20, max_response_bytes=4 << 20)
        for i in range(6):
            await retriever.ainvoke(f"fat {i}")
        route = host.search_route
        assert route._cache_bytes <= 4 * 1024 * 1024 and len(route._cache) == 2
        await retriever.ainvoke("fat 5")  # still cached
        await retriever.ainvoke("fat 0")  # evicted: searched again
    assert len(sidecar.requests) == 7


# --- hostile hosts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[" * 50_000, "nests deeper"),
        (b"<html>", "not JSON"),
        (b'{"results": 5}', "without a 'results' list"),
        (b'{"results": [{"title": "t", "url": 5, "snippet": "s"}]}', "results\\[0\\] lacks"),
    ],
)
async def test_malformed_answers_are_protocol_errors(body: bytes, match: str) -> None:
    async with hostile_host("/v1/search", body) as url:
        with pytest.raises(ProtocolError, match=match) as info:
            await FabstirSearchRetriever(host_url=url, max_retries=0).ainvoke("q")
    assert info.value.code == "PROTOCOL_ERROR"


async def test_too_many_results_are_cut_and_a_huge_answer_refused() -> None:
    many = {
        "results": [
            {"title": f"t{i}", "url": f"https://x/{i}", "snippet": "s", "source": "brave"}
            for i in range(500)
        ],
        "provider": "brave",
    }
    async with hostile_host("/v1/search", json.dumps(many).encode()) as url:
        docs = await FabstirSearchRetriever(host_url=url, k=4).ainvoke("q")
        assert [d.metadata["title"] for d in docs] == ["t0", "t1", "t2", "t3"]
        small = FabstirSearchRetriever(host_url=url, max_response_bytes=4096, max_retries=0)
        with pytest.raises(ProtocolError, match="more than 4096 bytes"):
            await small.ainvoke("q")


async def test_a_silent_host_times_out() -> None:
    async with hostile_host("/v1/search", None) as url:
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError):
            await FabstirSearchRetriever(host_url=url, timeout=0.3, max_retries=0).ainvoke("q")
        assert time.monotonic() - started < 3.0


async def test_refused_locally_before_anything_is_sent() -> None:
    async with hostile_host("/v1/search", b"{}") as url:
        retriever = FabstirSearchRetriever(host_url=url)
        for bad in ("  ", "x" * 501):
            with pytest.raises(InvalidRequestError):
                await retriever.ainvoke(bad)
        with pytest.raises(InvalidRequestError, match=r"k must be 1\.\.20"):
            await retriever.ainvoke("q", k=50)
    with pytest.raises(ValueError, match="less than or equal to 20"):
        FabstirSearchRetriever(host_url=url, k=21)


def test_no_host_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABSTIR_HOST_URL", raising=False)
    with pytest.raises(InvalidRequestError, match="needs a host"):
        FabstirSearchRetriever().invoke("q")


# --- failover ---------------------------------------------------------------------------


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_failover_skips_dead_hosts_and_hosts_without_search(
    search_host: ReferenceHost, sidecar: Sidecar
) -> None:
    dead = _dead_url()
    async with ReferenceHost(EchoEngine(), embedder=None) as bare:
        retriever = FabstirSearchRetriever(host_url=[dead, bare.url, search_host.url], k=2)
        assert len(await retriever.ainvoke("failover")) == 2
    assert len(sidecar.requests) == 1
    with pytest.raises(ConnectionFailedError):
        await FabstirSearchRetriever(host_url=dead, max_retries=0).ainvoke("q")


async def test_hosts_from_discovery(search_host: ReferenceHost, sidecar: Sidecar) -> None:
    dead = _dead_url()
    async with ReferenceHost(EchoEngine(), embedder=None) as bare:
        hosts = [dead, bare.url, search_host.url]
        async with HostDiscovery(hosts, use_env=False) as discovery:
            retriever = FabstirSearchRetriever(discovery=discovery, k=1)
            assert len(await retriever.ainvoke("discovered")) == 1
            # A host without search is healthy (chat still works there): not reported.
            assert {h.url for h in discovery.hosts if h.healthy} == {bare.url, search_host.url}
            assert discovery.breaker(bare.url).failures == 0
    assert len(sidecar.requests) == 1


# --- the docs page and the README snippet run --------------------------------------------


@pytest.fixture(scope="module")
def threaded_search_host() -> Iterator[str]:
    lt = LoopThread()
    sc = lt.enter(search_sidecar())
    host = lt.enter(ReferenceHost(EchoEngine(), embedder=None, search_upstream=sc.url))
    yield host.url
    lt.close()


@pytest.mark.parametrize(
    ("page", "section"),
    [("docs/retrievers/fabstir_search.mdx", None), ("README.md", "## Web search")],
)
def test_doc_snippets_run(
    page: str, section: str | None, threaded_search_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", threaded_search_host)
    namespace = run_snippets(page, section)
    assert isinstance(namespace["shown"], str) and "example.org" in namespace["shown"]
