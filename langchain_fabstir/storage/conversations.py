"""Conversations on S5: the SDK's ``conversation.json``, saved blobs, and share codes for
moving a conversation to another device. The session layer keeps its sessions here
(:mod:`langchain_fabstir.sessions.persistence`); this module knows nothing of sessions.

Details and examples: :class:`S5ConversationStore`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from langchain_fabstir._json import MAX_STORED_BYTES, MAX_STORED_DEPTH, dumps_utf8, loads_untrusted
from langchain_fabstir.errors import IntegrityError
from langchain_fabstir.s5 import CID, S5FileSystem, S5Identity
from langchain_fabstir.s5.crypto import decrypt_mutable, derive_hash_string, encrypt_mutable
from langchain_fabstir.storage.access import S5Access, on_background, update_file
from langchain_fabstir.storage.sdk_format import decode_sdk_object, encode_sdk_object
from langchain_fabstir.storage.share import (
    EXPORT_TYPE,
    SHARE_PREFIX,
    ShareCode,
    fetch_share,
    make_share_code,
    parse_share_code,
)

__all__ = [
    "SHARE_PREFIX",
    "S5ConversationStore",
    "ShareCode",
    "export_session",
    "message_to_sdk",
    "ms_timestamp",
    "parse_share_code",
]

_ROLES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def ms_timestamp(value: datetime | float | int | None) -> int:
    """Milliseconds since the epoch (now for ``None``), as the SDK stores times."""
    if value is None:
        return int(time.time() * 1000)
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def message_to_sdk(message: Any) -> dict[str, Any]:
    """One message in the SDK's shape ``{"role","content","timestamp","metadata"}``.

    Takes an SDK-shaped mapping, an object with a ``to_sdk()`` method (the session layer's
    :class:`~langchain_fabstir.sessions.Message`), or a LangChain-style message (``type``
    and ``text``; storage imports neither layer).

    >>> m = message_to_sdk({"role": "user", "content": "hi", "metadata": {"tokenCount": 2}})
    >>> m["role"], m["content"], m["metadata"], isinstance(m["timestamp"], int)
    ('user', 'hi', {'tokenCount': 2}, True)
    >>> from langchain_core.messages import AIMessage
    >>> message_to_sdk(AIMessage("yo"))["role"]
    'assistant'
    """
    to_sdk = getattr(message, "to_sdk", None)
    if callable(to_sdk):
        return dict(to_sdk())
    if not isinstance(message, Mapping):
        kind, text = getattr(message, "type", None), getattr(message, "text", None)
        role = _ROLES.get(str(kind))
        if role is None or not isinstance(text, str):
            raise ValueError(f"the SDK has no role for {kind!r} messages")
        msg_id = getattr(message, "id", None)
        return {
            "role": role,
            "content": text,
            "timestamp": ms_timestamp(None),
            "metadata": {"id": msg_id} if msg_id else {},
        }
    role = _ROLES.get(str(message.get("role")))
    if role is None or not isinstance(message.get("content"), str):
        raise ValueError("an SDK message needs a role (user/assistant/system) and content")
    return {
        "role": role,
        "content": message["content"],
        "timestamp": ms_timestamp(message.get("timestamp")),
        "metadata": dict(message.get("metadata") or {}),
    }


def export_session(session: Any, messages: Iterable[Any]) -> dict[str, Any]:
    """A self-contained, JSON-ready export of a session and its messages.

    ``session`` is a mapping or a pydantic model (``model_dump``); messages as
    :func:`message_to_sdk` takes them.

    >>> export = export_session({"id": "s1", "model": "m"}, [{"role": "user", "content": "hi"}])
    >>> export["type"], export["session"]["id"], export["messages"][0]["content"]
    ('fabstir-session-export', 's1', 'hi')
    """
    dump = getattr(session, "model_dump", None)
    if callable(dump):
        data = dump(mode="json")
    else:
        data = json.loads(json.dumps(dict(session), default=str))
    if not data.get("id"):
        raise ValueError("an exported session needs an id")
    return {
        "type": EXPORT_TYPE,
        "version": 1,
        "exportedAt": ms_timestamp(None),
        "session": data,
        "messages": [message_to_sdk(m) for m in messages],
    }


class S5ConversationStore:
    """Conversations, saved blobs and share codes of one user on S5, end-to-end encrypted.

    Conversations live at ``home/sessions/{user_address}/{session_id}/conversation.json`` in the
    Fabstir SDK's JSON shape::

        {"id": "123",
         "messages": [{"role": "user", "content": "...", "timestamp": 1700000000000,
                       "metadata": {}}],
         "metadata": {"chainId": 84532, "model": "...", "provider": "0xhost",
                      "endpoint": "https://...", "jobId": "123", "status": "active",
                      "totalTokens": 0, "startTime": 1700000000000, "encryption": true},
         "createdAt": 1700000000000, "updatedAt": 1700000000000}

    **Encryption.** By default (``sdk_compatible=False``) the file and the directories above it
    are end-to-end encrypted with keys derived from the user's seed phrase: the portal sees
    ciphertext only, and the TypeScript SDK cannot read them (it does not know this package's
    encryption). With ``sdk_compatible=True`` the file is written as the SDK writes it (s5.js
    ``fs.put``: CBOR, byte for byte; :mod:`~langchain_fabstir.storage.sdk_format`) and the
    directories this store writes are unencrypted DirV1, so s5.js / the SDK can read them given
    the same seed phrase (:func:`~langchain_fabstir.s5.sdk_seed_phrase`); anyone holding the
    portal's blobs can read them too. Either mode reads CBOR and JSON files alike.
    ``metadata.encryption`` records which one was used; in ``sdk_compatible`` mode a value
    already stored (the SDK's own: whether its session ran encrypted) is kept.

    Appending is load -> push -> save under a per-conversation lock, and the save is a
    compare-and-swap on the directory entry, retried (tenacity) when another writer changed
    the file in between: concurrent appenders never lose messages.

    **Share codes.** :meth:`S5ConversationStore.generate_share_code` encrypts an export with a
    fresh random XChaCha20-Poly1305 key, uploads it, and returns a code holding the portal URL,
    the blob's CID and that key (``fsc1`` + base64url, with a checksum). The code is a
    capability: whoever holds it can read that one export, and nothing else; without its key
    part the blob is noise. :meth:`~S5ConversationStore.import_session` needs no account.
    A malformed or tampered code, or one whose key does not open the blob, raises
    :class:`~langchain_fabstir.errors.ShareCodeError` (``INVALID_SHARE_CODE``).

    Use::

        store = S5ConversationStore(portal_url=url, seed_phrase=phrase, user_address="0xabc")
        await store.save_conversation("42", [{"role": "user", "content": "hi"}],
                                      metadata={"model": "m"})
        conv = await store.load_conversation("42")          # dict in the SDK shape, or None
        cid = await store.save_to_s5({"any": "json"})       # encrypted blob -> CID string
        code = await store.generate_share_code(export_session({"id": "42"}, messages))
        imported = await other_store.import_session(code)   # {"session": ..., "messages": ...}

    Args:
        fs, portal_url, seed_phrase, identity, access: where to store: an
            :class:`~langchain_fabstir.storage.access.S5Access` (positional or
            ``access=``), or the shorthand keywords that make one (as for
            :class:`~langchain_fabstir.chat_message_histories.S5ChatMessageHistory`).
        user_address: the user's wallet address (a path segment of every conversation).
        sdk_compatible: write plain JSON the TypeScript SDK can read (default: encrypted).
        base_path: root of the conversations (``home/sessions``).
        max_attempts: compare-and-swap attempts of one save under contention.
    """

    def __init__(
        self,
        fs: S5Access | S5FileSystem | None = None,
        *,
        user_address: str,
        portal_url: str | None = None,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
        sdk_compatible: bool = False,
        base_path: str = "home/sessions",
        max_attempts: int = 12,
        access: S5Access | None = None,
    ) -> None:
        if not user_address or "/" in user_address:
            raise ValueError("user_address must be a non-empty string without '/'")
        self.user_address = user_address
        self.sdk_compatible = sdk_compatible
        self.base_path = base_path.strip("/")
        self.max_attempts = max_attempts
        self._access, self._owns_access = S5Access.resolve(
            access, fs=fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity
        )
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return (
            f"S5ConversationStore({self._access.portal_url!r}, user={self.user_address!r}, "
            f"sdk_compatible={self.sdk_compatible})"
        )

    def conversation_path(self, session_id: str) -> str:
        """``home/sessions/{user_address}/{session_id}/conversation.json``."""
        if not session_id:
            raise ValueError("session_id must not be empty")
        sid = quote(str(session_id), safe="")
        if sid in (".", ".."):
            sid = sid.replace(".", "%2E")
        return f"{self.base_path}/{self.user_address}/{sid}/conversation.json"

    async def _fs(self) -> S5FileSystem:
        return await (self._access.plain_fs() if self.sdk_compatible else self._access.fs())

    # --- conversations -------------------------------------------------------------

    async def load_conversation(self, session_id: str) -> dict[str, Any] | None:
        """The stored conversation (SDK shape), or ``None``."""

        async def load() -> dict[str, Any] | None:
            data = await (await self._fs()).get(self.conversation_path(session_id))
            return None if data is None else self._decode(data, session_id)

        return await on_background(load())

    def _decode(self, data: bytes, session_id: str) -> dict[str, Any]:
        obj = decode_sdk_object(data, where=f"conversation {session_id}")
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise IntegrityError(f"conversation {session_id} is not in the SDK shape")
        return obj

    async def save_conversation(
        self,
        session_id: str,
        messages: Iterable[Any] = (),
        *,
        metadata: Mapping[str, Any] | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Append ``messages`` (or, with ``replace=True``, set them) and merge ``metadata``.

        Creates the conversation if it does not exist. Returns what was stored.
        """
        new_messages = [message_to_sdk(m) for m in messages]
        given = dict(metadata or {})
        extra = dict(given)
        if self.sdk_compatible:
            extra.setdefault("encryption", False)
        else:
            extra["encryption"] = True

        def change(old: bytes | None) -> bytes:
            now = ms_timestamp(None)
            conv: dict[str, Any] = (
                self._decode(old, session_id)
                if old is not None
                else {"id": str(session_id), "messages": [], "metadata": {}, "createdAt": now}
            )
            conv["messages"] = new_messages if replace else [*conv["messages"], *new_messages]
            stored = conv.get("metadata") or {}
            if self.sdk_compatible and "encryption" in stored and "encryption" not in given:
                extra.pop("encryption", None)  # the SDK's own flag stays
            conv["metadata"] = {**stored, **extra}
            conv["updatedAt"] = now
            if self.sdk_compatible:
                return encode_sdk_object(conv)
            return dumps_utf8(conv, what="the conversation")

        async def save() -> dict[str, Any]:
            lock = self._locks.setdefault(str(session_id), asyncio.Lock())
            async with lock:
                data = await update_file(
                    await self._fs(),
                    self.conversation_path(session_id),
                    change,
                    max_attempts=self.max_attempts,
                )
            return self._decode(data, session_id)

        return await on_background(save())

    async def delete_conversation(self, session_id: str) -> bool:
        """Remove the conversation file; ``False`` if there was none."""

        async def delete() -> bool:
            return await (await self._fs()).delete(self.conversation_path(session_id))

        return await on_background(delete())

    # --- saved blobs ---------------------------------------------------------------

    async def _blob_key(self) -> bytes:
        return derive_hash_string(await self._access.file_key(), "fabstir/save-to-s5/v1")

    async def save_to_s5(self, data: Mapping[str, Any]) -> str:
        """Upload ``data`` (JSON) as a blob encrypted for this user; return its CID."""
        plain = dumps_utf8(data, what="the conversation")

        async def save(fs: S5FileSystem) -> str:
            blob = encrypt_mutable(plain, await self._blob_key())
            return str(await fs.client.upload(blob))

        return await self._access.run(save)

    async def load_from_s5(self, cid: str) -> dict[str, Any]:
        """The JSON saved by :meth:`save_to_s5` (``IntegrityError`` for another user's)."""

        async def load(fs: S5FileSystem) -> dict[str, Any]:
            blob = await fs.client.download(CID.coerce(cid))
            obj = loads_untrusted(
                decrypt_mutable(blob, await self._blob_key()),
                MAX_STORED_DEPTH,
                max_bytes=MAX_STORED_BYTES,
            )
            if not isinstance(obj, dict):
                raise IntegrityError(f"blob {cid} does not hold a JSON object")
            return obj

        try:
            return await self._access.run(load)
        except ValueError as exc:
            raise IntegrityError(f"blob {cid} does not hold JSON") from exc

    # --- sharing -------------------------------------------------------------------

    @staticmethod
    def export_session(session: Any, messages: Iterable[Any]) -> dict[str, Any]:
        """A self-contained export of a session and its messages (see :func:`export_session`)."""
        return export_session(session, messages)

    async def generate_share_code(self, export: Mapping[str, Any]) -> str:
        """Encrypt ``export`` with a fresh key, upload it, return the share code."""
        plain = dumps_utf8(export, what="the conversation")
        key = os.urandom(32)

        async def share(fs: S5FileSystem) -> str:
            cid = await fs.client.upload(encrypt_mutable(plain, key))
            return make_share_code(self._access.portal_url, cid, key)

        return await self._access.run(share)

    async def import_session(self, share_code: str) -> dict[str, Any]:
        """The export behind ``share_code`` (``ShareCodeError`` if malformed or wrong key)."""
        code = parse_share_code(share_code)
        return await on_background(fetch_share(code))

    async def aclose(self) -> None:
        """Close the HTTP client this store opened (if it opened one)."""
        if self._owns_access:
            await self._access.aclose()
