"""Reasoning apart from the answer (issue 23 item 3), end to end: ``ChatFabstir`` against
the reference host with the ``openai`` engine in front of a scripted OpenAI-compatible
upstream on 127.0.0.1 (``tests/openai_upstream.py``) whose model writes think tags, split
across tokens as a tokenizer would; the host passes them through as a node does
(``PROTOCOL.md`` 6.6). Plaintext and encrypted sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from pydantic import ValidationError

from langchain_fabstir import SessionConfig
from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.errors import InvalidRequestError
from langchain_fabstir.host import EchoEngine, OpenAIEngine, ReferenceHost
from tests.faults.proxy import CutAfterFrames, FaultProxy
from tests.openai_upstream import OpenAIUpstream

HOST_KEY = "0x" + "3d" * 32
WAIT = 30.0
MODES = ["plaintext", "encrypted"]

THINKING = ["<th", "ink>", "\n", "The user", " asks 2+2", ".\n", "</", "think>", "\n\n"]
ANSWER = ["The answer", " is 4."]
RAW = "".join(THINKING + ANSWER)
REASONING_TEXT = "The user asks 2+2.\n"
ANSWER_TEXT = "The answer is 4."


@asynccontextmanager
async def thinking_host(
    mode: str, script: Sequence[str] = (*THINKING, *ANSWER), **kw: Any
) -> AsyncIterator[ReferenceHost]:
    async with OpenAIUpstream(EchoEngine(script=list(script))) as upstream:
        async with OpenAIEngine(upstream.url, **kw) as engine:
            key = HOST_KEY if mode == "encrypted" else None
            async with ReferenceHost(engine, rate_limit_per_minute=None, host_key=key) as host:
                yield host


@pytest.fixture(params=MODES)
async def host(request: pytest.FixtureRequest) -> AsyncIterator[ReferenceHost]:
    async with thinking_host(request.param) as h:
        yield h


def _encrypted(host: ReferenceHost) -> bool:
    return host.host_public_key is not None


async def _astream(llm: Any, prompt: Any, **kw: Any) -> list[AIMessageChunk]:
    return [chunk async for chunk in llm.astream(prompt, **kw)]


def _merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    return merged


async def test_invoke_returns_the_reasoning_apart(host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=host.url, reasoning=True)
    msg = await llm.ainvoke("What is 2+2?")
    assert isinstance(msg, AIMessage)
    assert msg.content == ANSWER_TEXT
    assert msg.additional_kwargs["reasoning_content"] == REASONING_TEXT
    assert msg.content_blocks == [
        {"type": "reasoning", "reasoning": REASONING_TEXT},
        {"type": "text", "text": ANSWER_TEXT},
    ]
    assert host.requests[-1].thinking == "enabled"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 11
    assert msg.response_metadata["finish_reason"] == "stop"


async def test_astream_yields_reasoning_chunks_then_the_answer(host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=host.url, reasoning=True)
    chunks = await _astream(llm, "What is 2+2?")
    thoughts = [c for c in chunks if c.additional_kwargs.get("reasoning_content")]
    answers = [c for c in chunks if c.content]
    assert thoughts and answers
    assert all(c.content == "" for c in thoughts)
    assert "".join(c.additional_kwargs["reasoning_content"] for c in thoughts) == REASONING_TEXT
    assert "".join(str(c.content) for c in answers) == ANSWER_TEXT
    assert chunks.index(thoughts[-1]) < chunks.index(answers[0])
    # the reasoning came in several pieces, each as soon as it could not be a tag
    assert len(thoughts) >= 3
    assert sum(c.usage_metadata is not None for c in chunks) == 1
    merged = _merge(chunks)
    assert merged.content == ANSWER_TEXT
    assert merged.additional_kwargs["reasoning_content"] == REASONING_TEXT
    assert merged.content_blocks[0] == {"type": "reasoning", "reasoning": REASONING_TEXT}
    assert thoughts[0].content_blocks == [
        {"type": "reasoning", "reasoning": thoughts[0].additional_kwargs["reasoning_content"]}
    ]


async def test_stream_sync_matches_invoke(host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=host.url, reasoning=True)
    # the sync API in a thread, while this loop serves the host
    merged = _merge(await asyncio.to_thread(lambda: list(llm.stream("What is 2+2?"))))
    msg = await asyncio.to_thread(llm.invoke, "What is 2+2?")
    assert (merged.content, msg.content) == (ANSWER_TEXT, ANSWER_TEXT)
    assert (
        merged.additional_kwargs == msg.additional_kwargs == {"reasoning_content": REASONING_TEXT}
    )


async def test_reasoning_false_sends_disabled_and_drops_a_think_block(
    host: ReferenceHost,
) -> None:
    llm = ChatFabstir(host_url=host.url, reasoning=False)
    msg = await llm.ainvoke("What is 2+2?")
    assert host.requests[-1].thinking == "disabled"
    assert msg.content == ANSWER_TEXT
    assert "reasoning_content" not in msg.additional_kwargs
    chunks = await _astream(llm, "What is 2+2?")
    assert "".join(str(c.content) for c in chunks) == ANSWER_TEXT
    assert not any(c.additional_kwargs for c in chunks)


async def test_reasoning_none_leaves_the_text_as_written(host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=host.url, reasoning=True)
    msg = await llm.ainvoke("What is 2+2?", reasoning=None)  # per call, over the field
    assert host.requests[-1].thinking is None
    assert msg.content == RAW
    assert msg.additional_kwargs == {}
    chunks = await _astream(llm, "What is 2+2?", reasoning=None)
    assert "".join(str(c.content) for c in chunks) == RAW
    # model_kwargs' thinking is still sent as it is, the text still left alone
    llm = ChatFabstir(host_url=host.url, model_kwargs={"thinking": "low"})
    assert (await llm.ainvoke("What is 2+2?")).content == RAW
    assert host.requests[-1].thinking == "low"


async def test_per_call_reasoning_and_levels(host: ReferenceHost) -> None:
    llm = ChatFabstir(host_url=host.url)
    msg = await llm.ainvoke("What is 2+2?", reasoning="high")
    assert host.requests[-1].thinking == "high"
    assert (msg.content, msg.additional_kwargs["reasoning_content"]) == (
        ANSWER_TEXT,
        REASONING_TEXT,
    )
    msg = await llm.bind(reasoning=True).ainvoke("What is 2+2?")
    assert msg.content == ANSWER_TEXT and host.requests[-1].thinking == "enabled"
    # reasoning=True keeps a level given in model_kwargs
    llm = ChatFabstir(host_url=host.url, reasoning=True, model_kwargs={"thinking": "medium"})
    msg = await llm.ainvoke("What is 2+2?")
    assert msg.content == ANSWER_TEXT and host.requests[-1].thinking == "medium"


async def test_glm4_stream_without_an_opening_tag() -> None:
    """A GLM-4 node at thinking low|medium|high opens the think block in its prompt: the
    stream starts with reasoning and only ``</think>`` shows."""
    script = ["Two", " plus two", "</th", "ink>", "\n", "4"]
    async with thinking_host("plaintext", script=script) as host:
        llm = ChatFabstir(host_url=host.url, reasoning="medium")
        msg = await llm.ainvoke("2+2?")
        assert (msg.content, msg.additional_kwargs["reasoning_content"]) == ("4", "Two plus two")
        chunks = await _astream(llm, "2+2?")
        assert [c.additional_kwargs.get("reasoning_content") for c in chunks[:1]] == [
            "Two plus two"
        ]
        assert "".join(str(c.content) for c in chunks) == "4"


async def test_invalid_values_are_refused_before_anything_is_sent(host: ReferenceHost) -> None:
    with pytest.raises(ValidationError):
        ChatFabstir(host_url=host.url, reasoning="max")
    llm = ChatFabstir(host_url=host.url)
    sent = len(host.requests)
    for kw in (
        {"reasoning": "max"},
        {"thinking": "max"},
        {"model_kwargs": {"thinking": "extreme"}},
        {"reasoning": False, "thinking": "high"},
        {"reasoning": "low", "thinking": "high"},
        {"reasoning": True, "thinking": "disabled"},
    ):
        with pytest.raises(InvalidRequestError) as info:
            await llm.ainvoke("hi", **kw)
        assert info.value.code == "INVALID_REQUEST"
    assert len(host.requests) == sent


async def test_the_host_refuses_an_invalid_thinking_as_a_node_does() -> None:
    async with thinking_host("plaintext") as host:
        async with aiohttp.ClientSession() as http, http.ws_connect(host.ws_url) as ws:
            assert (await ws.receive_json(timeout=WAIT))["type"] == "connected"
            body = {"model": "echo", "prompt": "hi", "max_tokens": 8, "thinking": "max"}
            await ws.send_json({"type": "prompt", "request": body, "id": "p-1"})
            error = await ws.receive_json(timeout=WAIT)
            end = await ws.receive_json(timeout=WAIT)
        assert error == {
            "type": "error",
            "error": "Validation error for thinking: Invalid thinking mode 'max'. "
            "Valid: enabled, disabled, low, medium, high",
            "id": "p-1",
        }
        assert end["type"] == "stream_end" and end["reason"] == "error"
        assert not host.requests  # nothing ran
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{host.url}/v1/inference", json=body)
            assert resp.status == 400
            assert "Invalid thinking mode 'max'" in (await resp.json())["message"]


async def test_a_continued_conversation_matches_the_raw_answer_the_node_stored(
    host: ReferenceHost,
) -> None:
    """The node stores the raw answer (think block included); the client keeps the answer
    only. The next turn must still carry on the node's own history (encrypted: only the
    new message is sent), and what the model sees is the node's raw copy."""
    llm = ChatFabstir(host_url=host.url, reasoning=True)
    messages: list[Any] = [HumanMessage("zz-one")]
    for word in ("zz-two", "zz-three"):
        reply = await llm.ainvoke(messages)
        assert reply.content == ANSWER_TEXT
        messages += [reply, HumanMessage(word)]
    await llm.ainvoke(messages)
    seen = host.model_inputs[-1]
    assert seen[-1] == {"role": "user", "content": "zz-three"}  # not inlined
    assert "[Conversation so far]" not in str(seen)
    if _encrypted(host):
        # the node's own history: the raw answers it stored, reasoning included
        assert seen.count({"role": "assistant", "content": RAW}) == 2
    else:
        assert seen.count({"role": "assistant", "content": ANSWER_TEXT}) == 2


async def test_tools_and_structured_output_parse_the_answer_not_the_reasoning() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    envelope = '{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 2}}]}'
    script = ["<think>", 'I should call {"add"} ', "</think>", "\n", envelope]
    # response_format=False: the upstream constrains nothing, so the host announces no
    # ``tools``/``response_format`` and the client takes the prompt-based path.
    async with thinking_host("plaintext", script=script, response_format=False) as host:
        for reasoning in (None, True):
            llm = ChatFabstir(host_url=host.url, reasoning=reasoning).bind_tools([add])
            msg = await llm.ainvoke("2+2 with the tool")
            assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 2, "b": 2})]
            assert not msg.invalid_tool_calls
            if reasoning:
                assert msg.additional_kwargs["reasoning_content"] == 'I should call {"add"} '
                assert "<think>" not in str(msg.content)
    script = ["<think>", "Let me build it {", "</think>", '{"a": 1, "b": "x"}']
    async with thinking_host("plaintext", script=script, response_format=False) as host:
        for reasoning in (None, True, False):
            structured = ChatFabstir(host_url=host.url, reasoning=reasoning)
            out = await structured.with_structured_output(
                {"title": "Pair", "type": "object", "properties": {"a": {}, "b": {}}},
                method="json_mode",
            ).ainvoke("a pair")
            assert out == {"a": 1, "b": "x"}, reasoning


async def test_a_cut_in_the_middle_of_the_reasoning_resumes_it() -> None:
    """The socket drops while the model thinks: the answer resumes on the same host and
    the reasoning and the answer each come out once, in order, as without the cut."""
    script = ["<th", "ink>", *(f"r{i} " for i in range(60)), "</", "think>", "\n"]
    script += [f"a{i} " for i in range(40)]
    engine = EchoEngine(script, delay=0.001)
    async with ReferenceHost(engine, rate_limit_per_minute=None) as host:
        async with FaultProxy("127.0.0.1", host.port) as proxy:
            llm = ChatFabstir(
                host_url=f"http://127.0.0.1:{proxy.port}",
                max_tokens=200,
                reasoning=True,
                session_config=SessionConfig(compression_enabled=False),
            )
            clean = _merge(await _astream(llm, "go"))
            proxy.set_fault(CutAfterFrames(30), scope="current")  # within the reasoning
            chunks = await _astream(llm, "go")
            proxy.release()
    assert proxy.cut_happened.is_set() and host.resumes == 1
    merged = _merge(chunks)
    assert merged.additional_kwargs["reasoning_content"] == "".join(f"r{i} " for i in range(60))
    assert merged.content == "".join(f"a{i} " for i in range(40))
    assert (merged.content, merged.additional_kwargs) == (clean.content, clean.additional_kwargs)
    resumed = [c for c in chunks if "fabstir_resumed" in c.response_metadata]
    assert len(resumed) == 1 and resumed[0].additional_kwargs.get("reasoning_content")


async def test_stop_sequences_apply_to_the_answer_only() -> None:
    script = ["<think>", "I must not say ST", "OP yet", "</think>", "Go on", " ST", "OP here"]
    async with ReferenceHost(EchoEngine(script), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, reasoning=True, stop=["STOP"])
        msg = await llm.ainvoke("go")
        assert msg.additional_kwargs["reasoning_content"] == "I must not say STOP yet"
        assert msg.content == "Go on "
        assert msg.response_metadata["finish_reason"] == "stop"
        merged = _merge(await _astream(llm, "go"))
        assert (merged.content, merged.additional_kwargs) == (msg.content, msg.additional_kwargs)


async def test_v1_content_blocks_and_their_history(host: ReferenceHost) -> None:
    """``output_version="v1"``: the reasoning is a content block of the message, and the
    message goes back into the history as its answer (the block is not sent)."""
    llm = ChatFabstir(host_url=host.url, reasoning=True, output_version="v1")
    msg = await llm.ainvoke("zz-one")
    assert msg.content == [
        {"type": "reasoning", "reasoning": REASONING_TEXT},
        {"type": "text", "text": ANSWER_TEXT},
    ]
    await llm.ainvoke([HumanMessage("zz-one"), msg, HumanMessage("zz-two")])
    seen = host.model_inputs[-1]
    assert seen[-1] == {"role": "user", "content": "zz-two"}
    answer = RAW if _encrypted(host) else ANSWER_TEXT  # the node's own copy when encrypted
    assert {"role": "assistant", "content": answer} in seen
