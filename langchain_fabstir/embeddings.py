""":class:`FabstirEmbeddings`: LangChain embeddings over the ``POST /v1/embed`` of Fabstir hosts."""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Sequence

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field

from langchain_fabstir._host_http import (
    HostRoutes,
    NodeAnswer,
    common_error,
    error_message,
    other_error,
)
from langchain_fabstir._sync import run_sync
from langchain_fabstir.errors import (
    DimensionMismatchError,
    EmbeddingError,
    FabstirError,
    InvalidRequestError,
    ModelNotAvailableError,
    ProtocolError,
)

__all__ = ["MAX_BATCH", "MAX_TEXT_BYTES", "FabstirEmbeddings"]

MAX_BATCH = 96
"""Most texts a node embeds in one request (PROTOCOL.md section 6.4)."""
MAX_TEXT_BYTES = 8192
"""Longest text a node embeds, in UTF-8 bytes."""
_MAX_REQUEST_BYTES = 1024 * 1024  # nodes accept 2 MB JSON bodies: stay well under
_NUMBER_TYPES = frozenset({float, int})


class FabstirEmbeddings(HostRoutes, Embeddings):
    """LangChain embeddings from Fabstir hosts (``POST /v1/embed``, all-MiniLM-L6-v2).

    Deployed nodes embed with all-MiniLM-L6-v2 (384 dimensions) and do not charge for it.
    ``embed_documents`` splits the texts into requests the node accepts (at most
    ``batch_size`` <= 96 texts and about 1 MB each), checks every answer (one vector per
    text, in order, each of ``dimensions`` finite numbers) and returns the vectors in the
    order of the texts. ``aembed_documents`` / ``aembed_query`` are the async twins.

    Normalisation: nodes return mean-pooled vectors that are *not* L2-normalised (the
    sentence-transformers model ends with a normalisation the node leaves out). With
    ``normalize=True`` (the default) the client normalises them, so they equal what
    ``sentence-transformers`` gives for the same model and cosine similarity is a dot
    product, as vector stores expect; ``normalize=False`` returns the node's vectors.

    Hosts and failover: ``host_url`` is one base URL or a list tried in order (default:
    ``FABSTIR_HOST_URL``); or pass ``discovery`` (a
    :class:`~langchain_fabstir.discovery.HostDiscovery`, the same layer the chat model's
    hosts come from) to use its healthy hosts in failover order and feed its circuit
    breakers (``host_url`` then restricts the choice). A request that fails in a way
    another attempt may fix (unreachable, timed out, 5xx, 429, a malformed answer) is
    retried on the next host, ``max_retries`` times; a refused request (400, an unknown
    model) is not. Embedding is free on nodes: retries spend nothing.

    Privacy: ``/v1/embed`` is plain JSON over HTTP(S), as deployed nodes serve it. Unlike
    sessions (end-to-end encrypted to the host's key by default), the texts are readable
    by the host and by anything between you and it unless ``host_url`` is ``https://``.

    Errors (all :class:`~langchain_fabstir.errors.FabstirError`, with stable codes):
    ``INVALID_REQUEST`` (a blank text, one over 8,192 bytes, or the host's 400),
    ``MODEL_NOT_AVAILABLE`` (404: the host does not serve ``model``),
    ``EMBEDDING_FAILED`` (the host's 500/503, or no ``/v1/embed`` there),
    ``DIMENSION_MISMATCH`` (vectors of another size than ``dimensions``),
    ``PROTOCOL_ERROR`` (an answer that is not the node's shape, nests too deep, or is
    larger than the request can explain), ``HOST_UNREACHABLE``, ``RESPONSE_TIMEOUT``,
    ``RATE_LIMITED``.

    Example::

        from langchain_fabstir import FabstirEmbeddings

        emb = FabstirEmbeddings(host_url="http://127.0.0.1:8080")
        vectors = emb.embed_documents(["The cat sat on the mat.", "Tax is due in April."])
        query = emb.embed_query("Where did the cat sit?")
        len(query)  # 384
    """

    model_config = ConfigDict(
        populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=()
    )

    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Embedding model id sent to the host ('default': the host's default).",
    )
    dimensions: int | None = Field(
        default=384,
        ge=1,
        description="Length every vector must have (all-MiniLM-L6-v2: 384); an answer "
        "with another length raises DIMENSION_MISMATCH. None: any, but all equal.",
    )
    normalize: bool = Field(
        default=True,
        description="L2-normalise vectors on the client (nodes return them unnormalised).",
    )
    batch_size: int = Field(
        default=MAX_BATCH,
        ge=1,
        le=MAX_BATCH,
        description="Most texts per request (nodes accept 1..96).",
    )
    chain_id: int = Field(
        default=84532,
        description="chainId sent to the host: 84532 (Base Sepolia) or 5611 (opBNB testnet).",
    )
    timeout: float = Field(
        default=60.0, gt=0, description="Seconds one request may take (connect and answer)."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="Further attempts of a request after a retryable failure, each on the "
        "next host.",
    )
    max_response_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest answer read for one request; default: what the request's "
        "texts and dimensions can explain, with a wide margin.",
    )
    # --- the Embeddings interface -----------------------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed ``texts`` (any number; sent in batches the node accepts), in order."""
        return run_sync(self.aembed_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        """Embed one query text."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`."""
        texts = list(texts)
        if not texts:
            return []
        _check_texts(texts)
        batches = self._batches(texts)
        async with self._connect(self.timeout) as (client, hosts):
            state = {"next": 0}  # the host to start the next batch on (moves on failure)
            vectors: list[list[float]] = []
            for batch in batches:
                vectors.extend(
                    await self._post(
                        client,
                        hosts,
                        "/v1/embed",
                        {"texts": batch, "model": self.model, "chainId": self.chain_id},
                        max_bytes=self._response_cap(batch),
                        refused=lambda answer, host: _status_error(answer, host, self.model),
                        parse=functools.partial(self._parse, batch),
                        what=f" for {len(batch)} texts",
                        state=state,
                    )
                )
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        return (await self.aembed_documents([text]))[0]

    # --- hosts and batches ------------------------------------------------------------

    def _batches(self, texts: list[str]) -> list[list[str]]:
        batches: list[list[str]] = []
        current: list[str] = []
        size = 0
        for text in texts:
            encoded = len(json.dumps(text)) + 1
            if current and (len(current) >= self.batch_size or size + encoded > _MAX_REQUEST_BYTES):
                batches.append(current)
                current, size = [], 0
            current.append(text)
            size += encoded
        batches.append(current)
        return batches

    # --- one request ------------------------------------------------------------------

    def _response_cap(self, texts: list[str]) -> int:
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        dims = self.dimensions or 4096
        text_bytes = sum(len(t.encode("utf-8")) for t in texts)
        # ~26 characters per float, the texts echoed back (escaped: up to 6x), framing.
        return 64 * 1024 + len(texts) * (dims * 32 + 1024) + 6 * text_bytes

    def _parse(self, texts: list[str], answer: NodeAnswer, host: str) -> list[list[float]]:
        url = answer.url
        data = answer.json(host)
        items = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ProtocolError(f"{url} answered without an 'embeddings' list", host_url=host)
        if len(items) != len(texts):
            raise ProtocolError(
                f"{url} returned {len(items)} embeddings for {len(texts)} texts", host_url=host
            )
        expected = self.dimensions
        vectors: list[list[float]] = []
        for index, (item, text) in enumerate(zip(items, texts, strict=True)):
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(vector, list) or not vector:
                raise ProtocolError(
                    f"{url}: embeddings[{index}] has no 'embedding' list", host_url=host
                )
            if isinstance(item.get("text"), str) and item["text"] != text:
                raise ProtocolError(
                    f"{url}: embeddings[{index}] is for another text (answers out of order)",
                    host_url=host,
                )
            if expected is None:
                expected = len(vector)
            if len(vector) != expected:
                raise DimensionMismatchError(
                    f"{url}: embeddings[{index}] has {len(vector)} dimensions, expected "
                    f"{expected} (model {self.model!r}; set dimensions= to what it returns)",
                    host_url=host,
                    details={"expected": expected, "got": len(vector)},
                )
            if not set(map(type, vector)) <= _NUMBER_TYPES:
                raise ProtocolError(
                    f"{url}: embeddings[{index}] holds something other than numbers",
                    host_url=host,
                )
            floats: list[float] = [*map(float, vector)]
            squares = sum(map(operator.mul, floats, floats))
            if not math.isfinite(squares):  # a NaN or an infinity somewhere (or overflow)
                raise ProtocolError(
                    f"{url}: embeddings[{index}] holds a non-finite number", host_url=host
                )
            if self.normalize and squares > 0:
                scale = 1.0 / math.sqrt(squares)
                floats = [x * scale for x in floats]
            vectors.append(floats)
        return vectors


def _check_texts(texts: Sequence[str]) -> None:
    """Refuse locally what every node refuses (nothing is sent)."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequestError(f"texts[{index}] is a {type(text).__name__}, not a str")
        if not text.strip():
            raise InvalidRequestError(
                f"texts[{index}] is blank: nodes embed only non-blank texts (drop or "
                "replace it before embedding)",
                details={"index": index},
            )
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise InvalidRequestError(
                f"texts[{index}] is {size} bytes; nodes embed at most {MAX_TEXT_BYTES} "
                "(split long documents first, e.g. with a text splitter)",
                details={"index": index, "bytes": size},
            )


def _status_error(answer: NodeAnswer, host: str, model: str) -> FabstirError:
    """The typed error of a non-200 answer (JSON ``{"error": ...}`` or axum's plain text)."""
    common = common_error(answer, host)
    if common is not None:
        return common
    message = error_message(answer)
    url, status = answer.url, answer.status
    details = {"status": status}
    if status == 404:
        if "not found" in message.lower() and "model" in message.lower():
            return ModelNotAvailableError(
                f"{url}: {message}", host_url=host, details={**details, "model": model}
            )
        return EmbeddingError(
            f"{url} does not serve embeddings (404: {message})", host_url=host, details=details
        )
    if status in (500, 503):
        return EmbeddingError(f"{url}: {message}", host_url=host, details=details)
    return other_error(answer, host)
