"""A hostile portal cannot hold a request forever, and no secret reaches a log."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from langchain_fabstir.errors import StorageError
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import CID, S5FileSystem, S5Identity

from .conftest import make_client


class TricklingPortal:
    """A raw-socket HTTP server that answers one byte every ``interval``.

    A ``GET`` of an account challenge is answered at once (so that a login reaches its
    non-idempotent ``POST``); every other request trickles.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            self.requests.append(line)
            status = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            if line.startswith(b"GET /s5/account/"):
                body = b'{"challenge": "' + b"A" * 43 + b'"}'
                writer.write(status + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
                return
            body = b'{"cid": "' + b"z" * 200 + b'"}'
            writer.write(status + b"Content-Length: %d\r\n\r\n" % len(body))
            for byte in body:  # each byte arrives well within any read timeout
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(self.interval)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def trickling() -> AsyncIterator[tuple[TricklingPortal, str]]:
    portal = TricklingPortal()
    async with portal as url:
        yield portal, url


async def test_trickling_portal_hits_the_request_deadline(
    trickling: tuple[TricklingPortal, str],
) -> None:
    portal, url = trickling
    client = make_client(url, request_deadline=1.0, max_attempts=2)
    started = time.monotonic()
    async with client:
        with pytest.raises(StorageError) as caught:
            # the whole call is bounded here too, so old code fails instead of hanging
            await asyncio.wait_for(client.download(CID.from_bytes(b"x")), 20)
    elapsed = time.monotonic() - started
    assert caught.value.code == "STORAGE_ERROR"
    assert "deadline" in caught.value.message and "2 attempts" in caught.value.message
    assert len(portal.requests) == 2  # retried once, by the existing retry policy
    assert elapsed < 6.0  # 2 x 1 s deadline + small backoff, not 100 bytes x 0.5 s


async def test_trickling_non_idempotent_request_is_not_retried(
    trickling: tuple[TricklingPortal, str],
) -> None:
    """A login POST past its deadline may have reached the portal: StorageError, no resend."""
    portal, url = trickling
    key_pair = S5Identity.generate()[0].portal_account_key_pair()
    async with make_client(url, request_deadline=0.5, max_attempts=3) as client:
        with pytest.raises(StorageError) as caught:
            await asyncio.wait_for(client.login(key_pair), 20)
    assert "deadline" in caught.value.message
    assert [line.split(b" ")[0] for line in portal.requests] == [b"GET", b"POST"]


def test_request_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError):
        make_client("http://127.0.0.1:1", request_deadline=0)


async def test_no_secret_reaches_any_log(
    portal: LocalPortal, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG during register, login, upload and FS writes: no token, key, seed."""
    identity, phrase = S5Identity.generate()
    for name in ["", "httpx", "httpcore", "aiohttp", *logging.root.manager.loggerDict]:
        caplog.set_level(logging.DEBUG, logger=name)
    key_pair = identity.portal_account_key_pair()
    tokens: list[str] = []
    async with make_client(portal.url) as client:
        tokens.append((await client.register(key_pair)).get_secret_value())
        tokens.append((await client.login(key_pair)).get_secret_value())
        await client.upload(b"some bytes")
        fs = S5FileSystem(client, identity)
        await fs.put("home/notes/a.txt", b"hello", media_type="text/plain")
        assert await fs.get("home/notes/a.txt") == b"hello"
        tokens.append((await client.ensure_account(key_pair)).get_secret_value())

    text = (
        "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
        + caplog.text
    )
    assert any(r.name.startswith("httpcore") for r in caplog.records), "DEBUG not captured"
    words = phrase.split()
    secrets = {
        "token": tokens,
        # The phrase, and every two adjacent words of it (one word alone, e.g. "time", can
        # be part of ordinary log text such as "timeout": that is not a leak).
        "phrase": [phrase, *(" ".join(pair) for pair in itertools.pairwise(words))],
        "seed": [identity.fs_root_key.hex(), identity.hidden_db_key.hex()],
        "private key": [bytes(key_pair._signing_key).hex()],
    }
    for what, values in secrets.items():
        for value in values:
            assert value and value not in text, f"the {what} reached a log"
    assert "[REDACTED]" in text  # the Set-Cookie header was seen, and redacted


class TricklingRegistry:
    """An aiohttp portal whose registry answers a small JSON reply one byte every 0.5 s
    (each byte well within any read timeout)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.reads = 0
        self.runner: web.AppRunner | None = None

    async def _registry(self, request: web.Request) -> web.StreamResponse:
        self.reads += 1
        body = json.dumps({"pk": request.query.get("pk", ""), "revision": 1}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        for byte in body:
            await response.write(bytes([byte]))
            await asyncio.sleep(self.interval)
        return response

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/s5/registry", self._registry)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_a_trickled_small_reply_fails_within_its_read_timeout() -> None:
    """A registry read is bounded as a whole: read timeout 1 s x 2 attempts, not the
    300 s request deadline (which alone used to end it)."""
    async with TricklingRegistry() as url:
        client = make_client(url, timeout=httpx.Timeout(1.0, connect=1.0), max_attempts=2)
        started = time.monotonic()
        async with client:
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(client.registry_get(b"\x01" * 32), 20)
        elapsed = time.monotonic() - started
    assert caught.value.code == "STORAGE_ERROR"
    assert "deadline" in caught.value.message and "2 attempts" in caught.value.message
    assert elapsed < 2 * (1.0 + 1.0) + 1.0  # (connect + read) x attempts + backoff
