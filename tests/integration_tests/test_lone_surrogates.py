"""A lone surrogate (half of a UTF-16 pair, ``\\ud800`` alone) is a legal Python string but
not UTF-8. From a peer (a host's JSON escapes one) it is read as U+FFFD, so the answer can be
stored and sent again; from the caller it is refused up front with ``LONE_SURROGATE``, before
anything is sent or written. Before this, a host that escaped one made the next store or
encrypted send raise a bare ``UnicodeEncodeError``, turn after turn."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from coincurve import PrivateKey
from langchain_core.messages import AIMessage, HumanMessage
from websockets.asyncio.server import ServerConnection

from langchain_fabstir import ChatFabstir, S5ChatMessageHistory, SessionManager
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import LoneSurrogateError, ProtocolError
from langchain_fabstir.host import ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import generate_phrase
from tests._support.wire import raw_host, read_answer, recv_json
from tests.conftest import KEYED_HOST_KEY

HOST_PUB = "0x" + PrivateKey(bytes.fromhex(KEYED_HOST_KEY[2:])).public_key.format().hex()

# A host's frame as JSON text: "\ud800" escaped alone, then a whole pair (an emoji).
HOSTILE_CHUNK = '{"type":"stream_chunk","content":"a\\ud800b \\ud83d\\ude00","tokens":1,"id":"%s"}'


async def _escapes_a_lone_surrogate(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
    rid = msg["id"]
    await ws.send(HOSTILE_CHUNK % rid)
    await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "id": rid}))


async def test_a_hosts_lone_surrogate_is_read_as_a_replacement_character(
    portal: LocalPortal,
) -> None:
    async with raw_host(_escapes_a_lone_surrogate, features=None) as raw:
        async with SessionManager(host_url=raw.url) as manager:
            session = await manager.create_session()
            answer = "".join([t async for t in manager.stream_prompt(session.id, "hi")])
            assert answer == "a\ufffdb \U0001f600"
            again = await manager.prompt(session.id, "and again?")  # the history goes out
            assert again.text == answer
        history = S5ChatMessageHistory("s", portal_url=portal.url, seed_phrase=generate_phrase())
        await history.aadd_messages([HumanMessage("hi"), AIMessage(answer)])
        assert [m.content for m in await history.aget_messages()] == ["hi", answer]
        await history.aclose()


async def test_a_callers_lone_surrogate_is_refused_before_anything_is_sent(
    keyed_host: ReferenceHost,
) -> None:
    async with SessionManager(host_url=keyed_host.url) as manager:
        session = await manager.create_session(host_public_key=HOST_PUB)
        with pytest.raises(LoneSurrogateError) as info:
            await manager.prompt(session.id, "bad \udcff byte")
        assert info.value.code == "LONE_SURROGATE"
        assert "character 4" in info.value.message
        with pytest.raises(LoneSurrogateError):
            await manager.prompt(
                session.id, "fine", context=[{"role": "user", "content": "x\ud800"}]
            )
        assert not keyed_host.requests
        ok = await manager.prompt(session.id, "still fine?")  # the session goes on
        assert ok.text
    chat = ChatFabstir(host_url=keyed_host.url, host_public_key=HOST_PUB)
    with pytest.raises(LoneSurrogateError):
        await chat.ainvoke([HumanMessage("earlier \udc80"), AIMessage("ok"), HumanMessage("now")])
    await chat.aclose()


async def test_a_message_with_a_lone_surrogate_is_not_stored(portal: LocalPortal) -> None:
    history = S5ChatMessageHistory("s", portal_url=portal.url, seed_phrase=generate_phrase())
    await history.aadd_messages([HumanMessage("kept")])
    with pytest.raises(LoneSurrogateError):
        await history.aadd_messages([HumanMessage("lost \ud800")])
    assert [m.content for m in await history.aget_messages()] == ["kept"]
    await history.aclose()


async def test_the_reference_host_reads_a_clients_lone_surrogate_as_a_replacement(
    echo_host: ReferenceHost,
) -> None:
    # Before: the host's handler raised UnicodeEncodeError and dropped the socket.
    async with websockets.connect(echo_host.ws_url) as ws:
        await recv_json(ws)
        request = '{"model":"echo","prompt":"x\\udcffy","max_tokens":20}'
        await ws.send('{"type":"prompt","id":"r1","request":' + request + "}")
        frames = await read_answer(ws)
        assert frames[-1]["type"] == "stream_end", frames
        assert "\ufffd" in "".join(f.get("content", "") for f in frames)
        await ws.send(
            '{"type":"prompt","id":"r2","request":{"model":"echo","prompt":"again","max_tokens":5}}'
        )
        assert (await read_answer(ws))[-1]["type"] == "stream_end"


def test_a_thread_id_utf8_cannot_carry_is_refused() -> None:
    from langchain_fabstir.langgraph.saver import thread_dir_name

    assert thread_dir_name("user-\U0001f600").startswith("t")
    with pytest.raises(LoneSurrogateError, match="the thread id holds"):
        thread_dir_name("user-\udcff")  # was UnicodeEncodeError


async def _deep_frame(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
    frame = "[" * 500 + '"\\ud800"' + "]" * 500  # short enough to skip the depth scan
    assert len(frame) < 1024
    await ws.send(frame)


async def test_a_deep_frame_with_an_escape_is_a_protocol_error() -> None:
    # Found in review: cleaning the 500-level frame recursed past the stack
    # (RecursionError, untyped). The walk is iterative now.
    async with raw_host(_deep_frame, features=None) as raw:
        async with SessionManager(host_url=raw.url) as manager:
            session = await manager.create_session()
            with pytest.raises(ProtocolError) as info:
                await manager.prompt(session.id, "hi")
    assert info.value.code == "PROTOCOL_ERROR"
    deep = loads_untrusted("[" * 500 + '"\\ud800"' + "]" * 500, 600)
    for _ in range(500):
        deep = deep[0]
    assert deep == "\ufffd"


async def _encoded_surrogate(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
    rid = msg["id"]
    head, tail = '{"type":"stream_chunk","content":"a', f'b","tokens":1,"id":"{rid}"}}'
    await ws.send(head.encode() + b"\xed\xa0\x80" + tail.encode())  # a binary frame
    await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "id": rid}))


async def test_a_surrogate_encoded_in_a_binary_frame_is_read_as_a_replacement() -> None:
    # Found in review: json.loads reads such bytes with "surrogatepass".
    async with raw_host(_encoded_surrogate, features=None) as raw:
        async with SessionManager(host_url=raw.url) as manager:
            session = await manager.create_session()
            answer = await manager.prompt(session.id, "hi")
    assert answer.text == "a\ufffdb"
