"""Documents from peers and from storage (JSON and CBOR), decoded with depth and size bounds.

A dependency (py_ecc, through eth-account) raises the interpreter's recursion limit to
100,000 when imported (this package keeps it out, see :mod:`langchain_fabstir.chain._web3`,
but an application may import it too). With that limit, ``json.loads("[" * 100000)`` no
longer raises ``RecursionError``: it overflows the C stack and kills the process. So every
document this package did not make itself (a frame, an HTTP body, an SSE event, a model's
JSON answer, a blob from S5) is decoded here, and a document nested deeper than any real
one, or larger than the caller's bound, is a ``ValueError`` (callers turn it into their
typed error), whatever the recursion limit:

- :func:`loads_untrusted`: JSON, at most :data:`MAX_DEPTH` levels (peers' messages) or
  :data:`MAX_STORED_DEPTH` (documents read back from storage), at most ``max_bytes``.
- :func:`loads_cbor_untrusted`: CBOR, the same way (cbor2 stops at
  :data:`MAX_STORED_DEPTH` levels itself, without recursing on the C stack).
- :func:`check_value_depth`: for writers, so nothing is stored that cannot be read back.

A peer's JSON may escape half of a surrogate pair alone (``"\\ud800"``), or, as bytes, encode
one as UTF-8 would: either decodes to a string UTF-8 cannot encode. :func:`loads_untrusted`
reads each such lone surrogate as U+FFFD, so text from a peer can always be sent and stored
again. Text from the caller that holds one is refused by :func:`dumps_utf8` and
:func:`check_utf8` (``LONE_SURROGATE``).

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
from collections.abc import Mapping
from itertools import accumulate, count
from operator import sub
from typing import Any

import cbor2

from langchain_fabstir.errors import LoneSurrogateError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_STORED_BYTES",
    "MAX_STORED_DEPTH",
    "MAX_VALUE_DEPTH",
    "check_strings_utf8",
    "check_utf8",
    "check_value_depth",
    "dumps_utf8",
    "loads_cbor_untrusted",
    "loads_untrusted",
    "nests_deeper",
    "too_deep",
    "without_lone_surrogates",
]

MAX_DEPTH = 64
"""The deepest JSON a peer's message (frame, HTTP body, SSE event, model answer) may nest."""

MAX_STORED_DEPTH = 400
"""The deepest document read back from storage (cbor2's own decoding limit)."""

MAX_VALUE_DEPTH = 256
"""The deepest value a writer stores (well under :data:`MAX_STORED_DEPTH`, which leaves
room for the records that wrap it): a deeper one is refused before it is written."""

MAX_BYTES = 64 * 1024 * 1024
"""The default size bound of a peer's document (callers that read less pass their own)."""

MAX_STORED_BYTES = 1024 * 1024 * 1024
"""The size bound of a document read back from storage (already downloaded, within the
portal client's own bound; large enough that no history written before becomes unreadable)."""

# A JSON string, matched without backtracking: it ends at its closing quote, or runs to
# the end of the text when it has none (the decoder stops at an unterminated string, so
# nothing after it can nest). Every match attempt succeeds in one pass, so the scan is
# linear even on text made of escaped quotes.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)'
_STRINGS = re.compile(_STRING, re.DOTALL)
_STRINGS_BYTES = re.compile(_STRING.encode("ascii"), re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
# "[" and "{" become 2, "]" and "}" 0: after ``k`` brackets the depth is ``sum - k``.
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_CHUNK = 64 * 1024


def too_deep(text: str | bytes | bytearray, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit`` (strings skipped).

    The scan follows JSON's strings exactly, so it measures the depth the decoder would
    reach on the same text (up to the first syntax error). Cheap for real messages: short
    ones, and ones with few brackets, are not scanned (a short one cannot nest deep enough
    to overflow the C stack, and :func:`loads_untrusted` catches its ``RecursionError``).
    """
    if len(text) < 1024:
        return False
    if isinstance(text, str):
        opening = text.count("[") + text.count("{")
    else:
        opening = text.count(b"[") + text.count(b"{")
    if opening <= limit:
        return False
    return nests_deeper(text, limit)


def nests_deeper(text: str | bytes | bytearray, limit: int = MAX_DEPTH) -> bool:
    """:func:`too_deep` without its shortcuts: scans every text, short or not.

    Linear in C: strings are cut out by a regular expression, the brackets left are
    summed by ``itertools.accumulate`` (a chunk at a time, so a deep text stops early).

    >>> nests_deeper('[["]]]]", {"a": [1]}]]', 2), nests_deeper('[["[["]]', 1)
    (True, True)
    >>> nests_deeper('[{"a": "[[[["}]', 2)
    False
    """
    if isinstance(text, str):
        # Brackets and quotes are ASCII: the UTF-8 form has them at the same places
        # relative to each other, and a surrogate cannot make a bracket.
        data = _STRINGS.sub("", text).encode("utf-8", "surrogatepass")
    else:
        data = _STRINGS_BYTES.sub(b"", text)
    steps = data.translate(_STEPS, _NOT_BRACKETS)
    total = 0
    for start in range(0, len(steps), _CHUNK):
        chunk = steps[start : start + _CHUNK]
        if max(map(sub, accumulate(chunk, initial=total), count(start))) > limit:
            return True
        total += sum(chunk)
    return False


def loads_untrusted(
    data: str | bytes | bytearray, limit: int = MAX_DEPTH, *, max_bytes: int = MAX_BYTES
) -> Any:
    """``json.loads`` that raises ``ValueError`` (never crashes) on hostile input: deeper
    than ``limit`` levels, longer than ``max_bytes``, or not JSON."""
    if len(data) > max_bytes:
        raise ValueError(f"JSON document is larger than {max_bytes} bytes")
    if too_deep(data, limit):
        raise ValueError(f"JSON nests deeper than {limit} levels")
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"JSON nests too deep to decode (over {limit} levels)") from None
    if escapes_surrogate(data):
        value = without_lone_surrogates(value)
    return value


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# A surrogate encoded as UTF-8 would be (not valid UTF-8, but ``json.loads`` decodes bytes
# with "surrogatepass", so such bytes become a lone surrogate too).
_ENCODED_SURROGATE = re.compile(b"\xed[\xa0-\xbf]")


def escapes_surrogate(data: str | bytes | bytearray) -> bool:
    r"""Whether JSON text may decode to a lone surrogate: it escapes one (``\ud800``...)
    or, as bytes, holds one encoded as UTF-8 would (``ED A0 80``), which ``json.loads``
    lets through. A ``str`` from a text frame cannot hold one itself. A few ``in`` tests.

    >>> escapes_surrogate('"\\ud800"'), escapes_surrogate(b'"\xed\xa0\x80"')
    (True, True)
    >>> escapes_surrogate('"ok"'), escapes_surrogate('"\ud55c"'.encode())  # Hangul
    (False, False)
    """
    if isinstance(data, str):
        return "\\ud" in data or "\\uD" in data
    return (
        b"\\ud" in data
        or b"\\uD" in data
        or (b"\xed" in data and _ENCODED_SURROGATE.search(data) is not None)
    )


def without_lone_surrogates(value: Any) -> Any:
    r"""``value`` (decoded JSON) with each lone surrogate in its strings and keys replaced
    by U+FFFD; a pair escaped whole (an emoji) was joined by the decoder and stays.

    >>> without_lone_surrogates({"a\ud800": ["x\udfff", 1, "\U0001f600"]}) == {
    ...     "a\ufffd": ["x\ufffd", 1, "\U0001f600"]
    ... }
    True
    """
    # Iterative (a peer's document may nest as deep as its bound allows, and the stack
    # must not be what limits it): containers are copied, parents before children.
    fix = _LONE_SURROGATE.sub
    if isinstance(value, str):
        return fix("\ufffd", value)
    if not isinstance(value, (list, dict)):
        return value
    root: list[Any] = [value]
    todo: list[tuple[Any, Any, Any]] = [(root, 0, value)]  # (parent, key, original)
    while todo:
        parent, key, item = todo.pop()
        if isinstance(item, list):
            copy: Any = list(item)
            for i, v in enumerate(copy):
                if isinstance(v, str):
                    copy[i] = fix("\ufffd", v)
                elif isinstance(v, (list, dict)):
                    todo.append((copy, i, v))
        else:
            copy = {}
            for k, v in item.items():
                k = fix("\ufffd", k) if isinstance(k, str) else k
                if isinstance(v, str):
                    copy[k] = fix("\ufffd", v)
                else:
                    copy[k] = v
                    if isinstance(v, (list, dict)):
                        todo.append((copy, k, v))
        parent[key] = copy
    return root[0]


def check_utf8(text: str, what: str) -> None:
    r"""Raise :class:`~langchain_fabstir.errors.LoneSurrogateError` when ``text`` holds a
    lone surrogate (UTF-8 cannot carry it).

    >>> check_utf8("d\u00e9j\u00e0 vu \U0001f600", "the prompt")
    >>> try:
    ...     check_utf8("bad \udcff byte", "the prompt")
    ... except LoneSurrogateError as exc:
    ...     print(exc.code, str(exc)[17:74])
    LONE_SURROGATE the prompt holds a lone surrogate (U+DCFF) at character 4
    """
    found = _LONE_SURROGATE.search(text)
    if found is not None:
        raise LoneSurrogateError(
            f"{what} holds a lone surrogate (U+{ord(found.group()):04X}) at character "
            f"{found.start()}, which UTF-8 cannot carry (text decoded with "
            'errors="surrogateescape" has them: decode with errors="replace")'
        )


def dumps_utf8(value: Any, *, what: str, **options: Any) -> bytes:
    r"""``json.dumps(value, ensure_ascii=False, **options)`` as UTF-8, or
    :class:`~langchain_fabstir.errors.LoneSurrogateError` (naming ``what``) when a string
    in ``value`` holds a lone surrogate.

    >>> dumps_utf8({"a": "é"}, what="the record", separators=(",", ":"))
    b'{"a":"\xc3\xa9"}'
    """
    text = json.dumps(value, ensure_ascii=False, **options)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        check_strings_utf8(value, what)
        check_utf8(text, what)  # (a value json.dumps turned into text some other way)
        raise


def check_strings_utf8(value: Any, what: str) -> None:
    r""":func:`check_utf8` on every string (and key) in ``value``, walked without
    recursion; the error names the position in the first string that holds one.

    >>> try:
    ...     check_strings_utf8({"messages": [{"content": "ok \udcff"}]}, "the conversation")
    ... except LoneSurrogateError as exc:
    ...     print(str(exc)[17:93])
    the conversation holds a lone surrogate (U+DCFF) at character 3, which UTF-8
    """
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            check_utf8(item, what)
        elif isinstance(item, dict):
            todo.extend(item.values())
            todo.extend(item.keys())
        elif isinstance(item, (list, tuple)):
            todo.extend(reversed(item))


def loads_cbor_untrusted(
    data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_STORED_BYTES
) -> Any:
    """``cbor2.loads`` that raises ``ValueError`` (never crashes) on hostile input: deeper
    than :data:`MAX_STORED_DEPTH` levels, longer than ``max_bytes``, or not CBOR."""
    if len(data) > max_bytes:
        raise ValueError(f"CBOR document is larger than {max_bytes} bytes")
    try:
        return cbor2.loads(bytes(data))
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise ValueError(f"not valid CBOR: {exc}") from exc


def check_value_depth(value: Any, limit: int = MAX_VALUE_DEPTH, *, what: str = "value") -> None:
    """Raise ``ValueError`` when ``value`` nests containers deeper than ``limit`` levels.

    For writers: a value that passes is encoded and read back by this module's decoders.
    The walk is iterative (no recursion), so a value of any depth is measured safely.

    >>> check_value_depth({"a": [1, {"b": 2}]}, 3)
    >>> check_value_depth({"a": [1, {"b": 2}]}, 2)
    Traceback (most recent call last):
    ...
    ValueError: value nests deeper than 2 levels
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        else:
            continue
        if depth > limit:
            raise ValueError(f"{what} nests deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)
