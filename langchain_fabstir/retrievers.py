""":class:`FabstirSearchRetriever`: a LangChain retriever over the ``POST /v1/search`` (web
search) of Fabstir hosts."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from langchain_fabstir._host_http import (
    HostRoutes,
    NodeAnswer,
    service_error,
)
from langchain_fabstir._sync import run_sync
from langchain_fabstir.errors import (
    FabstirError,
    InvalidRequestError,
    ProtocolError,
    SearchError,
    SearchUnavailableError,
)

__all__ = ["MAX_QUERY_BYTES", "MAX_RESULTS", "FabstirSearchRetriever"]

MAX_QUERY_BYTES = 500
"""Longest query a node searches, in UTF-8 bytes (PROTOCOL.md section 6.4)."""
MAX_RESULTS = 20
"""Most results one search may return (``numResults`` 1..20)."""


class FabstirSearchRetriever(HostRoutes, BaseRetriever):
    """Web search through Fabstir hosts (``POST /v1/search``) as a LangChain retriever.

    Each result becomes ``Document(page_content=snippet, metadata={"title", "url",
    "source", "published_date"?})`` (``source`` is the host's search provider, e.g.
    ``brave``; ``published_date`` only when the provider gave one, as free text such as
    ``"2 days ago"``). ``invoke(query)`` returns at most ``k`` documents, best first;
    ``invoke(query, k=3)`` overrides ``k`` for one call. ``ainvoke`` is the async twin.

    Hosts search with their own provider and keys, cache answers by query for an hour
    (then ``cached`` is true in the answer, and the host may return the number of
    results asked for the first time: the retriever keeps at most ``k``), and limit
    searches per minute. Search is free on nodes: retries spend nothing.

    Hosts and failover: ``host_url`` is one base URL or a list tried in order (default:
    ``FABSTIR_HOST_URL``); or pass ``discovery`` (a
    :class:`~langchain_fabstir.discovery.HostDiscovery`) to use its healthy hosts in
    failover order. A search that fails in a way another attempt may fix (unreachable,
    timed out, 5xx, 429, a malformed answer) is retried on the next host, at most
    ``max_retries`` times; a host that offers no search (503) is not asked twice, and a
    refused query (400) is not retried.

    Privacy: ``/v1/search`` is plain JSON over HTTP(S), as deployed nodes serve it: the
    query is readable by the host, its search provider, and anything between you and
    the host unless ``host_url`` is ``https://``.

    Errors (all :class:`~langchain_fabstir.errors.FabstirError`, with stable codes):
    ``INVALID_REQUEST`` (a blank query, one over 500 bytes, or the host's 400),
    ``SEARCH_UNAVAILABLE`` (503 ``Search service not available`` / ``Web search is
    disabled on this host``, or no ``/v1/search`` there), ``SEARCH_FAILED`` (500: the
    host's provider failed), ``RATE_LIMITED`` (429, with ``retry_after``),
    ``PROTOCOL_ERROR`` (an answer not in the node's shape, nested too deep, or larger
    than ``max_response_bytes``), ``HOST_UNREACHABLE``, ``RESPONSE_TIMEOUT``.

    Example::

        from langchain_fabstir import FabstirSearchRetriever

        retriever = FabstirSearchRetriever(host_url="http://127.0.0.1:8080", k=3)
        docs = retriever.invoke("rust async runtimes")
        docs[0].metadata["url"], docs[0].page_content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int = Field(default=10, ge=1, le=MAX_RESULTS, description="Results per search (1..20).")
    chain_id: int = Field(
        default=84532, ge=0, description="chainId sent to the host (84532: Base Sepolia)."
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds one request may take (connect and answer)."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="Further attempts after a retryable failure, each on the next host.",
    )
    max_response_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest answer read for one search (20 results are a few KB).",
    )
    # --- BaseRetriever ----------------------------------------------------------------

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return run_sync(self._search(query, **kwargs))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await self._search(query, **kwargs)

    # --- the search -------------------------------------------------------------------

    async def _search(self, query: str, k: int | None = None) -> list[Document]:
        count = self.k if k is None else k
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RESULTS:
            raise InvalidRequestError(f"k must be 1..{MAX_RESULTS} (nodes return at most 20)")
        _check_query(query)
        body = {"query": query, "numResults": count, "chainId": self.chain_id}
        async with self._connect(self.timeout) as (client, hosts):
            return await self._post(
                client,
                hosts,
                "/v1/search",
                body,
                max_bytes=self.max_response_bytes,
                refused=_search_error,
                parse=lambda answer, host: _documents(answer, host, count),
            )


def _check_query(query: Any) -> None:
    """Refuse locally what every node refuses (nothing is sent)."""
    if not isinstance(query, str):
        raise InvalidRequestError(f"the query is a {type(query).__name__}, not a str")
    if not query.strip():
        raise InvalidRequestError("the query is blank: nodes search only non-blank queries")
    size = len(query.encode("utf-8"))
    if size > MAX_QUERY_BYTES:
        raise InvalidRequestError(
            f"the query is {size} bytes; nodes search at most {MAX_QUERY_BYTES} (shorten it)",
            details={"bytes": size},
        )


def _search_error(answer: NodeAnswer, host: str) -> FabstirError:
    return service_error(
        answer, host, service="web search", unavailable=SearchUnavailableError, failed=SearchError
    )


def _documents(answer: NodeAnswer, host: str, count: int) -> list[Document]:
    data = answer.json(host)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise ProtocolError(f"{answer.url} answered without a 'results' list", host_url=host)
    provider = data.get("provider") if isinstance(data.get("provider"), str) else None
    documents: list[Document] = []
    for index, item in enumerate(results[:count]):
        fields = item if isinstance(item, dict) else {}
        title, url, snippet = fields.get("title"), fields.get("url"), fields.get("snippet")
        if not (isinstance(title, str) and isinstance(url, str) and isinstance(snippet, str)):
            raise ProtocolError(
                f"{answer.url}: results[{index}] lacks a string title, url or snippet",
                host_url=host,
            )
        source = fields.get("source")
        metadata: dict[str, Any] = {
            "title": title,
            "url": url,
            "source": source if isinstance(source, str) else provider,
        }
        published = fields.get("publishedDate")
        if isinstance(published, str):
            metadata["published_date"] = published
        documents.append(Document(page_content=snippet, metadata=metadata))
    return documents
