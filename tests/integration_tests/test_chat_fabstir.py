"""ChatFabstir against real reference hosts (and hand-written raw hosts) on 127.0.0.1.

Async tests run the host in-process; tests of the *sync* API run it on its own thread
(``ThreadedHost``), since a sync call blocks the loop it is made from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any, cast

import pytest
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelConnectionError,
    ModelInvalidRequestError,
    ModelRateLimitError,
    ModelTimeoutError,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool
from pydantic import BaseModel
from websockets.asyncio.server import ServerConnection

from langchain_fabstir import _compat
from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.errors import (
    ConnectionFailedError,
    ImageInputsNotSupportedError,
    InvalidImageError,
    InvalidRequestError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    StreamChunkTimeoutError,
    TokenLimitExceededError,
)
from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost
from langchain_fabstir.host.engines import Engine
from langchain_fabstir.sessions.recovery import CONTINUE_PROMPT
from langchain_fabstir.wire.frames import InferenceRequest
from tests import sidecars
from tests._support.wire import raw_host
from tests.conftest import ThreadedHost

WAIT = 5.0  # seconds to wait for an event that should come at once


class Host(ReferenceHost):
    """A reference host that counts the prompts it handles (rate-limited ones too),
    signals the first one, and can hide its extensions (``features=[]``)."""

    def __init__(self, engine: Engine, *, features: Sequence[str] | None = None, **kw: Any) -> None:
        kw.setdefault("rate_limit_per_minute", None)
        super().__init__(engine, **kw)
        self._features = None if features is None else list(features)
        self.prompts = 0
        self.prompt_started = asyncio.Event()

    def features(self) -> list[str]:
        return super().features() if self._features is None else list(self._features)

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def run_prompt(self, conn: Any, request: InferenceRequest, rid: str | None) -> None:
        self.prompts += 1
        self.prompt_started.set()
        await super().run_prompt(conn, request, rid)


def slow_filler() -> EchoEngine:
    """An engine that goes on for as long as it is allowed to (5000 tokens)."""
    return EchoEngine(["tok "], fill=True, delay=0.002)


async def wait_cancel(host: ReferenceHost) -> None:
    await asyncio.wait_for(host.cancel_seen.wait(), WAIT)


def dead_url() -> str:
    """The URL of a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def chunk_frame(rid: str, content: str, tokens: int = 1) -> str:
    return json.dumps({"type": "stream_chunk", "content": content, "tokens": tokens, "id": rid})


# --- stop sequences -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "stop", "received"),
    [
        (["hello ", "world", " and more"], "world", 2),  # the stop sequence in one chunk
        (["hello ", "wor", "ld", " and more"], "world", 3),  # split across two chunks
        (["hello wo", "rld and more"], "world", 2),  # split inside chunks
    ],
)
async def test_stop_sequence_cuts_text_cancels_and_keeps_socket(
    script: list[str], stop: str, received: int
) -> None:
    async with Host(EchoEngine([*script, *["pad "] * 200], delay=0.002)) as host:
        llm = ChatFabstir(host_url=host.url, stop=[stop], max_tokens=300)
        chunks = [c async for c in llm.astream("go")]
        text = "".join(str(c.content) for c in chunks)
        assert text == "hello "
        assert chunks[-1].response_metadata["finish_reason"] == "stop"
        # Usage of a stopped answer: the tokens received before it was cut.
        assert chunks[-1].usage_metadata == {
            "input_tokens": 0,
            "output_tokens": received,
            "total_tokens": received,
        }
        await wait_cancel(host)
        assert host.received_cancels == 1
        first_session = chunks[-1].response_metadata["session_id"]
        # The next call goes through the same session and socket; stale frames of the
        # cancelled answer do not leak into it.
        host.engine = EchoEngine()
        msg = await llm.ainvoke("next")
        assert msg.content == "Echo: next"
        assert msg.response_metadata["session_id"] == first_session
        assert len(host.connections) == 1


async def test_per_call_stop_overrides_and_ainvoke(echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=echo_host.url, stop=["never"])
    msg = await llm.ainvoke("alpha beta gamma", stop=["gam"])
    assert msg.content == "Echo: alpha beta "
    msg = await llm.ainvoke("alpha beta gamma")
    assert msg.content == "Echo: alpha beta gamma"
    # Text held back as a possible start of a stop sequence is released at the end.
    msg = await llm.ainvoke("ends with x", stop=["xy"])
    assert msg.content == "Echo: ends with x"


# --- cancellation -------------------------------------------------------------------


async def test_aclosing_astream_sends_stream_cancel() -> None:
    async with Host(slow_filler()) as host:
        llm = ChatFabstir(host_url=host.url, max_tokens=5000)
        got: list[str] = []
        stream = cast(AsyncGenerator[AIMessageChunk, None], llm.astream("go"))
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                got.append(str(chunk.content))
                if len(got) == 3:
                    break
        await wait_cancel(host)
        assert got == ["tok "] * 3 and host.received_cancels == 1


async def test_plain_break_out_of_astream_sends_stream_cancel() -> None:
    async with Host(slow_filler()) as host:
        llm = ChatFabstir(host_url=host.url, max_tokens=5000)
        async for _chunk in llm.astream("go"):
            break
        await wait_cancel(host)
        assert host.received_cancels == 1
        host.engine = EchoEngine()
        assert (await llm.ainvoke("after")).content == "Echo: after"


async def test_cancelling_the_ainvoke_task_sends_stream_cancel() -> None:
    async with Host(slow_filler()) as host:
        llm = ChatFabstir(host_url=host.url, max_tokens=5000)
        task = asyncio.create_task(llm.ainvoke("go"))
        await asyncio.wait_for(host.prompt_started.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_cancel(host)
        assert host.received_cancels == 1
        host.engine = EchoEngine()
        assert (await llm.ainvoke("after")).content == "Echo: after"


@pytest.fixture
def threaded_slow_host() -> Iterator[ThreadedHost]:
    th = ThreadedHost(Host(slow_filler()))
    yield th
    th.stop()


def test_sync_stream_break_sends_stream_cancel(threaded_slow_host: ThreadedHost) -> None:
    host = threaded_slow_host.host
    llm = ChatFabstir(host_url=host.url, max_tokens=5000)
    got = []
    for chunk in llm.stream("go"):
        got.append(chunk.content)
        if len(got) == 2:
            break
    asyncio.run_coroutine_threadsafe(wait_cancel(host), threaded_slow_host.loop).result(WAIT)
    assert host.received_cancels == 1


# --- timeouts -----------------------------------------------------------------------


def stalling_host(prompts: list[str]) -> Callable[[ServerConnection, dict[str, Any], int], Any]:
    """A host that sends one token of every answer and then nothing."""

    async def stall(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        prompts.append(msg["request"]["prompt"])
        await ws.send(chunk_frame(msg["id"], "partial "))

    return stall


async def test_host_stalling_mid_answer_is_a_stream_chunk_timeout() -> None:
    prompts: list[str] = []
    async with raw_host(stalling_host(prompts)) as raw:
        url = raw.url
        llm = ChatFabstir(
            host_url=url,
            timeout=5,
            stream_chunk_timeout=0.2,
            max_retries=1,
        )
        got: list[str] = []
        with pytest.raises(StreamChunkTimeoutError) as info:
            async for chunk in llm.astream("go"):
                got.append(str(chunk.content))
    err = info.value
    # The retry after the first token continues the answer (it does not start over):
    # one continuation, whose "partial " restates what the consumer has (dropped: no
    # progress), so max_retries=1 ends it and the last failure surfaces.
    assert got == ["partial "]
    assert isinstance(err, ModelTimeoutError) and isinstance(err, TimeoutError)
    assert err.code == "STREAM_CHUNK_TIMEOUT" and err.is_retryable
    assert prompts == ["go", CONTINUE_PROMPT]


async def test_host_that_keeps_stalling_ends_in_a_timeout_error() -> None:
    prompts: list[str] = []
    async with raw_host(stalling_host(prompts)) as raw:
        url = raw.url
        llm = ChatFabstir(host_url=url, timeout=1, stream_chunk_timeout=0.1, max_retries=2)
        with pytest.raises(ModelTimeoutError) as info:
            async with _compat.timeout(6):  # a bounded give-up takes well under this
                async for _chunk in llm.astream("go"):
                    pass
    # Recovery (reconnect and continue) is tried a bounded number of times, then the
    # inactivity timeout surfaces: not the guard's own timeout. Every continuation only
    # restates "partial " (no progress): 1 + max_retries prompts in all.
    assert isinstance(info.value, StreamChunkTimeoutError)
    assert len(prompts) == 1 + 2


async def test_slow_host_answer_is_resumed_after_an_inactivity_timeout() -> None:
    engine = EchoEngine(["a ", "b ", "c "], delay=0.6)
    async with Host(engine) as host:
        llm = ChatFabstir(host_url=host.url, timeout=3, stream_chunk_timeout=0.2)
        text = "".join([str(c.content) async for c in llm.astream("go")])
    assert text == "a b c "
    assert host.resumes >= 1


async def test_host_that_never_answers_is_a_first_token_timeout() -> None:
    prompts: list[str] = []

    async def silent(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        prompts.append(msg["id"])

    async with raw_host(silent) as raw:
        url = raw.url
        llm = ChatFabstir(host_url=url, timeout=0.3, max_retries=1)
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError) as info:
            await llm.ainvoke("hello?")
        assert time.monotonic() - started < 5
    assert type(info.value) is ResponseTimeoutError
    assert info.value.code == "RESPONSE_TIMEOUT"
    assert isinstance(info.value, ModelTimeoutError) and isinstance(info.value, TimeoutError)
    # Not retried: the host may still be working on the prompt (a resend could be billed
    # twice); the caller decides.
    assert len(prompts) == 1


# --- errors -------------------------------------------------------------------------


async def test_token_limit_is_context_overflow_and_not_retried() -> None:
    async with Host(EchoEngine(context_window=30)) as host:
        llm = ChatFabstir(host_url=host.url, max_retries=3)
        with pytest.raises(TokenLimitExceededError) as info:
            await llm.ainvoke("word " * 60)
    assert isinstance(info.value, ContextOverflowError)
    assert not info.value.is_retryable and info.value.code == "TOKEN_LIMIT_EXCEEDED"
    assert info.value.details["context_window_size"] == 30
    assert host.prompts == 1


async def test_rate_limit_longer_than_max_retry_after_is_not_waited() -> None:
    # The reference host asks for ~60 s, longer than session_config.max_retry_after (30 s):
    # the error is raised at once (a longer wait is the caller's decision), not retried.
    async with Host(EchoEngine(), rate_limit_per_minute=1) as host:
        llm = ChatFabstir(host_url=host.url, max_retries=2)
        assert (await llm.ainvoke("first")).content == "Echo: first"
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as info:
            await llm.ainvoke("second")
        assert time.monotonic() - started < 10
    assert isinstance(info.value, ModelRateLimitError) and info.value.is_retryable
    assert info.value.retry_after is not None and info.value.retry_after > 30
    assert host.prompts == 1 + 1  # the first call, then one try


async def test_rate_limit_retry_waits_at_least_retry_after() -> None:
    prompts: list[float] = []

    async def limited_once(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        prompts.append(time.monotonic())
        rid = msg["id"]
        if len(prompts) == 1:
            await ws.send(
                json.dumps(
                    {"type": "error", "error": "Rate limit exceeded, retry after 1.5 seconds"}
                )
            )
            await ws.send(json.dumps({"type": "stream_end", "reason": "error", "id": rid}))
            return
        await ws.send(chunk_frame(rid, "ok"))
        await ws.send(json.dumps({"type": "stream_end", "reason": "complete", "id": rid}))

    async with raw_host(limited_once) as raw:
        url = raw.url
        msg = await ChatFabstir(host_url=url, max_retries=2).ainvoke("hi")
    assert msg.content == "ok"
    assert len(prompts) == 2
    # Exponential backoff alone would wait at most 1.2 s before the first retry.
    assert prompts[1] - prompts[0] >= 1.5


async def test_unreachable_host_is_model_connection_error() -> None:
    llm = ChatFabstir(host_url=dead_url(), max_retries=0)
    with pytest.raises(ConnectionFailedError) as info:
        await llm.ainvoke("hi")
    assert isinstance(info.value, ModelConnectionError) and info.value.code == "HOST_UNREACHABLE"


async def test_empty_prompt_is_invalid_request(echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=echo_host.url)
    with pytest.raises(InvalidRequestError) as info:
        await llm.ainvoke("")
    assert isinstance(info.value, ModelInvalidRequestError)
    assert info.value.code == "INVALID_REQUEST" and not info.value.is_retryable


@pytest.mark.parametrize("garbage", ["not json at all", '{"type":"stream_chunk","content":7}'])
async def test_garbage_frames_are_protocol_errors(garbage: str) -> None:
    async def junk(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        await ws.send(garbage)

    async with raw_host(junk) as raw:
        url = raw.url
        with pytest.raises(ProtocolError) as info:
            await ChatFabstir(host_url=url, max_retries=0).ainvoke("hello?")
    assert isinstance(info.value, ModelAPIError) and info.value.code == "PROTOCOL_ERROR"


async def test_failover_to_the_next_host(echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=[dead_url(), echo_host.url], max_retries=1)
    msg = await llm.ainvoke("still here")
    assert msg.content == "Echo: still here"
    assert msg.response_metadata["host_url"] == echo_host.url


# --- sync API inside a running loop (notebooks) ---------------------------------------


async def test_sync_api_inside_a_running_event_loop(
    threaded_echo_host: ReferenceHost,
) -> None:
    asyncio.get_running_loop()  # this test body runs inside a loop, as a notebook cell does
    llm = ChatFabstir(host_url=threaded_echo_host.url)
    assert llm.invoke("from a notebook").content == "Echo: from a notebook"
    assert "".join(str(c.content) for c in llm.stream("streamed too")) == "Echo: streamed too"
    answers = llm.batch(["one", "two", "three"])
    assert [m.content for m in answers] == ["Echo: one", "Echo: two", "Echo: three"]


# --- metadata -----------------------------------------------------------------------


def check_stream_metadata(chunks: list[AIMessageChunk], host: ReferenceHost, prompt: str) -> None:
    engine = host.engine
    assert isinstance(engine, EchoEngine)
    messages = [{"role": "user", "content": prompt}]
    expected_out = len(engine.plan(messages, 500))
    expected_in = engine.count_prompt_tokens(messages)
    with_usage = [c for c in chunks if c.usage_metadata is not None]
    assert len(with_usage) == 1
    assert with_usage[0].usage_metadata == {
        "input_tokens": expected_in,
        "output_tokens": expected_out,
        "total_tokens": expected_in + expected_out,
    }
    assert [c.chunk_position for c in chunks].count("last") == 1
    last = chunks[-1]
    assert last.chunk_position == "last"
    meta = last.response_metadata
    assert meta["model_name"] == "echo" and meta["model_provider"] == "fabstir"
    assert meta["finish_reason"] == "stop" and meta["host_url"] == host.url
    assert meta["session_id"]
    full = sum(chunks[1:], chunks[0])
    assert full.content == f"Echo: {prompt}"
    assert full.usage_metadata == with_usage[0].usage_metadata


async def test_astream_usage_on_exactly_one_chunk_and_metadata(
    echo_host: ReferenceHost,
) -> None:
    llm = ChatFabstir(host_url=echo_host.url)
    chunks = [c async for c in llm.astream("count these words")]
    assert len(chunks) >= 4  # streamed token by token
    check_stream_metadata(chunks, echo_host, "count these words")
    msg = await llm.ainvoke("count these words")
    assert msg.usage_metadata == chunks[-1].usage_metadata
    assert msg.response_metadata["finish_reason"] == "stop"


def test_sync_stream_usage_on_exactly_one_chunk(threaded_echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=threaded_echo_host.url)
    chunks = list(llm.stream("sync words here"))
    check_stream_metadata(chunks, threaded_echo_host, "sync words here")


async def test_length_finish_reason(echo_host: ReferenceHost) -> None:
    msg = await ChatFabstir(host_url=echo_host.url, max_tokens=2).ainvoke("a b c d")
    assert msg.content == "Echo: a "
    assert msg.response_metadata["finish_reason"] == "length"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 2


# --- messages -----------------------------------------------------------------------


async def test_messages_map_onto_conversation_context(echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=echo_host.url)
    history: list[BaseMessage] = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Paris?"),
        AIMessage(
            "",
            tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}],
        ),
        ToolMessage("sunny", tool_call_id="call_1", name="get_weather"),
        AIMessage("It is sunny."),
        HumanMessage("And tomorrow?"),
    ]
    msg = await llm.ainvoke(history)
    assert msg.content == "Echo: And tomorrow?"
    req = echo_host.requests[-1]
    assert req.prompt == "And tomorrow?"
    context = [(m.role, m.content) for m in req.conversation_context]
    envelope = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert context == [
        ("system", "Be brief."),
        ("user", "Weather in Paris?"),
        ("assistant", json.dumps(envelope)),
        ("user", "Result of tool get_weather (call call_1): sunny"),
        ("assistant", "It is sunny."),
    ]
    # A tool result as the last message is the prompt itself.
    await llm.ainvoke(history[:4])
    assert echo_host.requests[-1].prompt == "Result of tool get_weather (call call_1): sunny"


async def test_image_content_is_refused(echo_host: ReferenceHost) -> None:
    """Images a host cannot take are refused before anything is sent: data that is not an
    image, and any image for a host without vision (``tests/integration_tests/test_vision.py``
    has the rest); other media are refused as text-only."""
    llm = ChatFabstir(host_url=echo_host.url)
    image = HumanMessage(
        content=[
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]
    )
    before = len(echo_host.requests)
    with pytest.raises(InvalidImageError):
        await llm.ainvoke([image])
    png = base64.b64encode(sidecars.png(1, 1)).decode()
    image.content[1]["image_url"]["url"] = "data:image/png;base64," + png  # type: ignore[index]
    with pytest.raises(ImageInputsNotSupportedError):
        await llm.ainvoke([image])
    audio = HumanMessage(content=[{"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}])
    with pytest.raises(ValueError, match="text only"):
        await llm.ainvoke([audio])
    assert len(echo_host.requests) == before  # nothing was sent


# --- tools and structured output ----------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"sunny in {city}"


def weather_call(args: str) -> list[str]:
    """A tool-call envelope as an echo script, cut into uneven pieces."""
    text = '{"tool_calls": [{"name": "get_weather", "arguments": ' + args + "}]}"
    return [text[i : i + 7] for i in range(0, len(text), 7)]


async def test_tool_call_through_the_tools_extension() -> None:
    async with Host(EchoEngine(weather_call('{"city": "Paris"}'))) as host:
        llm = ChatFabstir(host_url=host.url).bind_tools([get_weather], tool_choice="any")
        msg = await llm.ainvoke("Weather in Paris?")
        assert [(c["name"], c["args"]) for c in msg.tool_calls] == [
            ("get_weather", {"city": "Paris"})
        ]
        assert msg.tool_calls[0]["id"] and msg.content == ""
        req = host.requests[-1]
        assert req.tools and req.tools[0]["function"]["name"] == "get_weather"
        assert req.tool_choice == "any"
        # Streaming: tool call chunks arrive with the last chunk; they add up to the call.
        chunks = [c async for c in llm.astream("Weather in Paris?")]
        full = sum(chunks[1:], chunks[0])
        assert isinstance(full, AIMessageChunk)
        assert [(c["name"], c["args"]) for c in full.tool_calls] == [
            ("get_weather", {"city": "Paris"})
        ]


async def test_invalid_tool_arguments_become_invalid_tool_calls() -> None:
    async with Host(EchoEngine(weather_call('{"city": 5}'))) as host:
        llm = ChatFabstir(host_url=host.url).bind_tools([get_weather])
        msg = await llm.ainvoke("Weather?")
    assert msg.tool_calls == []
    assert len(msg.invalid_tool_calls) == 1
    bad = msg.invalid_tool_calls[0]
    assert bad["name"] == "get_weather" and "should be string" in (bad["error"] or "")


async def test_truncated_envelope_becomes_invalid_tool_call() -> None:
    async with Host(EchoEngine(weather_call('{"city": "Paris"}')[:4])) as host:
        msg = await ChatFabstir(host_url=host.url).bind_tools([get_weather]).ainvoke("W?")
    assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1


async def test_tool_calls_on_a_host_without_the_tools_extension() -> None:
    async with Host(EchoEngine(weather_call('{"city": "Oslo"}')), features=[]) as host:
        llm = ChatFabstir(host_url=host.url).bind_tools([get_weather], tool_choice="any")
        msg = await llm.ainvoke([SystemMessage("Be helpful."), HumanMessage("Oslo weather?")])
        req = host.requests[-1]
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert req.tools is None  # not announced, so not sent
    # The instructions join the system message (hosts read only the last few context
    # messages; system messages are always kept).
    first = req.conversation_context[0]
    assert first.role == "system" and first.content.startswith("Be helpful.\n\nYou can call")
    assert "get_weather" in first.content and "You must call a tool." in first.content
    assert len(req.conversation_context) == 1


async def test_plain_text_answer_with_tools_bound_is_content() -> None:
    async with Host(EchoEngine(["It is ", "sunny."]), features=[]) as host:
        msg = await ChatFabstir(host_url=host.url).bind_tools([get_weather]).ainvoke("Hi")
    assert msg.content == "It is sunny." and msg.tool_calls == []


class Joke(BaseModel):
    setup: str
    punchline: str


JOKE = [
    '{"setup": "Why did the cat ',
    'sit on the computer?", ',
    '"punchline": "To keep an eye on the mouse."}',
]


async def test_structured_output_json_schema() -> None:
    async with Host(EchoEngine(JOKE)) as host:
        llm = ChatFabstir(host_url=host.url)
        joke = await llm.with_structured_output(Joke).ainvoke("A cat joke")
        assert isinstance(joke, Joke) and joke.punchline == "To keep an eye on the mouse."
        fmt = host.requests[-1].response_format
        assert fmt is not None and fmt["type"] == "json_schema"
        assert fmt["json_schema"]["schema"]["additionalProperties"] is False
        raw = await llm.with_structured_output(Joke, include_raw=True).ainvoke("again")
        assert isinstance(raw, dict)
        assert isinstance(raw["raw"], AIMessage) and raw["parsing_error"] is None
        assert isinstance(raw["parsed"], Joke)


async def test_structured_output_function_calling_and_json_mode() -> None:
    envelope = '{"tool_calls": [{"name": "Joke", "arguments": ' + "".join(JOKE) + "}]}"
    async with Host(EchoEngine([envelope])) as host:
        joke = (
            await ChatFabstir(host_url=host.url)
            .with_structured_output(Joke, method="function_calling")
            .ainvoke("A cat joke")
        )
        assert isinstance(joke, Joke) and joke.setup.startswith("Why did the cat")
        assert host.requests[-1].tool_choice == "Joke"
    async with Host(EchoEngine(JOKE)) as host:
        data = (
            await ChatFabstir(host_url=host.url)
            .with_structured_output(Joke, method="json_mode")
            .ainvoke("A cat joke")
        )
        assert isinstance(data, dict) and set(data) == {"setup", "punchline"}
        assert host.requests[-1].response_format == {"type": "json_object"}


async def test_structured_output_on_a_host_without_response_format() -> None:
    async with Host(EchoEngine(JOKE), features=[]) as host:
        joke = await ChatFabstir(host_url=host.url).with_structured_output(Joke).ainvoke("Joke")
        req = host.requests[-1]
    assert isinstance(joke, Joke)
    assert req.response_format is None
    first = req.conversation_context[0]
    assert first.role == "system" and first.content.startswith("Reply with one JSON object")
    assert '"punchline"' in first.content


# --- history and concurrency --------------------------------------------------------


async def test_runnable_with_message_history_stores_streamed_chunks(
    echo_host: ReferenceHost,
) -> None:
    store: dict[str, InMemoryChatMessageHistory] = {}

    def history(session_id: str) -> InMemoryChatMessageHistory:
        return store.setdefault(session_id, InMemoryChatMessageHistory())

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | ChatFabstir(host_url=echo_host.url),
        history,
        input_messages_key="question",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "u1"}}
    first = "".join([str(c.content) async for c in chain.astream({"question": "hi"}, config)])
    assert first == "Echo: hi"
    stored = store["u1"].messages
    assert [type(m) for m in stored] == [HumanMessage, AIMessageChunk]
    assert stored[1].content == "Echo: hi"
    second = await chain.ainvoke({"question": "again"}, config)
    assert second.content == "Echo: again"
    context = [(m.role, m.content) for m in echo_host.requests[-1].conversation_context]
    assert context == [("system", "Be brief."), ("user", "hi"), ("assistant", "Echo: hi")]
    assert len(store["u1"].messages) == 4


async def test_abatch_of_twenty_on_one_model(echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=echo_host.url)
    prompts: list[LanguageModelInput] = [f"question {i}" for i in range(20)]
    answers = await llm.abatch(prompts)
    assert [m.content for m in answers] == [f"Echo: {p}" for p in prompts]
    sessions = {m.response_metadata["session_id"] for m in answers}
    assert len(sessions) > 1  # concurrent calls each took their own session
    # A second round reuses the pooled sessions instead of opening new ones.
    again = await llm.abatch(prompts)
    assert [m.content for m in again] == [f"Echo: {p}" for p in prompts]
    assert {m.response_metadata["session_id"] for m in again} <= sessions


# --- the real model -------------------------------------------------------------------


@pytest.mark.llama
async def test_real_model_streams_and_calls_a_tool(llama_engine: LlamaEngine) -> None:
    async with Host(llama_engine) as host:
        llm = ChatFabstir(host_url=host.url, temperature=0.0, max_tokens=40)
        chunks = [c async for c in llm.astream("Name a colour.")]
        assert len(chunks) > 2 and "".join(str(c.content) for c in chunks).strip()
        assert sum(1 for c in chunks if c.usage_metadata) == 1
        msg = await llm.bind_tools([get_weather], tool_choice="any").ainvoke(
            "What is the weather in Paris?"
        )
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"].get("city"), str)
