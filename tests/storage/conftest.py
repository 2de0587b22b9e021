"""Fixtures: a real LocalPortal on 127.0.0.1 (port 0) running on its own thread.

The portal gets its own event loop so that blocking (sync) storage calls made from an
async test cannot starve it: that is exactly the "sync call inside a running loop" case.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5Identity, generate_phrase


class ThreadedPortal:
    """A LocalPortal served by a private event loop on a daemon thread."""

    def __init__(self, data_dir: Path) -> None:
        self.portal = LocalPortal(data_dir, host="127.0.0.1", port=0)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.portal.start(), self.loop).result(30)
        self.url = self.portal.url
        self.data_dir = data_dir

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.portal.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedPortal]:
    p = ThreadedPortal(tmp_path_factory.mktemp("portal"))
    yield p
    p.stop()


@pytest.fixture
def phrase() -> str:
    """A fresh user (seed phrase) per test: tests never see each other's data."""
    return generate_phrase()


@pytest.fixture
def identity(phrase: str) -> S5Identity:
    return S5Identity.from_phrase(phrase)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]
