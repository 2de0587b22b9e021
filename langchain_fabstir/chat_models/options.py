"""Request options of ``ChatFabstir`` that map onto protocol fields: ``model_kwargs``
(host-specific fields, a closed list) and the named options of ``bind_tools``.

>>> check_host_fields({"thinking": "low", "web_search": True})
>>> check_host_fields({"top_p": 0.9})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: model_kwargs: 'top_p' is not a request field a Fabstir host reads ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HOST_REQUEST_FIELDS", "THINKING_LEVELS", "check_host_fields", "host_fields"]

THINKING_LEVELS = ("enabled", "disabled", "low", "medium", "high")
"""Values of the ``thinking`` request field (PROTOCOL.md section 1)."""


def _thinking(value: Any) -> str | None:
    if value not in THINKING_LEVELS:
        return f"one of {', '.join(THINKING_LEVELS)}"
    return None


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "an integer >= 0"


def _queries(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(q, str) for q in value)
    return None if ok else "a list of strings"


HOST_REQUEST_FIELDS = {
    "thinking": _thinking,
    "web_search": _flag,
    "max_searches": _count,
    "search_queries": _queries,
}
"""Request fields deployed hosts read that ``ChatFabstir`` has no parameter for (all
other request fields are parameters: ``model``, ``temperature``, ``max_tokens``...)."""

_OWN_PARAMETER = {
    "model",
    "temperature",
    "max_tokens",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
}


def check_host_fields(fields: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (saying what to do) for a key or value a host would not take."""
    allowed = ", ".join(sorted(HOST_REQUEST_FIELDS))
    for key, value in fields.items():
        check = HOST_REQUEST_FIELDS.get(key)
        if check is None:
            hint = (
                f"use the {key}= parameter of ChatFabstir instead"
                if key in _OWN_PARAMETER
                else "the protocol has no such field and a host would ignore or reject it"
            )
            raise ValueError(
                f"model_kwargs: {key!r} is not a request field a Fabstir host reads "
                f"(allowed: {allowed}). {hint[0].upper()}{hint[1:]}."
            )
        problem = check(value)
        if problem is not None:
            raise ValueError(f"model_kwargs: {key!r} must be {problem}, got {value!r}")


def host_fields(defaults: Mapping[str, Any], call: Mapping[str, Any]) -> dict[str, Any]:
    """The host-specific fields of one call: ``defaults`` (``model_kwargs``) overridden by
    the same keys passed to the call, checked."""
    merged = dict(defaults)
    merged.update(call.get("model_kwargs") or {})
    merged.update({k: v for k, v in call.items() if k in HOST_REQUEST_FIELDS})
    check_host_fields(merged)
    return merged
