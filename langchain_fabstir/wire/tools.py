"""Tool calls and structured output over a protocol that only streams text. Pure, no I/O.

Fabstir hosts stream text. Tool calls travel inside a JSON *envelope* that both sides
know:

- a tool call: ``{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}``
- a plain answer (only when the model may choose): ``{"content": "It is sunny."}``

A host that announces the ``tools`` feature constrains its decoding to
:func:`envelope_schema` (grammar-constrained: the envelope always parses). For other
hosts the client adds :func:`tool_instructions` to the conversation and parses whatever
comes back with :func:`parse_envelope`, falling back to plain text.

>>> specs = [{"type": "function", "function": {"name": "add", "parameters": {
...     "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}]
>>> parse_envelope('{"tool_calls": [{"name": "add", "arguments": {"a": 2}}]}')
('', [{'name': 'add', 'args': {'a': 2}}])
>>> validate_arguments({"a": "two"}, specs[0]["function"]["parameters"])
["'a' should be integer, got str"]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_fabstir._json import loads_untrusted

__all__ = [
    "envelope_schema",
    "forced_tool_names",
    "parse_envelope",
    "tool_instructions",
    "validate_arguments",
]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _function(spec: dict[str, Any]) -> dict[str, Any]:
    fn: dict[str, Any] = spec.get("function", spec)
    return fn


def forced_tool_names(specs: Sequence[dict[str, Any]], tool_choice: Any) -> list[str] | None:
    """Which tools the model must choose from, or ``None`` when it may answer in text.

    ``tool_choice`` may be ``None``/``"auto"`` (free), ``"none"`` (no tools: returns
    ``[]``), ``"any"``/``"required"``/``True`` (some tool), a tool name, or an OpenAI-style
    ``{"type": "function", "function": {"name": ...}}``.
    """
    names = [_function(s)["name"] for s in specs]
    if tool_choice in (None, "auto", False):
        return None
    if tool_choice == "none":
        return []
    if tool_choice in ("any", "required", True):
        return names
    if isinstance(tool_choice, dict):
        tool_choice = _function(tool_choice).get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return [tool_choice]
    raise ValueError(f"tool_choice {tool_choice!r} names no bound tool (have {names})")


def envelope_schema(
    specs: Sequence[dict[str, Any]], tool_choice: Any = None, *, parallel: bool = False
) -> dict[str, Any]:
    """The JSON schema of the envelope for these tools and this ``tool_choice``.

    One call per answer unless ``parallel`` (OpenAI's ``parallel_tool_calls``).
    """
    forced = forced_tool_names(specs, tool_choice)
    allowed = [s for s in specs if forced is None or _function(s)["name"] in forced]
    call_variants = []
    for spec in allowed:
        fn = _function(spec)
        params = dict(fn.get("parameters") or {"type": "object", "properties": {}})
        # A tool takes the arguments it declares and no others.
        params.setdefault("additionalProperties", False)
        call_variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": call_variants[0] if len(call_variants) == 1 else {"anyOf": call_variants},
                "minItems": 1,
                **({} if parallel else {"maxItems": 1}),
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if forced is not None:
        return calls
    text = {
        "type": "object",
        "properties": {"content": {"type": "string"}},
        "required": ["content"],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, text]}


def tool_instructions(specs: Sequence[dict[str, Any]], tool_choice: Any = None) -> str:
    """A system message that teaches a plain host's model the envelope."""
    forced = forced_tool_names(specs, tool_choice)
    lines = ["You can call these tools:"]
    for spec in specs:
        fn = _function(spec)
        if forced is not None and fn["name"] not in forced:
            continue
        params = json.dumps(fn.get("parameters") or {}, separators=(",", ":"))
        lines.append(f"- {fn['name']}: {fn.get('description', '')} Arguments schema: {params}")
    lines.append(
        'To call tools, reply with JSON only: {"tool_calls": [{"name": "<tool>", '
        '"arguments": {...}}]}'
    )
    if forced is None:
        lines.append("If no tool is needed, reply in plain text.")
    else:
        lines.append("You must call a tool.")
    return "\n".join(lines)


def parse_envelope(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split a model's output into ``(content, tool_calls)``.

    Text that is not an envelope is plain content. Raises ``ValueError`` only for an
    envelope whose calls are malformed (not a list of ``{name, arguments}``).
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`")
        if stripped.startswith("json"):
            stripped = stripped[4:]
        stripped = stripped.strip()
    if not stripped.startswith("{"):
        return text, []
    try:
        obj = loads_untrusted(stripped)
    except ValueError:
        if '"tool_calls"' in stripped[:40]:
            raise ValueError("the tool-call envelope is incomplete (cut at max_tokens?)") from None
        return text, []
    if not isinstance(obj, dict):
        return text, []
    if "tool_calls" not in obj:
        content = obj.get("content")
        return (content, []) if isinstance(content, str) and len(obj) == 1 else (text, [])
    raw_calls = obj["tool_calls"]
    if not isinstance(raw_calls, list):
        raise ValueError("'tool_calls' is not a list")
    calls = []
    for call in raw_calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError(f"malformed tool call: {json.dumps(call)[:200]}")
        args = call.get("arguments", call.get("args", {}))
        if isinstance(args, str):
            args = loads_untrusted(args) if args.strip() else {}
        if not isinstance(args, dict):
            raise ValueError(f"arguments of {call['name']!r} are not an object")
        calls.append({"name": call["name"], "args": args})
    return "", calls


def validate_arguments(args: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Problems of ``args`` against a tool's JSON schema (required keys, top-level types).

    A light check, not a full JSON-schema validator: enough to refuse what a model made
    up on a host without grammar-constrained decoding.
    """
    problems = []
    props: dict[str, Any] = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in args:
            problems.append(f"missing required argument {key!r}")
    for key, value in args.items():
        expected = (props.get(key) or {}).get("type")
        if not isinstance(expected, str) or expected not in _JSON_TYPES:
            continue
        ok = isinstance(value, _JSON_TYPES[expected])
        if expected in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            problems.append(f"{key!r} should be {expected}, got {type(value).__name__}")
    return problems
