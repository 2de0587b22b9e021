"""Foundation benchmarks (issue: Foundation).

(a) llama tokens/s through ``/v1/ws`` + ``SessionManager.stream_prompt`` over the same
    engine called directly in-process (target >= 0.90).
(b) echo (no delay) tokens/s of ``SessionManager.stream_prompt`` over a bare
    ``websockets`` receive loop that only parses the JSON of the same frames (aim >= 0.5).
"""

from __future__ import annotations

import json
import signal
from typing import Any

import websockets

from bench.common import Stopwatch, entry, interleaved
from langchain_fabstir import SessionManager
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.host import EngineRequest, LlamaEngine, ReferenceHost

LLAMA_PROMPT = "Write a long story about a lighthouse keeper and the sea."
LLAMA_TOKENS = 160
ECHO_TOKENS = 4000


async def llama_ratio() -> dict[str, Any]:
    engine = LlamaEngine(seed=7)
    messages = [{"role": "user", "content": LLAMA_PROMPT}]
    async with ReferenceHost(engine, rate_limit_per_minute=None) as host:
        async with SessionManager(host_url=host.url) as manager:
            session = await manager.create_session(temperature=0.0, max_tokens=LLAMA_TOKENS)

            async def direct() -> float:
                watch = Stopwatch()
                gen = engine.generate(
                    EngineRequest(messages, max_tokens=LLAMA_TOKENS, temperature=0.0)
                )
                async for _ in gen:
                    pass
                return gen.result.completion_tokens / watch.elapsed()

            async def through_ws() -> float:
                # Same single-turn prompt each time: no growing history.
                watch = Stopwatch()
                last = None
                async for stream, _text in manager.open_stream(
                    session.id, LLAMA_PROMPT, context=[], record=False
                ):
                    last = stream
                assert last is not None
                return last.result.output_tokens / watch.elapsed()

            await direct()  # warm-up (prompt cache, page-in)
            await through_ws()
            medians = await interleaved({"direct": direct, "ws": through_ws}, repeats=3)
    engine.close()
    ratio = medians["ws"] / medians["direct"]
    return entry(
        "llama_ws_over_direct",
        ratio,
        "ratio",
        target=">= 0.90",
        passed=ratio >= 0.90,
        ws_tokens_per_s=round(medians["ws"], 1),
        direct_tokens_per_s=round(medians["direct"], 1),
        tokens=LLAMA_TOKENS,
    )


async def echo_ratio() -> dict[str, Any]:
    proc, url = start_host_process(
        "--engine", "echo", "--script", "tok ", "--fill", "--rate-limit", "0"
    )
    try:
        async with SessionManager(host_url=url) as manager:
            session = await manager.create_session(max_tokens=ECHO_TOKENS)
            ws_url = url.replace("http://", "ws://") + "/v1/ws"
            bare_ws = await websockets.connect(ws_url, compression="deflate")
            await bare_ws.recv()

            async def session_stream() -> float:
                watch = Stopwatch()
                n = 0
                async for _stream, _text in manager.open_stream(
                    session.id, "go", context=[], record=False
                ):
                    n += 1
                return n / watch.elapsed()

            async def bare_loop() -> float:
                watch = Stopwatch()
                n = 0
                await bare_ws.send(
                    json.dumps(
                        {
                            "type": "prompt",
                            "id": "b",
                            "request": {"model": "echo", "prompt": "go", "max_tokens": ECHO_TOKENS},
                        }
                    )
                )
                while True:
                    frame = json.loads(await bare_ws.recv())
                    if frame["type"] == "stream_end":
                        break
                    if frame.get("content"):
                        n += 1
                return n / watch.elapsed()

            await session_stream()
            await bare_loop()
            medians = await interleaved({"session": session_stream, "bare": bare_loop}, repeats=5)
            await bare_ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    ratio = medians["session"] / medians["bare"]
    return entry(
        "echo_stream_prompt_over_bare_websockets",
        ratio,
        "ratio",
        target="report; aim >= 0.5",
        passed=ratio >= 0.5,
        session_tokens_per_s=round(medians["session"]),
        bare_tokens_per_s=round(medians["bare"]),
        tokens=ECHO_TOKENS,
    )


BENCHMARKS = [llama_ratio, echo_ratio]
