"""Loading long S5 histories (issue #22): merged segments, a layout written before merging
existed, faults in the middle of a merge, a fast decode that equals ``messages_from_dict``.

Against real servers on 127.0.0.1: the LocalPortal, and a small aiohttp proxy in front of
it that fails registry writes on demand (a writer that dies between uploading a merged
segment and publishing it, or whose publish lands but whose reply is lost).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import aiohttp
import cbor2
import pytest
from aiohttp import web
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, messages_from_dict
from pydantic import SecretStr

from langchain_fabstir.chat_message_histories import (
    S5ChatMessageHistory,
    decode_messages,
    encode_message,
)
from langchain_fabstir.errors import StorageError
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import RegistryEntry, S5FileSystem, S5Identity, S5PortalClient
from langchain_fabstir.s5.fs import split_path
from langchain_fabstir.storage.access import on_background
from langchain_fabstir.storage.sealed_log import SealedLog, _Head, _Segment

from .conftest import ThreadedPortal
from .history_fixture import FIXTURE, SESSION, fixture_messages
from .test_chat_history import every_message_type


def make(
    portal: ThreadedPortal | LocalPortal | str, phrase: str, sid: str, **kw: object
) -> S5ChatMessageHistory:
    url = portal if isinstance(portal, str) else portal.url
    return S5ChatMessageHistory(sid, portal_url=url, seed_phrase=SecretStr(phrase), **kw)  # type: ignore[arg-type]


async def head_of(history: S5ChatMessageHistory) -> _Head:
    async def load() -> _Head:
        return (await (await history._get_log())._load())[0]

    return await on_background(load())


def odd_values() -> list[BaseMessage]:
    """Values only ``json`` reads right (orjson refuses or turns them into floats)."""
    return [
        AIMessage(
            "odd",
            id="odd-1",
            response_metadata={"big": 2**70, "low": -(2**63) - 1, "inf": math.inf, "f": 0.1},
        ),
    ]


async def test_a_long_history_is_kept_in_few_segments(portal: ThreadedPortal, phrase: str) -> None:
    """300 messages sealed 4 at a time (75 segments before merging) are kept in a handful
    of merged segments, and read back equal to what was written, every type included."""
    messages: list[BaseMessage] = [
        *every_message_type(),
        *odd_values(),
        *(HumanMessage(f"m{i}", id=f"id{i}") for i in range(290)),
    ]
    history = make(portal, phrase, "long", seal_records=4)
    await history.aadd_messages(messages[:200])  # seals 50 segments in one append
    for message in messages[200:240]:  # single appends, some of which seal and merge
        await history.aadd_messages([message])
    await history.aadd_messages(messages[240:])
    fresh = make(portal, phrase, "long", seal_records=4)
    assert await fresh.aget_messages() == messages
    head = await head_of(fresh)
    counts = [seg.count for seg in head.segments]
    assert sum(counts) + len(head.tail) == len(messages)
    # 4-record segments merge 8 at a time into 32, those into 256: 300 = 256 + 32 + 3 * 4
    assert len(counts) <= 6, counts
    assert max(counts) == 256
    await history.aclose()
    await fresh.aclose()


def test_the_fast_decode_equals_messages_from_dict() -> None:
    """What ``decode_messages`` builds (orjson and the validation-free constructor where
    they apply, ``json`` and validation elsewhere) equals ``messages_from_dict``'s result:
    types, ids, metadata, tool calls, and values only ``json`` reads."""
    import json

    messages = [*every_message_type(), *odd_values()]
    records = [encode_message(m) for m in messages]
    reference = messages_from_dict(
        [{k: v for k, v in json.loads(r).items() if k != "v"} for r in records]
    )
    decoded = decode_messages(records)
    assert decoded == reference == messages
    assert [type(m) for m in decoded] == [type(m) for m in reference]
    assert [m.model_dump() for m in decoded] == [m.model_dump() for m in reference]
    big = decoded[-1].response_metadata
    assert type(big["big"]) is int and big["big"] == 2**70 and big["low"] == -(2**63) - 1


async def restore_fixture(client: S5PortalClient) -> dict[str, object]:
    data = cbor2.loads(FIXTURE.read_bytes())
    await client.ensure_account(S5Identity.from_phrase(data["phrase"]).portal_account_key_pair())
    for blob in data["blobs"]:
        await client.upload(blob)
    for pk, revision, value, signature in data["registry"]:
        await client.registry_set(RegistryEntry(pk, revision, value, signature))
    return dict(data)


async def test_a_history_written_before_merging_loads_and_compacts(tmp_path: Path) -> None:
    """The fixture was written by the code before merging (tests/storage/history_fixture.py,
    ten 3-message segments): today's code reads it as it is, and its appends merge the old
    segments without losing or reordering a message."""
    async with LocalPortal(tmp_path) as portal:
        async with S5PortalClient(portal.url) as client:
            data = await restore_fixture(client)
        phrase = str(data["phrase"])
        old = fixture_messages()
        history = make(portal, phrase, SESSION, seal_records=3)
        assert await history.aget_messages() == old
        assert [seg.count for seg in (await head_of(history)).segments] == [3] * 10
        new = [HumanMessage(f"new {i}", id=f"n{i}") for i in range(4)]
        for message in new:
            await history.aadd_messages([message])
        fresh = make(portal, phrase, SESSION)
        assert await fresh.aget_messages() == [*old, *new]
        counts = [seg.count for seg in (await head_of(fresh)).segments]
        assert counts[0] == 24 and len(counts) <= 4, counts  # 8 old segments became one
        await history.aclose()
        await fresh.aclose()


class PortalProxy:
    """A proxy in front of a portal that fails registry writes, or holds downloads, on
    demand.

    ``mode = "drop"``: every registry write is answered 503 without reaching the portal
    (the writer died after its uploads). ``mode = "lose_reply"``: the next registry write
    reaches the portal, its reply is replaced by a 503 (then the proxy passes again).
    ``mode = "no_downloads"``: every blob download is answered 503.
    ``uploads`` counts the blobs uploaded through it. ``gate_at = n``: blob downloads are
    held until ``n`` are in flight at once (then all pass); ``max_in_flight`` is the most
    seen at once.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode: Literal["pass", "drop", "lose_reply", "no_downloads"] = "pass"
        self.uploads = 0
        self.dropped = 0
        self.gate_at = 0
        self.in_flight = self.max_in_flight = 0
        self.gate = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.gate_at and request.path.startswith("/s5/download/"):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.in_flight >= self.gate_at:
                    self.gate.set()
                await self.gate.wait()
                return await self.forward(request)
            finally:
                self.in_flight -= 1
        return await self.forward(request)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        registry_write = request.method == "POST" and request.path == "/s5/registry"
        if request.path == "/s5/upload":
            self.uploads += 1
        if registry_write and self.mode == "drop":
            self.dropped += 1
            return web.Response(status=503, text="injected fault")
        if request.path.startswith("/s5/download/") and self.mode == "no_downloads":
            self.dropped += 1
            return web.Response(status=503, text="injected fault")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as reply:
            payload = await reply.read()
            if registry_write and self.mode == "lose_reply":
                self.mode = "pass"
                self.dropped += 1
                return web.Response(status=503, text="injected fault after the write")
            return web.Response(
                status=reply.status,
                body=payload,
                content_type=reply.content_type,
            )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[PortalProxy]:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as self.session:
            try:
                yield self
            finally:
                await runner.cleanup()


async def test_a_fault_in_the_middle_of_a_merge_loses_nothing(
    portal: ThreadedPortal, phrase: str
) -> None:
    """Segments of 2 messages merge 8 at a time: the 16th append seals the 8th segment and
    merges all 8. When that append dies after uploading the merged segment (its head is
    never published), the history reads as before it; when its publish lands but the
    reply is lost, the append is applied exactly once."""
    identity = S5Identity.from_phrase(phrase)
    async with S5PortalClient(portal.url) as direct:
        await direct.ensure_account(identity.portal_account_key_pair())
        token = direct.auth_token
    async with PortalProxy(portal.url).running() as proxy:
        client = S5PortalClient(proxy.url, auth_token=token, backoff_initial=0.01)
        history = S5ChatMessageHistory("faulty", fs=S5FileSystem(client, identity), seal_records=2)
        messages = [HumanMessage(f"m{i}", id=f"m{i}") for i in range(40)]
        for message in messages[:15]:
            await history.aadd_messages([message])
        assert len((await head_of(history)).segments) == 7

        proxy.mode, proxy.uploads = "drop", 0
        with pytest.raises(StorageError):
            await history.aadd_messages([messages[15]])
        assert proxy.dropped >= 1
        assert proxy.uploads == 3  # the 8th segment, the merged one, the head: not published
        reader = make(portal, phrase, "faulty")
        assert await reader.aget_messages() == messages[:15]
        assert len((await head_of(reader)).segments) == 7

        proxy.mode = "pass"
        await history.aadd_messages([messages[15]])  # the same append, now published
        assert await reader.aget_messages() == messages[:16]
        assert [seg.count for seg in (await head_of(reader)).segments] == [16]

        for message in messages[16:31]:
            await history.aadd_messages([message])
        proxy.mode, proxy.dropped = "lose_reply", 0
        await history.aadd_messages([messages[31]])  # merges; its reply is lost, retried
        assert proxy.dropped == 1
        assert await reader.aget_messages() == messages[:32]
        assert [seg.count for seg in (await head_of(reader)).segments] == [16, 16]
        await history.aclose()
        await reader.aclose()
        await client.aclose()


async def test_downloads_through_one_client_are_bounded_together(
    portal: ThreadedPortal, phrase: str
) -> None:
    """Three logs of 30 unmerged segments each (16 downloads at a time per log) read at
    once through one client: at most 20 requests are in flight together (the client's
    bound, httpx's number of kept-alive connections), and 20 are (they run concurrently)."""
    identity = S5Identity.from_phrase(phrase)
    paths = [f"home/bounded/{i}" for i in range(3)]
    async with S5PortalClient(portal.url) as direct:
        await direct.ensure_account(identity.portal_account_key_pair())
        token = direct.auth_token
        fs = S5FileSystem(direct, identity)
        for path in paths:
            log = SealedLog(fs, path, fs._keys(split_path(path)).write_key, seal_records=1)
            log.merge_fanout = 0  # (a log written before merging existed)
            await log.extend([b"record %d" % i for i in range(30)])
    async with PortalProxy(portal.url).running() as proxy:
        async with S5PortalClient(proxy.url, auth_token=token) as client:
            fs = S5FileSystem(client, identity)
            logs = [SealedLog(fs, p, fs._keys(split_path(p)).write_key) for p in paths]
            for log in logs:
                await log.count()  # the heads, read now: only segments are downloaded below
            proxy.gate_at = 20
            snapshots = await asyncio.wait_for(asyncio.gather(*(log.read() for log in logs)), 30)
    assert [len(snap.records) for snap in snapshots] == [30, 30, 30]
    assert proxy.max_in_flight == 20


async def test_an_append_goes_on_when_its_merge_cannot_read_the_old_segments(
    portal: ThreadedPortal, phrase: str
) -> None:
    """A writer that does not hold the old segments downloads them to merge; when the
    portal fails those downloads, the append lands unmerged (merging is an optimisation)
    and a later append merges."""
    identity = S5Identity.from_phrase(phrase)
    messages = [HumanMessage(f"m{i}", id=f"m{i}") for i in range(18)]
    first = make(portal, phrase, "unmerged", seal_records=2)
    for message in messages[:15]:  # 7 segments of 2 and one message in the tail
        await first.aadd_messages([message])
    await first.aclose()
    async with S5PortalClient(portal.url) as direct:
        await direct.ensure_account(identity.portal_account_key_pair())
        token = direct.auth_token
    async with PortalProxy(portal.url).running() as proxy:
        client = S5PortalClient(proxy.url, auth_token=token, backoff_initial=0.01)
        history = S5ChatMessageHistory(
            "unmerged", fs=S5FileSystem(client, identity), seal_records=2
        )
        assert await history.acount() == 15  # its head, read now
        proxy.mode = "no_downloads"
        await history.aadd_messages([messages[15]])  # seals the 8th segment; cannot merge
        assert proxy.dropped >= 1
        proxy.mode = "pass"
        reader = make(portal, phrase, "unmerged")
        assert await reader.aget_messages() == messages[:16]
        assert [seg.count for seg in (await head_of(reader)).segments] == [2] * 8
        await history.aadd_messages([messages[16]])  # merges now
        assert await reader.aget_messages() == messages[:17]
        assert [seg.count for seg in (await head_of(reader)).segments] == [16]
        await history.aclose()
        await reader.aclose()
        await client.aclose()


def test_large_segments_at_the_start_of_a_tier_do_not_stop_the_small_ones_merging() -> None:
    # Eight segments of big records (8 x 1.2 MB: more than max_segment_bytes together),
    # then small ones of the same tier: the group slides past the big ones. It used to
    # test only the run's first eight, and the log grew by one unmerged segment an append.
    log = SealedLog(None, "home/x", b"k" * 32)  # type: ignore[arg-type]
    segments, first = [], 0
    for size in [1_200_000] * 8 + [40_000] * 48:
        segments.append(_Segment(bytes(32), size, first, 128))
        first += 128
    start = log._merge_plan(segments)
    assert start == 2  # the first eight that fit: 6 big and 2 small, 7.28 MB
    assert sum(s.size for s in segments[start : start + 8]) <= log.max_segment_bytes
    assert log._merge_plan(segments[:9]) is None  # no eight of them fit yet
    small = [_Segment(bytes(32), 40_000, 128 * i, 128) for i in range(8)]
    assert log._merge_plan(small) == 0
