"""The chunk a streamed token becomes (issue 22, ``astream`` client CPU per token): built
without pydantic validation, it is the chunk validation makes, merges the same, and
shares nothing with other chunks; with a langchain-core or pydantic whose chunk looks
different, validation is used instead."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.load import dumpd
from langchain_core.messages import AIMessageChunk, message_chunk_to_message
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.outputs.chat_generation import merge_chat_generation_chunks

from langchain_fabstir.chat_models import messages
from langchain_fabstir.chat_models.messages import text_chunk


def _validated(text: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


def assert_same_chunk(got: ChatGenerationChunk, want: ChatGenerationChunk) -> None:
    assert type(got) is type(want) and type(got.message) is type(want.message)
    assert got == want and got.message == want.message
    for a, b in ((got, want), (got.message, want.message)):
        assert list(a.__dict__) == list(b.__dict__)  # (field order: repr, dumps)
        assert a.model_fields_set == b.model_fields_set
        assert a.__pydantic_extra__ == b.__pydantic_extra__
        assert a.__pydantic_private__ == b.__pydantic_private__
        assert a.model_dump() == b.model_dump()
        assert a.model_dump_json() == b.model_dump_json()
        assert repr(a) == repr(b)
    assert json.dumps(dumpd(got)) == json.dumps(dumpd(want))
    assert got.text == want.text and type(got.text) is str  # (the field's type)
    assert got.message.text == want.message.text
    assert got.message.content_blocks == want.message.content_blocks


@given(text=st.text(max_size=40))
def test_a_text_chunk_is_the_validated_chunk(text: str) -> None:
    assert_same_chunk(text_chunk(text), _validated(text))


def test_the_installed_libraries_take_the_fast_path() -> None:
    """With the locked langchain-core and pydantic the chunk is built, not validated (a
    new version whose chunk looks different makes this fail, and the fallback run)."""
    assert messages.text_chunk is messages._built_text_chunk
    assert messages._fast_path_matches()


@pytest.mark.parametrize(
    "changed",
    [
        lambda t: ChatGenerationChunk(message=AIMessageChunk(content=t, name="new")),
        lambda t: ChatGenerationChunk(message=AIMessageChunk(content=t), generation_info={}),
        lambda t: ChatGenerationChunk(message=AIMessageChunk(content=[t])),
        lambda t: 1 / 0,
    ],
)
def test_a_chunk_that_looks_different_is_validated(
    changed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A langchain-core whose validated chunk differs (a new default, another field,
    validation raising): the check at import says so, and validation is used."""
    monkeypatch.setattr(messages, "_validated_text_chunk", changed)
    assert not messages._fast_path_matches()


def test_built_chunks_merge_as_validated_ones() -> None:
    texts = ["Echo", ":", " héllo", "", " wörld 🌍"]
    last = ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            chunk_position="last",
            usage_metadata={"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
            response_metadata={"model_name": "echo", "finish_reason": "stop"},
        ),
        generation_info={"finish_reason": "stop"},
    )
    built = [text_chunk(t) for t in texts]
    validated = [_validated(t) for t in texts]
    for chunk in (*built, *validated):  # what BaseChatModel.astream does to each chunk
        chunk.message.id = "lc_run--1"
        chunk.message.response_metadata = {**chunk.message.response_metadata}
    got = merge_chat_generation_chunks([*built, last])
    want = merge_chat_generation_chunks([*validated, last])
    assert got is not None and want is not None
    assert got.message == want.message and got.text == want.text
    assert message_chunk_to_message(got.message) == message_chunk_to_message(want.message)
    assert got.message.content == "".join(texts)
    assert got.message.usage_metadata == last.message.usage_metadata
    pairwise = built[0]
    for chunk in built[1:]:
        pairwise = pairwise + chunk
    assert pairwise.message.content == "".join(texts)


def test_built_chunks_share_no_container() -> None:
    a, b = text_chunk("a"), text_chunk("b")
    a.message.tool_calls.append({"name": "f", "args": {}, "id": "1", "type": "tool_call"})
    a.message.invalid_tool_calls.append(
        {"name": "f", "args": "", "id": "1", "error": None, "type": "invalid_tool_call"}
    )
    a.message.tool_call_chunks.append(
        {"name": "f", "args": "", "id": "1", "index": 0, "type": "tool_call_chunk"}
    )
    a.message.additional_kwargs["x"] = 1
    a.message.response_metadata["x"] = 1
    a.message.id = "set"
    a.generation_info = {"x": 1}
    assert_same_chunk(b, _validated("b"))
    assert_same_chunk(text_chunk("c"), _validated("c"))
