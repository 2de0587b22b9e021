"""Embeddings (issue 23, item 1).

Texts/s of ``FabstirEmbeddings.aembed_documents`` through a reference host's ``/v1/embed``
(HTTP, JSON both ways, validation, client-side checks and normalisation) over the same
all-MiniLM-L6-v2 engine called directly (``MiniLMEmbedder.embed`` plus normalisation) on the
same 125 texts in the same batches (96 + 29), interleaved in the same run (aim >= 0.80).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from bench.common import Stopwatch, entry, interleaved
from langchain_fabstir import FabstirEmbeddings
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder

SUBJECTS = ["The lighthouse keeper", "A tired engineer", "The river", "Our small team", "A fox"]
VERBS = ["watched", "fixed", "crossed", "planned", "remembered"]
OBJECTS = [
    "the storm over the bay",
    "a leaking pipe before dawn",
    "the old stone bridge",
    "the quarterly tax filings",
    "a quiet garden in April",
]
TEXTS = [
    f"{s} {v} {o}, and nobody noticed for {n} days."
    for n, (s, v, o) in enumerate((s, v, o) for s in SUBJECTS for v in VERBS for o in OBJECTS)
]
BATCH = 96


async def embeddings_ratio() -> dict[str, Any]:
    engine = MiniLMEmbedder().load()
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=engine) as host:
        client = FabstirEmbeddings(host_url=host.url)

        async def direct() -> float:
            watch = Stopwatch()
            for start in range(0, len(TEXTS), BATCH):
                vectors, _ = await asyncio.to_thread(engine.embed, TEXTS[start : start + BATCH])
                (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()
            return len(TEXTS) / watch.elapsed()

        async def through_host() -> float:
            watch = Stopwatch()
            vectors = await client.aembed_documents(TEXTS)
            assert len(vectors) == len(TEXTS)
            return len(TEXTS) / watch.elapsed()

        await direct()  # warm-up (page-in, connections)
        await through_host()
        medians = await interleaved({"direct": direct, "host": through_host}, repeats=3)
    ratio = medians["host"] / medians["direct"]
    return entry(
        "embeddings_host_over_direct_model",
        ratio,
        "ratio",
        target=">= 0.80",
        passed=ratio >= 0.80,
        host_texts_per_s=round(medians["host"], 1),
        direct_texts_per_s=round(medians["direct"], 1),
        texts=len(TEXTS),
        batch=BATCH,
        model="all-MiniLM-L6-v2 (numpy)",
    )


BENCHMARKS = [embeddings_ratio]
