"""The node's other frames (PROTOCOL.md 6.2, 6.3, 6.7) against a scripted encrypted node
written for the test (a websockets server on 127.0.0.1 that opens the client's
``encrypted_session_init`` with its host key and answers as a deployed node does):
``vlm_tokens``, image replies (``encrypted_response`` with AAD ``encrypted_image_response``,
alone), and the error codes that come without a ``stream_end``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets
from langchain_core.messages import AIMessage
from websockets.asyncio.server import ServerConnection, serve

from langchain_fabstir import ChatFabstir, SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.errors import (
    DecryptionFailedError,
    DiffusionUnavailableError,
    EncryptionFailedError,
    FabstirError,
    ImageGenerationError,
    InvalidHexError,
    InvalidNonceSizeError,
    InvalidRequestError,
    InvalidUtf8Error,
    MissingPayloadError,
    MissingPayloadFieldsError,
    MissingSessionIdError,
    PromptBlockedError,
    RateLimitedError,
    SessionAuthDeniedError,
    SessionKeyNotFoundError,
)
from langchain_fabstir.sessions import GeneratedImage
from langchain_fabstir.wire.encryption import (
    IMAGE_AAD,
    SessionCipher,
    host_public_key,
    open_session_init,
    parse_private_key,
    xchacha_encrypt,
)

HOST_KEY = "0x" + "6b" * 32
PUBLIC = host_public_key(parse_private_key(HOST_KEY))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

Reply = Callable[["Node", dict[str, Any], str | None], Awaitable[None]]


class Node:
    """One socket of the scripted node: its session key and what it was sent."""

    def __init__(self, ws: ServerConnection, seen: list[dict[str, Any]]) -> None:
        self.ws = ws
        self.seen = seen
        self.cipher: SessionCipher | None = None
        self.index = 0

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def chunks(self, rid: str | None, *texts: str, vlm_tokens: int = 0) -> None:
        assert self.cipher is not None
        self.index = 0
        for text in texts:
            payload = self.cipher.seal_chunk(text, self.index)
            self.index += 1
            await self.send({"type": "encrypted_chunk", "tokens": 1, "id": rid, "payload": payload})
        final = self.cipher.seal_final("stop")
        await self.send({"type": "encrypted_response", "id": rid, "payload": final})
        end: dict[str, Any] = {"type": "stream_end", "reason": "complete", "id": rid}
        end["tokens_used"] = len(texts)
        if vlm_tokens:
            end["vlm_tokens"] = vlm_tokens
        await self.send(end)

    async def image_reply(self, rid: str | None, reply: dict[str, Any]) -> None:
        assert self.cipher is not None
        nonce = os.urandom(24)
        body = json.dumps(reply).encode()
        payload = {
            "ciphertextHex": xchacha_encrypt(self.cipher.key, nonce, body, IMAGE_AAD).hex(),
            "nonceHex": nonce.hex(),
            "aadHex": IMAGE_AAD.hex(),
        }
        await self.send(
            {"type": "encrypted_response", "session_id": "1", "id": rid, "payload": payload}
        )


@contextlib.asynccontextmanager
async def node(reply: Reply, *, init_error: str | None = None) -> AsyncIterator[tuple[str, list]]:
    """A node with host key :data:`HOST_KEY` answering every decrypted message with
    ``reply(node, request, id)``; the decrypted requests are collected."""
    seen: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        peer = Node(ws, seen)
        await ws.send(json.dumps({"type": "connected", "message": "hi"}))
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "encrypted_session_init":
                    if init_error is not None:
                        await peer.send(
                            {"type": "error", "code": init_error, "message": "denied: vault"}
                        )
                        continue
                    opened = open_session_init(HOST_KEY, msg["payload"])
                    peer.cipher = SessionCipher(opened.session_key)
                    ack = {"type": "session_init_ack", "status": "success", "session_id": "1"}
                    await peer.send(ack)
                elif msg["type"] == "encrypted_message":
                    assert peer.cipher is not None
                    request = json.loads(peer.cipher.open_message(msg["payload"]))
                    seen.append(request)
                    await reply(peer, request, msg.get("id"))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", seen


def result_reply(**extra: Any) -> dict[str, Any]:
    return {
        "type": "image_generation_result",
        "image": base64.b64encode(PNG).decode(),
        "model": "flux2-klein",
        "size": "512x512",
        "steps": 4,
        "seed": 7,
        "processingTimeMs": 900,
        "safety": {"promptSafe": True, "outputSafe": True, "safetyLevel": "strict"},
        "billing": {"generationUnits": 0.05, "modelMultiplier": 1.0, "megapixels": 0.26},
        "provider": "host",
        "chainId": 84532,
        **extra,
    }


async def manager_session(url: str, **config: Any) -> tuple[SessionManager, str]:
    manager = SessionManager(SessionConfig(**config), host_url=url)
    session = await manager.create_session(model="m", host_public_key=PUBLIC)
    return manager, session.id


# --- 6.3: image generation over the encrypted socket ---------------------------------------


async def test_generate_image_sends_the_node_action_and_returns_a_typed_image() -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        await peer.image_reply(rid, result_reply())

    async with within(20), node(reply) as (url, seen):
        manager, sid = await manager_session(url)
        async with manager:
            image = await manager.generate_image(
                sid, "a lighthouse at dusk", size="512x512", steps=4, seed=7, guidance_scale=3.5
            )
            assert isinstance(image, GeneratedImage)
            assert image.data == PNG and image.mime_type == "image/png"
            assert (image.model, image.size, image.steps, image.seed) == (
                "flux2-klein",
                "512x512",
                4,
                7,
            )
            assert image.billing is not None and image.billing["generationUnits"] == 0.05
            assert image.content_block()["base64"] == base64.b64encode(PNG).decode()
            assert manager.get_session(sid).token_count == 50  # ceil(0.05 * 1000)
    assert len(seen) == 1 and seen[0]["action"] == "image_generation"


async def test_generate_image_request_shape() -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        await peer.image_reply(rid, result_reply())

    async with within(20), node(reply) as (url, seen):
        manager, sid = await manager_session(url)
        async with manager:
            await manager.generate_image(
                sid, "a cat", size="768x1024", steps=9, negative_prompt="dogs", model="x"
            )
    assert seen == [
        {
            "action": "image_generation",
            "prompt": "a cat",
            "size": "768x1024",
            "steps": 9,
            "safetyLevel": "strict",
            "chainId": 84532,
            "model": "x",
            "negativePrompt": "dogs",
        }
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({"prompt": "x" * 2001}, "2001 characters"),
        ({"size": "100x100"}, "size '100x100'"),
        ({"steps": 0}, "steps 0"),
        ({"seed": -1}, "seed -1"),
        ({"prompt": "  "}, "empty"),
    ],
)
async def test_generate_image_checks_before_sending(args: dict[str, Any], says: str) -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        raise AssertionError("nothing may be sent")

    async with within(20), node(reply) as (url, seen):
        manager, sid = await manager_session(url)
        async with manager:
            call = {"prompt": "a cat", **args}
            with pytest.raises(InvalidRequestError, match=says):
                await manager.generate_image(sid, call.pop("prompt"), **call)
    assert seen == []


@pytest.mark.parametrize(
    ("code", "kind", "stable"),
    [
        ("RATE_LIMIT_EXCEEDED", RateLimitedError, "RATE_LIMITED"),
        ("VALIDATION_FAILED", InvalidRequestError, "INVALID_REQUEST"),
        ("PROMPT_BLOCKED", PromptBlockedError, "PROMPT_BLOCKED"),
        (
            "DIFFUSION_SERVICE_UNAVAILABLE",
            DiffusionUnavailableError,
            "DIFFUSION_SERVICE_UNAVAILABLE",
        ),
        ("IMAGE_GENERATION_FAILED", ImageGenerationError, "IMAGE_GENERATION_FAILED"),
    ],
)
async def test_image_errors_are_typed_with_the_node_code(
    code: str, kind: type[FabstirError], stable: str
) -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        error = {"code": code, "message": "the node says no"}
        await peer.image_reply(rid, {"type": "image_generation_error", "error": error})

    async with within(20), node(reply) as (url, _seen):
        manager, sid = await manager_session(url)
        async with manager:
            with pytest.raises(kind) as caught:
                await manager.generate_image(sid, "a cat")
            assert caught.value.code == stable and caught.value.details["host_code"] == code
            assert "the node says no" in str(caught.value)
            assert manager.get_session(sid).token_count == 0  # (nothing billed, no retry)


async def test_a_prompt_the_node_routes_to_its_diffusion_model_gives_an_image() -> None:
    """Auto image routing: the answer to an ordinary encrypted prompt is the image reply,
    alone (no chunks, no stream_end). Old code: DECRYPTION_FAILED (the wrong AAD)."""

    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        if "draw" in request["prompt"]:
            await peer.image_reply(rid, result_reply())
        else:
            await peer.chunks(rid, "plain ", "text")

    async with within(20), node(reply) as (url, _seen):
        manager, sid = await manager_session(url)
        async with manager:
            result = await manager.prompt(sid, "draw a lighthouse")
            assert result.text == "" and len(result.images) == 1
            assert result.images[0].data == PNG and result.finish_reason == "stop"
            after = await manager.prompt(sid, "and now in words")  # the same socket
            assert after.text == "plain text"

        chat = ChatFabstir(host_url=url, host_public_key=PUBLIC, model="m")
        try:
            message = await chat.ainvoke("please draw a cat")
            assert isinstance(message, AIMessage)
            assert message.content == [
                {
                    "type": "image",
                    "base64": base64.b64encode(PNG).decode(),
                    "mime_type": "image/png",
                }
            ]
        finally:
            await chat.aclose()


async def test_an_image_reply_in_clear_is_not_an_image() -> None:
    """A frame sent in clear cannot pass for the node's sealed image reply."""

    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        await peer.send({"id": rid, **result_reply()})
        await peer.chunks(rid, "text")

    async with within(20), node(reply) as (url, _seen):
        manager, sid = await manager_session(url)
        async with manager:
            result = await manager.prompt(sid, "draw a cat")
            assert result.images == [] and result.text == "text"


# --- 6.2: vlm_tokens --------------------------------------------------------------------


async def test_vlm_tokens_are_reported_and_counted() -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        await peer.chunks(rid, "a ", "cat", vlm_tokens=120)

    async with within(20), node(reply) as (url, _seen):
        manager, sid = await manager_session(url)
        async with manager:
            result = await manager.prompt(sid, "what is in the picture?")
            assert result.vlm_tokens == 120 and result.tokens_used == 2

        chat = ChatFabstir(host_url=url, host_public_key=PUBLIC, model="m")
        try:
            message = await chat.ainvoke("what is in the picture?")
            assert message.response_metadata["vlm_tokens"] == 120
            assert message.usage_metadata is not None
            usage = message.usage_metadata
            assert usage["output_tokens"] == 2  # vision tokens are input tokens
            assert usage["input_tokens"] == 120 and usage["total_tokens"] == 2 + 120
            assert usage.get("input_token_details") == {"vlm": 120}
        finally:
            await chat.aclose()


# --- 6.7: error codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("MISSING_SESSION_ID", MissingSessionIdError),
        ("SESSION_KEY_NOT_FOUND", SessionKeyNotFoundError),
        ("MISSING_PAYLOAD", MissingPayloadError),
        ("MISSING_PAYLOAD_FIELDS", MissingPayloadFieldsError),
        ("INVALID_HEX_ENCODING", InvalidHexError),
        ("INVALID_NONCE_SIZE", InvalidNonceSizeError),
        ("DECRYPTION_FAILED", DecryptionFailedError),
        ("INVALID_UTF8", InvalidUtf8Error),
    ],
)
async def test_node_errors_without_stream_end_fail_at_once(
    code: str, kind: type[FabstirError]
) -> None:
    """These come alone: the client must not wait for a stream_end (first_token_timeout
    is 60 s here; the test allows 10)."""

    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        await peer.send({"type": "error", "code": code, "message": "node text", "id": rid})

    async with within(10), node(reply) as (url, _seen):
        manager, sid = await manager_session(url, first_token_timeout=60.0)
        async with manager:
            with pytest.raises(kind) as caught:
                await manager.prompt(sid, "hello")
            assert caught.value.code == code and caught.value.details["host_code"] == code
            assert "node text" in str(caught.value)


async def test_encryption_failed_ends_with_its_stream_end() -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        assert peer.cipher is not None
        chunk = peer.cipher.seal_chunk("par", 0)
        await peer.send({"type": "encrypted_chunk", "tokens": 1, "id": rid, "payload": chunk})
        await peer.send({"type": "error", "code": "ENCRYPTION_FAILED", "message": "x", "id": rid})
        await peer.send({"type": "stream_end", "reason": "error", "tokens_used": 1, "id": rid})

    async with within(10), node(reply) as (url, _seen):
        manager, sid = await manager_session(url)
        async with manager:
            with pytest.raises(EncryptionFailedError, match="nothing went out in clear"):
                await manager.prompt(sid, "hello")


async def test_session_auth_denied_at_init_is_typed() -> None:
    async def reply(peer: Node, request: dict[str, Any], rid: str | None) -> None:
        raise AssertionError("no prompt may be sent")

    async with within(10), node(reply, init_error="SESSION_AUTH_DENIED") as (url, seen):
        manager = SessionManager(SessionConfig(), host_url=url)
        async with manager:
            with pytest.raises(SessionAuthDeniedError, match="vault"):
                session = await manager.create_session(model="m", host_public_key=PUBLIC)
                await manager.prompt(session.id, "hello")
    assert seen == []
