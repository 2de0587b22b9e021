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
import re
from typing import Any

__all__ = ["MAX_DEPTH", "loads_untrusted", "too_deep"]

MAX_DEPTH = 64
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


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
    # Only strings and brackets matter: the regex engine skips numbers and spaces in C
    # (a scan in Python per character cost ~0.1 s on a 1 MB answer of embeddings).
    for match in _TOKENS.finditer(text):
        ch = match.group()
        if ch in "[{":
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
