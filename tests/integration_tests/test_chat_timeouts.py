"""ChatFabstir's timeouts against a slow reference host: ``timeout`` is the total deadline
of a call (as in langchain-openai), ``first_token_timeout`` only the wait for the first
frame; and every field is described."""

from __future__ import annotations

import time

import pytest
from langchain_core.exceptions import ModelTimeoutError

from langchain_fabstir import ChatFabstir
from langchain_fabstir._compat import timeout as bounded
from langchain_fabstir.errors import ResponseTimeoutError, StreamChunkTimeoutError
from langchain_fabstir.host import EchoEngine, ReferenceHost

TOKENS = 20
DELAY = 0.3  # a 20-token answer takes about 6 s


def slow_engine() -> EchoEngine:
    return EchoEngine([f"t{n} " for n in range(TOKENS)], delay=DELAY)


def test_every_field_has_a_description() -> None:
    missing = [name for name, field in ChatFabstir.model_fields.items() if not field.description]
    assert missing == []
    assert "Total deadline" in (ChatFabstir.model_fields["timeout"].description or "")
    assert "first frame" in (ChatFabstir.model_fields["first_token_timeout"].description or "")


async def test_timeout_bounds_the_whole_answer_of_invoke() -> None:
    async with ReferenceHost(slow_engine(), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, timeout=2)
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError) as info:
            async with bounded(10):
                await llm.ainvoke("go")
        elapsed = time.monotonic() - started
    err = info.value
    assert type(err) is ResponseTimeoutError  # not a (retried) STREAM_CHUNK_TIMEOUT
    assert err.code == "RESPONSE_TIMEOUT" and isinstance(err, ModelTimeoutError)
    assert 1.8 <= elapsed < 3.5, elapsed  # about 2 s, not the 6 s of the whole answer
    assert err.details["answer_timeout"] == 2
    assert err.details["partial_text"].startswith("t0 t1 ")


async def test_timeout_keeps_the_chunks_a_stream_already_yielded() -> None:
    async with ReferenceHost(slow_engine(), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, timeout=2)
        got: list[str] = []
        started = time.monotonic()
        with pytest.raises(ResponseTimeoutError) as info:
            async with bounded(10):
                async for chunk in llm.astream("go"):
                    got.append(str(chunk.content))
        elapsed = time.monotonic() - started
    assert not isinstance(info.value, StreamChunkTimeoutError)
    assert elapsed < 3.5, elapsed
    text = "".join(got)
    assert 3 <= len(text.split()) < TOKENS  # the first seconds' tokens, in order
    assert text == "".join(f"t{n} " for n in range(len(text.split())))


async def test_first_token_timeout_alone_does_not_bound_a_slow_answer() -> None:
    async with ReferenceHost(slow_engine(), rate_limit_per_minute=None) as host:
        llm = ChatFabstir(host_url=host.url, first_token_timeout=2)
        started = time.monotonic()
        async with bounded(20):
            msg = await llm.ainvoke("go")
        elapsed = time.monotonic() - started
    assert msg.content == "".join(f"t{n} " for n in range(TOKENS))
    assert elapsed > 2  # longer than first_token_timeout: it only bounds the first frame
    assert llm._config().first_token_timeout == 2


def test_timeouts_map_to_the_session_config() -> None:
    config = ChatFabstir(
        host_url="http://127.0.0.1:1", timeout=5, first_token_timeout=1, stream_chunk_timeout=3
    )._config()
    assert (config.answer_timeout, config.first_token_timeout, config.chunk_timeout) == (5, 1, 3)
    default = ChatFabstir(host_url="http://127.0.0.1:1")._config()
    assert default.answer_timeout == 900 and default.first_token_timeout == 60
    with pytest.raises(ValueError):
        ChatFabstir(host_url="http://127.0.0.1:1", timeout=0)
