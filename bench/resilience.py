"""Resilience benchmarks.

(a) Resume latency: the time from a cut (the fault proxy drops the connection in the
    middle of an answer) to the next token, over what it cannot be faster than: one
    normal inter-token gap plus one fresh connection (connect, greeting,
    ``session_init``). Medians of several cuts; aim under 2.0.
(b) Client memory per concurrent session with 500 sessions open (each has answered one
    prompt), traced with ``tracemalloc`` on the client side only (the host runs in a
    subprocess); the RSS growth is reported alongside.

Run with ``python -m bench.run resilience``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import signal
import statistics
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from bench.common import entry
from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.sessions.answer import Resumed, Text
from tests.faults.proxy import CutAfterFrames, FaultProxy

TOKEN_DELAY = 0.005
ANSWER_TOKENS = 200
CUT_AT = 80
REPEATS = 7
SESSIONS = 500


@contextlib.contextmanager
def host_process(*extra: str) -> Iterator[str]:
    """A ``fabstir host`` subprocess (echo engine, no rate limit); yields its URL."""
    proc, url = start_host_process("--engine", "echo", "--rate-limit", "0", *extra)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _stream_times(
    manager: SessionManager, session_id: str, proxy: FaultProxy | None = None
) -> tuple[list[float], float | None, float | None]:
    """Arrival times of every token; with ``proxy``, also when the cut happened and when
    the first token after the resume arrived."""
    cut_at: list[float] = []

    async def watch_cut() -> None:
        assert proxy is not None
        await proxy.cut_happened.wait()
        cut_at.append(time.perf_counter())

    watcher = asyncio.create_task(watch_cut()) if proxy is not None else None
    times: list[float] = []
    resumed_at: float | None = None
    try:
        resuming = False
        async for _stream, event in manager.answer_events(
            session_id, "go", max_tokens=ANSWER_TOKENS, context=[], record=False
        ):
            if type(event) is Resumed:
                resuming = True
                continue
            if type(event) is not Text:
                continue
            now = time.perf_counter()
            times.append(now)
            if resuming and resumed_at is None:
                resumed_at = now
                resuming = False
                # The cut is no later than the last token that came through before it.
                cut_at.append(times[-2] if len(times) > 1 else now)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    if len(times) != ANSWER_TOKENS:
        raise RuntimeError(f"expected {ANSWER_TOKENS} tokens, got {len(times)}")
    return times, (min(cut_at) if cut_at else None), resumed_at


async def resume_latency() -> dict[str, Any]:
    script = "|".join(f" {i}" for i in range(ANSWER_TOKENS))
    with host_process("--script", script, "--delay", str(TOKEN_DELAY)) as url:
        port = int(url.rsplit(":", 1)[1])
        async with FaultProxy("127.0.0.1", port) as proxy:
            config = SessionConfig(compression_enabled=False)
            async with SessionManager(config, host_url=f"http://127.0.0.1:{proxy.port}") as m:
                # A fresh connection: connect + greeting + session_init + ack.
                connects = []
                for _ in range(REPEATS):
                    start = time.perf_counter()
                    s = await m.create_session()
                    connects.append(time.perf_counter() - start)
                    await m.end_session(s.id)
                session = await m.create_session()
                await _stream_times(m, session.id)  # warm-up
                gaps: list[float] = []
                outages: list[float] = []
                for _ in range(REPEATS):
                    times, _, _ = await _stream_times(m, session.id)
                    gaps.extend(b - a for a, b in itertools.pairwise(times))
                    proxy.reset_events()
                    proxy.set_fault(CutAfterFrames(CUT_AT), scope="current")
                    _, cut, resumed = await _stream_times(m, session.id, proxy)
                    if cut is None or resumed is None:
                        raise RuntimeError("the cut did not happen or was not resumed")
                    outages.append(resumed - cut)
            await _settle(proxy)
    gap, connect, outage = (statistics.median(x) for x in (gaps, connects, outages))
    ratio = outage / (gap + connect)
    return entry(
        "resume_cut_to_next_token_over_gap_plus_connect",
        ratio,
        "ratio",
        target="report; aim < 2.0",
        passed=ratio < 2.0,
        cut_to_next_token_ms=round(outage * 1000, 2),
        inter_token_gap_ms=round(gap * 1000, 2),
        fresh_connection_ms=round(connect * 1000, 2),
        repeats=REPEATS,
        token_delay_ms=TOKEN_DELAY * 1000,
    )


async def _settle(proxy: FaultProxy) -> None:
    """Let the proxy's connections finish closing before it shuts down."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proxy.wait_for(lambda: not proxy.live), 5)


def _rss() -> int:
    """This process's resident set size in bytes (Linux), or 0."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


async def _memory_per_session(url: str, compression: bool) -> tuple[float, float]:
    """(traced bytes, RSS bytes) per open session, ``SESSIONS`` sessions open."""
    config = SessionConfig(compression_enabled=compression, open_timeout=60, ack_timeout=60)
    async with SessionManager(config, host_url=url) as manager:
        warm = await manager.create_session()  # imports, first-use caches
        await manager.prompt(warm.id, "warm up")
        gc.collect()
        rss0 = _rss()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            sessions = await asyncio.gather(*(manager.create_session() for _ in range(SESSIONS)))
            await asyncio.gather(
                *(manager.prompt(s.id, f"session {i} says hello") for i, s in enumerate(sessions))
            )
            gc.collect()
            used, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        rss = _rss() - rss0
        await asyncio.gather(*(manager.end_session(s.id) for s in sessions))
    return (used - base) / SESSIONS, rss / SESSIONS


async def memory_per_session() -> dict[str, Any]:
    with host_process() as url:
        traced, rss = await _memory_per_session(url, compression=True)
        traced_plain, rss_plain = await _memory_per_session(url, compression=False)
    return entry(
        "client_bytes_per_concurrent_session",
        traced,
        "bytes",
        target="report",
        passed=None,
        sessions=SESSIONS,
        rss_bytes_per_session=round(rss),
        compression_off_bytes_per_session=round(traced_plain),
        compression_off_rss_bytes_per_session=round(rss_plain),
        method="tracemalloc delta (client only; host in a subprocess)",
    )


BENCHMARKS = [resume_latency, memory_per_session]
