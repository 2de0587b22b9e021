"""Structured output and tools on hosts without grammar-constrained decoding: the
instructions put in the system message, JSON schemas closed to extra keys, and the parsers
of the answer (bounded: a host's answer is untrusted)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import Generation
from langchain_core.utils.pydantic import TBaseModel

from langchain_fabstir._json import MAX_BYTES, MAX_DEPTH, nests_deeper
from langchain_fabstir.wire.reasoning import THINK_CLOSE, split_reasoning

__all__ = [
    "BoundedJsonOutputParser",
    "BoundedPydanticOutputParser",
    "answer_problem",
    "closed_objects",
    "format_instructions",
    "with_instructions",
]


def closed_objects(schema: Any) -> Any:
    """A copy of a JSON schema whose objects admit only their declared properties
    (unless they say otherwise), as strict structured output expects."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_objects(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def with_instructions(context: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """The context with ``text`` added to its first system message (or as one)."""
    if context and context[0]["role"] == "system":
        return [{"role": "system", "content": f"{context[0]['content']}\n\n{text}"}, *context[1:]]
    return [{"role": "system", "content": text}, *context]


def format_instructions(fmt: dict[str, Any]) -> str:
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema", {})
        return (
            "Reply with one JSON object only, no prose, matching this JSON schema: "
            + json.dumps(schema, separators=(",", ":"))
        )
    return "Reply with one JSON object only, no prose."


# --- parsing a host's answer --------------------------------------------------------------
#
# A host is a peer: its answer is untrusted. LangChain's JSON parsers call ``json.loads`` on
# the text as it is (or on what follows its first Markdown fence), and JSON nested deep
# enough overflows the C stack when the recursion limit is high. These parsers check the
# very texts LangChain will decode first (same fence rule as
# ``langchain_core.utils.json.parse_json_markdown``), and turn a too deep or too large answer
# into ``OutputParserException`` (``None`` while streaming, as for any invalid JSON).

_FENCE = re.compile(r"```(json)?(.*)", re.DOTALL)


def answer_problem(text: str) -> str | None:
    """Why ``text`` (a host's answer) may not be decoded as JSON, or ``None`` when it may."""
    if len(text) > MAX_BYTES:
        return f"the answer is larger than {MAX_BYTES} characters"
    fence = _FENCE.search(text)
    for candidate in (text, fence.group(2) if fence else ""):
        if nests_deeper(candidate, MAX_DEPTH):
            return f"the answer's JSON nests deeper than {MAX_DEPTH} levels"
    return None


def _parse_bounded(parse: Callable[..., Any], result: list[Generation], partial: bool) -> Any:
    """``parse(result, partial=partial)`` of an answer checked first: too deep or too large
    JSON is an ``OutputParserException`` (``None`` while streaming), never a crash."""
    if result and THINK_CLOSE in result[0].text:
        # The answer, not the reasoning a model wrote in front of it (ChatFabstir with
        # reasoning=None leaves a think block in the text).
        result = [Generation(text=split_reasoning(result[0].text)[1]), *result[1:]]
    problem = answer_problem(result[0].text) if result else None
    if problem is not None:
        if partial:
            return None
        raise OutputParserException(f"Invalid json output: {problem}", llm_output=problem)
    try:
        return parse(result, partial=partial)
    except RecursionError:
        raise OutputParserException("Invalid json output: it nests too deep to decode") from None


class BoundedJsonOutputParser(JsonOutputParser):
    """``JsonOutputParser`` for a host's answer: too deep or too large JSON is an
    ``OutputParserException`` (``None`` while streaming), never a crash."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        return _parse_bounded(super().parse_result, result, partial)


class BoundedPydanticOutputParser(PydanticOutputParser[TBaseModel]):
    """``PydanticOutputParser`` for a host's answer, bounded as :class:`BoundedJsonOutputParser`."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        return _parse_bounded(super().parse_result, result, partial)
