"""The ``openai`` engine (issue 16).

Tokens/s of ``SessionManager.stream_prompt`` through a reference host whose engine is
``openai``, over the same OpenAI-compatible upstream (an aiohttp server over SmolLM2 via
llama.cpp, on 127.0.0.1) called directly with ``httpx`` streaming, interleaved in the same
run (aim >= 0.90).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from bench.common import Stopwatch, entry, interleaved
from langchain_fabstir import SessionManager
from langchain_fabstir.host import LlamaEngine, OpenAIEngine, ReferenceHost
from tests.openai_upstream import OpenAIUpstream

PROMPT = "Write a long story about a lighthouse keeper and the sea."
TOKENS = 160


async def openai_ratio() -> dict[str, Any]:
    llama = LlamaEngine(seed=7)
    async with OpenAIUpstream(llama) as upstream:
        engine = OpenAIEngine(upstream.url)
        async with engine, ReferenceHost(engine, rate_limit_per_minute=None) as host:
            async with SessionManager(host_url=host.url) as manager, httpx.AsyncClient() as http:
                session = await manager.create_session(temperature=0.0, max_tokens=TOKENS)
                body = {
                    "model": upstream.model_id,
                    "messages": [{"role": "user", "content": PROMPT}],
                    "max_tokens": TOKENS,
                    "temperature": 0.0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }

                async def direct() -> float:
                    watch = Stopwatch()
                    tokens = 0
                    url = upstream.url + "/chat/completions"
                    async with http.stream("POST", url, json=body, timeout=120) as response:
                        async for line in response.aiter_lines():
                            if line.startswith("data: {"):
                                usage = json.loads(line[6:]).get("usage")
                                if usage:
                                    tokens = usage["completion_tokens"]
                    return tokens / watch.elapsed()

                async def through_host() -> float:
                    watch = Stopwatch()
                    last = None
                    async for stream, _text in manager.open_stream(
                        session.id, PROMPT, context=[], record=False
                    ):
                        last = stream
                    assert last is not None
                    return last.result.output_tokens / watch.elapsed()

                await direct()  # warm-up (prompt cache, page-in, connections)
                await through_host()
                medians = await interleaved({"direct": direct, "host": through_host}, repeats=3)
    llama.close()
    ratio = medians["host"] / medians["direct"]
    return entry(
        "openai_host_over_direct_httpx",
        ratio,
        "ratio",
        target=">= 0.90",
        passed=ratio >= 0.90,
        host_tokens_per_s=round(medians["host"], 1),
        direct_tokens_per_s=round(medians["direct"], 1),
        tokens=TOKENS,
    )


BENCHMARKS = [openai_ratio]
