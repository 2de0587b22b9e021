"""The client's image answers against the reference host's (PROTOCOL.md 6.3), end to end:
``SessionManager.generate_image`` over the encrypted socket, a prompt the host routes to
its diffusion sidecar answered with an image (``prompt`` -> ``result.images``,
``ChatFabstir`` -> an image content block), the node's refusals as typed errors, and the
conversation going on as text afterwards. The diffusion sidecar is a real server on
127.0.0.1 (tests/sidecars.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from coincurve import PrivateKey

from langchain_fabstir import ChatFabstir
from langchain_fabstir.errors import DiffusionUnavailableError, RateLimitedError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.sessions import SessionManager
from tests.sidecars import Sidecar, diffusion_sidecar, read_png

HOST_KEY = "0x" + "6b" * 32
HOST_PUB = "0x" + PrivateKey(bytes.fromhex(HOST_KEY[2:])).public_key.format().hex()


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    async with diffusion_sidecar() as sc:
        yield sc


def keyed_host(diffusion: str | None) -> ReferenceHost:
    return ReferenceHost(
        EchoEngine(),
        host_key=HOST_KEY,
        rate_limit_per_minute=None,
        embedder=None,
        diffusion_upstream=diffusion,
    )


async def test_generate_image_and_an_auto_routed_prompt(sidecar: Sidecar) -> None:
    async with keyed_host(sidecar.url) as host:
        async with SessionManager(host_url=host.url) as manager:
            session = await manager.create_session(host_public_key=HOST_PUB)
            image = await manager.generate_image(
                session.id, "a red square", size="256x256", steps=4, seed=7
            )
            assert image.mime_type == "image/png"
            assert read_png(image.data)[:2] == (256, 256)
            assert (image.size, image.steps, image.seed) == ("256x256", 4, 7)
            assert len(sidecar.requests) == 1

            routed = await manager.prompt(session.id, "Please draw a cat on a mat")
            assert routed.text == "" and len(routed.images) == 1
            assert read_png(routed.images[0].data)[:2] == (1024, 1024)
            assert not host.model_inputs  # the model never saw either prompt

            after = await manager.prompt(session.id, "What is two plus two?")
            assert after.text.startswith("Echo: ") and not after.images
            assert host.model_inputs[-1][-1]["content"].endswith("What is two plus two?")

        chat = ChatFabstir(host_url=host.url, host_public_key=HOST_PUB)
        try:
            message = await chat.ainvoke("draw me a lighthouse at dusk")
            blocks = [b for b in message.content if isinstance(b, dict)]
            assert [b["type"] for b in blocks] == ["image"]
            assert blocks[0]["mime_type"] == "image/png"
        finally:
            await chat.aclose()
        assert host.image_tokens_billed > 0


async def test_the_nodes_refusals_are_typed(sidecar: Sidecar) -> None:
    async with keyed_host(None) as host, SessionManager(host_url=host.url) as manager:
        session = await manager.create_session(host_public_key=HOST_PUB)
        with pytest.raises(DiffusionUnavailableError) as caught:
            await manager.generate_image(session.id, "a red square", size="256x256")
        assert caught.value.code == "DIFFUSION_SERVICE_UNAVAILABLE"
        # no diffusion sidecar: no auto routing either, the model answers
        answer = await manager.prompt(session.id, "draw a cat")
        assert answer.text.startswith("Echo: ") and not answer.images

    async with keyed_host(sidecar.url) as host, SessionManager(host_url=host.url) as manager:
        session = await manager.create_session(host_public_key=HOST_PUB)
        for _ in range(5):  # the node's limit: 5 images a minute per session
            await manager.generate_image(session.id, "a dot", size="256x256", steps=1)
        with pytest.raises(RateLimitedError) as limited:
            await manager.generate_image(session.id, "a dot", size="256x256", steps=1)
        assert limited.value.details["host_code"] == "RATE_LIMIT_EXCEEDED"
        assert len(sidecar.requests) == 5  # refused before the sidecar
