"""Client CPU per token (issue 22): ``SessionManager.stream_prompt`` and
``ChatFabstir.astream`` over a bare ``websockets`` receive loop with ``json.loads``.

One echo host in a separate process (its CPU does not count) streams the same answer
to three clients side by side, interleaved: the bare loop (``recv`` + ``json.loads``,
nothing else), a plaintext ``SessionManager.stream_prompt``, and ``ChatFabstir.astream``.
The figure is ``time.process_time()`` of this process per streamed token, as a ratio
over the bare loop's (aim <= 1.3 and <= 3.0). Measured with the host sending as fast as
it can and with the host pacing tokens at 0.5 ms (each frame a wake-up in every client).
A fourth arm is LangChain's own floor: a chat model without I/O that yields ready chunks
through the same ``astream`` (``bench.chat_model.ReadyChunksModel``); ``astream`` over
bare plus that floor is reported beside.

Each client's figure is the mean of 7 interleaved runs: LangChain's ``astream`` keeps
every chunk of an answer until it ends, and the full garbage collections those chunks
bring (about 65 ms each in a process with LangChain imported, once every few answers)
are a periodic cost. The mean counts them at their share; a median of few runs counted
them whole or not at all (3.9 and 1.9 measured on the same code, one process after the
other). The medians are in the details, with the full collections seen.
"""

from __future__ import annotations

import gc
import json
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import websockets

from bench.chat_model import ReadyChunksModel
from bench.common import entry, interleaved
from langchain_fabstir import ChatFabstir, SessionConfig, SessionManager
from langchain_fabstir.cli import start_host_process

TOKENS = 4000


async def client_cpu_per_token() -> list[dict[str, Any]]:
    return [*await _measure(0.0), *await _measure(0.0005)]


async def _measure(delay: float) -> list[dict[str, Any]]:
    proc, url = start_host_process(
        "--engine",
        "echo",
        "--script",
        "tok ",
        "--fill",
        "--rate-limit",
        "0",
        "--delay",
        str(delay),
    )
    try:
        async with SessionManager(SessionConfig(encryption="off"), host_url=url) as manager:
            session = await manager.create_session(max_tokens=TOKENS)
            chat = ChatFabstir(host_url=url, max_tokens=TOKENS, encryption="off")
            bare_ws = await websockets.connect(
                url.replace("http://", "ws://") + "/v1/ws", compression="deflate"
            )
            await bare_ws.recv()  # the greeting

            def per_token(stream: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[float]]:
                async def run() -> float:
                    cpu = time.process_time()
                    n = await stream()
                    assert n >= TOKENS - 1, n
                    return (time.process_time() - cpu) / n * 1e6  # microseconds per token

                return run

            async def bare() -> int:
                n = 0
                prompt = {"model": "echo", "prompt": "go", "max_tokens": TOKENS}
                await bare_ws.send(json.dumps({"type": "prompt", "id": "b", "request": prompt}))
                while True:
                    frame = json.loads(await bare_ws.recv())
                    if frame["type"] == "stream_end":
                        return n
                    if frame.get("content"):
                        n += 1

            async def stream_prompt() -> int:
                n = 0
                async for _text in manager.stream_prompt(session.id, "go"):
                    n += 1
                manager._state(session.id).messages.clear()  # (no growing history)
                return n

            async def astream() -> int:
                n = 0
                async for chunk in chat.astream("go"):
                    if chunk.content:
                        n += 1
                return n

            ready = ReadyChunksModel(n=TOKENS)

            async def no_io_astream() -> int:
                # LangChain's own floor: a chat model that does nothing but yield chunks
                # (built the usual, validated way), through the same astream.
                n = 0
                async for chunk in ready.astream("go"):
                    if chunk.content:
                        n += 1
                return n

            runs = {
                "bare": per_token(bare),
                "stream_prompt": per_token(stream_prompt),
                "astream": per_token(astream),
                "langchain_no_io_astream": per_token(no_io_astream),
            }
            for run in runs.values():  # warm-up
                await run()
            seen: dict[str, list[float]] = {name: [] for name in runs}

            def kept(name: str) -> Callable[[], Awaitable[float]]:
                async def run() -> float:
                    seen[name].append(await runs[name]())
                    return seen[name][-1]

                return run

            full_before = gc.get_stats()[2]["collections"]
            means = await interleaved(
                {name: kept(name) for name in runs}, repeats=7, statistic=statistics.fmean
            )
            full = gc.get_stats()[2]["collections"] - full_before
            await bare_ws.close()
            await chat.aclose()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    paced = f"_paced_{delay * 1000:g}ms" if delay else ""
    us = {name: round(value, 2) for name, value in means.items()}
    medians = {name: round(statistics.median(values), 2) for name, values in seen.items()}
    sm = means["stream_prompt"] / means["bare"]
    cf = means["astream"] / means["bare"]
    floor = means["astream"] / (means["bare"] + means["langchain_no_io_astream"])
    return [
        entry(
            f"client_cpu_per_token_stream_prompt_over_bare{paced}",
            sm,
            "ratio",
            target="<= 1.3",
            passed=sm <= 1.3,
            us_per_token=us,
            median_us_per_token=medians,
            full_collections=full,
            host_delay_ms=delay * 1000,
            tokens=TOKENS,
        ),
        entry(
            f"client_cpu_per_token_astream_over_bare{paced}",
            cf,
            "ratio",
            target="<= 3.0",
            passed=cf <= 3.0,
            us_per_token=us,
            median_us_per_token=medians,
            full_collections=full,
            host_delay_ms=delay * 1000,
            tokens=TOKENS,
        ),
        entry(
            f"client_cpu_per_token_astream_over_bare_plus_langchain_no_io{paced}",
            floor,
            "ratio",
            target="report",
            passed=None,
            us_per_token=us,
            host_delay_ms=delay * 1000,
            tokens=TOKENS,
        ),
    ]


BENCHMARKS = [client_cpu_per_token]
