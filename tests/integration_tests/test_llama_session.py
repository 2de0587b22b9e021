"""SessionManager against the reference host running the real SmolLM2 model."""

from __future__ import annotations

import pytest

from langchain_fabstir import SessionManager
from langchain_fabstir.host import ReferenceHost

pytestmark = pytest.mark.llama


async def test_real_multi_turn_conversation_with_real_usage(llama_host: ReferenceHost) -> None:
    async with SessionManager(host_url=llama_host.url) as manager:
        session = await manager.create_session(
            system_prompt="You are a helpful assistant.", temperature=0.0, max_tokens=40
        )
        assert session.model.startswith("SmolLM2")
        first = await manager.prompt(session.id, "What is the capital of France?")
        assert "Paris" in first.text
        assert first.usage is not None
        assert first.usage.prompt_tokens > 10
        assert 0 < first.usage.completion_tokens <= 40
        assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
        second = await manager.prompt(session.id, "And what is the capital of Germany?")
        assert second.text
        # The second prompt carried the first exchange: the host counted more prompt tokens.
        assert second.usage is not None
        assert second.usage.prompt_tokens > first.usage.prompt_tokens
        history = await manager.get_conversation_history(session.id)
        assert [m.role for m in history] == ["system", "user", "assistant", "user", "assistant"]
        summary = await manager.end_session(session.id)
        assert summary.final_token_count == first.usage.total_tokens + second.usage.total_tokens


async def test_streaming_is_token_by_token_and_deterministic(llama_host: ReferenceHost) -> None:
    async with SessionManager(host_url=llama_host.url) as manager:
        texts = []
        for _ in range(2):
            s = await manager.create_session(temperature=0.0, max_tokens=24)
            pieces = [p async for p in manager.stream_prompt(s.id, "Tell me about the sea.")]
            result = (await manager.get_conversation_history(s.id))[-1]
            assert len(pieces) > 5  # streamed, not one blob
            assert result.token_count == 24  # max_tokens reached, real count from llama.cpp
            texts.append("".join(pieces))
        assert texts[0] == texts[1]
