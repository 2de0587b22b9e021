"""Structured output and tools on hosts without grammar-constrained decoding: the
instructions put in the system message, and JSON schemas closed to extra keys."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["closed_objects", "format_instructions", "with_instructions"]


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
