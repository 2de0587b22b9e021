"""``S5ChatMessageHistory``: a LangChain chat message history kept on S5, end-to-end encrypted.

Details and examples: :class:`S5ChatMessageHistory`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from pydantic import SecretStr

from langchain_fabstir._json import (
    MAX_STORED_BYTES,
    MAX_STORED_DEPTH,
    check_value_depth,
    dumps_utf8,
    loads_untrusted,
    too_deep,
)
from langchain_fabstir.errors import (
    IntegrityError,
    InvalidRequestError,
    StorageError,
    ValueTooDeepError,
)
from langchain_fabstir.s5 import S5FileSystem, S5Identity
from langchain_fabstir.s5.fs import split_path
from langchain_fabstir.storage.access import S5Access, SealedLog, blocking, on_background
from langchain_fabstir.storage.sdk_format import SdkConversation
from langchain_fabstir.storage.sealed_log import upgrade_record as upgrade

try:  # a dependency on CPython (pyproject); json does the same, slower
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_PATH_PREFIX",
    "FORMAT_VERSION",
    "UPGRADES",
    "S5Access",
    "S5ChatMessageHistory",
    "decode_messages",
    "encode_message",
    "history_path",
    "message_from_sdk_record",
    "message_to_sdk_record",
    "upgrade_record",
]

DEFAULT_PATH_PREFIX = "home/langchain/histories/{session_id}"

FORMAT_VERSION = 1
"""The format of the records this release writes: ``message_to_dict(message)`` plus
``"v": FORMAT_VERSION``. Format 0 (records without ``"v"``, releases before the format was
versioned) has the same shape."""

UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: lambda rec: rec}
"""``UPGRADES[n]`` turns a format-``n`` record into a format ``n + 1`` one (a release that
changes the format bumps :data:`FORMAT_VERSION` and adds the step here)."""


def upgrade_record(rec: dict[str, Any], where: str = "history") -> dict[str, Any]:
    """``rec`` (without its ``"v"``) in the current format; ``StorageError`` for a record
    written by a newer release."""
    rec = upgrade(rec, current=FORMAT_VERSION, upgrades=UPGRADES, what=where)
    del rec["v"]
    return rec


def encode_message(message: BaseMessage) -> bytes:
    """One history record: ``message_to_dict(message)`` and the format version, as
    compact UTF-8 JSON.

    >>> from langchain_core.messages import AIMessage
    >>> encode_message(AIMessage("hi", id="a1"))[:40]
    b'{"v":1,"type":"ai","data":{"content":"hi'
    """
    record = {"v": FORMAT_VERSION, **message_to_dict(message)}
    try:
        check_value_depth(record, what="the message")
    except ValueError as exc:  # a reader could not decode it: refuse it before it is written
        raise ValueTooDeepError(str(exc)) from None
    return dumps_utf8(record, what="the message", separators=(",", ":"))


def decode_messages(records: Sequence[bytes], *, where: str = "history") -> list[BaseMessage]:
    """Messages from records made by :func:`encode_message` (``IntegrityError`` if bad).

    >>> from langchain_core.messages import HumanMessage
    >>> decode_messages([encode_message(HumanMessage("hi"))])
    [HumanMessage(content='hi', additional_kwargs={}, response_metadata={})]
    """
    messages: list[BaseMessage] = []
    for seq, record in enumerate(records):
        # One parse per record: a record cannot nest past its own brackets, so its depth
        # bound is checked in O(1) for all but long bracket-heavy ones (a batch parse of
        # the records joined would need a full scan for the depth of the whole).
        try:
            rec = _loads_record(record)
        except ValueError as exc:
            raise IntegrityError(
                f"record {seq} of {where} is not JSON", details={"record": seq}
            ) from exc
        message = _plain_message(rec)
        if message is None:
            try:
                message = messages_from_dict([upgrade_record(rec, where)])[0]
            except StorageError:
                raise
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise IntegrityError(
                    f"{where} holds a record that is not a message: {exc}",
                    details={"record": seq},
                ) from exc
        messages.append(message)
    return messages


# A run of 19 digits may be an integer beyond 64 bits, which orjson reads as a float
# (found with ``in`` on the digits mapped to "0": several times faster than a regex).
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _loads_record(record: bytes) -> Any:
    """``loads_untrusted(record, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES)``, about 3x
    faster: orjson when it gives exactly what ``json`` gives (same bounds first), else
    ``json`` (``NaN``, lone surrogates, integers beyond 64 bits, a BOM, or no orjson)."""
    if (
        _orjson is None
        or len(record) > MAX_STORED_BYTES
        or too_deep(record, MAX_STORED_DEPTH)
        or _LONG_NUMBER in record.translate(_ZERO_DIGITS)
    ):
        return loads_untrusted(record, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES)
    try:
        return _orjson.loads(record)
    except _orjson.JSONDecodeError:  # what only json takes, or not JSON: json decides
        return loads_untrusted(record, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES)


_PLAIN_TYPES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "system": SystemMessage,
}
_FIELDS = {name: frozenset(cls.model_fields) for name, cls in _PLAIN_TYPES.items()}
_ORDER = {name: tuple(cls.model_fields) for name, cls in _PLAIN_TYPES.items()}
_USAGE_KEYS = frozenset(UsageMetadata.__required_keys__)
_DETAIL_KEYS = {
    "input_token_details": frozenset(InputTokenDetails.__annotations__),
    "output_token_details": frozenset(OutputTokenDetails.__annotations__),
}
_set = object.__setattr__


def _plain_message(record: Any) -> BaseMessage | None:
    """The message of a current-format record that validation would take exactly as it
    is, built without running validation (about 4x faster); ``None`` for anything else
    (then the caller validates it as ``messages_from_dict`` does).

    Plain means: a human, AI or system message whose data has exactly the model's fields,
    text content, dict metadata, a string or ``None`` name and id, and (AI) no tool calls
    and a usage record of known keys with int counts. The checks are on exact types, so a
    value validation would convert (a number id, a ``bool`` count) goes the slow way.
    """
    if type(record) is not dict or record.get("v") != FORMAT_VERSION:
        return None
    kind = record.get("type")
    cls = _PLAIN_TYPES.get(kind)  # type: ignore[arg-type]
    data = record.get("data")
    if (
        cls is None
        or type(data) is not dict
        or data.keys() != _FIELDS[kind]  # type: ignore[index]
        or data["type"] != kind
        or type(data["content"]) is not str
        or type(data["additional_kwargs"]) is not dict
        or type(data["response_metadata"]) is not dict
        or not (data["name"] is None or type(data["name"]) is str)
        or not (data["id"] is None or type(data["id"]) is str)
    ):
        return None
    if cls is AIMessage and (
        data["tool_calls"] != []
        or data["invalid_tool_calls"] != []
        or "tool_calls" in data["additional_kwargs"]
        or not _plain_usage(data["usage_metadata"])
    ):
        return None
    # What ``model_construct`` does, for a dict that has every field: the validated
    # message compares equal, serialises the same, has the same fields set (in field
    # order: tests/unit_tests/test_fast_paths.py).
    if tuple(data) != _ORDER[kind]:
        data = {name: data[name] for name in _ORDER[kind]}
    message = cls.__new__(cls)
    _set(message, "__dict__", data)
    _set(message, "__pydantic_fields_set__", set(data))
    _set(message, "__pydantic_extra__", {})
    _set(message, "__pydantic_private__", None)
    return message


def _plain_usage(usage: Any) -> bool:
    if usage is None:
        return True
    if type(usage) is not dict or not usage.keys() >= _USAGE_KEYS:
        return False
    for key, value in usage.items():
        if key in _USAGE_KEYS:
            if type(value) is not int:
                return False
        else:
            known = _DETAIL_KEYS.get(key)
            if (
                known is None
                or type(value) is not dict
                or not value.keys() <= known
                or any(type(v) is not int for v in value.values())
            ):
                return False
    return True


_SDK_ROLES: dict[str, str] = {"human": "user", "ai": "assistant", "system": "system"}
_LC_TYPES: dict[str, type[BaseMessage]] = {
    "user": HumanMessage,
    "assistant": AIMessage,
    "system": SystemMessage,
}


def message_to_sdk_record(message: BaseMessage) -> dict[str, Any]:
    """``message`` as the SDK stores one: ``{"role", "content", "timestamp"[, "metadata"]}``.

    Human, AI and system messages with text content only: the SDK's format has no place
    for tool calls, tool results or images, so those raise
    :class:`~langchain_fabstir.errors.InvalidRequestError` (``INVALID_REQUEST``) rather
    than being dropped. ``response_metadata["timestamp"]`` (milliseconds) and
    ``response_metadata["metadata"]`` are kept when present (as :func:`message_from_sdk_record`
    sets them); a message ``id`` goes into ``metadata["id"]``.

    >>> message_to_sdk_record(HumanMessage("hi", response_metadata={"timestamp": 17}))
    {'role': 'user', 'content': 'hi', 'timestamp': 17}
    """
    role = _SDK_ROLES.get(message.type)
    if role is None:
        raise InvalidRequestError(
            f"the SDK's conversation format has no place for a {message.type!r} message; "
            "use the default S5ChatMessageHistory format for tool calling histories",
            details={"type": message.type},
        )
    if isinstance(message, AIMessage) and message.tool_calls:
        raise InvalidRequestError(
            "the SDK's conversation format has no place for tool calls; use the default "
            "S5ChatMessageHistory format for tool calling histories",
            details={"type": "ai", "tool_calls": len(message.tool_calls)},
        )
    content = message.content
    if not isinstance(content, str):
        if any(
            not (isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text"))
            for b in content
        ):
            raise InvalidRequestError(
                "the SDK's conversation format keeps text only (no images or other blocks)",
                details={"type": message.type},
            )
        content = message.text
    meta = message.response_metadata or {}
    stamp = meta.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        stamp = int(time.time() * 1000)
    extra = dict(meta["metadata"]) if isinstance(meta.get("metadata"), dict) else {}
    if message.id and "id" not in extra:
        extra["id"] = message.id
    record: dict[str, Any] = {"role": role, "content": content, "timestamp": stamp}
    if extra:
        record["metadata"] = extra
    return record


def message_from_sdk_record(record: Any, *, where: str = "conversation") -> BaseMessage:
    """A LangChain message from one SDK message (``IntegrityError`` if it is not one).

    ``timestamp`` and ``metadata`` go into ``response_metadata``; ``metadata["id"]``
    becomes the message id.

    >>> m = message_from_sdk_record({"role": "assistant", "content": "yo", "timestamp": 5})
    >>> m.type, m.content, m.response_metadata
    ('ai', 'yo', {'timestamp': 5})
    """
    if not isinstance(record, dict):
        raise IntegrityError(f"{where} holds a message that is not an object")
    kind = _LC_TYPES.get(str(record.get("role")))
    content = record.get("content")
    if kind is None or not isinstance(content, str):
        raise IntegrityError(
            f"{where} holds a message without a known role (user/assistant/system) and "
            "text content",
            details={"role": str(record.get("role"))[:32]},
        )
    meta: dict[str, Any] = {}
    stamp = record.get("timestamp")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        meta["timestamp"] = stamp
    extra = record.get("metadata")
    msg_id = None
    if isinstance(extra, dict) and extra:
        meta["metadata"] = extra
        msg_id = extra.get("id") if isinstance(extra.get("id"), str) else None
    return kind(content=content, id=msg_id, response_metadata=meta)


def history_path(session_id: str, path_prefix: str = DEFAULT_PATH_PREFIX) -> str:
    """The S5 path of a history (``session_id`` percent-encoded into one path segment).

    >>> history_path("chat/1")
    'home/langchain/histories/chat%2F1'
    """
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("session_id must be a non-empty string")
    segment = quote(session_id, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    path = path_prefix.format(session_id=segment)
    return "/".join(split_path(path))


class S5ChatMessageHistory(BaseChatMessageHistory):
    """Chat message history on S5, end-to-end encrypted.

    Setup::

        from pydantic import SecretStr
        from langchain_fabstir.chat_message_histories import S5ChatMessageHistory

        history = S5ChatMessageHistory(
            "session-1",
            portal_url="http://127.0.0.1:5050",            # e.g. ``fabstir portal``
            seed_phrase=SecretStr("fifteen words ..."),    # the user's S5 seed phrase
        )

    or, with a file system you already hold, ``S5ChatMessageHistory("session-1", fs=fs)``.

    Use (sync or async; sync works inside a running event loop too, e.g. in a notebook)::

        history.add_messages([HumanMessage("hi"), AIMessage("hello")])
        history.messages                    # [HumanMessage('hi'), AIMessage('hello')]
        await history.aadd_messages([...]); await history.aget_messages(); await history.aclear()

    With ``RunnableWithMessageHistory`` (deprecated in langchain-core 1.x in favour of
    LangGraph persistence; see :class:`~langchain_fabstir.langgraph.saver.S5CheckpointSaver`).
    A factory should share one :class:`~langchain_fabstir.storage.access.S5Access` (one
    HTTP client, one login) between the histories it makes::

        access = S5Access(portal_url=url, seed_phrase=phrase)
        chain = RunnableWithMessageHistory(
            model,
            lambda session_id: S5ChatMessageHistory(session_id, access=access),
        )
        chain.invoke([HumanMessage("hi")], config={"configurable": {"session_id": "s-1"}})

    Storage: one :class:`~langchain_fabstir.storage.sealed_log.SealedLog` per history at
    ``path_prefix`` (default ``home/langchain/histories/{session_id}``), one record per
    message (``message_to_dict`` as JSON, so every message type round-trips losslessly: tool
    calls, usage metadata, response metadata, ids, ``AIMessageChunk``). Appending costs the
    same at any history length (now and then an append also merges sealed segments, each
    message once per size tier); loading 10,000 messages downloads a few blobs (the head and
    a few segments per size tier: 2 in ``make bench``, 65 before merging). Each record
    carries its format version (:data:`FORMAT_VERSION`):
    older formats are upgraded when read, newer ones refused with ``StorageError``;
    ``setup()`` rewrites a history into the current format. Several writers may append at
    once (compare-and-swap on the portal's registry; nothing is lost,
    each writer's messages keep their order). A process killed mid-append leaves the history
    readable, with or without that append.

    Shared with the Fabstir TypeScript SDK: :meth:`S5ChatMessageHistory.from_sdk` reads and
    writes the SDK's own ``home/sessions/{user}/{sessionId}/conversation.json`` in the SDK's
    format, under the S5 identity the SDK derives from the same private key::

        history = S5ChatMessageHistory.from_sdk(
            "42", private_key=SecretStr("0x..."), portal_url="https://s5.example.org"
        )
        history.messages       # what the SDK's SessionManager stored for job 42

    Errors: :class:`~langchain_fabstir.errors.StorageError` (portal unreachable),
    :class:`~langchain_fabstir.errors.IntegrityError` (a record or blob that does not verify),
    :class:`~langchain_fabstir.errors.AuthenticationError` (the portal refused the account).

    Args:
        session_id: the conversation's id (any string).
        access: where the history lives: an
            :class:`~langchain_fabstir.storage.access.S5Access`
            (``S5Access.from_portal(url, seed_phrase=...)``, ``.from_env()``,
            ``.from_fs(fs)``), which many histories, savers and stores may share.
        fs, portal_url, seed_phrase, identity: instead of ``access``, a shorthand that
            makes one (as :class:`~langchain_fabstir.storage.access.S5Access` takes them;
            the seed phrase as ``SecretStr``, never printed); the history closes it.
        path_prefix: where the history lives; ``{session_id}`` is substituted.
        seal_records: messages per sealed segment (compaction; see ``SealedLog``).
        seal_bytes: bytes after which the open tail is sealed regardless of count.
    """

    def __init__(
        self,
        session_id: str,
        *,
        fs: S5FileSystem | None = None,
        portal_url: str | None = None,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
        path_prefix: str = DEFAULT_PATH_PREFIX,
        seal_records: int = 256,
        seal_bytes: int = 64 * 1024,
        access: S5Access | None = None,
    ) -> None:
        self.session_id = session_id
        self.path = history_path(session_id, path_prefix)
        self._access, self._owns_access = S5Access.resolve(
            access, fs=fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity
        )
        self._seal_records = seal_records
        self._seal_bytes = seal_bytes
        self._log: SealedLog | None = None
        self._sdk: SdkConversation | None = None

    @classmethod
    def from_sdk(
        cls,
        session_id: str | int,
        *,
        private_key: SecretStr | str | None = None,
        seed_phrase: SecretStr | str | None = None,
        user_address: str | None = None,
        portal_url: str | None = None,
        fs: S5FileSystem | None = None,
        access: S5Access | None = None,
        max_attempts: int = 12,
    ) -> S5ChatMessageHistory:
        """The history of one SDK session, in the Fabstir TypeScript SDK's own file.

        Reads and writes ``home/sessions/{user}/{session_id}/conversation.json`` as the
        SDK's ``SessionManager`` keeps it (s5.js CBOR, plain, the SDK's message shape; see
        :class:`~langchain_fabstir.storage.sdk_format.SdkConversation`), so a conversation
        the SDK saved loads here and one appended here loads in the SDK. Appends are
        compare-and-swap on the directory's registry revision: a Python writer and the SDK
        (or two Python writers) lose nothing. ``clear()`` empties the message list and
        keeps the conversation's metadata.

        Args:
            session_id: the SDK's session id (its on-chain job id, decimal).
            private_key: the wallet key the SDK logs in with (``authenticate("privatekey")``):
                the S5 identity is :meth:`S5Identity.from_private_key` and ``{user}`` its
                EIP-55 address. Never stored or shown.
            seed_phrase: instead of ``private_key``: the SDK user's phrase (e.g.
                ``sdk_seed_phrase(address=..., chain_id=...)`` for a wallet login); needs
                ``user_address``.
            user_address: the ``{user}`` segment (normalised to EIP-55, as the SDK spells
                it); derived from ``private_key`` when omitted.
            portal_url: the S5 portal (the SDK's default is ``https://s5.platformlessai.ai``).
            fs, access: an existing file system or :class:`S5Access` of the SDK identity,
                instead of a secret and ``portal_url``.

        Only human, AI and system messages with text content fit the SDK's format;
        anything else raises ``InvalidRequestError`` (``INVALID_REQUEST``).
        """
        from langchain_fabstir.checkpoints.signing import address_of, normalize_address

        if private_key is not None and seed_phrase is not None:
            raise ValueError("pass private_key= or seed_phrase=, not both")
        identity: S5Identity | None = None
        if private_key is not None:
            identity = S5Identity.from_private_key(private_key)
            if user_address is None:
                user_address = address_of(private_key)
        elif seed_phrase is not None:
            identity = S5Identity.from_phrase(seed_phrase)
        if user_address is None:
            raise ValueError("user_address= is needed unless private_key= is given")
        user = normalize_address(user_address, what="user_address")
        # The identity also names the user: it makes the access only when none is given.
        shared, owns = S5Access.resolve(
            access,
            fs=fs,
            portal_url=portal_url,
            identity=identity if access is None and fs is None else None,
        )
        history = cls(str(session_id), access=shared)
        history._owns_access = owns
        history._sdk = SdkConversation(shared, user, str(session_id), max_attempts=max_attempts)
        history.path = history._sdk.path
        return history

    def __repr__(self) -> str:
        return f"S5ChatMessageHistory({self.session_id!r}, path={self.path!r})"

    async def _get_log(self) -> SealedLog:
        if self._log is None:
            fs = await self._access.fs()
            self._log = SealedLog(
                fs,
                self.path,
                await self._access.write_key(self.path),
                seal_records=self._seal_records,
                seal_bytes=self._seal_bytes,
            )
        return self._log

    # --- async (native) ----------------------------------------------------------

    async def _read(self) -> list[BaseMessage]:
        if self._sdk is not None:
            conv = await self._sdk.load()
            where = f"conversation {self.session_id!r}"
            return [
                message_from_sdk_record(m, where=where) for m in (conv or {}).get("messages", [])
            ]
        snapshot = await (await self._get_log()).read()
        return decode_messages(snapshot.records, where=f"history {self.session_id!r}")

    def _records(self, messages: Sequence[BaseMessage]) -> list[Any]:
        if self._sdk is not None:
            return [message_to_sdk_record(m) for m in messages]
        return [encode_message(m) for m in messages]

    async def _extend(self, records: list[Any]) -> None:
        if self._sdk is not None:
            await self._sdk.append(records)
            return
        await (await self._get_log()).extend(records)

    async def _clear(self) -> None:
        if self._sdk is not None:
            if await self._sdk.load() is not None:
                await self._sdk.clear()
            return
        await (await self._get_log()).clear()

    async def _count(self) -> int:
        if self._sdk is not None:
            conv = await self._sdk.load()
            return len((conv or {}).get("messages", []))
        return await (await self._get_log()).count()

    async def _setup(self) -> bool:
        if self._sdk is not None:
            return False  # the SDK's format has no versions to migrate
        where = f"history {self.session_id!r}"

        def transform(records: list[bytes]) -> list[bytes] | None:
            current = [
                loads_untrusted(r, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES).get("v", 0)
                == FORMAT_VERSION
                for r in records
            ]
            if all(current):
                return None
            return [encode_message(m) for m in decode_messages(records, where=where)]

        return await (await self._get_log()).rewrite(transform)

    async def asetup(self) -> bool:
        """Rewrite this history's records into this release's format, atomically (an
        append made meanwhile is not lost). Optional: older formats are upgraded when
        read anyway; newer ones are refused with ``StorageError``. Returns whether
        anything was rewritten."""
        return await on_background(self._setup())

    def setup(self) -> bool:
        """Blocking :meth:`asetup`."""
        return blocking(self._setup())

    async def aget_messages(self) -> list[BaseMessage]:
        """All messages, oldest first."""
        return await on_background(self._read())

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order (one atomic append)."""
        records = self._records(messages)
        if records:
            await on_background(self._extend(records))

    async def aclear(self) -> None:
        """Remove every message."""
        await on_background(self._clear())

    async def acount(self) -> int:
        """Number of messages (reads only the log's head)."""

        return await on_background(self._count())

    async def aclose(self) -> None:
        """Close the HTTP client this history opened (if it opened one)."""
        if self._owns_access:
            await self._access.aclose()

    # --- sync --------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """All messages, oldest first (blocking)."""
        return blocking(self._read())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order (blocking)."""
        records = self._records(messages)
        if records:
            blocking(self._extend(records))

    def clear(self) -> None:
        """Remove every message (blocking)."""
        blocking(self._clear())

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        if self._owns_access:
            self._access.close()

    def __enter__(self) -> S5ChatMessageHistory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> S5ChatMessageHistory:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
