"""End-to-end encrypted sessions (PROTOCOL.md section 4) against real hosts on 127.0.0.1.

Frames are captured by a small recording WebSocket proxy written here (aiohttp on both
sides, so what it records is the decompressed text a peer sees); it can also rewrite frames
on their way to the client (tampering, replay, a downgrade to clear text).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Callable
from typing import Any

import aiohttp
import nacl.bindings as sodium
import pytest
from coincurve import PrivateKey, PublicKey
from langchain_core.messages import AIMessage, HumanMessage

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.errors import (
    ChunkOrderError,
    DecryptionFailedError,
    EncryptionModeError,
    EncryptionUnavailableError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.sessions import SessionConfig, SessionManager
from langchain_fabstir.sessions.conversation import turn_prompt
from tests._support.relay import Rewrite, WsRelay
from tests._support.sdk import sdk_sealed_init
from tests.conftest import KEYED_HOST_KEY as HOST_KEY

USER_KEY = "0x" + "6b" * 32


def host_pub() -> str:
    return "0x" + PrivateKey(bytes.fromhex(HOST_KEY[2:])).public_key.format().hex()


async def test_multi_turn_encrypted_session_carries_nothing_in_clear(
    keyed_host: ReferenceHost,
) -> None:
    long_prompt = "alpha-secret " * 150
    async with (
        WsRelay(keyed_host.url) as proxy,
        SessionManager(host_url=proxy.url, private_key=USER_KEY) as manager,
    ):
        session = await manager.create_session(
            system_prompt="be brief, sysprompt-secret", host_public_key=host_pub()
        )
        assert session.encrypted
        first = await manager.prompt(session.id, long_prompt)
        # A node has no system-prompt field: the instructions ride in front of each message.
        system = ["be brief, sysprompt-secret"]
        # (a node strips the prompt: the trailing space goes)
        assert first.text == "Echo: " + turn_prompt(system, long_prompt).strip()
        assert first.finish_reason == "stop"
        assert first.usage is not None and first.usage.completion_tokens > 0
        second = await manager.prompt(session.id, "bravo-secret")
        assert second.text == "Echo: " + turn_prompt(system, "bravo-secret")
        # The host kept the conversation; the client sent only the new prompt.
        seen = keyed_host.requests[-1]
        assert [m.content for m in seen.conversation_context] == [
            turn_prompt(system, long_prompt),
            "Echo: " + turn_prompt(system, long_prompt).strip(),
        ]
        messages = [json.loads(f) for f in proxy.up if '"encrypted_message"' in f]
        assert len(messages) == 2
        assert len(messages[1]["payload"]["ciphertextHex"]) < 1000  # not the history
        wire = proxy.wire_text()
        for secret in ("alpha-secret", "bravo-secret", "sysprompt-secret", "Echo"):
            assert secret not in wire
        assert any('"encrypted_chunk"' in f for f in proxy.down)
        assert not any('"stream_chunk"' in f for f in proxy.down)
        # The host recovered the user's address from sha256(ciphertext).
        ack = next(json.loads(f) for f in proxy.down if '"session_init_ack"' in f)
        user = PrivateKey(bytes.fromhex(USER_KEY[2:]))
        from langchain_fabstir.wire.encryption import address_of_public_key

        assert ack["client_address"] == address_of_public_key(user.public_key)
        assert ack["signature_digest"] == "ciphertext"


async def test_chat_fabstir_multi_turn_encrypted(keyed_host: ReferenceHost) -> None:
    async with WsRelay(keyed_host.url) as proxy:
        llm = ChatFabstir(host_url=proxy.url, host_public_key=host_pub())
        first = await llm.ainvoke("charlie-secret")
        assert first.content == "Echo: charlie-secret"
        chunks = [
            c.content
            async for c in llm.astream(
                [HumanMessage("charlie-secret"), first, HumanMessage("delta-secret")]
            )
        ]
        assert "".join(str(c) for c in chunks) == "Echo: delta-secret"
        assert [m.content for m in keyed_host.requests[-1].conversation_context] == [
            "charlie-secret",
            "Echo: charlie-secret",
        ]
        for secret in ("charlie-secret", "delta-secret", "Echo"):
            assert secret not in proxy.wire_text()
        assert isinstance(first, AIMessage)


async def test_announced_key_is_used_in_auto_mode(keyed_host: ReferenceHost) -> None:
    async with SessionManager(host_url=keyed_host.url) as manager:
        session = await manager.create_session()
        assert session.encrypted
        assert (await manager.prompt(session.id, "hi")).text == "Echo: hi"


async def test_required_against_a_keyless_host_fails_before_any_prompt(
    echo_host: ReferenceHost,
) -> None:
    config = SessionConfig(encryption="required", open_timeout=5, ack_timeout=5)
    async with SessionManager(config, host_url=echo_host.url) as manager:
        with pytest.raises(EncryptionUnavailableError) as no_key:
            await manager.create_session()
        assert no_key.value.code == "ENCRYPTION_UNAVAILABLE"
        # With a key given, the keyless host refuses at once: still no prompt in clear.
        with pytest.raises(EncryptionUnavailableError):
            await manager.create_session(host_public_key=host_pub())
    assert not echo_host.requests
    # A key the caller gave makes encryption required also in "auto" (never a fallback).
    async with SessionManager(host_url=echo_host.url) as manager:
        with pytest.raises(EncryptionUnavailableError):
            await manager.create_session(host_public_key=host_pub())
        # "auto" without a trusted key falls back to plaintext with a host that cannot encrypt.
        session = await manager.create_session()
        assert not session.encrypted
    assert not echo_host.requests


async def test_keyless_host_answers_encrypted_frames_at_once(echo_host: ReferenceHost) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(echo_host.ws_url) as ws:
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "encrypted_session_init", "session_id": "1", "payload": {}})
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "error" and reply["code"] == "ENCRYPTION_NOT_SUPPORTED"
        await ws.send_json(
            {"type": "encrypted_message", "session_id": "1", "id": "m", "payload": {}}
        )
        reply = await ws.receive_json(timeout=5)
        assert reply["code"] == "SESSION_KEY_NOT_FOUND" and reply["id"] == "m"


def _swap_chunk(mutate: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Rewrite:
    done = [False]

    def rewrite(text: str) -> list[str]:
        if done[0] or '"encrypted_chunk"' not in text:
            return [text]
        done[0] = True
        return [json.dumps(f) for f in mutate(json.loads(text))]

    return rewrite


def _flip(frame: dict[str, Any]) -> list[dict[str, Any]]:
    ct = frame["payload"]["ciphertextHex"]
    frame["payload"]["ciphertextHex"] = ("0" if ct[0] != "0" else "1") + ct[1:]
    return [frame]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (_flip, DecryptionFailedError),
        (lambda f: [f, f], ChunkOrderError),  # replayed
        (lambda f: [dict(f, payload=dict(f["payload"], index=1))], ChunkOrderError),
        (
            lambda f: [{"type": "stream_chunk", "content": "in clear", "tokens": 1, "id": f["id"]}],
            EncryptionModeError,
        ),
    ],
    ids=["tampered", "replayed", "reordered", "plaintext-in-encrypted"],
)
async def test_bad_encrypted_answers_are_typed_errors(
    keyed_host: ReferenceHost, mutate: Any, error: type[Exception]
) -> None:
    config = SessionConfig(first_token_timeout=10, chunk_timeout=10)
    async with (
        WsRelay(keyed_host.url) as proxy,
        SessionManager(config, host_url=proxy.url) as manager,
    ):
        session = await manager.create_session(host_public_key=host_pub())
        proxy.down_hook = _swap_chunk(mutate)
        pieces: list[str] = []
        with pytest.raises(error) as caught:
            async for piece in manager.stream_prompt(session.id, "golf-secret"):
                pieces.append(piece)
        assert "golf-secret" not in str(caught.value) and "in clear" not in "".join(pieces)


async def test_encrypted_frame_in_a_plaintext_session_is_refused(
    keyed_host: ReferenceHost,
) -> None:
    async with (
        WsRelay(keyed_host.url) as proxy,
        SessionManager(SessionConfig(encryption="off"), host_url=proxy.url) as manager,
    ):
        session = await manager.create_session()
        assert not session.encrypted

        def to_encrypted(text: str) -> list[str]:
            if '"stream_chunk"' not in text:
                return [text]
            frame = json.loads(text)
            return [json.dumps({"type": "encrypted_chunk", "id": frame.get("id"), "payload": {}})]

        proxy.down_hook = to_encrypted
        with pytest.raises(EncryptionModeError):
            await manager.prompt(session.id, "hi")


async def test_failover_from_an_encrypted_session_keeps_the_conversation() -> None:
    other_key = "0x" + "7c" * 32
    async with (
        ReferenceHost(EchoEngine(delay=0.02), host_key=HOST_KEY) as first,
        ReferenceHost(EchoEngine(delay=0.02), host_key=other_key) as second,
    ):
        config = SessionConfig(reconnect_attempts=3, encryption="required")
        async with SessionManager(config, hosts=[first.url, second.url]) as manager:
            session = await manager.create_session(policy="auto")
            assert session.encrypted
            began = session.host_url
            one = await manager.prompt(session.id, "hotel-one")
            assert one.text == "Echo: hotel-one"
            failed_host, other_host = (first, second) if began == first.url else (second, first)
            text = ""
            async for piece in manager.stream_prompt(session.id, "hotel-two"):
                if not text:
                    await failed_host.stop()  # the host dies mid-answer
                text += piece
            assert session.host_url == other_host.url and session.encrypted
            three = await manager.prompt(session.id, "hotel-three")
            assert three.text.endswith("hotel-three")
            # The new host (a new node session) got the conversation inside the prompt:
            # the model saw all of it (flattened into one user message, as a node does).
            seen = other_host.model_inputs[-1]
            assert [m["role"] for m in seen] == ["user"]
            for word in ("hotel-one", "Echo: hotel-one", "hotel-two", "hotel-three"):
                assert word in seen[0]["content"]


def _sdk_init(
    host_pub33: bytes, client: PrivateKey, session_id: str
) -> tuple[dict[str, Any], bytes]:
    """An init exactly as sdk-core 1.36 builds it: its own digest, a fresh sessionKey."""
    session_key = secrets.token_bytes(32)
    body = {
        "sessionKey": session_key.hex(),
        "jobId": session_id,
        "modelName": "echo",
        "pricePerToken": 0,
        "recoveryPublicKey": "0x" + client.public_key.format().hex(),
    }
    frame, _ = sdk_sealed_init(host_pub33, json.dumps(body).encode(), session_id, client=client)
    return frame, session_key


async def test_cli_host_with_fabstir_host_key_serves_an_sdk_style_client() -> None:
    env = dict(os.environ, FABSTIR_HOST_KEY=HOST_KEY[2:])
    proc, url = await asyncio.to_thread(
        _start_with_env, env, "--engine", "echo", "--rate-limit", "0"
    )
    try:
        async with aiohttp.ClientSession() as http:
            version = await (await http.get(f"{url}/v1/version")).json()
            assert "encryption" in version["features"]
            assert version["host_public_key"] == host_pub()
            challenge = secrets.token_bytes(32)
            answer = await (
                await http.post(f"{url}/v1/auth/challenge", json={"challenge": challenge.hex()})
            ).json()
            sig = bytes.fromhex(answer["signature"]) + bytes([answer["recid"]])
            recovered = PublicKey.from_signature_and_message(
                sig, hashlib.sha256(challenge).digest(), hasher=None
            )
            assert "0x" + recovered.format().hex() == host_pub()
            host_pub33 = bytes.fromhex(version["host_public_key"][2:])
            client = PrivateKey()
            async with http.ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
                greeting = await ws.receive_json(timeout=10)
                assert greeting["host_public_key"] == host_pub()
                for n, prompt in enumerate(["india-one", "india-two"]):
                    init, key = _sdk_init(host_pub33, client, "42")  # before every prompt
                    await ws.send_json(init)
                    ack = await ws.receive_json(timeout=10)
                    assert ack["type"] == "session_init_ack", ack
                    assert ack["signature_digest"] == "sdk"
                    nonce = secrets.token_bytes(24)
                    body = json.dumps(
                        {
                            "prompt": prompt,
                            "model": "echo",
                            "max_tokens": 50,
                            "temperature": 0.7,
                            "stream": True,
                        }
                    ).encode()
                    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
                        body, b"message_0", nonce, key
                    )
                    await ws.send_json(
                        {
                            "type": "encrypted_message",
                            "session_id": "42",
                            "id": f"p{n}",
                            "payload": {
                                "ciphertextHex": ct.hex(),
                                "nonceHex": nonce.hex(),
                                "aadHex": b"message_0".hex(),
                            },
                        }
                    )
                    text, finish = "", None
                    chunks = []
                    while True:
                        frame = await ws.receive_json(timeout=10)
                        p = frame.get("payload", {})
                        if frame["type"] == "encrypted_chunk":
                            chunks.append(frame)
                            aad = f"chunk_{p['index']}".encode()
                            assert p["aadHex"] == aad.hex()
                            text += sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                                bytes.fromhex(p["ciphertextHex"]),
                                aad,
                                bytes.fromhex(p["nonceHex"]),
                                key,
                            ).decode()
                        elif frame["type"] == "encrypted_response":
                            finish = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                                bytes.fromhex(p["ciphertextHex"]),
                                b"encrypted_response_final",
                                bytes.fromhex(p["nonceHex"]),
                                key,
                            ).decode()
                        elif frame["type"] == "stream_end":
                            break
                    assert text == f"Echo: {prompt}" and finish == "stop"
                    # Section 4.3's frame: tokens, id, session_id; "final" on the last.
                    assert [c["payload"]["index"] for c in chunks] == list(range(len(chunks)))
                    assert all(c["id"] == f"p{n}" and c["session_id"] == "42" for c in chunks)
                    assert chunks[-1].get("final") is True and chunks[-1]["tokens"] == 0
                    assert not any(c.get("final") for c in chunks[:-1])
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


def _start_with_env(env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[str], str]:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return start_host_process(*extra)
    finally:
        os.environ.clear()
        os.environ.update(old)


async def test_llama_engine_through_an_encrypted_session(llama_engine: Any) -> None:
    async with (
        ReferenceHost(llama_engine, host_key=HOST_KEY) as host,
        WsRelay(host.url) as proxy,
        SessionManager(host_url=proxy.url) as manager,
    ):
        session = await manager.create_session(host_public_key=host_pub(), max_tokens=12)
        assert session.encrypted
        one = await manager.prompt(session.id, "Name a colour.", temperature=0.0, seed=1)
        two = await manager.prompt(session.id, "And another one?", temperature=0.0, seed=1)
        assert one.text and two.text and two.usage is not None
        assert [m.content for m in host.requests[-1].conversation_context] == [
            "Name a colour.",
            one.text,
        ]
        wire = proxy.wire_text()
        assert "colour" not in wire
        for text in (one.text, two.text):  # (a very short answer could match a hex string)
            assert len(text) < 8 or text not in wire
