"""Files as the Fabstir TypeScript SDK writes them: s5.js ``fs.put(path, object)`` bytes.

The SDK stores every object (a ``conversation.json`` among them) with s5.js's ``fs.put``,
which encodes it as CBOR with cbor-x (``encodeS5``, s5.js ``src/fs/dirv1/cbor-config.ts``),
and reads a file back as CBOR, else JSON, else text. :func:`encode_sdk_object` writes the
same bytes cbor-x writes for the same JavaScript value, so a file written here has the CID
the SDK's write would have; :func:`decode_sdk_object` reads what either wrote.

What cbor-x does, and this module with it:

* The top-level object becomes a map with its keys sorted by ``localeCompare``; nested
  objects keep JavaScript's key order (integer-like keys ascending, then insertion order)
  and always get a 16-bit length header (``b9 00 NN``). Arrays at the top level are
  processed item by item the same way.
* A JavaScript number is an integer in CBOR when it fits 32 bits (``-2**32 <= n < 2**32``),
  else a 64-bit float: millisecond timestamps (about ``1.7e12``) are stored as floats. So a
  Python ``int`` outside that range is written as a float (as the SDK holds it), and a
  whole ``float`` inside it as an integer (JavaScript has no difference). A CBOR 64-bit
  integer would reach the SDK as a ``BigInt``, which breaks its arithmetic and
  ``JSON.stringify``.
* Reading turns whole floats back into ``int`` (``1700000000000.0`` -> ``1700000000000``).

>>> encode_sdk_object({"b": {"z": 1, "a": 2}, "a": 1700000000000}).hex()
'a26161fb4278bcfe568000006162b90002617a01616102'
>>> decode_sdk_object(bytes.fromhex("a26161fb4278bcfe568000006162b90002617a01616102"))
{'a': 1700000000000, 'b': {'z': 1, 'a': 2}}
>>> decode_sdk_object(b'{"id": "7", "messages": []}')
{'id': '7', 'messages': []}
"""

from __future__ import annotations

import io
import math
import re
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from langchain_fabstir._json import (
    MAX_STORED_BYTES,
    MAX_STORED_DEPTH,
    check_strings_utf8,
    loads_untrusted,
)
from langchain_fabstir.errors import IntegrityError
from langchain_fabstir.s5.collation import s5js_sort_key
from langchain_fabstir.storage.access import S5Access, update_file

__all__ = ["SdkConversation", "decode_sdk_object", "encode_sdk_object"]

_MAX_SAFE_INTEGER = 2**53 - 1
_INDEX_KEY = re.compile(r"^(?:0|[1-9][0-9]*)$")


class _Map16:
    """A JavaScript plain object as cbor-x writes it: header ``b9`` + 16-bit count."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, Any]]) -> None:
        self.items = items


class _Float64:
    """A float cbor2 would shorten (NaN, infinities): cbor-x writes all floats in 8 bytes."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


def _default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if isinstance(value, _Map16):
        encoder.write(b"\xb9" + struct.pack(">H", len(value.items)))
        for key, item in value.items:
            encoder.encode(key)
            encoder.encode(item)
    elif isinstance(value, _Float64):
        encoder.write(b"\xfb" + struct.pack(">d", value.value))
    else:
        raise TypeError(f"the SDK's files hold JSON-like values, not {type(value).__name__}")


def _js_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    raise TypeError(f"a JavaScript object key is a string, not {type(key).__name__}")


def _js_order(mapping: Mapping[Any, Any]) -> list[tuple[str, Any]]:
    """Keys as JavaScript enumerates an object's: array indexes ascending, then the rest."""
    items = [(_js_key(k), v) for k, v in mapping.items()]
    index = sorted(
        ((k, v) for k, v in items if _INDEX_KEY.match(k) and int(k) < 2**32 - 1),
        key=lambda kv: int(kv[0]),
    )
    taken = {k for k, _ in index}
    return index + [(k, v) for k, v in items if k not in taken]


def _number(value: float | int) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return _Float64(value)
        if value.is_integer() and -(2**32) <= value < 2**32:
            return int(value)
        return value
    if -(2**32) <= value < 2**32:
        return value
    return float(value)  # a JavaScript number, as the SDK would hold it


def _js(value: Any) -> Any:
    """``value`` as cbor-x writes a JavaScript value inside an object."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, Mapping):
        return _Map16([(k, _js(v)) for k, v in _js_order(value)])
    if isinstance(value, (list, tuple)):
        return [_js(v) for v in value]
    raise TypeError(f"the SDK's files hold JSON-like values, not {type(value).__name__}")


def _top(value: Any) -> Any:
    """s5.js ``preprocessValue``: objects become maps sorted by ``localeCompare`` (their
    values left as they are), arrays are processed item by item."""
    if isinstance(value, (list, tuple)):
        return [_top(v) for v in value]
    if isinstance(value, Mapping):
        items = sorted(_js_order(value), key=lambda kv: s5js_sort_key(kv[0]))
        return {k: _js(v) for k, v in items}
    if isinstance(value, int) and not isinstance(value, bool) and value > _MAX_SAFE_INTEGER:
        return value  # a BigInt: an unsigned 64-bit integer
    return _js(value)


def encode_sdk_object(value: Any) -> bytes:
    """The bytes s5.js ``fs.put(path, value)`` stores for a JSON-like ``value``
    (``LONE_SURROGATE`` for a string UTF-8 cannot carry)."""
    try:
        return cbor2.dumps(_top(value), default=_default)
    except UnicodeEncodeError:
        check_strings_utf8(value, "the conversation")
        raise


def _from_js(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {
            _js_key(k) if isinstance(k, (str, int)) else str(k): _from_js(v, where)
            for k, v in value.items()
            if v is not cbor2.undefined
        }
    if isinstance(value, list):
        return [None if v is cbor2.undefined else _from_js(v, where) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
        return int(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise IntegrityError(f"{where} holds a {type(value).__name__}, not a JSON-like value")


def decode_sdk_object(data: bytes, *, where: str = "the file") -> Any:
    """What s5.js ``fs.get`` returns for ``data``: CBOR if the bytes are one CBOR value,
    else JSON; ``IntegrityError`` if neither (or a CBOR value that JSON cannot hold). Bounded
    like every stored document (:data:`~langchain_fabstir._json.MAX_STORED_BYTES`, depth)."""
    if len(data) > MAX_STORED_BYTES:
        raise IntegrityError(f"{where} is larger than {MAX_STORED_BYTES} bytes")
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
        cbor_ok = fp.tell() == len(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        cbor_ok = False
    if cbor_ok and not isinstance(value, str):
        return _from_js(value, where)
    try:
        return loads_untrusted(data, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES)
    except (ValueError, UnicodeDecodeError):
        if cbor_ok:
            return value
        raise IntegrityError(f"{where} is neither CBOR nor JSON") from None


_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class SdkConversation:
    """One conversation of the SDK's session flow, exactly where and as the SDK keeps it.

    ``home/sessions/{user_address}/{session_id}/conversation.json`` in the tree of the
    user's seed, written as s5.js ``fs.put`` writes it (:func:`encode_sdk_object`; plain
    file, plain directories) and read as s5.js reads it (CBOR, else JSON). The shape::

        {"id": "42", "messages": [{"role": "user", "content": "...", "timestamp": ms,
          "metadata": {...}}, ...], "metadata": {...}, "createdAt": ms, "updatedAt": ms}

    :meth:`append` is the SDK's ``appendMessage``: load, push, ``updatedAt = now``, save
    (a new conversation starts as ``{"id", "messages": [], "metadata": {}, "createdAt",
    "updatedAt"}``). The save is a compare-and-swap on the directory's registry entry
    (:func:`~langchain_fabstir.storage.access.update_file`), redone when another writer
    (another process, or the SDK) changed the file in between: two writers lose nothing.
    Call the methods on the package's background loop (``S5Access.run``/``on_background``).

    Args:
        access: the user's :class:`~langchain_fabstir.storage.access.S5Access` (the
            identity must be the SDK's: :meth:`~langchain_fabstir.s5.S5Identity.from_private_key`).
        user_address: the ``{user}`` segment, spelled as the SDK spells it (EIP-55 for a
            key or wallet login; S5 names are case-sensitive).
        session_id: the SDK's session id (its on-chain job id, in decimal).
    """

    def __init__(
        self,
        access: S5Access,
        user_address: str,
        session_id: str,
        *,
        base_path: str = "home/sessions",
        max_attempts: int = 12,
    ) -> None:
        if not isinstance(user_address, str) or not _ADDRESS.match(user_address):
            raise ValueError("user_address must be 0x and 40 hex digits (EIP-55, as the SDK)")
        sid = str(session_id)
        if not sid or "/" in sid or sid in (".", "..") or "\x00" in sid:
            raise ValueError("session_id must be a non-empty path segment (the SDK's job id)")
        self.access = access
        self.user_address = user_address
        self.session_id = sid
        self.path = f"{base_path.strip('/')}/{user_address}/{sid}/conversation.json"
        self.max_attempts = max_attempts

    def __repr__(self) -> str:
        return f"SdkConversation({self.path!r})"

    def _decode(self, data: bytes) -> dict[str, Any]:
        obj = decode_sdk_object(data, where=f"conversation {self.session_id}")
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise IntegrityError(
                f"conversation {self.session_id} at {self.path} is not in the SDK's shape "
                "(an object with a messages list)"
            )
        return obj

    async def load(self) -> dict[str, Any] | None:
        """The stored conversation, or ``None`` when there is none."""
        data = await (await self.access.plain_fs()).get(self.path)
        return None if data is None else self._decode(data)

    async def _change(self, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        def change(old: bytes | None) -> bytes:
            now = int(time.time() * 1000)
            conv: dict[str, Any] = (
                self._decode(old)
                if old is not None
                else {
                    "id": self.session_id,
                    "messages": [],
                    "metadata": {},
                    "createdAt": now,
                    "updatedAt": now,
                }
            )
            edit(conv)
            conv["updatedAt"] = now
            return encode_sdk_object(conv)

        data = await update_file(
            await self.access.plain_fs(),
            self.path,
            change,
            media_type="application/json",  # what s5.js gives a .json name
            max_attempts=self.max_attempts,
        )
        return self._decode(data)

    async def append(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Append SDK-shaped ``messages`` in order (one compare-and-swap); returns the
        conversation as stored."""
        return await self._change(lambda conv: conv["messages"].extend(messages))

    async def clear(self) -> dict[str, Any]:
        """Empty the message list, keeping the conversation and its metadata."""
        return await self._change(lambda conv: conv.__setitem__("messages", []))
