"""Host RAG frames, client side (sessions/vectors.py): batches, limits, reply checks."""

from __future__ import annotations

import json
import random

import pytest

from langchain_fabstir.errors import (
    InvalidRequestError,
    LoneSurrogateError,
    ProtocolError,
    VectorStoreError,
)
from langchain_fabstir.sessions.vectors import VectorFrames, metadata_filter


def _entries(n: int) -> list[str]:
    rng = random.Random(7)
    return [
        VectorFrames.entry(f"v{i}", [rng.uniform(-1, 1) for _ in range(384)], {"text": "t"})
        for i in range(n)
    ]


def test_batches_of_1000_and_bounded_bytes_with_replace_on_the_first_only() -> None:
    entries = _entries(2300)
    frames = list(VectorFrames(max_frame_bytes=2 * 1024 * 1024).upload_frames(entries, True, "r"))
    sent = [json.loads(f) for f, _, _ in frames]
    assert sum(len(f["vectors"]) for f in sent) == 2300
    assert all(len(f["vectors"]) <= 1000 for f in sent)
    assert all(len(f.encode()) <= 2 * 1024 * 1024 for f, _, _ in frames)
    assert len(frames) > 3  # ~7.5 KB a vector: bytes, not the count, cut these
    assert [f["replace"] for f in sent] == [True] + [False] * (len(sent) - 1)
    assert [f["requestId"] for f in sent] == [rid for _, rid, _ in frames]
    assert [v["id"] for f in sent for v in f["vectors"]] == [f"v{i}" for i in range(2300)]
    small = list(VectorFrames().upload_frames(_entries(3), False, "r"))
    assert len(small) == 1 and json.loads(small[0][0])["replace"] is False
    clear = list(VectorFrames().upload_frames([], True, "r"))  # replace with nothing: clears
    assert json.loads(clear[0][0]) == {
        "type": "uploadVectors",
        "requestId": "r-0",
        "vectors": [],
        "replace": True,
    }


def test_limits_are_checked_before_sending() -> None:
    with pytest.raises(InvalidRequestError, match="exactly 384"):
        VectorFrames.entry("a", [0.1] * 383, None)
    with pytest.raises(InvalidRequestError, match="NaN"):
        VectorFrames.entry("a", [float("inf")] * 384, None)
    with pytest.raises(InvalidRequestError, match="10240"):
        VectorFrames.entry("a", [0.1] * 384, {"text": "é" * 5200})  # bytes, not characters
    with pytest.raises(InvalidRequestError, match="non-empty string"):
        VectorFrames.entry("", [0.1] * 384, None)
    with pytest.raises(LoneSurrogateError, match="metadata of 'a' holds a lone surrogate"):
        VectorFrames.entry("a", [0.1] * 384, {"text": "x\udcff"})  # was UnicodeEncodeError
    with pytest.raises(LoneSurrogateError, match="a vector id holds"):
        VectorFrames.entry("a\ud800", [0.1] * 384, None)
    with pytest.raises(InvalidRequestError, match="threshold"):
        VectorFrames.search_frame([0.1] * 384, 5, 1.5, None, "s")
    with pytest.raises(InvalidRequestError, match="k must"):
        VectorFrames.search_frame([0.1] * 384, 0, 0.2, None, "s")
    assert metadata_filter({"a": 1}) == {"a": {"$eq": 1}}
    with pytest.raises(InvalidRequestError, match="only"):
        metadata_filter({"a": {"$ne": 1}})


def test_replies_are_checked() -> None:
    ok = VectorFrames.upload_reply(
        {
            "type": "uploadVectorsResponse",
            "status": "partial",
            "uploaded": 1,
            "rejected": 1,
            "errors": ["b: too big"],
        },
        2,
        "h",
    )
    assert (ok.uploaded, ok.rejected, ok.errors) == (1, 1, ["b: too big"])
    with pytest.raises(VectorStoreError, match="took none"):
        VectorFrames.upload_reply(
            {
                "type": "uploadVectorsResponse",
                "status": "error",
                "uploaded": 0,
                "rejected": 2,
                "errors": ["a: x", "b: y"],
            },
            2,
            "h",
        )
    with pytest.raises(ProtocolError):
        VectorFrames.upload_reply({"type": "uploadVectorsResponse", "uploaded": -1}, 2, "h")
    found = VectorFrames.search_reply(
        {
            "type": "searchVectorsResponse",
            "totalVectors": 9,
            "results": [{"id": str(i), "score": 0.5, "metadata": {}} for i in range(50)],
        },
        3,
        "h",
    )
    assert len(found.results) == 3 and found.total_vectors == 9  # never more than k
    with pytest.raises(ProtocolError):
        VectorFrames.search_reply(
            {"results": [{"id": "a", "score": float("nan")}], "totalVectors": 1}, 3, "h"
        )
