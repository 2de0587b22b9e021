"""The seed's "Session Recovery After Disconnection", in Python.

A session streams an answer; half-way through, the network connection to the host is
cut (a small TCP relay between this script and the host drops every connection). The
session reconnects by itself and the answer goes on: exactly from the last token on a
host with the ``resume`` extension (the reference host), as a continuation elsewhere.
Then the conversation carries on: "Where were we?".

Run it as is (it starts a local reference host with the echo engine), or point it at a
host: ``FABSTIR_HOST_URL=http://127.0.0.1:8080 python examples/recovery.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.errors import FabstirError
from langchain_fabstir.sessions.answer import Resumed, Text

QUESTION = (
    "Tell me the story of the lighthouse keeper who kept the lamp burning through the "
    "longest storm of the century, while the ships of the fishing fleet found their way "
    "home one after another across the black and roaring sea"
)
CUT_AFTER = 10  # tokens


class Relay:
    """A TCP relay to the host whose connections can all be cut at once (like a network
    failure: the host sees its socket drop too)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.contextmanager
def local_host() -> Iterator[str]:
    """``FABSTIR_HOST_URL``, or a reference host (echo engine, 20 ms a token) we start."""
    url = os.environ.get("FABSTIR_HOST_URL")
    if url:
        yield url
        return
    proc, url = start_host_process("--engine", "echo", "--delay", "0.02", "--rate-limit", "0")
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def stream_through_a_cut(manager: SessionManager, session_id: str, relay: Relay) -> None:
    """Stream the answer to :data:`QUESTION`, cutting the network after a few tokens."""
    print(f"\nUser: {QUESTION}\nAssistant: ", end="", flush=True)
    tokens = 0
    stream = None
    async for current, event in manager.answer_events(session_id, QUESTION):
        stream = current
        if isinstance(event, Resumed):
            print(f"\n[reconnected: {event.mode} resume at token {event.offset}]", end=" ")
            continue
        if not isinstance(event, Text):
            continue  # (checkpoint proofs, images)
        print(event.text, end="", flush=True)
        tokens += 1
        if tokens == CUT_AFTER:
            relay.cut()
            print(f"\n[network cut after {tokens} tokens]", flush=True)
    if stream is not None:
        result = stream.result
        print(f"\n\nAnswer complete: {result.output_tokens} tokens, resumed {result.resumed}x")


async def recover_session(host_url: str) -> None:
    where = urlsplit(host_url)
    if where.scheme not in ("http", "ws"):
        raise SystemExit("this demo relays plain TCP: give an http:// or ws:// host URL")
    relay = Relay(where.hostname or "127.0.0.1", where.port or 80)
    relay_url = await relay.start()
    config = SessionConfig(compression_enabled=False)
    try:
        async with SessionManager(config, host_url=relay_url) as manager:
            session = await manager.create_session(system_prompt="You are a storyteller.")
            print(f"Session {session.id} on {host_url} (via a relay we can cut)")
            try:
                await stream_through_a_cut(manager, session.id, relay)
                # The conversation survived the cut: carry on with the full history.
                history = await manager.get_conversation_history(session.id)
                print(f"Session {session.id} recovered with {len(history)} messages")
                print("\nUser: Where were we?\nAssistant: ", end="", flush=True)
                async for token in manager.stream_prompt(session.id, "Where were we?"):
                    print(token, end="", flush=True)
                print()
            except FabstirError as error:
                print(f"\nRecovery failed: {error}")
                fresh = await manager.create_session()  # start a fresh session
                print(f"Started a fresh session {fresh.id}")
            summary = await manager.end_session(session.id)
            print(f"\nSession ended. Total tokens: {summary.final_token_count}")
    finally:
        await relay.close()


def main() -> None:
    with local_host() as url:
        asyncio.run(recover_session(url))


if __name__ == "__main__":
    main()
