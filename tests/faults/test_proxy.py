"""FaultProxy against a real websockets server and client on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake
from websockets.frames import Frame, Opcode

from tests.faults.proxy import (
    OP_PING,
    OP_TEXT,
    CorruptBytes,
    CorruptFrame,
    CutAfterBytes,
    CutAfterFrames,
    Data,
    FaultProxy,
    FrameEnd,
    FrameStart,
    FrameTracker,
    PassThrough,
)

CHUNK = json.dumps({"type": "stream_chunk", "content": "Hel", "tokens": 1, "id": "1-ab"})


async def handler(ws: ServerConnection) -> None:
    """/echo echoes; /burst/N sends N messages m0..m(N-1); /json/N sends N JSON chunks."""
    assert ws.request is not None
    path = ws.request.path
    if path == "/echo":
        with contextlib.suppress(ConnectionClosed):  # faults break some connections
            async for message in ws:
                await ws.send(message)
        return
    kind, count = path.strip("/").split("/")
    for i in range(int(count)):
        await ws.send(f"m{i}" if kind == "burst" else CHUNK)
    await ws.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with FaultProxy("127.0.0.1", port) as p:
            yield p


def url(proxy: FaultProxy, path: str) -> str:
    return f"ws://127.0.0.1:{proxy.port}{path}"


async def recv(ws: ClientConnection, timeout: float = 5.0) -> str:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str)
    return message


# --- frame tracking (pure) ------------------------------------------------------------


def frame(opcode: Opcode, data: bytes, *, mask: bool = False) -> bytes:
    return Frame(opcode, data).serialize(mask=mask)


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_tracker_parses_extended_lengths_in_any_split(split: int) -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 70_000, b"masked!"]
    stream = head + b"".join(
        frame(Opcode.TEXT if i % 2 else Opcode.BINARY, p, mask=i == 4)
        for i, p in enumerate(payloads)
    )
    stream += frame(Opcode.PING, b"p")
    tracker = FrameTracker()
    events = []
    for i in range(0, len(stream), split):
        events.extend(tracker.feed(stream[i : i + split]))
    assert b"".join(e.data for e in events if isinstance(e, Data)) == stream
    starts = [e.frame for e in events if isinstance(e, FrameStart)]
    ends = [e.frame for e in events if isinstance(e, FrameEnd)]
    assert [f.length for f in starts] == [*map(len, payloads), 1]
    assert starts == ends and tracker.frames == 6 and tracker.websocket
    assert starts[4].mask is not None and starts[0].mask is None
    assert starts[5].opcode == OP_PING and starts[1].opcode == OP_TEXT
    head_bytes = b"".join(e.data for e in events if isinstance(e, Data) and e.kind == "head")
    assert head_bytes == head


def test_tracker_leaves_non_upgrade_responses_raw() -> None:
    tracker = FrameTracker()
    events = tracker.feed(b"HTTP/1.1 404 Not Found\r\n\r\n\x81\x02hi")
    assert not tracker.websocket and tracker.frames == 0
    assert [e.kind for e in events if isinstance(e, Data)] == ["head", "raw"]


# --- through the proxy ----------------------------------------------------------------


async def test_pass_through(proxy: FaultProxy) -> None:
    async with connect(url(proxy, "/echo"), compression=None) as ws:
        for text in ["hello", "x" * 100_000, json.dumps({"a": [1, 2]})]:
            await ws.send(text)
            assert await recv(ws) == text
    assert proxy.data_frames_down == 3 and proxy.bytes_up > 100_000
    assert not proxy.cut_happened.is_set() and proxy.errors == []


@pytest.mark.parametrize(("n", "compression"), [(1, "deflate"), (3, None), (5, "deflate")])
async def test_cut_after_n_frames(proxy: FaultProxy, n: int, compression: str | None) -> None:
    proxy.set_fault(CutAfterFrames(n))
    received = []
    async with connect(url(proxy, "/burst/8"), compression=compression) as ws:
        with pytest.raises(ConnectionClosedError):
            while True:
                received.append(await recv(ws))
    assert received == [f"m{i}" for i in range(n)]
    assert proxy.cut_happened.is_set() and proxy.data_frames_down == n


async def test_cut_mid_frame(proxy: FaultProxy) -> None:
    proxy.set_fault(CutAfterFrames(2, partial_bytes=3))
    async with connect(url(proxy, "/burst/5"), compression=None) as ws:
        assert [await recv(ws), await recv(ws)] == ["m0", "m1"]
        with pytest.raises(ConnectionClosedError):
            await recv(ws)
    conn = proxy.connections[0]
    assert conn.frames_down == 2
    # the head, two 4-byte frames ("m0", "m1"), then 3 bytes of the third frame
    assert conn.bytes_down == len(conn.tracker.head) + 2 * 4 + 3


async def test_cut_after_bytes_is_exact(proxy: FaultProxy) -> None:
    proxy.set_fault(CutAfterBytes(10), scope="new")
    with pytest.raises((InvalidHandshake, OSError, EOFError)):
        await connect(url(proxy, "/echo"), open_timeout=5)
    await proxy.cut_happened.wait()
    assert proxy.bytes_down == 10


async def test_cut_current_connection_only(proxy: FaultProxy) -> None:
    async with connect(url(proxy, "/echo")) as first:
        await first.send("a")
        assert await recv(first) == "a"
        proxy.set_fault(CutAfterBytes(0), scope="current")
        with pytest.raises(ConnectionClosed):
            await recv(first)
    async with connect(url(proxy, "/echo")) as second:  # new connections unaffected
        await second.send("b")
        assert await recv(second) == "b"
    assert len(proxy.connections) == 2 and proxy.connections[0].cut
    assert not proxy.connections[1].cut


async def test_stall_and_release(proxy: FaultProxy) -> None:
    async with connect(url(proxy, "/echo")) as ws:
        await ws.send("before")
        assert await recv(ws) == "before"
        proxy.stall("down")
        await ws.send("held")
        await proxy.stall_holding.wait()
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, timeout=0.2)
        proxy.release()
        assert await recv(ws) == "held"
        await ws.send("after")
        assert await recv(ws) == "after"


async def test_stall_upstream(proxy: FaultProxy) -> None:
    async with connect(url(proxy, "/echo")) as ws:
        await ws.send("warm-up")
        assert await recv(ws) == "warm-up"
        proxy.stall("up")
        up_before = proxy.bytes_up
        await ws.send("to server")
        await proxy.stall_holding.wait()
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, timeout=0.2)
        assert proxy.bytes_up == up_before  # nothing reached the server
        proxy.release()
        assert await recv(ws) == "to server"


async def test_corrupt_nth_text_frame(proxy: FaultProxy) -> None:
    proxy.set_fault(CorruptFrame(n=2))
    async with connect(url(proxy, "/json/3"), compression=None) as ws:
        first, second, third = [await recv(ws) for _ in range(3)]
    assert first == CHUNK and third == CHUNK
    assert second != CHUNK and len(second) == len(CHUNK)
    with pytest.raises(json.JSONDecodeError):
        json.loads(second)
    assert proxy.corrupt_happened.is_set() and not proxy.cut_happened.is_set()


async def test_corrupt_with_custom_replacement(proxy: FaultProxy) -> None:
    rng = random.Random(7)

    def scramble(payload: bytes) -> bytes:
        return bytes(rng.choice(b"abc{}[]") for _ in payload)

    proxy.set_fault(CorruptFrame(n=1, replace=scramble))
    async with connect(url(proxy, "/echo"), compression=None) as ws:
        await ws.send('{"ok": true}')
        garbled = await recv(ws)
        assert garbled != '{"ok": true}' and set(garbled) <= set("abc{}[]")
        await ws.send("intact")  # only the first matching frame is corrupted
        assert await recv(ws) == "intact"


async def test_corrupt_raw_bytes_breaks_framing(proxy: FaultProxy) -> None:
    async with connect(url(proxy, "/echo")) as ws:
        await ws.send("ok")
        assert await recv(ws) == "ok"
        proxy.set_fault(CorruptBytes(0, b"\x8f"), scope="current")  # reserved opcode 0xF
        await ws.send("boom")
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
    assert info.value.sent is not None
    assert info.value.sent.code == 1002  # protocol error, detected by the client
    assert proxy.corrupt_happened.is_set()


async def test_wait_for_counts_and_pass_through_after_fault(proxy: FaultProxy) -> None:
    proxy.set_fault(CutAfterFrames(100))
    async with connect(url(proxy, "/burst/4")) as ws:
        await proxy.wait_for(lambda: proxy.data_frames_down >= 4)
        proxy.set_fault(PassThrough())
        assert [await recv(ws) for _ in range(4)] == ["m0", "m1", "m2", "m3"]
    assert not proxy.cut_happened.is_set()


async def test_upstream_down() -> None:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as proxy:
        with pytest.raises((InvalidHandshake, OSError, EOFError)):
            await connect(url(proxy, "/echo"), open_timeout=5)
        await proxy.upstream_failed.wait()
