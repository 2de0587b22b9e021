"""Images with a prompt (issue 23 item 2): ``ChatFabstir`` and ``SessionManager`` against the
reference host on 127.0.0.1, whose vision path (``--vlm-upstream``) calls a VLM sidecar
written for these tests (OpenAI chat completions, scripted answers, a real PNG made with
zlib/struct). Plaintext and encrypted; what the model saw is read from
``ReferenceHost.model_inputs``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from langchain_core.messages import AIMessage, HumanMessage

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.checkpoints.published import fetch_host_checkpoints
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.errors import (
    HostDisconnectedError,
    ImageInputsNotSupportedError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidImageFormatError,
    RateLimitedError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.engines import Engine
from langchain_fabstir.host.vision import augment_prompt
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.sessions import SessionConfig, SessionManager
from langchain_fabstir.wire.images import ImageInput
from tests.faults.proxy import CutAfterBytes, FaultProxy, Stall
from tests.sidecars import (
    VLM_OCR,
    VLM_OCR_TOKENS,
    VLM_VISUAL,
    VLM_VISUAL_TOKENS,
    Sidecar,
    png,
    vlm_sidecar,
)

HOST_KEY = "0x" + "5a" * 32
MODES = ["plaintext", "encrypted"]
PNG = png(8, 6, (250, 10, 10))
B64 = base64.b64encode(PNG).decode()
OCR, VISUAL = VLM_OCR, VLM_VISUAL
OCR_TOKENS, VISUAL_TOKENS = VLM_OCR_TOKENS, VLM_VISUAL_TOKENS
AUGMENTED = (
    f"The attached image contains the following:\nText content:\n{OCR}\n\n"
    f"Visual: {VISUAL}\n\nUser's question: "
)


@pytest.fixture
async def vlm() -> AsyncIterator[Sidecar]:
    async with vlm_sidecar() as sidecar:
        yield sidecar


class Host(ReferenceHost):
    """A reference host that can hide its extensions (``features=[]``: as a deployed node,
    which announces nothing)."""

    def __init__(self, engine: Engine, *, features: list[str] | None = None, **kw: Any) -> None:
        kw.setdefault("rate_limit_per_minute", None)
        super().__init__(engine, **kw)
        self._features = features

    def features(self) -> list[str]:
        return super().features() if self._features is None else list(self._features)


def make_host(mode: str, *, delay: float = 0.0, **kw: Any) -> Host:
    if mode == "encrypted":
        kw["host_key"] = HOST_KEY
    return Host(EchoEngine(delay=delay), **kw)


def image_message(text: str = "What does it say?", block: dict[str, Any] | None = None) -> Any:
    block = block or {"type": "image", "base64": B64, "mime_type": "image/png"}
    return HumanMessage(content=[{"type": "text", "text": text}, block])


def last_user(host: ReferenceHost) -> str:
    return host.model_inputs[-1][-1]["content"]


def check_vlm_calls(vlm: Sidecar) -> None:
    """Two calls per image, as a node makes them: OCR, then a one-sentence description."""
    assert len(vlm.requests) == 2
    for body, (max_tokens, temperature, start) in zip(
        vlm.requests,
        [(4096, 0.1, "Extract all text from this image."), (100, 0.3, "Describe this image")],
        strict=True,
    ):
        assert body["model"] == "qwen3-vl"
        assert body["max_tokens"] == max_tokens and body["temperature"] == temperature
        (message,) = body["messages"]
        text, image = message["content"]
        assert text["text"].startswith(start)
        assert image == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}


@pytest.mark.parametrize("mode", MODES)
async def test_an_image_reaches_the_vlm_and_the_model_sees_what_it_read(
    mode: str, vlm: Sidecar
) -> None:
    async with make_host(mode, vlm_upstream=vlm.url) as host:
        llm = ChatFabstir(host_url=host.url)
        reply = await llm.ainvoke([image_message()])
        check_vlm_calls(vlm)
        assert last_user(host) == AUGMENTED + "What does it say?"
        assert reply.text.startswith("Echo: The attached image contains")
        usage = reply.usage_metadata
        assert usage is not None
        assert usage["input_token_details"] == {"vlm": OCR_TOKENS + VISUAL_TOKENS}
        prompt_tokens = EchoEngine().count_prompt_tokens(host.model_inputs[-1])
        assert usage["input_tokens"] == prompt_tokens + OCR_TOKENS + VISUAL_TOKENS
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        # The OpenAI image_url form and a JPEG-labelled PNG (sent as what it is) work too.
        vlm.requests.clear()
        block = {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{B64}"}}
        await llm.ainvoke([image_message("Read it.", block)])
        check_vlm_calls(vlm)
        assert last_user(host) == AUGMENTED + "Read it."
        profile = await llm.afetch_profile()
        assert profile["image_inputs"] is True


@pytest.mark.parametrize("mode", MODES)
async def test_session_manager_sends_images_and_counts_vlm_tokens(
    mode: str, vlm: Sidecar, tmp_path: Path
) -> None:
    picture = tmp_path / "sign.png"
    picture.write_bytes(PNG)
    async with (
        make_host(mode, vlm_upstream=vlm.url) as host,
        SessionManager(host_url=host.url) as manager,
    ):
        session = await manager.create_session()
        assert session.encrypted is (mode == "encrypted")
        result = await manager.prompt(session.id, "Read the sign.", images=[picture])
        check_vlm_calls(vlm)
        assert result.vlm_tokens == OCR_TOKENS + VISUAL_TOKENS
        assert last_user(host) == AUGMENTED + "Read the sign."
        assert result.usage is not None
        assert session.token_count == result.usage.total_tokens + result.vlm_tokens
        # bytes and a data: URL, streamed; two images -> two analyses, joined.
        vlm.requests.clear()
        pieces = [
            p
            async for p in manager.stream_prompt(
                session.id, "And these?", images=[PNG, f"data:image/png;base64,{B64}"]
            )
        ]
        assert "".join(pieces).startswith("Echo: ")
        assert len(vlm.requests) == 4
        analysis = f"Text content:\n{OCR}\n\nVisual: {VISUAL}"
        seen = last_user(host)
        assert f"{analysis}\n{analysis}\n\nUser's question: " in seen
        assert seen.endswith("And these?")


class Listener:
    """A TCP port that counts the connections made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.url = ""

    async def __aenter__(self) -> Listener:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


BAD_IMAGES: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {"type": "image", "base64": B64, "mime_type": "image/bmp"},
        InvalidImageFormatError,
        "INVALID_IMAGE_FORMAT",
    ),
    (
        {
            "type": "image",
            "base64": base64.b64encode(b"BM" + bytes(64)).decode(),
            "mime_type": "image/png",
        },
        InvalidImageFormatError,
        "INVALID_IMAGE_FORMAT",
    ),
    (
        {"type": "image", "base64": "not base64!", "mime_type": "image/png"},
        InvalidImageError,
        "INVALID_IMAGE_DATA",
    ),
    (
        {"type": "image", "base64": base64.b64encode(b"x").decode(), "mime_type": "image/png"},
        InvalidImageError,
        "INVALID_IMAGE_DATA",
    ),
    (
        {"type": "image", "url": "https://example.org/cat.png"},
        InvalidImageError,
        "INVALID_IMAGE_DATA",
    ),
    (
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}},
        InvalidImageError,
        "INVALID_IMAGE_DATA",
    ),
    (
        {"type": "image", "base64": "A" * 13_333_336, "mime_type": "image/png"},
        ImageTooLargeError,
        "IMAGE_TOO_LARGE",
    ),
    (
        {"type": "image", "source_type": "base64", "data": B64 + "@", "mime_type": "image/png"},
        InvalidImageError,
        "INVALID_IMAGE_DATA",
    ),
]


@pytest.mark.parametrize(("block", "error", "code"), BAD_IMAGES)
async def test_bad_images_are_refused_before_anything_is_sent(
    block: dict[str, Any], error: type[Exception], code: str
) -> None:
    async with Listener() as port:
        llm = ChatFabstir(host_url=port.url, max_retries=0)
        with pytest.raises(error) as info:
            await llm.ainvoke([image_message(block=block)])
        assert getattr(info.value, "code", None) == code
        async with SessionManager(host_url=port.url) as manager:
            with pytest.raises(InvalidImageError):  # (checked before the session is looked up)
                await manager.prompt("no-session", "hi", images=[PNG[:5]])
        assert port.accepted == 0  # no socket opened


async def test_images_that_cannot_fit_in_a_node_message_are_refused(tmp_path: Path) -> None:
    big = bytes(PNG[:16]) + bytes(9_000_000)  # a PNG header: a 12 MB frame in base64
    ImageInput.from_bytes(big)  # one is within the per-image limit...
    async with Listener() as port:
        async with SessionManager(host_url=port.url) as manager:
            with pytest.raises(ImageTooLargeError) as info:  # ...two are not (16 MiB)
                await manager.prompt("s", "hi", images=[big, big])
        assert "16 MiB" in info.value.message
        assert port.accepted == 0
    with pytest.raises(InvalidImageError, match="cannot read the image file"):
        ImageInput.from_path(tmp_path / "missing.png")


@pytest.mark.parametrize("mode", MODES)
async def test_a_host_that_announces_no_vision_is_refused_before_sending(mode: str) -> None:
    async with make_host(mode) as host:
        assert "vision" not in host.features()
        llm = ChatFabstir(host_url=host.url)
        with pytest.raises(ImageInputsNotSupportedError, match="image inputs not supported"):
            await llm.ainvoke([image_message()])
        assert not host.requests and not host.model_inputs  # no prompt reached it
        assert (await llm.afetch_profile())["image_inputs"] is False
        # The same session is fine for text.
        assert (await llm.ainvoke("hello")).text == "Echo: hello"


@pytest.mark.parametrize("mode", MODES)
async def test_a_node_that_drops_images_silently_is_caught_by_its_answer(mode: str) -> None:
    """A deployed node without a vision sidecar announces nothing and drops the images; its
    answer has no vlm_tokens: the client raises rather than return it as an answer."""
    async with make_host(mode, features=[]) as host:
        llm = ChatFabstir(host_url=host.url)
        with pytest.raises(ImageInputsNotSupportedError) as info:
            await llm.ainvoke([image_message()])
        assert info.value.details["partial_text"] == "Echo: What does it say?"
        assert last_user(host) == "What does it say?"  # what the node gave the model
        # Streaming: the text came first, then the error (the chunks are to be discarded).
        chunks: list[str] = []
        with pytest.raises(ImageInputsNotSupportedError):
            async for chunk in llm.astream([image_message("Stream it.")]):
                chunks.append(chunk.text)
        assert "".join(chunks) == "Echo: Stream it."
        async with SessionManager(host_url=host.url) as manager:
            session = await manager.create_session()
            with pytest.raises(ImageInputsNotSupportedError):
                await manager.prompt(session.id, "Look.", images=[PNG])
            history = await manager.get_conversation_history(session.id)
            assert history == []  # the answer that ignored the image is not kept


async def test_a_vlm_whose_calls_all_fail_leaves_the_prompt_cleaned_and_is_reported(
    vlm: Sidecar,
) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "model crashed"}, status=500)

    vlm.handler = fail
    async with make_host("plaintext", vlm_upstream=vlm.url) as host:
        llm = ChatFabstir(host_url=host.url)
        message = image_message("<<DISPLAY>>Read it<</DISPLAY>>[Attached image: a.png]\n\n\n\nnow")
        with pytest.raises(ImageInputsNotSupportedError, match="vision calls failed"):
            await llm.ainvoke([message])
        assert len(vlm.requests) == 2
        assert last_user(host) == "Read it\n\nnow"  # strip_ui_markers, as a node


async def test_a_prompt_with_images_is_not_sent_again_by_a_retry(vlm: Sidecar) -> None:
    """A rate-limited prompt is normally waited out and sent again; one with images is not
    (its images were read, and billed, already): the error is raised to the caller."""
    async with make_host("plaintext", vlm_upstream=vlm.url, rate_limit_per_minute=1) as host:
        config = SessionConfig(max_retry_after=120)
        async with SessionManager(config, host_url=host.url) as manager:
            session = await manager.create_session()
            await manager.prompt(session.id, "first")
            with pytest.raises(RateLimitedError) as info:
                await manager.prompt(session.id, "Look.", images=[PNG])
            assert "not_resent" in info.value.details
            assert len(vlm.requests) == 2  # read once, not again


def test_the_node_augmentation_of_a_multi_turn_prompt() -> None:
    prompt = "User: hi\nAssistant: hello\nUser: and this?"
    assert augment_prompt(["Visual: x"], prompt) == (
        "User: hi\nAssistant: hello\nUser: A NEW image has been attached. IGNORE any "
        "previous image descriptions from the conversation. Use ONLY the following new "
        "analysis:\nVisual: x\n\nUser's question: and this?"
    )
    assert augment_prompt([], prompt) == prompt


async def test_earlier_images_are_not_sent_again(vlm: Sidecar) -> None:
    async with make_host("encrypted", vlm_upstream=vlm.url) as host:
        llm = ChatFabstir(host_url=host.url)
        first = image_message()
        answer = await llm.ainvoke([first])
        vlm.requests.clear()
        await llm.ainvoke([first, AIMessage(answer.text), HumanMessage("And its colour?")])
        assert vlm.requests == []  # only the last human message's images go
        # The node session holds the turn it analysed: the model still sees the analysis.
        assert any(OCR in m["content"] for m in host.model_inputs[-1])
        with contextlib.suppress(Exception):
            await llm.aclose()


async def test_vlm_tokens_are_billed_with_the_job(vlm: Sidecar, tmp_path: Path) -> None:
    """With a job id, a node adds the sidecar's tokens to the job's token count: the host's
    checkpoints (what it proves on chain) cover them; without a job, only generated ones."""
    phrase = (
        "sign weight spy quality sudden minute pizza great fear "
        "adapt nobody evident control alive crime"
    )
    async with LocalPortal(tmp_path / "portal", port=0) as portal:
        engine = EchoEngine([f"w{i} " for i in range(37)], fill=True)
        host = ReferenceHost(
            engine,
            rate_limit_per_minute=None,
            host_key=HOST_KEY,
            portal_url=portal.url,
            s5_seed_phrase=phrase,
            vlm_upstream=vlm.url,
        )
        config = SessionConfig(encryption="off")
        async with host, SessionManager(config, host_url=host.url) as manager:
            ranges = []
            for job_id in (41, None):
                session = await manager.create_session(model="echo", job_id=job_id)
                result = await manager.prompt(session.id, "Look.", images=[PNG], max_tokens=120)
                assert result.vlm_tokens == OCR_TOKENS + VISUAL_TOKENS
                published = await fetch_host_checkpoints(host.url, session.id, portal=portal.url)
                ranges.append([tuple(e.token_range) for e in published.index.checkpoints])
    assert ranges == [[(0, 120 + OCR_TOKENS + VISUAL_TOKENS)], [(0, 120)]]


async def test_an_image_in_an_inlined_conversation_is_read_into_the_new_message(
    vlm: Sidecar,
) -> None:
    """A conversation a node session does not hold reaches it inlined; the node puts the
    image's analysis into the last ``User:`` turn, which must be the new message."""
    async with make_host("encrypted", vlm_upstream=vlm.url) as host:
        llm = ChatFabstir(host_url=host.url)
        history = [HumanMessage("zz-hi"), AIMessage("zz-hello"), image_message("zz-what?")]
        await llm.ainvoke(history)
        seen = last_user(host)
        assert "User: zz-hi\nAssistant: zz-hello" in seen  # the earlier turn as it was
        assert seen.endswith(
            "User: A NEW image has been attached. IGNORE any previous image descriptions "
            "from the conversation. Use ONLY the following new analysis:\n"
            f"Text content:\n{OCR}\n\nVisual: {VISUAL}\n\nUser's question: zz-what?"
        )


async def test_fabstir_host_vlm_upstream_reads_images(vlm: Sidecar) -> None:
    """``fabstir host --vlm-upstream URL``: the host process announces ``vision`` and reads
    images through that sidecar."""
    proc, url = await asyncio.to_thread(
        start_host_process, "--engine", "echo", "--vlm-upstream", vlm.url, timeout=60
    )
    try:
        llm = ChatFabstir(host_url=url, max_retries=0)
        assert (await llm.afetch_profile())["image_inputs"] is True
        reply = await llm.ainvoke([image_message()])
        assert reply.usage_metadata is not None
        assert reply.usage_metadata["input_token_details"] == {"vlm": OCR_TOKENS + VISUAL_TOKENS}
        check_vlm_calls(vlm)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


@pytest.mark.parametrize("resume", [True, False], ids=["exact-resume", "node"])
async def test_a_socket_dropped_after_the_images_were_read_never_reads_them_again(
    vlm: Sidecar, resume: bool
) -> None:
    """The socket drops after the host read the images, before the first token. A host
    with exact resume goes on with the same answer (nothing read again, its vlm_tokens
    reported); a node (no resume) would have to be sent the prompt again, which would read
    and bill the images twice: the drop is raised instead."""
    read = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        body = vlm.requests[-1]
        ocr = body["messages"][0]["content"][0]["text"].startswith("Extract all text")
        if len(vlm.requests) == 2:
            read.set()
        return web.json_response(
            {
                "choices": [{"message": {"content": OCR if ocr else VISUAL}}],
                "usage": {"total_tokens": OCR_TOKENS if ocr else VISUAL_TOKENS},
            }
        )

    vlm.handler = answer
    features = None if resume else []
    async with (
        # (paced: the answer is still coming when the cut is set, so the cut happens)
        make_host("plaintext", delay=0.02, vlm_upstream=vlm.url, features=features) as host,
        FaultProxy("127.0.0.1", host.port) as proxy,
    ):
        config = SessionConfig(reconnect_attempts=2)
        async with SessionManager(config, host_url=f"http://127.0.0.1:{proxy.port}") as manager:
            session = await manager.create_session()
            proxy.set_fault(Stall("down"), scope="current")
            task = asyncio.create_task(manager.prompt(session.id, "Look.", images=[PNG]))
            await asyncio.wait_for(read.wait(), 30)
            proxy.set_fault(CutAfterBytes(0), scope="current")
            if resume:
                result = await asyncio.wait_for(task, 30)
                assert result.text == "Echo: " + AUGMENTED + "Look."
                assert result.vlm_tokens == OCR_TOKENS + VISUAL_TOKENS and result.resumed == 1
            else:
                with pytest.raises(HostDisconnectedError) as info:
                    await asyncio.wait_for(task, 30)
                assert "not_resent" in info.value.details
    assert len(vlm.requests) == 2  # the images were read once
