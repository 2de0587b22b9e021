"""Shared fixtures: real servers on 127.0.0.1, port 0."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal

# Two xdist workers share CI's 2 cores, and llama.cpp's threads wait on each other at every
# step: two models with 2 threads each on 2 cores fell below 4 tokens/s (36 with 1 thread
# each), and an answer stalled past a test's bound. One thread per model, here and in the
# hosts the tests start as subprocesses (they inherit the environment).
os.environ.setdefault("FABSTIR_LLAMA_THREADS", "1")


@pytest.fixture
async def echo_host() -> AsyncIterator[ReferenceHost]:
    """A reference host with the deterministic echo engine and no rate limit."""
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as host:
        yield host


KEYED_HOST_KEY = "0x" + "5a" * 32
"""The key of :func:`keyed_host` (its public key is what a client seals to)."""


@pytest.fixture
async def keyed_host() -> AsyncIterator[ReferenceHost]:
    """A reference host with the echo engine and a host key (encrypted sessions)."""
    async with ReferenceHost(EchoEngine(), host_key=KEYED_HOST_KEY) as host:
        yield host


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[LocalPortal]:
    """A local S5 portal on 127.0.0.1 (port 0), its blobs under ``tmp_path``. The S5,
    storage and CLI tests have their own (a shared data directory, or a portal thread)."""
    async with LocalPortal(tmp_path / "portal", port=0) as p:
        yield p


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
