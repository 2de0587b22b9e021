"""A fault-injecting asyncio TCP proxy for WebSocket traffic (127.0.0.1, port 0).

It sits between a client and an upstream server and forwards bytes both ways, except when a
fault says otherwise. ``downstream`` is server -> client, ``upstream`` is client -> server::

    async with FaultProxy("127.0.0.1", host_port) as proxy:
        proxy.set_fault(CutAfterFrames(3))          # new and current connections
        ws = await connect(f"ws://127.0.0.1:{proxy.port}/v1/ws")
        ...
        await proxy.cut_happened.wait()

Faults (one active per connection; :meth:`FaultProxy.set_fault` replaces it, with
``scope="new"`` (connections accepted later), ``"current"`` (live ones) or ``"all"``):

- :class:`PassThrough` - forward everything (also releases a stall);
- :class:`CutAfterBytes` ``(n)`` - forward exactly ``n`` more downstream bytes, then abort both
  sides with a TCP RST (``n=0`` cuts at once);
- :class:`CutAfterFrames` ``(n, partial_bytes=0)`` - forward ``n`` more complete downstream
  WebSocket frames (data frames by default), then ``partial_bytes`` more bytes, then cut;
- :class:`Stall` ``(direction)`` - stop forwarding ``"down"``, ``"up"`` or ``"both"`` until
  another fault is set (data already read is held, the rest waits in kernel buffers);
- :class:`CorruptFrame` ``(n)`` - replace the payload of the ``n``-th next downstream text
  frame with bytes of the same length (default: ``!`` characters, valid UTF-8 and invalid
  JSON), so the client sees garbage JSON and no framing error;
- :class:`CorruptBytes` ``(offset, data)`` - overwrite raw downstream bytes (counted from when
  the fault is set; the HTTP response counts), e.g. to break WebSocket framing.

Counts for a fault start when it is applied to a connection. Frame awareness begins after the
upstream's ``HTTP/1.1 101`` response; server frames are unmasked (masked ones are handled too).
Payload corruption assumes the client did not negotiate ``permessage-deflate``
(``connect(..., compression=None)``): with compression the payload is deflate data and the
client sees a decompression error instead. Counting and cutting frames work either way.

Tests wait on events (``connection_made``, ``cut_happened``, ``stall_holding``,
``corrupt_happened``, ``upstream_failed``) or on :meth:`FaultProxy.wait_for`, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

__all__ = [
    "DATA_OPCODES",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CorruptBytes",
    "CorruptFrame",
    "CutAfterBytes",
    "CutAfterFrames",
    "Data",
    "Fault",
    "FaultProxy",
    "FrameEnd",
    "FrameStart",
    "FrameTracker",
    "PassThrough",
    "ProxyConnection",
    "Stall",
    "WsFrame",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
DATA_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
Direction = Literal["down", "up", "both"]
Scope = Literal["new", "current", "all"]
_HEAD_LIMIT = 64 * 1024
_READ_SIZE = 65536


@dataclass(frozen=True)
class PassThrough:
    """Forward everything."""


@dataclass(frozen=True)
class CutAfterBytes:
    """Forward exactly ``n`` more downstream bytes, then abort both sides."""

    n: int


@dataclass(frozen=True)
class CutAfterFrames:
    """Forward ``n`` more complete downstream frames whose opcode is in ``opcodes``, then
    ``partial_bytes`` more bytes (to cut in the middle of the next frame), then abort."""

    n: int
    partial_bytes: int = 0
    opcodes: frozenset[int] = DATA_OPCODES


@dataclass(frozen=True)
class Stall:
    """Stop forwarding in ``direction`` until another fault is set."""

    direction: Direction = "down"


def _bangs(payload: bytes) -> bytes:
    return b"!" * len(payload)


@dataclass(frozen=True)
class CorruptFrame:
    """Replace the payload of the ``n``-th next downstream frame with an opcode in ``opcodes``.

    ``replace`` maps the (unmasked) payload to new bytes of the same length.
    """

    n: int = 1
    opcodes: frozenset[int] = frozenset({OP_TEXT})
    replace: Callable[[bytes], bytes] = _bangs


@dataclass(frozen=True)
class CorruptBytes:
    """Overwrite downstream bytes ``[offset, offset + len(data))`` (relative to the fault)."""

    offset: int
    data: bytes


Fault = PassThrough | CutAfterBytes | CutAfterFrames | Stall | CorruptFrame | CorruptBytes


# --- WebSocket frame tracking ---------------------------------------------------------


@dataclass
class WsFrame:
    """One WebSocket frame seen in a byte stream (RFC 6455 section 5.2)."""

    index: int
    fin: bool
    rsv1: bool
    opcode: int
    length: int
    mask: bytes | None


@dataclass(frozen=True)
class Data:
    """Bytes of the stream: ``head`` (HTTP), ``header``/``payload`` (of a frame) or ``raw``."""

    data: bytes
    kind: Literal["head", "header", "payload", "raw"]
    frame: WsFrame | None = None


@dataclass(frozen=True)
class FrameStart:
    frame: WsFrame


@dataclass(frozen=True)
class FrameEnd:
    frame: WsFrame


Event = Data | FrameStart | FrameEnd


@dataclass
class FrameTracker:
    """Incremental parser of a server's byte stream: an HTTP response, then (after a 101)
    WebSocket frames. :meth:`feed` returns events in stream order; every input byte appears in
    exactly one :class:`Data` event, so forwarding all ``Data`` reproduces the stream.

    >>> t = FrameTracker()
    >>> evs = t.feed(b"HTTP/1.1 101 OK\\r\\n\\r\\n\\x81\\x02hi\\x82")
    >>> [type(e).__name__ for e in evs]
    ['Data', 'Data', 'FrameStart', 'Data', 'FrameEnd', 'Data']
    >>> evs[2].frame.opcode, evs[3].data, t.frames
    (1, b'hi', 1)
    """

    websocket: bool = False
    frames: int = 0
    _state: Literal["head", "header", "payload", "raw"] = "head"
    _head: bytearray = field(default_factory=bytearray)
    _hdr: bytearray = field(default_factory=bytearray)
    _need: int = 2
    _remaining: int = 0
    _frame: WsFrame | None = None

    @property
    def head(self) -> bytes:
        """The HTTP response head seen so far (complete once ``websocket`` is decided)."""
        return bytes(self._head)

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        i = 0
        while i < len(data):
            if self._state == "raw":
                out.append(Data(data[i:], "raw"))
                break
            if self._state == "head":
                i = self._feed_head(data, i, out)
            elif self._state == "header":
                i = self._feed_header(data, i, out)
            else:
                assert self._frame is not None
                take = min(self._remaining, len(data) - i)
                out.append(Data(data[i : i + take], "payload", self._frame))
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    out.append(FrameEnd(self._frame))
                    self._next_frame()
        return out

    def _feed_head(self, data: bytes, i: int, out: list[Event]) -> int:
        start = max(0, len(self._head) - 3)
        self._head += data[i:]
        end = self._head.find(b"\r\n\r\n", start)
        if end < 0:
            out.append(Data(data[i:], "head"))
            if len(self._head) > _HEAD_LIMIT:
                self._state = "raw"
            return len(data)
        used = end + 4 - (len(self._head) - (len(data) - i))
        del self._head[end + 4 :]
        out.append(Data(data[i : i + used], "head"))
        self.websocket = bytes(self._head[:13]) in (b"HTTP/1.1 101 ", b"HTTP/1.0 101 ")
        self._state = "header" if self.websocket else "raw"
        return i + used

    def _feed_header(self, data: bytes, i: int, out: list[Event]) -> int:
        take = min(self._need - len(self._hdr), len(data) - i)
        self._hdr += data[i : i + take]
        out.append(Data(data[i : i + take], "header"))
        i += take
        if len(self._hdr) < self._need:
            return i
        b0, b1 = self._hdr[0], self._hdr[1]
        len7, masked = b1 & 0x7F, bool(b1 & 0x80)
        need = 2 + {126: 2, 127: 8}.get(len7, 0) + (4 if masked else 0)
        if need > len(self._hdr):
            self._need = need
            return i
        if len7 == 126:
            length = struct.unpack("!H", self._hdr[2:4])[0]
        elif len7 == 127:
            length = struct.unpack("!Q", self._hdr[2:10])[0]
        else:
            length = len7
        frame = WsFrame(
            index=self.frames,
            fin=bool(b0 & 0x80),
            rsv1=bool(b0 & 0x40),
            opcode=b0 & 0x0F,
            length=length,
            mask=bytes(self._hdr[need - 4 : need]) if masked else None,
        )
        self.frames += 1
        out.append(FrameStart(frame))
        if length == 0:
            out.append(FrameEnd(frame))
            self._next_frame()
        else:
            self._frame, self._remaining, self._state = frame, length, "payload"
        return i

    def _next_frame(self) -> None:
        self._state, self._frame, self._need = "header", None, 2
        self._hdr.clear()


def _xor(data: bytes, mask: bytes | None) -> bytes:
    if mask is None:
        return data
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


# --- the proxy ------------------------------------------------------------------------


class ProxyConnection:
    """One proxied client connection, its active fault and its counters.

    ``bytes_down``/``bytes_up``/``frames_down``/``data_frames_down`` count what was forwarded
    since the connection opened; ``closed`` is set when both sides are done.
    """

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        fault: Fault,
    ) -> None:
        self._proxy = proxy
        self._client_r, self._client_w = client
        self._up_w: asyncio.StreamWriter | None = None
        self.tracker = FrameTracker()
        self.bytes_down = self.bytes_up = self.frames_down = self.data_frames_down = 0
        self.cut = False
        self.closed = asyncio.Event()
        self._gates = {"down": asyncio.Event(), "up": asyncio.Event()}
        self._corrupting: tuple[WsFrame, CorruptFrame, bytearray] | None = None
        self.set_fault(fault)

    @property
    def fault(self) -> Fault:
        return self._fault

    def set_fault(self, fault: Fault) -> None:
        """Make ``fault`` the active one; its counts start now."""
        self._fault = fault
        self._since = 0  # downstream bytes forwarded since the fault was set
        self._matched = 0  # matching frames seen since the fault was set
        self._budget: int | None = fault.n if isinstance(fault, CutAfterBytes) else None
        stalled = fault.direction if isinstance(fault, Stall) else None
        for name, gate in self._gates.items():
            if stalled in (name, "both"):
                gate.clear()
            else:
                gate.set()
        if self._budget == 0:
            self.abort()

    def abort(self) -> None:
        """Cut both sides now, abruptly (TCP RST), and set the cut events."""
        if self.cut:
            return
        self.cut = True
        for writer in (self._client_w, self._up_w):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._proxy._on_cut()

    async def run(self, host: str, port: int) -> None:
        try:
            if self.cut:
                return
            try:
                up_r, self._up_w = await asyncio.open_connection(host, port)
            except OSError:
                self._proxy.upstream_failed.set()
                self.abort()
                return
            if self.cut:
                self._up_w.transport.abort()
                return
            await asyncio.gather(
                self._pump(self._client_r, self._up_w, "up"),
                self._pump(up_r, self._client_w, "down"),
            )
        except Exception as exc:  # a proxy bug or a bad replace(): report, then cut
            self._proxy.errors.append(exc)
            self.abort()
        finally:
            for writer in (self._client_w, self._up_w):
                if writer is not None and not self.cut:
                    writer.close()
            self.closed.set()
            self._proxy._changed()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str
    ) -> None:
        gate = self._gates[name]
        while not self.cut:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError:
                self.abort()
                return
            if not data:
                if not self.cut and writer.can_write_eof() and not writer.is_closing():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            if not gate.is_set():
                self._proxy.stall_holding.set()
                await gate.wait()
            if self.cut:
                return
            try:
                if name == "up":
                    writer.write(data)
                    self.bytes_up += len(data)
                    self._proxy._changed()
                    await writer.drain()
                else:
                    await self._downstream(data)
            except OSError:
                self.abort()
                return

    async def _downstream(self, data: bytes) -> None:
        for event in self.tracker.feed(data):
            if self.cut:
                return
            if isinstance(event, Data):
                if self._corrupting is not None and event.kind == "payload":
                    self._corrupting[2].extend(event.data)
                else:
                    await self._send_down(event.data)
            elif isinstance(event, FrameStart):
                self._frame_start(event.frame)
            else:
                await self._frame_end(event.frame)

    def _frame_start(self, frame: WsFrame) -> None:
        fault = self._fault
        if isinstance(fault, CorruptFrame) and frame.opcode in fault.opcodes:
            self._matched += 1
            if self._matched == fault.n:
                self._corrupting = (frame, fault, bytearray())

    async def _frame_end(self, frame: WsFrame) -> None:
        if self._corrupting is not None and self._corrupting[0] is frame:
            _, corrupt, payload = self._corrupting
            self._corrupting = None
            plain = _xor(bytes(payload), frame.mask)
            new = corrupt.replace(plain)
            if len(new) != len(plain):
                raise ValueError("CorruptFrame.replace must keep the payload length")
            await self._send_down(_xor(new, frame.mask))
            self._proxy.corrupt_happened.set()
        self.frames_down += 1
        if frame.opcode in DATA_OPCODES:
            self.data_frames_down += 1
        self._proxy._changed()
        fault = self._fault
        if isinstance(fault, CutAfterFrames) and frame.opcode in fault.opcodes:
            self._matched += 1
            if self._matched == fault.n:
                if fault.partial_bytes == 0:
                    await self._flush_and_abort()
                else:
                    self._budget = fault.partial_bytes

    async def _send_down(self, data: bytes) -> None:
        fault = self._fault
        if isinstance(fault, CorruptBytes):
            lo, hi = fault.offset - self._since, fault.offset - self._since + len(fault.data)
            if hi > 0 and lo < len(data):
                buf = bytearray(data)
                for k in range(max(lo, 0), min(hi, len(data))):
                    buf[k] = fault.data[k - lo]
                data = bytes(buf)
                self._proxy.corrupt_happened.set()
        last = False
        if self._budget is not None and len(data) >= self._budget:
            data, last = data[: self._budget], True
        elif self._budget is not None:
            self._budget -= len(data)
        if data:
            self._client_w.write(data)
            self._since += len(data)
            self.bytes_down += len(data)
            self._proxy._changed()
        if last:
            await self._flush_and_abort()
        else:
            await self._client_w.drain()

    async def _flush_and_abort(self) -> None:
        """Hand every forwarded byte to the kernel, then cut (so counts are exact)."""
        self._client_w.transport.set_write_buffer_limits(high=0)
        with contextlib.suppress(OSError):
            await self._client_w.drain()
        self.abort()


class FaultProxy:
    """The proxy server: ``async with FaultProxy(host, port) as proxy`` listens on
    ``127.0.0.1:proxy.port`` and forwards each connection to ``host:port``.

    Totals over all connections: ``bytes_down``, ``bytes_up``, ``frames_down``,
    ``data_frames_down``; ``connections`` lists every connection (live or not) in order.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, fault: Fault | None = None):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._default: Fault = fault or PassThrough()
        self.connections: list[ProxyConnection] = []
        self.errors: list[Exception] = []
        self.connection_made = asyncio.Event()
        self.cut_happened = asyncio.Event()
        self.stall_holding = asyncio.Event()
        self.corrupt_happened = asyncio.Event()
        self.upstream_failed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[asyncio.Future[None], Callable[[], bool]]] = []
        self.port = 0

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and abort every live connection."""
        if self._server is not None:
            self._server.close()
        for conn in self.live:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def live(self) -> list[ProxyConnection]:
        """Connections that are not closed yet."""
        return [c for c in self.connections if not c.closed.is_set()]

    @property
    def bytes_down(self) -> int:
        return sum(c.bytes_down for c in self.connections)

    @property
    def bytes_up(self) -> int:
        return sum(c.bytes_up for c in self.connections)

    @property
    def frames_down(self) -> int:
        return sum(c.frames_down for c in self.connections)

    @property
    def data_frames_down(self) -> int:
        return sum(c.data_frames_down for c in self.connections)

    def set_fault(self, fault: Fault, *, scope: Scope = "all") -> None:
        """Apply ``fault`` to connections accepted later (``new``), live ones (``current``)
        or both (``all``)."""
        if scope in ("new", "all"):
            self._default = fault
        if scope in ("current", "all"):
            for conn in self.live:
                conn.set_fault(fault)

    def stall(self, direction: Direction = "down", *, scope: Scope = "all") -> None:
        """Shorthand for ``set_fault(Stall(direction))``."""
        self.set_fault(Stall(direction), scope=scope)

    def release(self, *, scope: Scope = "all") -> None:
        """Back to pass-through (ends a stall)."""
        self.set_fault(PassThrough(), scope=scope)

    def cut_now(self) -> None:
        """Abort every live connection at once."""
        for conn in self.live:
            conn.abort()

    def reset_events(self) -> None:
        """Clear the proxy's events (between phases of a test)."""
        for event in (
            self.cut_happened,
            self.stall_holding,
            self.corrupt_happened,
            self.upstream_failed,
            self.connection_made,
        ):
            event.clear()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true; it is re-checked whenever a counter changes."""
        if predicate():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (fut, predicate)
        self._waiters.append(entry)
        try:
            await fut
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _changed(self) -> None:
        for fut, predicate in list(self._waiters):
            if not fut.done() and predicate():
                fut.set_result(None)

    def _on_cut(self) -> None:
        self.cut_happened.set()
        self._changed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ProxyConnection(self, (reader, writer), self._default)
        self.connections.append(conn)
        self.connection_made.set()
        self._changed()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run(self.upstream_host, self.upstream_port)
        except asyncio.CancelledError:
            pass  # the proxy is closing: the connection ends with it, quietly
        finally:
            if task is not None:
                self._tasks.discard(task)
