"""Shared fixtures: real servers on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost


@pytest.fixture
async def echo_host() -> AsyncIterator[ReferenceHost]:
    """A reference host with the deterministic echo engine and no rate limit."""
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        yield host


@pytest.fixture(scope="session")
def llama_engine() -> Iterator[LlamaEngine]:
    """SmolLM2-135M through llama.cpp, loaded once for the whole run (~0.5 s, 200 MB)."""
    engine = LlamaEngine(seed=42)
    yield engine
    engine.close()


@pytest.fixture
async def llama_host(llama_engine: LlamaEngine) -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(llama_engine, rate_limit_per_minute=None) as host:
        yield host


class ThreadedHost:
    """A reference host running on its own event loop in a thread (for sync tests)."""

    def __init__(self, host: ReferenceHost) -> None:
        import asyncio
        import threading

        self.host = host
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(host.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(30)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.host.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def threaded_echo_host() -> Iterator[ReferenceHost]:
    th = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None))
    yield th.host
    th.stop()
