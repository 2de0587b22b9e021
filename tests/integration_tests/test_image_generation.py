"""FabstirImageGenerationTool against the reference host's ``POST /v1/images/generate``, which
really calls a diffusion sidecar written for the tests (OpenAI images API, real PNG files);
hostile sidecars and hostile hosts. Everything listens on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from langchain_core.messages import ToolMessage

from langchain_fabstir import FabstirImageGenerationTool
from langchain_fabstir.errors import (
    DiffusionUnavailableError,
    ImageGenerationError,
    InvalidRequestError,
    PromptBlockedError,
    ProtocolError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.images import ImageRoute
from tests._support.docs import run_snippets
from tests.sidecars import (
    LoopThread,
    Sidecar,
    diffusion_sidecar,
    hostile_host,
    png,
    read_png,
)


def _call(args: dict[str, object]) -> dict[str, object]:
    return {"type": "tool_call", "id": "call-1", "name": "fabstir_image_generation", "args": args}


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    async with diffusion_sidecar() as sc:
        yield sc


@pytest.fixture
async def image_host(sidecar: Sidecar) -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(
        EchoEngine(), rate_limit_per_minute=None, embedder=None, diffusion_upstream=sidecar.url
    ) as host:
        yield host


# --- through the reference host and its diffusion sidecar -------------------------------


async def test_the_image_comes_back_as_a_content_block(
    image_host: ReferenceHost, sidecar: Sidecar
) -> None:
    tool = FabstirImageGenerationTool(host_url=image_host.url, size="512x512")
    message = await tool.ainvoke(_call({"prompt": "a lighthouse at dusk", "seed": 42}))
    assert isinstance(message, ToolMessage) and message.tool_call_id == "call-1"
    text, block = message.content
    assert isinstance(text, dict) and text["type"] == "text" and "512x512 PNG" in text["text"]
    assert isinstance(block, dict) and block["type"] == "image"
    assert block["mime_type"] == "image/png"
    width, height, pixel = read_png(base64.b64decode(block["base64"]))
    assert (width, height, pixel) == (512, 512, bytes([42, 80, 40]))  # the sidecar's PNG
    meta = message.artifact
    assert meta["size"] == "512x512" and meta["seed"] == 42 and meta["steps"] == 4
    assert meta["model"] == "flux2-klein-4b" and meta["provider"] == "host"
    assert (meta["width"], meta["height"], meta["mime_type"]) == (512, 512, "image/png")
    assert meta["billing"] == {
        "generationUnits": 0.25 * 4 / 20,
        "modelMultiplier": 1.0,
        "megapixels": 0.25,
        "steps": 4,
    }
    assert meta["safety"] == {"promptSafe": True, "outputSafe": True, "safetyLevel": "strict"}
    assert meta["host_url"] == image_host.url and meta["chainName"] == "Base Sepolia"
    # What the host sent its sidecar: the node's OpenAI-style body.
    assert sidecar.requests[-1]["json"] == {
        "prompt": "a lighthouse at dusk",
        "model": "flux2-klein-4b",
        "size": "512x512",
        "n": 1,
        "response_format": "b64_json",
        "guidance_scale": 3.5,
        "num_inference_steps": 4,
        "seed": 42,
    }
    # Invoked with plain arguments, the tool returns the content only.
    content = await tool.ainvoke({"prompt": "a red square", "size": "256x256"})
    assert isinstance(content, list) and content[1]["type"] == "image"
    assert image_host.image_route.generated == 2


async def test_output_dir_writes_the_file(
    image_host: ReferenceHost, sidecar: Sidecar, tmp_path: Path
) -> None:
    tool = FabstirImageGenerationTool(
        host_url=image_host.url, output_dir=tmp_path / "out", steps=8, model="my-model"
    )
    message = await tool.ainvoke(
        _call({"prompt": "a cat", "negative_prompt": "blur", "size": "1024x768"})
    )
    path = Path(message.artifact["path"])
    assert path.parent == tmp_path / "out" and path.suffix == ".png"
    assert message.content == [
        {"type": "text", "text": f"Generated a 1024x768 PNG image, saved to {path}"}
    ]
    written = await asyncio.to_thread(path.read_bytes)
    assert read_png(written)[:2] == (1024, 768)
    assert await asyncio.to_thread(lambda: list(path.parent.iterdir())) == [path]  # no .part
    sent = sidecar.requests[-1]["json"]
    assert sent["negative_prompt"] == "blur" and sent["num_inference_steps"] == 8
    assert sent["model"] == "my-model" and "seed" not in sent
    assert message.artifact["seed"] == 0  # as a node reports an unseeded image


def test_sync_invoke(tmp_path: Path) -> None:
    lt = LoopThread()
    try:
        sc = lt.enter(diffusion_sidecar())
        host = lt.enter(  # keyed: the README's generate_image runs on an encrypted session
            ReferenceHost(
                EchoEngine(), host_key="0x" + "3d" * 32, embedder=None, diffusion_upstream=sc.url
            )
        )
        tool = FabstirImageGenerationTool(host_url=host.url, size="256x256")
        content = tool.invoke({"prompt": "a blue circle"})
        assert read_png(base64.b64decode(content[1]["base64"]))[:2] == (256, 256)
    finally:
        lt.close()


async def test_the_route_answers_as_a_node_does(
    image_host: ReferenceHost, sidecar: Sidecar
) -> None:
    url = f"{image_host.url}/v1/images/generate"
    async with httpx.AsyncClient() as client:
        ok = await client.post(
            url, json={"prompt": "a tree", "chainId": 5611, "sessionId": "s", "jobId": 3}
        )
        body = ok.json()
        assert ok.status_code == 200
        assert set(body) == {
            "image",
            "model",
            "size",
            "steps",
            "seed",
            "processingTimeMs",
            "safety",
            "provider",
            "chainId",
            "chainName",
            "nativeToken",
            "billing",
        }
        assert body["size"] == "1024x1024" and body["steps"] == 4  # the node's defaults
        assert body["billing"]["generationUnits"] == 0.2  # 1 MP x 4/20: PROTOCOL.md 6.3
        assert (body["chainName"], body["nativeToken"]) == ("opBNB Testnet", "BNB")
        assert read_png(base64.b64decode(body["image"]))[:2] == (1024, 1024)

        async def refused(payload: object, status: int) -> str:
            r = await client.post(url, json=payload)
            assert r.status_code == status, r.text
            return r.json()["error"] if status != 422 else r.text

        assert await refused({"prompt": "  "}, 400) == "prompt must not be empty"
        assert await refused({"prompt": "a", "size": "100x100"}, 400) == (
            "invalid size '100x100'; allowed: 256x256, 512x512, 768x768, 1024x1024, "
            "1024x768, 768x1024"
        )
        assert await refused({"prompt": "a", "steps": 0}, 400) == (
            "steps must be between 1 and 100, got 0"
        )
        assert await refused({"prompt": "a GORE scene"}, 400) == "Blocked keyword detected: gore"
        assert "missing field `prompt`" in await refused({"text": "a"}, 422)
        assert "Failed to deserialize" in await refused({"prompt": "a", "steps": -1}, 422)
        assert "Failed to deserialize" in await refused({"prompt": "a", "seed": 2**64}, 422)
    assert len(sidecar.requests) == 1  # nothing refused reached the sidecar


async def test_refusals_are_typed_errors(image_host: ReferenceHost, sidecar: Sidecar) -> None:
    tool = FabstirImageGenerationTool(host_url=image_host.url)
    with pytest.raises(PromptBlockedError, match="Blocked keyword detected: naked") as info:
        await tool.ainvoke({"prompt": "a naked mole-rat"})
    assert info.value.code == "PROMPT_BLOCKED" and not info.value.is_retryable
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        FabstirImageGenerationTool(host_url=image_host.url, steps=0)  # what nodes refuse
    with pytest.raises(InvalidRequestError, match="blank"):
        await tool.ainvoke({"prompt": " \n"})
    assert sidecar.requests == []
    # An agent gets the error as the tool's answer, if it asks for that.
    handled = FabstirImageGenerationTool(host_url=image_host.url, handle_tool_error=True)
    message = await handled.ainvoke(_call({"prompt": "suicide note"}))
    assert message.status == "error" and "PROMPT_BLOCKED" in message.content


async def test_a_host_without_a_sidecar_is_a_typed_error() -> None:
    async with ReferenceHost(EchoEngine(), embedder=None) as host:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{host.url}/v1/images/generate", json={"prompt": "a"})
        assert r.status_code == 503 and r.json() == {"error": "Diffusion service not available"}
        started = time.monotonic()
        with pytest.raises(
            DiffusionUnavailableError, match="Diffusion service not available"
        ) as info:
            await FabstirImageGenerationTool(host_url=host.url, max_retries=3).ainvoke(
                {"prompt": "a"}
            )
    assert info.value.code == "DIFFUSION_SERVICE_UNAVAILABLE"
    assert time.monotonic() - started < 1.0  # asked once, no backoff


# --- hostile sidecars: the host answers the node's 500, bounded ----------------------------


async def _status_503(request: web.Request) -> web.StreamResponse:
    return web.Response(status=503, text="warming up")


async def _empty(request: web.Request) -> web.StreamResponse:
    return web.json_response({"data": []})


async def _no_b64(request: web.Request) -> web.StreamResponse:
    return web.json_response({"data": [{"url": "https://x/y.png"}]})


async def _deep(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"data": ' + b"[" * 100_000, content_type="application/json")


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_status_503, "diffusion sidecar returned 503 Service Unavailable: warming up"),
        (_empty, "empty response from diffusion sidecar"),
        (_no_b64, "no b64_json in response"),
        (_deep, "error decoding response body"),
    ],
)
async def test_a_broken_sidecar_is_the_nodes_500(
    image_host: ReferenceHost, sidecar: Sidecar, handler: object, reason: str
) -> None:
    sidecar.handler = handler  # type: ignore[assignment]
    tool = FabstirImageGenerationTool(host_url=image_host.url, max_retries=0)
    with pytest.raises(ImageGenerationError, match=re.escape(reason)) as info:
        await tool.ainvoke({"prompt": "a"})
    assert info.value.code == "IMAGE_GENERATION_FAILED" and info.value.details["status"] == 500
    assert "Image generation failed: " in info.value.message


async def test_a_huge_or_slow_sidecar_is_cut_off(
    image_host: ReferenceHost, sidecar: Sidecar
) -> None:
    sent = {"bytes": 0}

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"data": [{"b64_json": "')
        with contextlib.suppress(ConnectionError):
            for _ in range(16_000):  # up to 1 GiB, unless the host hangs up
                await response.write(b"A" * 65536)
                sent["bytes"] += 65536
        return response

    sidecar.handler = huge
    image_host.image_route.max_upstream_bytes = 1024 * 1024  # nodes: no cap; default 32 MB
    tool = FabstirImageGenerationTool(host_url=image_host.url, max_retries=0)
    with pytest.raises(ImageGenerationError, match="larger than 1048576 bytes"):
        await tool.ainvoke({"prompt": "huge"})
    assert sent["bytes"] < 16 * 1024 * 1024

    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"data": []})

    sidecar.handler = slow
    image_host.image_route.timeout = 0.5  # nodes: 120 s
    started = time.monotonic()
    with pytest.raises(ImageGenerationError, match=r"no answer within 0\.5 s"):
        await tool.ainvoke({"prompt": "slow"})
    assert time.monotonic() - started < 5.0
    release.set()


async def test_generations_at_once_are_bounded(sidecar: Sidecar) -> None:
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"data": []})

    sidecar.handler = stuck
    host = ReferenceHost(EchoEngine(), embedder=None)
    host.image_route = ImageRoute(sidecar.url, timeout=1.0, max_concurrent=1)
    async with host:
        tool = FabstirImageGenerationTool(host_url=host.url, max_retries=0)
        results = await asyncio.gather(
            tool.ainvoke({"prompt": "one"}), tool.ainvoke({"prompt": "two"}), return_exceptions=True
        )
        release.set()
    assert all(isinstance(r, ImageGenerationError) for r in results)
    assert all("no answer within 1 s" in str(r) for r in results)
    assert len(sidecar.requests) == 1  # the second never reached the sidecar


# --- hostile hosts ----------------------------------------------------------------------


def _answer(image: str) -> bytes:
    return json.dumps({"image": image, "model": "m", "size": "256x256", "seed": 0}).encode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[" * 50_000, "nests deeper"),
        (b'{"model": "m"}', "without an 'image'"),
        (_answer("not base64!"), "not valid base64"),
        (_answer(base64.b64encode(b"<svg onload=alert(1)>").decode()), "not a PNG, JPEG"),
        (_answer(base64.b64encode(png(600, 600)).decode()), "more than max_image_bytes"),
    ],
)
async def test_malformed_answers_are_protocol_errors(body: bytes, match: str) -> None:
    async with hostile_host("/v1/images/generate", body) as url:
        tool = FabstirImageGenerationTool(host_url=url, max_retries=0, max_image_bytes=1024)
        with pytest.raises(ProtocolError, match=match) as info:
            await tool.ainvoke({"prompt": "a"})
    assert info.value.code == "PROTOCOL_ERROR"


async def test_a_hosts_400_is_invalid_request() -> None:
    async with hostile_host(
        "/v1/images/generate", b'{"error": "steps must be between 1 and 100, got 0"}', status=400
    ) as url:
        with pytest.raises(InvalidRequestError, match="steps must be between") as info:
            await FabstirImageGenerationTool(host_url=url).ainvoke({"prompt": "a"})
    assert info.value.code == "INVALID_REQUEST" and info.value.details["status"] == 400


async def test_a_huge_answer_is_cut_off() -> None:
    big = _answer("A" * 3_000_000)
    async with hostile_host("/v1/images/generate", big) as url:
        tool = FabstirImageGenerationTool(host_url=url, max_retries=0, max_image_bytes=1024)
        with pytest.raises(ProtocolError, match="more than") as info:
            await tool.ainvoke({"prompt": "a"})
    assert info.value.details["limit"] < 100_000


def test_the_models_view_of_the_tool() -> None:
    tool = FabstirImageGenerationTool(host_url="http://127.0.0.1:9")
    schema = tool.tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"prompt", "size", "negative_prompt", "seed"}
    assert schema["required"] == ["prompt"]
    with pytest.raises(ValueError, match="at most 2000 characters"):
        tool.invoke({"prompt": "x" * 2001})


# --- the docs page and the README snippet run --------------------------------------------


@pytest.fixture(scope="module")
def threaded_image_host() -> Iterator[str]:
    lt = LoopThread()
    sc = lt.enter(diffusion_sidecar())
    host = lt.enter(  # keyed: the README's generate_image runs on an encrypted session
        ReferenceHost(
            EchoEngine(), host_key="0x" + "3d" * 32, embedder=None, diffusion_upstream=sc.url
        )
    )
    yield host.url
    lt.close()


@pytest.mark.parametrize(
    ("page", "section"),
    [("docs/tools/fabstir_image_generation.mdx", None), ("README.md", "## Image generation")],
)
def test_doc_snippets_run(
    page: str,
    section: str | None,
    threaded_image_host: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", threaded_image_host)
    monkeypatch.chdir(tmp_path)  # files the snippets write land here
    namespace = run_snippets(page, section)
    assert namespace["shown"] == "image/png"
