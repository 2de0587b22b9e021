"""JSON from peers (hosts, portals, registries, clients), decoded safely.

A dependency (py_ecc, through eth-account) raises the interpreter's recursion limit to
100,000 when imported. With it, ``json.loads("[" * 100000)`` no longer raises
``RecursionError``: it overflows the C stack and kills the process. Every place that
decodes JSON a peer sent goes through :func:`loads_untrusted`, which refuses frames that
nest deeper than any real message before decoding them.

>>> loads_untrusted('{"a": [1, 2]}')
{'a': [1, 2]}
>>> loads_untrusted("[" * 5000)
Traceback (most recent call last):
...
ValueError: JSON nests deeper than 64 levels
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "loads_untrusted", "too_deep"]

MAX_DEPTH = 64


def too_deep(text: str | bytes | bytearray, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit`` (strings skipped).

    Cheap for real messages: short ones, and ones with few brackets, are not scanned.
    """
    if len(text) < 1024:
        return False
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def loads_untrusted(data: str | bytes | bytearray, limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``ValueError`` (never crashes) on hostile input."""
    if too_deep(data, limit):
        raise ValueError(f"JSON nests deeper than {limit} levels")
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"JSON nests too deep to decode (over {limit} levels)") from None
