"""``ChatFabstir.astream`` per token, against the reference host (issue 22: client CPU per
token of ``astream`` over a bare socket). A host token becomes one chunk, built without
pydantic validation and as light as a chunk can be for the garbage collector (LangChain
keeps every chunk of a stream until its end); LangChain still sees a normal chunk per
token: ``on_llm_new_token``, the run's id, merged chunks equal to ``ainvoke``."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.host import ReferenceHost


class Tokens(AsyncCallbackHandler):
    """The chunks ``on_llm_new_token`` gets, and what each holds for the collector."""

    def __init__(self) -> None:
        self.tokens: list[Any] = []
        self.tracked: list[int] = []

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, **kwargs: Any) -> None:
        assert isinstance(chunk, ChatGenerationChunk)
        self.tokens.append(token)
        if chunk.message.chunk_position is None:
            self.tracked.append(gc_tracked(chunk))


def gc_tracked(root: object) -> int:
    """How many objects the cyclic garbage collector tracks in ``root`` (classes aside):
    what a full collection walks for it while LangChain keeps it."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or not gc.is_tracked(obj):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


async def test_a_streamed_token_is_a_chunk_built_without_validation(
    echo_host: ReferenceHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk of a token used to be validated by pydantic (about 6 us of astream's
    ~22 us a token, not counting the collector); validation now runs for the last
    chunk and LangChain's merge only, however long the answer."""
    made: list[Any] = []
    real_init = AIMessageChunk.__init__

    def init(self: AIMessageChunk, *args: Any, **kwargs: Any) -> None:
        made.append(kwargs.get("content"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(AIMessageChunk, "__init__", init)
    llm = ChatFabstir(host_url=echo_host.url)
    counts = []
    for n in (2, 200):
        made.clear()
        chunks = [c async for c in llm.astream(words(n))]
        assert "".join(str(c.content) for c in chunks) == f"Echo: {words(n)}"
        assert len(chunks) > n
        counts.append(len(made))
    assert counts[0] == counts[1] <= 3, counts  # none per token
    await llm.aclose()


async def test_streamed_chunks_are_light_and_normal(echo_host: ReferenceHost) -> None:
    """Each token's chunk holds 9 objects the collector tracks (the generation chunk and
    the message, their dicts and field sets, the message's three lists; its ``text`` is
    a plain ``str``), not 10: LangChain keeps them all, and full collections were about
    half of astream's client CPU per token. Callbacks, ids, usage and the merged answer
    are as LangChain makes them."""
    llm = ChatFabstir(host_url=echo_host.url)
    prompt = words(50)
    handler = Tokens()
    chunks = [c async for c in llm.astream(prompt, config={"callbacks": [handler]})]
    assert handler.tokens == [c.content for c in chunks]  # one on_llm_new_token a chunk
    assert len(handler.tracked) > 50 and max(handler.tracked) <= 9, set(handler.tracked)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and str(ids.pop()).startswith("lc_run-")
    full = sum(chunks[1:], chunks[0])
    assert full.content == f"Echo: {prompt}" and full.chunk_position == "last"
    message = await llm.ainvoke(prompt)
    assert message.content == full.content
    assert full.usage_metadata == message.usage_metadata is not None
    assert full.response_metadata["finish_reason"] == message.response_metadata["finish_reason"]
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    await llm.aclose()
