"""Downloads from the local portal: a small blob costs one trip to a worker thread (it
cost four: open, read, read to find the end, close), a large one streams piece by piece."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from langchain_fabstir.portal import LocalPortal, server
from langchain_fabstir.s5 import S5PortalClient

from .conftest import make_client


@pytest.mark.parametrize(("size", "trips"), [(0, 1), (64 * 1024, 1), (300 * 1024, 4)])
async def test_a_download_makes_few_trips_to_worker_threads(
    portal: LocalPortal,
    client: S5PortalClient,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    trips: int,
) -> None:
    data = os.urandom(size)
    cid = await client.upload(data)
    calls: list[str] = []
    real = asyncio.to_thread

    async def to_thread(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(server.asyncio, "to_thread", to_thread)
    async with make_client(portal.url) as reader:
        assert await reader.download(cid) == data
        assert await reader.download_hash(cid.hash) == data  # size unknown: looked up by hash
    assert len(calls) == 2 * trips, calls
