"""What LangChain partner chat models offer, on ChatFabstir (issue 15): ``stream_usage``,
``profile`` from what the host announces, ``bind_tools`` options on both tool paths,
``model_kwargs`` for host fields, ``rate_limiter``/``disable_streaming``, and retries that
cover the whole answer. Real reference hosts on 127.0.0.1 (echo engine)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.rate_limiters import BaseRateLimiter
from langchain_core.tools import tool

from langchain_fabstir import _compat
from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.errors import InvalidRequestError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.engines import Engine
from langchain_fabstir.sessions.models import SessionConfig
from langchain_fabstir.sessions.recovery import CONTINUE_PROMPT
from tests.faults.proxy import CutAfterBytes, CutAfterFrames, FaultProxy
from tests.faults.test_resilience import SCRIPT, numbers


class Host(ReferenceHost):
    """A reference host without a rate limit that can hide extensions."""

    def __init__(self, engine: Engine, *, hide: Sequence[str] = (), **kw: Any) -> None:
        kw.setdefault("rate_limit_per_minute", None)
        super().__init__(engine, **kw)
        self.hide = set(hide)

    def features(self) -> list[str]:
        return [f for f in super().features() if f not in self.hide]


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


@tool
def get_time(city: str) -> str:
    """Time in a city."""
    return "noon"


def pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- stream_usage ---------------------------------------------------------------------


def usage_chunks(chunks: list[AIMessageChunk]) -> int:
    return sum(1 for c in chunks if c.usage_metadata)


async def test_stream_usage_field_and_per_call_option(echo_host: ReferenceHost) -> None:
    on = ChatFabstir(host_url=echo_host.url)
    off = ChatFabstir(host_url=echo_host.url, stream_usage=False)
    assert on.stream_usage is True  # the default, as ChatOpenAI's

    chunks = [c async for c in on.astream("one two three")]
    assert usage_chunks(chunks) == 1 and chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata["output_tokens"] == 4  # "Echo: one two three"

    assert usage_chunks([c async for c in off.astream("one two three")]) == 0
    assert usage_chunks([c async for c in on.astream("a b", stream_usage=False)]) == 0
    assert usage_chunks([c async for c in off.astream("a b", stream_usage=True)]) == 1
    # An answer that is not streamed always reports its usage.
    assert (await off.ainvoke("a b")).usage_metadata is not None
    with pytest.raises(ValueError, match="stream_usage"):
        [c async for c in on.astream("a", stream_usage="yes")]


def test_stream_usage_sync(threaded_echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=threaded_echo_host.url, stream_usage=False)
    assert usage_chunks(list(llm.stream("x y"))) == 0
    assert usage_chunks(list(llm.stream("x y", stream_usage=True))) == 1


# --- profile ----------------------------------------------------------------------------


async def test_profile_from_what_the_host_announces() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unrecognized profile keys" warning
        llm = ChatFabstir(host_url="http://127.0.0.1:1")
    profile = llm.profile
    assert profile is not None
    assert profile["tool_calling"] is True and profile["image_inputs"] is False
    assert profile["text_inputs"] is True and profile["pdf_inputs"] is False
    assert "max_input_tokens" not in profile  # nobody has been asked yet

    # Up front, from /v1/version and /v1/models.
    async with Host(EchoEngine(context_window=4096, model_id="echo-4k")) as host:
        llm = ChatFabstir(host_url=host.url)
        got = await llm.afetch_profile()
        assert got is llm.profile
        assert got["max_input_tokens"] == 4096 and got["max_output_tokens"] == 4096
        assert got["structured_output"] is True  # the host announces response_format
        assert got["name"] == "Echo (deterministic test engine)"

    # Without asking: the first answer's usage and the greeting's features fill it.
    async with Host(EchoEngine(context_window=2048), hide=["response_format"]) as host:
        llm = ChatFabstir(host_url=host.url)
        await llm.ainvoke("hello")
        assert llm.profile is not None
        assert llm.profile["max_input_tokens"] == 2048
        assert llm.profile["structured_output"] is False

        # A profile the user gives is theirs: never overwritten.
        mine = ChatFabstir(host_url=host.url, profile={"max_input_tokens": 100})
        await mine.ainvoke("hello")
        assert await mine.afetch_profile() == {"max_input_tokens": 100}


# --- bind_tools options ---------------------------------------------------------------


def test_bind_tools_refuses_bad_option_values() -> None:
    llm = ChatFabstir(host_url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="parallel_tool_calls must be"):
        llm.bind_tools([get_weather], parallel_tool_calls="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strict must be"):
        llm.bind_tools([get_weather], strict=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names no bound tool"):
        llm.bind_tools([get_weather], tool_choice="get_time")


async def test_bind_tools_options_on_the_tools_extension_path() -> None:
    two = json.dumps(
        {
            "tool_calls": [
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_time", "arguments": {"city": "Oslo"}},
            ]
        }
    )
    async with Host(EchoEngine(pieces(two))) as host:
        llm = ChatFabstir(host_url=host.url)
        msg = await llm.bind_tools(
            [get_weather, get_time], tool_choice="any", parallel_tool_calls=True, strict=True
        ).ainvoke("Weather in Paris and time in Oslo?")
        req = host.requests[-1]
        assert req.tool_choice == "any" and (req.model_extra or {})["parallel_tool_calls"]
        assert [c["name"] for c in msg.tool_calls] == ["get_weather", "get_time"]
        # The default is one call per answer (the host's grammar allows one).
        msg = await llm.bind_tools([get_weather, get_time]).ainvoke("W?")
        assert [c["name"] for c in msg.tool_calls] == ["get_weather"]


async def test_bind_tools_options_on_the_prompt_path() -> None:
    async with Host(EchoEngine(["It ", "is ", "sunny."]), hide=["tools"]) as host:
        llm = ChatFabstir(host_url=host.url, max_retries=3)
        # strict=True cannot be kept by a host that does not constrain decoding: refused.
        with pytest.raises(InvalidRequestError) as info:
            await llm.bind_tools([get_weather], strict=True).ainvoke("W?")
        assert info.value.code == "INVALID_REQUEST" and not info.value.is_retryable
        assert "strict=True" in info.value.message and "'tools'" in info.value.message
        assert host.requests == type(host.requests)()  # refused before any prompt
        # A forced tool_choice the model ignored is reported, not passed off as an answer.
        msg = await llm.bind_tools([get_weather], tool_choice="get_weather").ainvoke("W?")
        assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1
        assert "tool_choice required a call of get_weather" in str(
            msg.invalid_tool_calls[0]["error"]
        )
        # strict=False / None ask for nothing the path cannot keep.
        msg = await llm.bind_tools([get_weather], strict=False).ainvoke("W?")
        assert msg.content == "It is sunny."

    call = {"name": "get_time", "arguments": {"city": "Oslo"}}
    text = json.dumps({"tool_calls": [call, {**call, "name": "get_weather"}]})
    async with Host(EchoEngine(pieces(text)), hide=["tools"]) as host:
        llm = ChatFabstir(host_url=host.url)
        msg = await llm.bind_tools([get_weather, get_time], parallel_tool_calls=True).ainvoke(
            "both"
        )
        assert [c["name"] for c in msg.tool_calls] == ["get_time", "get_weather"]
        msg = await llm.bind_tools(
            [get_weather, get_time], tool_choice="get_weather", parallel_tool_calls=True
        ).ainvoke("weather only")
        assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
        assert "not a tool tool_choice allows" in str(msg.invalid_tool_calls[0]["error"])


# --- model_kwargs ---------------------------------------------------------------------


async def test_model_kwargs_reach_the_request_and_unknown_keys_are_refused(
    echo_host: ReferenceHost,
) -> None:
    llm = ChatFabstir(
        host_url=echo_host.url,
        model_kwargs={"thinking": "high", "web_search": True, "max_searches": 2},
    )
    await llm.ainvoke("hi")
    req = echo_host.requests[-1]
    assert (req.thinking, req.web_search, req.max_searches) == ("high", True, 2)
    await llm.ainvoke("hi", thinking="low", search_queries=["fabstir"])
    req = echo_host.requests[-1]
    assert (req.thinking, req.search_queries, req.max_searches) == ("low", ["fabstir"], 2)
    await ChatFabstir(host_url=echo_host.url).ainvoke("hi")
    assert echo_host.requests[-1].thinking is None  # nothing unless asked

    with pytest.raises(ValueError, match=r"'top_p' is not a request field.*allowed: max_searches"):
        ChatFabstir(host_url=echo_host.url, model_kwargs={"top_p": 0.9})
    with pytest.raises(ValueError, match="Use the temperature= parameter"):
        ChatFabstir(host_url=echo_host.url, model_kwargs={"temperature": 0.1})
    with pytest.raises(ValueError, match="'thinking' must be one of enabled"):
        ChatFabstir(host_url=echo_host.url, model_kwargs={"thinking": "max"})
    with pytest.raises(ValueError, match="'max_searches' must be an integer"):
        await llm.ainvoke("hi", max_searches=-1)


# --- rate_limiter and disable_streaming (inherited from BaseChatModel) ------------------


class CountingLimiter(BaseRateLimiter):
    """A real rate limiter that lets everything through and counts the requests."""

    def __init__(self) -> None:
        self.calls = 0

    def acquire(self, *, blocking: bool = True) -> bool:
        self.calls += 1
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        self.calls += 1
        return True


async def test_rate_limiter_is_consulted_once_per_request(echo_host: ReferenceHost) -> None:
    limiter = CountingLimiter()
    llm = ChatFabstir(host_url=echo_host.url, rate_limiter=limiter)
    await llm.ainvoke("a")
    [c async for c in llm.astream("b")]
    await llm.abatch(["c", "d"])
    assert limiter.calls == 4


async def test_disable_streaming(echo_host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=echo_host.url, disable_streaming=True)
    chunks = [c async for c in llm.astream("one two three")]
    assert len(chunks) == 1 and chunks[0].content == "Echo: one two three"
    assert chunks[0].usage_metadata is not None

    only_tools = ChatFabstir(host_url=echo_host.url, disable_streaming="tool_calling")
    assert len([c async for c in only_tools.astream("one two three")]) > 1
    bound = only_tools.bind_tools([get_weather])
    assert len([c async for c in bound.astream("one two three")]) == 1


# --- retries covering the whole answer ------------------------------------------------


@pytest.mark.timeout(60)
async def test_answer_broken_for_good_goes_on_at_the_next_host() -> None:
    """Host A is lost mid-answer (its socket cut, reconnects refused): the answer goes on
    as a continuation on host B; the consumer sees every piece once and no error."""
    async with (
        _compat.timeout(40),
        Host(EchoEngine(SCRIPT, delay=0.001)) as host_a,
        Host(EchoEngine()) as host_b,
        FaultProxy("127.0.0.1", host_a.port) as proxy,
    ):
        llm = ChatFabstir(
            host_url=[f"http://127.0.0.1:{proxy.port}", host_b.url],
            max_tokens=150,
            session_config=SessionConfig(compression_enabled=False, reconnect_attempts=1),
        )
        warm = "".join([str(c.content) async for c in llm.astream("go")])
        assert numbers(warm) == list(range(150))
        proxy.set_fault(CutAfterBytes(0), scope="new")  # host A is gone for good...
        proxy.set_fault(CutAfterFrames(40), scope="current")  # ...in the middle of this
        chunks = [c async for c in llm.astream("go")]
    text = "".join(str(c.content) for c in chunks)
    notes = [
        c.response_metadata["fabstir_resumed"]
        for c in chunks
        if c.response_metadata.get("fabstir_resumed")
    ]
    assert len(notes) == 1
    note = notes[0]
    assert (note["mode"], note["host_url"]) == ("continuation", host_b.url)
    k = note["offset"]
    assert 0 < k < 150
    assert numbers(text[: len("".join(SCRIPT[:k]))]) == list(range(k))
    assert text.endswith("Echo: " + CONTINUE_PROMPT)
    req = host_b.requests[-1]
    assert req.prompt == CONTINUE_PROMPT and req.max_tokens == 150 - k
    assert [m.role for m in req.conversation_context] == ["user", "assistant"]
    assert req.conversation_context[-1].content == "".join(SCRIPT[:k])
    last = chunks[-1]
    assert last.response_metadata["fabstir_resumes"][-1]["host_url"] == host_b.url
    assert last.usage_metadata is not None and last.usage_metadata["output_tokens"] >= k
