"""LangChain messages to and from the Fabstir protocol: the conversation as the host reads
it, usage and results as LangChain wants them, and stop sequences held back across chunks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel

from langchain_fabstir.callbacks import CHECKPOINTS_METADATA_KEY
from langchain_fabstir.sessions.models import StreamResult
from langchain_fabstir.wire.images import (
    ImageInput,
    check_message_size,
    from_content_block,
    is_image_block,
)

__all__ = [
    "find_stop",
    "generation_info",
    "held_back",
    "message_text",
    "prompt_images",
    "text_chunk",
    "to_protocol",
    "to_result",
    "usage_metadata",
    "with_metadata",
]


def message_text(message: BaseMessage) -> str:
    """The text of a message. A human message's image blocks are not text: they travel as
    the prompt's ``images`` (:func:`prompt_images`); an image in any other message, and
    any other media, is refused."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    human = isinstance(message, HumanMessage)
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") in ("text", "text-plain"):
            parts.append(str(block.get("text", "")))
        elif human and is_image_block(block):
            continue  # sent as images with the prompt, when this is the prompt
        elif isinstance(block, dict) and block.get("type") in (
            "tool_use",
            "tool_call",
            "function_call",
            "reasoning",
        ):
            continue  # tool_calls / reasoning: not sent back (the answer is the turn)
        elif is_image_block(block):
            raise ValueError(
                f"images reach a Fabstir host only in a human message (the prompt); a "
                f"{type(message).__name__} has an image. Describe it in text."
            )
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"Fabstir hosts take text only; a {type(message).__name__} has a "
                f"{kind!r} content block. Describe it in text or use another model."
            )
    return "".join(parts)


def prompt_images(messages: Sequence[BaseMessage]) -> list[ImageInput]:
    """The images to send with the prompt: those of the last message when it is a human
    message (the prompt a node analyses images for), checked (``INVALID_IMAGE_DATA``,
    ``INVALID_IMAGE_FORMAT``, ``IMAGE_TOO_LARGE``) before anything is sent.

    Images of earlier human messages are not sent again: their text is part of the
    conversation, and the model's answers about them are; see "Images" in
    :class:`~langchain_fabstir.ChatFabstir`.
    """
    if not messages or not isinstance(messages[-1], HumanMessage):
        return []
    content = messages[-1].content
    if isinstance(content, str):
        return []
    images = [from_content_block(b) for b in content if isinstance(b, dict) and is_image_block(b)]
    check_message_size(images, encrypted=False)
    return images


def to_protocol(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for m in messages:
        text = message_text(m)
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": text})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": text})
        elif isinstance(m, AIMessage):
            if m.tool_calls:
                envelope = {
                    "tool_calls": [
                        {"name": c["name"], "arguments": c["args"]} for c in m.tool_calls
                    ]
                }
                text = (text + "\n" if text else "") + json.dumps(envelope)
            out.append({"role": "assistant", "content": text})
        elif isinstance(m, ToolMessage):
            name = m.name or "tool"
            status = " (error)" if m.status == "error" else ""
            out.append(
                {
                    "role": "user",
                    "content": f"Result of tool {name}{status} (call {m.tool_call_id}): {text}",
                }
            )
        elif isinstance(m, FunctionMessage):
            out.append({"role": "user", "content": f"Result of tool {m.name}: {text}"})
        elif isinstance(m, ChatMessage):
            role = m.role if m.role in ("user", "assistant", "system") else "user"
            out.append({"role": role, "content": text})
        else:
            raise ValueError(f"unsupported message type {type(m).__name__}")
    if not out:
        raise ValueError("no messages to send")
    return out


def with_metadata(
    text: str, proofs: list[dict[str, Any]], resumed: dict[str, Any] | None
) -> ChatGenerationChunk:
    """A chunk that completes checkpoints and/or is the first after a resume (whose
    ``mode`` says whether the host continued exactly or was asked to continue)."""
    meta: dict[str, Any] = {}
    if proofs:
        meta[CHECKPOINTS_METADATA_KEY] = proofs
    if resumed:
        meta["fabstir_resumed"] = resumed
    return ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=meta))


def _validated_text_chunk(text: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


_new = object.__new__
_set = object.__setattr__


def _built_text_chunk(text: str) -> ChatGenerationChunk:
    """The chunk :func:`_validated_text_chunk` makes, built as pydantic's
    ``model_construct`` builds a model (its instance state set directly), without
    validation: every container is new, nothing is shared between chunks.

    One difference: ``ChatGenerationChunk.text`` is the ``str`` its field declares (as
    in langchain-core 0.3), not the callable ``str`` subclass that
    ``AIMessageChunk.text`` returns (which a garbage collector has to track)."""
    message = _new(AIMessageChunk)
    _set(
        message,
        "__dict__",
        {
            "content": text,
            "additional_kwargs": {},
            "response_metadata": {},
            "type": "AIMessageChunk",
            "name": None,
            "id": None,
            "tool_calls": [],
            "invalid_tool_calls": [],
            "usage_metadata": None,
            "tool_call_chunks": [],
            "chunk_position": None,
        },
    )
    _set(message, "__pydantic_fields_set__", {"content"})
    _set(message, "__pydantic_extra__", {})
    _set(message, "__pydantic_private__", None)
    chunk = _new(ChatGenerationChunk)
    _set(
        chunk,
        "__dict__",
        {"text": text, "generation_info": None, "type": "ChatGenerationChunk", "message": message},
    )
    _set(chunk, "__pydantic_fields_set__", {"message", "text"})
    _set(chunk, "__pydantic_extra__", None)
    _set(chunk, "__pydantic_private__", None)
    return chunk


def _model_state(model: BaseModel) -> list[Any]:
    """Everything a pydantic model instance holds, with the type of every value (a
    ``str`` subclass counted as ``str``)."""
    values = model.__dict__.values()
    return [
        type(model),
        list(model.__dict__.items()),
        [str if isinstance(v, str) else type(v) for v in values],
        model.__pydantic_fields_set__,
        model.__pydantic_extra__,
        model.__pydantic_private__,
    ]


def _fast_path_matches() -> bool:
    """Whether :func:`_built_text_chunk` makes the chunk validation makes, with the
    langchain-core and pydantic installed (their fields and validators may change
    between versions: then validation it is)."""
    slots = {"__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"}
    try:
        if set(BaseModel.__slots__) != slots:
            return False
        for text in ("tok ", "", "<think>"):
            validated, built = _validated_text_chunk(text), _built_text_chunk(text)
            for a, b in ((built, validated), (built.message, validated.message)):
                if _model_state(a) != _model_state(b):
                    return False
        return True
    except Exception:  # (an unexpected shape of either library: validation it is)
        return False


text_chunk = _built_text_chunk if _fast_path_matches() else _validated_text_chunk
"""``ChatGenerationChunk(message=AIMessageChunk(content=text))``: one piece of answer
text, as the hot path (one per host token) makes it. Built directly when that gives the
same chunk (checked once, at import, against validated ones): about three times faster
than validation, with one object less for the garbage collector to track per token."""


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop sequence starts in ``text``, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still begin a stop sequence."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                longest = max(longest, n)
                break
    return longest


def usage_metadata(result: StreamResult, chunks_received: int = 0) -> UsageMetadata:
    """The host's usage; for an answer stopped early (no ``stream_end`` read), the
    tokens received so far (the prompt's count is then unknown: 0). Tokens the host's
    vision sidecar used on the prompt's images (``vlm_tokens``, billed with the job) are
    input tokens, also shown as ``input_token_details["vlm"]``."""
    vlm = result.vlm_tokens
    if result.usage is not None:
        usage = UsageMetadata(
            input_tokens=result.usage.prompt_tokens + vlm,
            output_tokens=result.usage.completion_tokens,
            total_tokens=result.usage.total_tokens + vlm,
        )
    else:
        out = result.tokens_used or chunks_received
        usage = UsageMetadata(input_tokens=vlm, output_tokens=out, total_tokens=out + vlm)
    if vlm:
        # The host's vision sidecar read the images: billed as tokens of the job.
        usage["input_token_details"] = {"vlm": vlm}  # type: ignore[typeddict-unknown-key]
    return usage


def generation_info(result: StreamResult) -> dict[str, Any]:
    return {"finish_reason": result.finish_reason}


def to_result(chunk: ChatGenerationChunk | None) -> ChatResult:
    if chunk is None:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=""))])
    msg = chunk.message
    assert isinstance(msg, AIMessageChunk)
    message = AIMessage(
        content=msg.content,
        additional_kwargs=msg.additional_kwargs,
        tool_calls=msg.tool_calls,
        invalid_tool_calls=msg.invalid_tool_calls,
        usage_metadata=msg.usage_metadata,
        response_metadata=msg.response_metadata,
        id=msg.id,
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=chunk.generation_info)]
    )
