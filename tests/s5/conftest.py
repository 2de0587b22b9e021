"""Fixtures: a real LocalPortal on 127.0.0.1 (port 0) and clients registered on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5FileSystem, S5Identity, S5PortalClient

PHRASE = (
    "sign weight spy quality sudden minute pizza great fear "
    "adapt nobody evident control alive crime"
)


class CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the requests it sends (no mocking)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def identity() -> S5Identity:
    return S5Identity.from_phrase(PHRASE)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "portal"


@pytest.fixture
async def portal(data_dir: Path) -> AsyncIterator[LocalPortal]:
    async with LocalPortal(data_dir, host="127.0.0.1", port=0) as p:
        yield p


def make_client(url: str, **kwargs: object) -> S5PortalClient:
    kwargs.setdefault("backoff_initial", 0.01)
    kwargs.setdefault("backoff_max", 0.05)
    kwargs.setdefault("max_attempts", 3)
    return S5PortalClient(url, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def client(portal: LocalPortal, identity: S5Identity) -> AsyncIterator[S5PortalClient]:
    async with make_client(portal.url) as c:
        await c.ensure_account(identity.portal_account_key_pair())
        yield c


@pytest.fixture
def fs(client: S5PortalClient, identity: S5Identity) -> S5FileSystem:
    return S5FileSystem(client, identity)
