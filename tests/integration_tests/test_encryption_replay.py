"""Replayed, truncated and garbage encrypted frames (issue 20, items 7-9), against a keyed
reference host on 127.0.0.1.

Client side, a relay written here sits between the client and the host (aiohttp on both
sides): it records the frames, and replays an earlier answer as a later one or drops
chunks. Host side, a replayer resends a victim's recorded ``encrypted_session_init`` and
``encrypted_message`` on new sockets; inits carrying garbage are sealed with the host's
real key through the package's own sealing functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from coincurve import PrivateKey

from langchain_fabstir.errors import (
    AnswerTruncatedError,
    ChunkReplayError,
    SessionKeyExhaustedError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.sessions import SessionConfig, SessionManager
from langchain_fabstir.wire.encryption import SessionCipher, seal_session_init
from tests._support.relay import WsRelay
from tests.conftest import KEYED_HOST_KEY as HOST_KEY
from tests.faults.proxy import CutAfterFrames, FaultProxy

HOST_PUB = "0x" + PrivateKey(bytes.fromhex(HOST_KEY[2:])).public_key.format().hex()
CONFIG = SessionConfig(first_token_timeout=10, chunk_timeout=10)
TWELVE = "one two three four five six seven eight nine ten eleven"  # 12 tokens with "Echo:"


def _kind(text: str) -> str:
    return str(json.loads(text).get("type"))


# --- item 7: the client refuses replayed and truncated answers ------------------------------


async def test_relay_playing_answer_one_as_answer_two_is_refused(
    keyed_host: ReferenceHost,
) -> None:
    """The relay records answer 1's encrypted chunks and final frame, and plays them as
    answer 2 (rewriting only the clear ``id``): the client must not return answer 1's
    text for the new prompt."""
    recorded: list[dict[str, Any]] = []
    state = {"answer": 1}

    def hook(text: str) -> list[str]:
        frame = json.loads(text)
        kind = frame.get("type")
        if state["answer"] == 1:
            if kind in ("encrypted_chunk", "encrypted_response"):
                recorded.append(frame)
            if kind == "stream_end":
                state["answer"] = 2
            return [text]
        if kind in ("encrypted_chunk", "encrypted_response"):
            return []  # answer 2's own frames never reach the client
        if kind == "stream_end":
            rid = frame.get("id")
            return [json.dumps(dict(f, id=rid)) for f in recorded] + [text]
        return [text]

    async with WsRelay(keyed_host.url) as relay, SessionManager(CONFIG, host_url=relay.url) as mgr:
        session = await mgr.create_session(host_public_key=HOST_PUB)
        relay.down_hook = hook
        first = await mgr.prompt(session.id, "alpha bravo")
        assert first.text == "Echo: alpha bravo"
        pieces: list[str] = []
        with pytest.raises(ChunkReplayError) as caught:
            async for piece in mgr.stream_prompt(session.id, "charlie delta"):
                pieces.append(piece)
        assert caught.value.code == "CHUNK_REPLAYED"
        assert pieces == []  # not even the first replayed token was shown


def _truncate(drop: Callable[[dict[str, Any]], bool]) -> Callable[[str], list[str]]:
    """Forward the first 3 chunks of each answer, then drop the other chunks (the final
    empty one included); ``drop`` may drop or change the final frames too."""
    count = {"chunks": 0}

    def hook(text: str) -> list[str]:
        frame = json.loads(text)
        if frame.get("type") == "encrypted_chunk":
            count["chunks"] += 1
            return [text] if count["chunks"] <= 3 else []
        if drop(frame):
            return []
        return [json.dumps(frame)]

    return hook


def _strip_count(frame: dict[str, Any]) -> bool:
    frame.pop("count", None)
    return False


@pytest.mark.parametrize(
    "drop",
    [
        lambda frame: False,  # the final frames forwarded as they are
        _strip_count,  # and the sealed count removed from encrypted_response
        lambda frame: frame.get("type") == "encrypted_response",  # the sealed final dropped
    ],
    ids=["final-frames-forwarded", "count-stripped", "final-dropped"],
)
async def test_relay_forwarding_3_of_12_chunks_is_a_truncated_answer(
    keyed_host: ReferenceHost, drop: Callable[[dict[str, Any]], bool]
) -> None:
    async with WsRelay(keyed_host.url) as relay, SessionManager(CONFIG, host_url=relay.url) as mgr:
        session = await mgr.create_session(host_public_key=HOST_PUB)
        assert "chunk_count" in keyed_host.features()
        relay.down_hook = _truncate(drop)
        pieces: list[str] = []
        with pytest.raises(AnswerTruncatedError) as caught:
            async for piece in mgr.stream_prompt(session.id, TWELVE):
                pieces.append(piece)
        assert caught.value.code == "ANSWER_TRUNCATED"
        assert len(pieces) == 3
        assert sum(_kind(t) == "encrypted_chunk" for t in relay.down) == 13  # 12 + final


async def test_a_host_that_seals_no_count_still_works(keyed_host: ReferenceHost) -> None:
    """Deployed nodes announce no ``chunk_count`` and seal none: their answers are taken
    as before (and truncation cannot be detected against them)."""

    def deployed(text: str) -> list[str]:
        frame = json.loads(text)
        if frame.get("type") == "connected":
            frame["features"] = [f for f in frame["features"] if f != "chunk_count"]
        frame.pop("count", None)
        return [json.dumps(frame)]

    async with WsRelay(keyed_host.url) as relay, SessionManager(CONFIG, host_url=relay.url) as mgr:
        relay.down_hook = deployed
        session = await mgr.create_session(host_public_key=HOST_PUB)
        first = await mgr.prompt(session.id, "alpha bravo")
        second = await mgr.prompt(session.id, "charlie delta")
        assert (first.text, second.text) == ("Echo: alpha bravo", "Echo: charlie delta")
        assert second.finish_reason == "stop"


async def test_a_spent_session_key_is_replaced_before_the_next_answer(
    keyed_host: ReferenceHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nonce memory covers a key's whole life: once a key carried half of
    ``max_chunks`` frames the socket is closed after the answer and the next prompt runs
    on a fresh key (same session id, conversation kept); an answer that would pass
    ``max_chunks`` on one key is refused rather than forgetting nonces."""
    monkeypatch.setattr(SessionCipher, "max_chunks", 40)
    async with WsRelay(keyed_host.url) as relay, SessionManager(CONFIG, host_url=relay.url) as mgr:
        session = await mgr.create_session(host_public_key=HOST_PUB)
        texts = [(await mgr.prompt(session.id, TWELVE)).text for _ in range(4)]
        assert texts == ["Echo: " + TWELVE] * 4
        inits = relay.sent("encrypted_session_init")
        # 15 nonces an answer (13 chunks, the final frame and its count): a key is spent
        # (20 of 40) after 2 answers.
        assert len(inits) == 2
        assert {i["session_id"] for i in inits} == {session.id}
        assert keyed_host.requests[-1].conversation_context  # the history went along
        with pytest.raises(SessionKeyExhaustedError):
            await mgr.prompt(session.id, " ".join(["word"] * 60))


@pytest.mark.timeout(60)
async def test_an_encrypted_answer_resumed_on_a_new_socket_passes_the_count_check() -> None:
    """A cut mid-answer: the client resumes on a new socket (a new key, chunk indices
    from the offset); the sealed count covers the whole answer and matches."""
    engine = EchoEngine([f"{i} " for i in range(120)], delay=0.001)
    async with (
        ReferenceHost(engine, host_key=HOST_KEY, rate_limit_per_minute=None) as host,
        FaultProxy("127.0.0.1", host.port) as proxy,
        SessionManager(
            SessionConfig(compression_enabled=False, first_token_timeout=10, chunk_timeout=10),
            host_url=f"http://127.0.0.1:{proxy.port}",
        ) as mgr,
    ):
        session = await mgr.create_session(host_public_key=HOST_PUB)
        clean = await mgr.prompt(session.id, "go", max_tokens=120)
        proxy.set_fault(CutAfterFrames(40), scope="current")
        result = await mgr.prompt(session.id, "go", max_tokens=120)
        assert result.text == clean.text and result.resumed == 1
        assert result.metadata["resumes"][0]["mode"] == "exact" and host.resumes == 1
        assert result.finish_reason == clean.finish_reason == "stop"


# --- item 8: the host refuses replayed inits and messages -----------------------------------


async def _open(url: str, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/v1/ws")
    greeting = await ws.receive_json(timeout=5)
    assert greeting["type"] == "connected"
    return ws


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ws.receive_json(timeout=5)
        frames.append(frame)
        if frame["type"] == kind:
            return frames


async def test_replayed_init_and_message_on_new_sockets_generate_nothing(
    keyed_host: ReferenceHost,
) -> None:
    async with WsRelay(keyed_host.url) as relay, SessionManager(CONFIG, host_url=relay.url) as mgr:
        session = await mgr.create_session(host_public_key=HOST_PUB)
        assert (await mgr.prompt(session.id, TWELVE)).text == "Echo: " + TWELVE
    init = relay.sent("encrypted_session_init")[0]
    message = relay.sent("encrypted_message")[0]
    runs = len(keyed_host.requests)
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            ws = await _open(keyed_host.url, http)
            await ws.send_json(init)
            reply = await ws.receive_json(timeout=5)
            assert reply["type"] == "error" and reply["code"] == "SESSION_KEY_REUSED"
            await ws.send_json(message)  # (too late: the host closed the socket)
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await ws.close()
    assert len(keyed_host.requests) == runs  # the engine never ran for a replay


async def test_message_counters_must_increase_and_a_fresh_key_is_a_reinit(
    keyed_host: ReferenceHost,
) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await _open(keyed_host.url, http)
        sealed = seal_session_init(HOST_PUB, {"jobId": "7", "modelName": "echo"})
        init = {"type": "encrypted_session_init", "session_id": "7", "payload": sealed.payload}
        await ws.send_json(init)
        assert (await ws.receive_json(timeout=5))["type"] == "session_init_ack"
        cipher = SessionCipher(sealed.session_key)
        body = json.dumps({"prompt": "alpha bravo", "max_tokens": 20})
        first = cipher.seal_message(body)
        second = cipher.seal_message(body)
        await ws.send_json({"type": "encrypted_message", "id": "a", "payload": second})
        assert (await _until(ws, "stream_end"))[-1]["reason"] == "complete"
        runs = len(keyed_host.requests)
        for replay, rid in ((second, "b"), (first, "c")):  # again, and an older counter
            await ws.send_json({"type": "encrypted_message", "id": rid, "payload": replay})
            error, end = await _until(ws, "stream_end")
            assert error["code"] == "MESSAGE_REPLAYED" and error["id"] == rid
            assert end["reason"] == "error"
        assert len(keyed_host.requests) == runs
        # A fresh key for the same session id (the SDK inits before every prompt): taken.
        again = seal_session_init(HOST_PUB, {"jobId": "7", "modelName": "echo"})
        await ws.send_json(dict(init, payload=again.payload))
        assert (await ws.receive_json(timeout=5))["type"] == "session_init_ack"
        fresh = SessionCipher(again.session_key)
        await ws.send_json(
            {"type": "encrypted_message", "id": "d", "payload": fresh.seal_message(body)}
        )
        assert (await _until(ws, "stream_end"))[-1]["reason"] == "complete"
        # The old key re-sent on the same socket is a replay too.
        await ws.send_json(init)
        assert (await ws.receive_json(timeout=5))["code"] == "SESSION_KEY_REUSED"
        await ws.close()


# --- item 9: garbage inside an authentic init ----------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["1" * 5000, "²", "12²", ["1"], {"n": 1}, 1.5, -1, 1 << 256, "9" * 79],
    ids=[
        "5000-digits",
        "superscript",
        "digits-superscript",
        "list",
        "object",
        "float",
        "negative",
        "2**256",
        "79-digits",
    ],
)
async def test_garbage_job_id_in_an_authentic_init_is_a_typed_error(
    keyed_host: ReferenceHost, job_id: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sealed = seal_session_init(HOST_PUB, {"jobId": job_id, "modelName": "echo"})
    async with aiohttp.ClientSession() as http:
        ws = await _open(keyed_host.url, http)
        await ws.send_json(
            {"type": "encrypted_session_init", "session_id": "1", "payload": sealed.payload}
        )
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "error" and reply["code"] == "INVALID_PAYLOAD"
        assert "jobId" in reply["message"]
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_garbage_session_id_and_nesting_in_an_authentic_init(
    keyed_host: ReferenceHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    deep: Any = "x"
    for _ in range(500):  # deeper than any frame may nest (64); encodable at the default limit
        deep = [deep]
    cases = [
        ({"jobId": "1"}, {"session_id": ["not", "an", "id"]}),
        ({"jobId": "1", "extra": deep}, {"session_id": "1"}),
    ]
    async with aiohttp.ClientSession() as http:
        for data, outer in cases:
            sealed = seal_session_init(HOST_PUB, data)
            ws = await _open(keyed_host.url, http)
            await ws.send_json(
                {"type": "encrypted_session_init", **outer, "payload": sealed.payload}
            )
            reply = await ws.receive_json(timeout=5)
            assert reply["type"] == "error" and reply["code"] == "INVALID_PAYLOAD"
            await ws.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
