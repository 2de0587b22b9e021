"""Host-side RAG as deployed nodes do it: ``uploadVectors`` / ``searchVectors`` (PROTOCOL.md 6.5).

:class:`SessionVectors` keeps one vector store per session id in the host's memory, with the
node's limits: exactly 384 finite values per vector, metadata JSON of at most 10,240 bytes,
at most 100,000 vectors per session (an existing id is overwritten), at most 1,000 sessions.
Search is cosine similarity (score >= ``threshold``, best first, ``k`` of them); with a
``metadataFilter`` (``$eq``/``$in`` per field) every vector passing the filter is ranked and the
threshold is ignored. Errors are the node's bare ``{"type":"error","error":"..."}`` frames
(no code, no id). A plaintext ``session_init`` with the same id wipes the session's vectors
(:meth:`SessionVectors.reset`); closing the socket does not.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np  # imported where used: a host without the RAG frames needs no numpy

__all__ = [
    "DEFAULT_RAG_SESSION",
    "MAX_METADATA_BYTES",
    "MAX_SESSIONS",
    "MAX_VECTORS",
    "VECTOR_DIMS",
    "SessionVectors",
]

VECTOR_DIMS = 384
MAX_METADATA_BYTES = 10_240
MAX_VECTORS = 100_000
MAX_SESSIONS = 1000
DEFAULT_RAG_SESSION = "default-rag-session"


def _error(text: str) -> dict[str, Any]:
    return {"type": "error", "error": text}


class _Store:
    """The vectors of one session (normalised copies for cosine, metadata as sent)."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, tuple[np.ndarray, Any]] = OrderedDict()
        self._matrix: tuple[list[str], np.ndarray] | None = None

    def add(self, vid: str, vector: list[float], metadata: Any) -> str | None:
        if len(vector) != VECTOR_DIMS:
            return f"{vid}: Invalid vector dimensions: expected {VECTOR_DIMS}, got {len(vector)}"
        if not all(type(x) in (int, float) and math.isfinite(x) for x in vector):
            return f"{vid}: Vector contains NaN or Infinity values"
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            return f"{vid}: Metadata too large: {size} bytes (max {MAX_METADATA_BYTES})"
        if vid not in self.items and len(self.items) >= MAX_VECTORS:
            return f"{vid}: Maximum vectors limit reached ({MAX_VECTORS})"
        import numpy as np

        array = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(array))
        self.items[vid] = (array / norm if norm > 0 else array, metadata)
        self._matrix = None
        return None

    def matrix(self) -> tuple[list[str], np.ndarray]:
        import numpy as np

        if self._matrix is None:
            ids = list(self.items)
            rows = [self.items[i][0] for i in ids]
            self._matrix = (
                ids,
                np.stack(rows) if rows else np.zeros((0, VECTOR_DIMS), np.float32),
            )
        return self._matrix


def _matches(metadata: Any, flt: dict[str, Any]) -> bool:
    if not isinstance(metadata, dict):
        return False
    for field, cond in flt.items():
        if not isinstance(cond, dict):
            continue
        value = metadata.get(field)
        if "$eq" in cond and value != cond["$eq"]:
            return False
        if "$in" in cond and (not isinstance(cond["$in"], list) or value not in cond["$in"]):
            return False
    return True


class SessionVectors:
    """Per-session vector stores of a reference host (see the module docstring).

    ``handle(session_id, kind, frame)`` answers one ``uploadVectors`` or ``searchVectors``
    frame (its fields as a dict) with the reply frame, as a dict.
    """

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._stores: dict[str, _Store] = {}

    def count(self, session_id: str) -> int:
        """How many vectors the session holds (0 when it has none)."""
        store = self._stores.get(session_id)
        return len(store.items) if store is not None else 0

    def reset(self, session_id: str | None) -> None:
        """A plaintext ``session_init`` with this id: its vectors are wiped."""
        if session_id is not None:
            self._stores.pop(session_id, None)

    def handle(self, session_id: str | None, kind: str, frame: dict[str, Any]) -> dict[str, Any]:
        sid = session_id if session_id is not None else DEFAULT_RAG_SESSION
        if kind == "uploadVectors":
            return self._upload(sid, frame)
        return self._search(sid, frame)

    def _upload(self, sid: str, frame: dict[str, Any]) -> dict[str, Any]:
        replace, vectors = frame.get("replace"), frame.get("vectors")
        if not isinstance(replace, bool):
            return _error("Invalid uploadVectors request: missing field `replace`")
        if not isinstance(vectors, list) or not all(
            isinstance(v, dict)
            and isinstance(v.get("id"), str)
            and isinstance(v.get("vector"), list)
            and all(type(x) in (int, float) for x in v["vector"])
            for v in vectors
        ):
            return _error(
                "Invalid uploadVectors request: vectors must be a list of "
                "{id: string, vector: [numbers], metadata}"
            )
        store = self._stores.get(sid)
        if store is None:
            if len(self._stores) >= self.max_sessions:
                return _error(
                    f"Failed to create RAG session: session limit ({self.max_sessions}) reached"
                )
            store = self._stores[sid] = _Store()
        if replace:
            store.items.clear()
            store._matrix = None
        errors: list[str] = []
        uploaded = 0
        for v in vectors:
            problem = store.add(v["id"], v["vector"], v.get("metadata", {}))
            if problem is None:
                uploaded += 1
            else:
                errors.append(problem)
        status = "success" if not errors else "partial" if uploaded else "error"
        reply: dict[str, Any] = {
            "type": "uploadVectorsResponse",
            "status": status,
            "uploaded": uploaded,
            "rejected": len(errors),
            "errors": errors,
        }
        if "requestId" in frame:
            reply["requestId"] = frame["requestId"]
        return reply

    def _search(self, sid: str, frame: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        query, k = frame.get("queryVector"), frame.get("k")
        threshold, flt = frame.get("threshold"), frame.get("metadataFilter")
        if (
            not isinstance(query, list)
            or not all(type(x) in (int, float) for x in query)
            or type(k) is not int
            or k < 0
            or (threshold is not None and type(threshold) not in (int, float))
            or (flt is not None and not isinstance(flt, dict))
        ):
            return _error(
                "Invalid searchVectors request: queryVector (numbers) and k (an integer) "
                "are required"
            )
        store = self._stores.get(sid)
        if store is None:
            return _error(f"Session {sid} not found. Upload vectors first.")
        if len(query) != VECTOR_DIMS or not all(math.isfinite(x) for x in query):
            return _error(
                f"Search vectors failed: query vector must have {VECTOR_DIMS} finite values, "
                f"got {len(query)}"
            )
        import numpy as np

        ids, matrix = store.matrix()
        q = np.asarray(query, dtype=np.float32)
        norm = float(np.linalg.norm(q))
        scores = matrix @ (q / norm) if norm > 0 and len(ids) else np.zeros(len(ids))
        if flt:
            keep = [i for i, vid in enumerate(ids) if _matches(store.items[vid][1], flt)]
        else:
            floor = float(threshold) if threshold is not None else -math.inf
            keep = [i for i in range(len(ids)) if scores[i] >= floor]
        keep.sort(key=lambda i: -float(scores[i]))
        results = [
            {"id": ids[i], "score": float(scores[i]), "metadata": store.items[ids[i]][1]}
            for i in keep[:k]
        ]
        reply: dict[str, Any] = {
            "type": "searchVectorsResponse",
            "results": results,
            "totalVectors": len(ids),
            "searchTimeMs": round((time.perf_counter() - started) * 1000, 3),
        }
        if "requestId" in frame:
            reply["requestId"] = frame["requestId"]
        return reply
