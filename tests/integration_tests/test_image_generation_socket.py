"""Image generation over the encrypted socket of the reference host, as deployed nodes answer
it (PROTOCOL.md 6.3): ``action: "image_generation"`` and automatic image routing, answered
by ONE ``encrypted_response`` sealed under the session key with AAD
``encrypted_image_response`` (no chunks, no ``stream_end``), the node's error codes, the
per-session rate limit, and the image's tokens billed into the job. Raw sockets to a keyed
reference host whose diffusion sidecar is a real server on 127.0.0.1 (tests/sidecars.py);
the replies are opened here with the session key."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coincurve import PrivateKey

from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import generate_phrase
from langchain_fabstir.wire.encryption import (
    SessionCipher,
    seal_session_init,
    xchacha_decrypt,
)
from tests.sidecars import Sidecar, diffusion_sidecar, read_png

HOST_KEY = "0x" + "5a" * 32
HOST_PUB = "0x" + PrivateKey(bytes.fromhex(HOST_KEY[2:])).public_key.format().hex()
IMAGE_AAD = b"encrypted_image_response"


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    async with diffusion_sidecar() as sc:
        yield sc


@pytest.fixture
async def host(sidecar: Sidecar) -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(
        EchoEngine(),
        host_key=HOST_KEY,
        rate_limit_per_minute=None,
        embedder=None,
        diffusion_upstream=sidecar.url,
    ) as h:
        yield h


class Socket:
    """One encrypted session on a raw socket: send prompts, read frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, cipher: SessionCipher) -> None:
        self.ws, self.cipher = ws, cipher

    async def send(self, body: dict[str, Any], rid: str) -> None:
        payload = self.cipher.seal_message(json.dumps(body))
        await self.ws.send_json({"type": "encrypted_message", "id": rid, "payload": payload})

    async def frame(self) -> dict[str, Any]:
        return dict(await self.ws.receive_json(timeout=10))

    def open_image(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The plaintext JSON of an image reply, checked to be sealed with the image AAD."""
        assert frame["type"] == "encrypted_response"
        payload = frame["payload"]
        assert bytes.fromhex(payload["aadHex"]) == IMAGE_AAD
        plain = xchacha_decrypt(
            self.cipher.key,
            bytes.fromhex(payload["nonceHex"]),
            bytes.fromhex(payload["ciphertextHex"]),
            IMAGE_AAD,
        )
        return dict(json.loads(plain))

    async def image(self, body: dict[str, Any], rid: str) -> dict[str, Any]:
        await self.send(body, rid)
        frame = await self.frame()
        assert frame["id"] == rid and "count" not in frame
        return self.open_image(frame)

    async def text_answer(self, body: dict[str, Any], rid: str) -> list[dict[str, Any]]:
        """Frames of a normal answer, up to its ``stream_end``; the first is a chunk."""
        await self.send(body, rid)
        frames = [await self.frame()]
        while frames[-1]["type"] != "stream_end":
            frames.append(await self.frame())
        return frames


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _session(host: ReferenceHost, http: aiohttp.ClientSession, sid: str) -> Socket:
    ws = await http.ws_connect(host.ws_url)
    assert (await ws.receive_json(timeout=10))["type"] == "connected"
    sealed = seal_session_init(HOST_PUB, {"jobId": sid, "modelName": "echo"})
    init = {"type": "encrypted_session_init", "session_id": sid, "payload": sealed.payload}
    await ws.send_json(init)
    assert (await ws.receive_json(timeout=10))["type"] == "session_init_ack"
    return Socket(ws, SessionCipher(sealed.session_key))


REQUEST = {
    "action": "image_generation",
    "prompt": "a lighthouse at dusk",
    "size": "512x512",
    "steps": 8,
    "seed": 42,
    "safetyLevel": "strict",
    "chainId": 84532,
}


async def test_an_image_action_is_one_sealed_frame_and_is_billed(
    sidecar: Sidecar, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with (
        LocalPortal(tmp_path / "portal", port=0) as portal,
        ReferenceHost(
            EchoEngine(),
            host_key=HOST_KEY,
            rate_limit_per_minute=None,
            embedder=None,
            diffusion_upstream=sidecar.url,
            portal_url=portal.url,
            s5_seed_phrase=generate_phrase(),
        ) as host,
    ):
        s = await _session(host, http, "31")
        await s.send(REQUEST, "img-1")
        frame = await s.frame()
        assert frame["type"] == "encrypted_response" and frame["session_id"] == "31"
        assert frame["id"] == "img-1"
        reply = s.open_image(frame)
        assert reply["type"] == "image_generation_result"
        assert read_png(base64.b64decode(reply["image"])) == (512, 512, bytes([42, 80, 40]))
        assert (reply["size"], reply["steps"], reply["seed"]) == ("512x512", 8, 42)
        assert reply["model"] == "flux2-klein-4b" and reply["provider"] == "host"
        assert reply["safety"] == {"promptSafe": True, "outputSafe": True, "safetyLevel": "strict"}
        assert reply["billing"] == {
            "generationUnits": 0.1,
            "modelMultiplier": 1.0,
            "megapixels": 0.25,
            "steps": 8,
        }
        assert (reply["chainId"], reply["chainName"]) == (84532, "Base Sepolia")
        assert sidecar.requests[-1]["json"]["prompt"] == "a lighthouse at dusk"
        # No chunks, no stream_end: the next frame on the socket is the next answer's.
        frames = await s.text_answer({"prompt": "and now some words"}, "t-1")
        assert frames[0]["type"] == "encrypted_chunk" and frames[0]["id"] == "t-1"
        # Billed into the job's token count: ceil(0.1 x 1000) = 100 tokens, proven in the
        # session's checkpoint before the text answer's tokens.
        assert host.image_tokens_billed == 100
        async with http.get(f"{host.url}/v1/checkpoints/31") as got:
            index = await got.json()
        assert index["checkpoints"][0]["tokenRange"] == [0, 100]
        # Nothing of the image is in the node's history of the session.
        assert "lighthouse" not in json.dumps(host.model_inputs[-1])
        await s.ws.close()


async def test_refusals_carry_the_nodes_codes(
    host: ReferenceHost, http: aiohttp.ClientSession
) -> None:
    s = await _session(host, http, "32")
    cases = [
        ({"size": "300x300"}, "VALIDATION_FAILED", "invalid size"),
        ({"steps": 0}, "VALIDATION_FAILED", "steps must be between 1 and 100"),
        ({"steps": "many"}, "VALIDATION_FAILED", "steps"),
        ({"prompt": "   "}, "VALIDATION_FAILED", "prompt must not be empty"),
        ({"prompt": None}, "VALIDATION_FAILED", "prompt"),
        ({"prompt": "a NUDE statue"}, "PROMPT_BLOCKED", "Blocked keyword detected: nude"),
    ]
    for n, (change, code, words) in enumerate(cases):
        reply = await s.image({**REQUEST, **change}, f"bad-{n}")
        assert reply == {"type": "image_generation_error", "error": reply["error"]}
        assert reply["error"]["code"] == code and words in reply["error"]["message"], reply
    assert host.image_tokens_billed == 0 and host.image_route.generated == 0
    await s.ws.close()

    async with ReferenceHost(EchoEngine(), host_key=HOST_KEY, embedder=None) as bare:
        s = await _session(bare, http, "33")
        reply = await s.image(REQUEST, "none")
        assert reply["error"]["code"] == "DIFFUSION_SERVICE_UNAVAILABLE"
        assert reply["error"]["message"] == "Diffusion service not available"
        # (a blocked prompt is refused first, as the node checks safety before the sidecar)
        blocked = await s.image({**REQUEST, "prompt": "gore"}, "blocked")
        assert blocked["error"]["code"] == "PROMPT_BLOCKED"
        await s.ws.close()


async def test_a_broken_sidecar_is_image_generation_failed(
    host: ReferenceHost, sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    async def broken(request: Any) -> Any:
        from aiohttp import web

        return web.Response(status=500, text="GPU on fire")

    sidecar.handler = broken
    s = await _session(host, http, "34")
    reply = await s.image(REQUEST, "broken")
    assert reply["error"]["code"] == "IMAGE_GENERATION_FAILED"
    assert "GPU on fire" in reply["error"]["message"]
    await s.ws.close()


async def test_five_images_a_minute_per_session(
    host: ReferenceHost, http: aiohttp.ClientSession
) -> None:
    s = await _session(host, http, "35")
    failed = await s.image({**REQUEST, "size": "1x1"}, "f")  # failures are not counted
    assert failed["error"]["code"] == "VALIDATION_FAILED"
    for n in range(5):
        assert (await s.image(REQUEST, f"ok-{n}"))["type"] == "image_generation_result"
    limited = await s.image(REQUEST, "sixth")
    assert limited["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert host.image_route.generated == 5
    assert host.image_tokens_billed == 5 * 100
    other = await _session(host, http, "36")  # another session id has its own limit
    assert (await other.image(REQUEST, "o"))["type"] == "image_generation_result"
    await s.ws.close()
    await other.ws.close()


async def test_a_prompt_asking_for_an_image_is_routed_to_one(
    host: ReferenceHost, sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    s = await _session(host, http, "37")
    reply = await s.image({"prompt": "Please draw a cat wearing a hat"}, "auto")
    assert reply["type"] == "image_generation_result"
    assert reply["size"] == "1024x1024" and reply["steps"] == 4
    assert sidecar.requests[-1]["json"]["prompt"] == "draw a cat wearing a hat"
    assert host.image_tokens_billed == 200  # 1024x1024 at 4 steps: 0.2 units
    runs = len(host.requests)
    # Nothing stored in the node's history: the next prompt's model input has no cat.
    frames = await s.text_answer({"prompt": "tell me a story"}, "next")
    assert frames[0]["type"] == "encrypted_chunk" and len(host.requests) == runs + 1
    assert "cat" not in json.dumps(host.model_inputs[-1])
    # An unknown action is ignored: a normal prompt.
    frames = await s.text_answer({"action": "juggle", "prompt": "hello there"}, "unknown")
    assert [f["type"] for f in frames[-2:]] == ["encrypted_response", "stream_end"]
    assert frames[-1]["reason"] == "complete"
    assert host.model_inputs[-1][-1]["content"] == "hello there"
    await s.ws.close()


async def test_auto_routing_can_be_turned_off(
    sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    async with ReferenceHost(
        EchoEngine(),
        host_key=HOST_KEY,
        embedder=None,
        diffusion_upstream=sidecar.url,
        auto_image_routing=False,
    ) as host:
        s = await _session(host, http, "38")
        frames = await s.text_answer({"prompt": "draw a cat"}, "off")
        assert frames[0]["type"] == "encrypted_chunk" and frames[-1]["reason"] == "complete"
        assert sidecar.requests == []
        # The action itself is still served.
        assert (await s.image(REQUEST, "act"))["type"] == "image_generation_result"
        await s.ws.close()
    async with ReferenceHost(EchoEngine(), host_key=HOST_KEY, embedder=None) as bare:
        s = await _session(bare, http, "39")  # no sidecar: no routing either
        frames = await s.text_answer({"prompt": "draw a cat"}, "bare")
        assert frames[-1]["reason"] == "complete"
        await s.ws.close()
