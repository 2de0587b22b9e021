"""Host RAG frames (PROTOCOL.md 6.5): ``uploadVectors`` and ``searchVectors``, client side.

:class:`VectorFrames` checks vectors and queries before anything is sent (the node's limits:
384 finite values, metadata JSON <= 10,240 bytes, at most 100,000 vectors; the SDK's ``k``
1..20; ``threshold`` -1..1, as nodes take it: the SDK allows only 0..1, which drops every
match of negative similarity), cuts uploads into frames of at most 1,000 vectors and
``max_frame_bytes`` bytes (``replace`` only on the first, as the SDK does), and checks the
host's replies (shape, bounded sizes) into :class:`VectorUploadResult` /
:class:`VectorSearchResult`. These frames have no encrypted variant: vectors, metadata and
queries cross the socket in clear even in an encrypted session.
:meth:`~langchain_fabstir.sessions.SessionManager.upload_vectors` and
:meth:`~langchain_fabstir.sessions.SessionManager.search_vectors` drive them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from langchain_fabstir._json import check_utf8
from langchain_fabstir.errors import InvalidRequestError, ProtocolError, VectorStoreError

__all__ = [
    "MAX_K",
    "MAX_METADATA_BYTES",
    "MAX_VECTORS",
    "UPLOAD_BATCH",
    "VECTOR_DIMS",
    "VectorFrames",
    "VectorMatch",
    "VectorSearchResult",
    "VectorUploadResult",
    "metadata_filter",
]

VECTOR_DIMS = 384
MAX_METADATA_BYTES = 10_240
MAX_VECTORS = 100_000
UPLOAD_BATCH = 1000
MAX_K = 20
_NUMBERS = (int, float)


class VectorUploadResult(BaseModel):
    """What the host took of an upload (all batches together)."""

    uploaded: int = 0
    rejected: int = 0
    errors: list[str] = Field(default_factory=list)


class VectorMatch(BaseModel):
    """One search result: the vector's id, its cosine similarity, its metadata."""

    id: str
    score: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class VectorSearchResult(BaseModel):
    """A ``searchVectorsResponse``: results best first, the session's vector count."""

    results: list[VectorMatch]
    total_vectors: int
    search_time_ms: float | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def metadata_filter(flt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A LangChain-style filter as the node's ``metadataFilter``: ``{"field": value}`` means
    ``$eq``; ``{"field": {"$eq": v}}`` and ``{"field": {"$in": [...]}}`` pass as they are.
    Other operators are refused (the node would silently ignore them).

    >>> metadata_filter({"source": "a.pdf", "page": {"$in": [1, 2]}})
    {'source': {'$eq': 'a.pdf'}, 'page': {'$in': [1, 2]}}
    """
    if not flt:
        return None
    out: dict[str, Any] = {}
    for field, cond in flt.items():
        if not isinstance(field, str):
            raise InvalidRequestError("filter fields must be strings")
        if isinstance(cond, Mapping):
            ops = set(cond)
            if not ops or not ops <= {"$eq", "$in"}:
                raise InvalidRequestError(
                    f"filter on {field!r}: only $eq and $in are supported by hosts "
                    f"(got {sorted(ops)})"
                )
            if "$in" in cond and not isinstance(cond["$in"], (list, tuple)):
                raise InvalidRequestError(f"filter on {field!r}: $in needs a list")
            out[field] = {k: list(v) if k == "$in" else v for k, v in cond.items()}
        else:
            out[field] = {"$eq": cond}
    return out


class VectorFrames:
    """Builds and checks the frames of one upload or search (see the module docstring)."""

    def __init__(self, *, max_frame_bytes: int = 2 * 1024 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes

    @staticmethod
    def entry(vid: Any, vector: Any, metadata: Any) -> str:
        """One vector as JSON, checked: raises ``INVALID_REQUEST`` naming the id."""
        if not isinstance(vid, str) or not vid:
            raise InvalidRequestError(f"a vector id must be a non-empty string, got {vid!r}")
        check_utf8(vid, "a vector id")
        if not isinstance(vector, Sequence) or len(vector) != VECTOR_DIMS:
            size = len(vector) if isinstance(vector, Sequence) else type(vector).__name__
            raise InvalidRequestError(
                f"vector {vid!r} has {size} values; hosts take exactly {VECTOR_DIMS} "
                "(all-MiniLM-L6-v2)"
            )
        values = [float(x) for x in vector]
        if not all(math.isfinite(x) for x in values):
            raise InvalidRequestError(f"vector {vid!r} has NaN or infinite values")
        meta = {} if metadata is None else metadata
        if not isinstance(meta, Mapping):
            raise InvalidRequestError(f"metadata of {vid!r} must be a JSON object")
        try:
            meta_json = _dumps(dict(meta))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"metadata of {vid!r} is not JSON: {exc}") from None
        check_utf8(meta_json, f"metadata of {vid!r}")
        size = len(meta_json.encode())
        if size > MAX_METADATA_BYTES:
            raise InvalidRequestError(
                f"metadata of {vid!r} is {size} bytes as JSON; hosts take at most "
                f"{MAX_METADATA_BYTES} (split the text into smaller chunks)"
            )
        return f'{{"id":{_dumps(vid)},"vector":{_dumps(values)},"metadata":{meta_json}}}'

    def upload_frames(
        self, entries: Sequence[str], replace: bool, request_id: str
    ) -> Iterator[tuple[str, str, int]]:
        """``(frame, request id, n)`` per batch: at most 1,000 vectors and
        ``max_frame_bytes``; ``replace`` only on the first batch."""
        if len(entries) > MAX_VECTORS:
            raise InvalidRequestError(
                f"{len(entries)} vectors: a host keeps at most {MAX_VECTORS} per session"
            )
        start, number, first = 0, 0, True
        while first or start < len(entries):
            size, end = 0, start
            while (
                end < len(entries)
                and end - start < UPLOAD_BATCH
                and (end == start or size + len(entries[end]) + 1 <= self.max_frame_bytes - 200)
            ):
                size += len(entries[end]) + 1
                end += 1
            rid = f"{request_id}-{number}"
            frame = (
                f'{{"type":"uploadVectors","requestId":{_dumps(rid)},"vectors":['
                + ",".join(entries[start:end])
                + f'],"replace":{"true" if replace and first else "false"}}}'
            )
            yield frame, rid, end - start
            start, number, first = end, number + 1, False

    @staticmethod
    def search_frame(
        query: Sequence[float],
        k: int,
        threshold: float,
        flt: Mapping[str, Any] | None,
        request_id: str,
    ) -> str:
        if type(k) is not int or not 1 <= k <= MAX_K:
            raise InvalidRequestError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if type(threshold) not in _NUMBERS or not -1.0 <= threshold <= 1.0:
            raise InvalidRequestError(f"threshold must be from -1 to 1, got {threshold!r}")
        if not isinstance(query, Sequence) or len(query) != VECTOR_DIMS:
            raise InvalidRequestError(f"the query vector must have {VECTOR_DIMS} values")
        values = [float(x) for x in query]
        if not all(math.isfinite(x) for x in values):
            raise InvalidRequestError("the query vector has NaN or infinite values")
        frame: dict[str, Any] = {
            "type": "searchVectors",
            "requestId": request_id,
            "queryVector": values,
            "k": k,
            "threshold": float(threshold),
        }
        node_filter = metadata_filter(flt)
        if node_filter is not None:
            frame["metadataFilter"] = node_filter
        return _dumps(frame)

    @staticmethod
    def upload_reply(reply: dict[str, Any], sent: int, host_url: str) -> VectorUploadResult:
        _raise_bare_error(reply, host_url)
        uploaded, rejected = reply.get("uploaded"), reply.get("rejected")
        errors = reply.get("errors", [])
        if (
            type(uploaded) is not int
            or type(rejected) is not int
            or not 0 <= uploaded <= sent
            or not 0 <= rejected <= sent
            or not isinstance(errors, list)
        ):
            raise ProtocolError(
                f"host {host_url} sent a malformed uploadVectorsResponse", host_url=host_url
            )
        texts = [str(e)[:300] for e in errors[:sent] if isinstance(e, str)]
        if reply.get("status") == "error" and uploaded == 0 and sent > 0:
            raise VectorStoreError(
                f"host {host_url} took none of {sent} vectors: "
                + ("; ".join(texts[:3]) or "no reason given"),
                host_url=host_url,
                details={"errors": texts},
            )
        return VectorUploadResult(uploaded=uploaded, rejected=rejected, errors=texts)

    @staticmethod
    def search_reply(reply: dict[str, Any], k: int, host_url: str) -> VectorSearchResult:
        _raise_bare_error(reply, host_url)
        results, total = reply.get("results"), reply.get("totalVectors")
        bad = ProtocolError(
            f"host {host_url} sent a malformed searchVectorsResponse", host_url=host_url
        )
        if not isinstance(results, list) or type(total) is not int or total < 0:
            raise bad
        matches: list[VectorMatch] = []
        for item in results[:k]:
            if not isinstance(item, dict):
                raise bad
            vid, meta = item.get("id"), item.get("metadata", {})
            score: Any = item.get("score")
            if (
                not isinstance(vid, str)
                or type(score) not in _NUMBERS
                or not math.isfinite(score)
                or not isinstance(meta, dict)
            ):
                raise bad
            matches.append(VectorMatch(id=vid, score=float(score), metadata=meta))
        took: Any = reply.get("searchTimeMs")
        return VectorSearchResult(
            results=matches,
            total_vectors=total,
            search_time_ms=float(took) if type(took) in _NUMBERS else None,
        )


def _raise_bare_error(reply: dict[str, Any], host_url: str) -> None:
    if reply.get("type") == "error":
        text = reply.get("error") or reply.get("message") or "unspecified host error"
        text = str(text)[:500]
        raise VectorStoreError(
            f"host {host_url}: {text}", host_url=host_url, details={"host": text}
        )
