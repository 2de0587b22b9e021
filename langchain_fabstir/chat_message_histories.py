"""``S5ChatMessageHistory``: a LangChain chat message history kept on S5, end-to-end encrypted.

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

With ``RunnableWithMessageHistory`` (deprecated in langchain-core 1.x in favour of LangGraph
persistence; see :class:`~langchain_fabstir.langgraph.saver.S5CheckpointSaver`). A factory should
share one :class:`~langchain_fabstir.storage.access.S5Access` (one HTTP client, one login)
between the histories it makes::

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
same at any history length; loading 10,000 messages downloads about 65 blobs. Each
record carries its format version (:data:`FORMAT_VERSION`): older formats are upgraded
when read, newer ones refused with ``StorageError``; ``setup()`` rewrites a history into
the current format. Several
writers may append at once (compare-and-swap on the portal's registry; nothing is lost,
each writer's messages keep their order). A process killed mid-append leaves the history
readable, with or without that append.

Errors: :class:`~langchain_fabstir.errors.StorageError` (portal unreachable),
:class:`~langchain_fabstir.errors.IntegrityError` (a record or blob that does not verify),
:class:`~langchain_fabstir.errors.AuthenticationError` (the portal refused the account).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
from pydantic import SecretStr

from langchain_fabstir._json import (
    MAX_STORED_BYTES,
    MAX_STORED_DEPTH,
    check_value_depth,
    loads_untrusted,
)
from langchain_fabstir.errors import IntegrityError, StorageError, ValueTooDeepError
from langchain_fabstir.s5 import S5FileSystem, S5Identity
from langchain_fabstir.s5.fs import split_path
from langchain_fabstir.storage.access import S5Access, SealedLog, blocking, on_background
from langchain_fabstir.storage.sealed_log import upgrade_record as upgrade

__all__ = [
    "DEFAULT_PATH_PREFIX",
    "FORMAT_VERSION",
    "UPGRADES",
    "S5Access",
    "S5ChatMessageHistory",
    "decode_messages",
    "encode_message",
    "history_path",
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
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_messages(records: Sequence[bytes], *, where: str = "history") -> list[BaseMessage]:
    """Messages from records made by :func:`encode_message` (``IntegrityError`` if bad).

    >>> from langchain_core.messages import HumanMessage
    >>> decode_messages([encode_message(HumanMessage("hi"))])
    [HumanMessage(content='hi', additional_kwargs={}, response_metadata={})]
    """
    if not records:
        return []
    try:
        # One parse for the whole batch is ~3x faster than one per record.
        dicts = loads_untrusted(
            b"[" + b",".join(records) + b"]", MAX_STORED_DEPTH + 1, max_bytes=MAX_STORED_BYTES
        )
        if len(dicts) != len(records):
            raise ValueError("a record holds more than one JSON value")
    except ValueError:
        dicts = []
        for seq, record in enumerate(records):
            try:
                dicts.append(loads_untrusted(record, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES))
            except ValueError as exc:
                raise IntegrityError(
                    f"record {seq} of {where} is not JSON", details={"record": seq}
                ) from exc
    try:
        return messages_from_dict([upgrade_record(d, where) for d in dicts])
    except StorageError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{where} holds a record that is not a message: {exc}") from exc


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
    """Chat message history on S5 (see the module docstring for setup and guarantees).

    Args:
        session_id: the conversation's id (any string).
        fs: an authenticated :class:`~langchain_fabstir.s5.S5FileSystem`, or ...
        portal_url: ... an S5 portal URL, together with
        seed_phrase: the 15-word S5 seed phrase (``SecretStr``; never printed), or
        identity: an :class:`~langchain_fabstir.s5.S5Identity`.
        path_prefix: where the history lives; ``{session_id}`` is substituted.
        seal_records: messages per sealed segment (compaction; see ``SealedLog``).
        seal_bytes: bytes after which the open tail is sealed regardless of count.
        access: share one :class:`~langchain_fabstir.storage.access.S5Access` (HTTP client)
            between many histories instead of the arguments above.
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
        self._owns_access = access is None
        self._access = access or S5Access(
            fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity
        )
        self._seal_records = seal_records
        self._seal_bytes = seal_bytes
        self._log: SealedLog | None = None

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
        snapshot = await (await self._get_log()).read()
        return decode_messages(snapshot.records, where=f"history {self.session_id!r}")

    async def _extend(self, records: list[bytes]) -> range:
        return await (await self._get_log()).extend(records)

    async def _clear(self) -> None:
        await (await self._get_log()).clear()

    async def _setup(self) -> bool:
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
        records = [encode_message(m) for m in messages]
        if records:
            await on_background(self._extend(records))

    async def aclear(self) -> None:
        """Remove every message."""
        await on_background(self._clear())

    async def acount(self) -> int:
        """Number of messages (reads only the log's head)."""

        async def count() -> int:
            return await (await self._get_log()).count()

        return await on_background(count())

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
        records = [encode_message(m) for m in messages]
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
