"""The encrypted conversation of one socket: session key, chunk order, replay checks.

:class:`SealedConversation` is what the session layer keeps about an encrypted socket
(PROTOCOL.md section 4): the session cipher, the node session id the latest
``encrypted_session_init`` named, what the node holds for it, and the state of the answer
being opened. It does no I/O: the connector creates it after the init's ack, the answer
driver (``sessions/stream.py``) seals prompts with it, the answer machine
(``sessions/answer.py``) opens frames with it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import (
    AnswerTruncatedError,
    EncryptionModeError,
    FabstirError,
    ProtocolError,
)
from langchain_fabstir.sessions.conversation import (
    ENCRYPTED_CONTEXT_FEATURE,
    TurnPlan,
    plan_turn,
    with_images,
)
from langchain_fabstir.wire.encryption import IMAGE_AAD, SessionCipher

__all__ = ["ImageReply", "SealedConversation", "SealedPrompt"]

_IMAGE_AAD_HEX = IMAGE_AAD.hex()
_IMAGE_REPLIES = ("image_generation_result", "image_generation_error")


class ImageReply:
    """An ``encrypted_response`` sealed with AAD ``encrypted_image_response`` (PROTOCOL.md
    6.3), opened: the node's JSON ``reply`` (``type`` ``image_generation_result`` or
    ``image_generation_error``). Only :meth:`SealedConversation.open` makes these, so a
    frame sent in clear can never pass for one."""

    __slots__ = ("id", "reply")

    def __init__(self, id: Any, reply: dict[str, Any]) -> None:
        self.id, self.reply = id, reply

    @property
    def ok(self) -> bool:
        return self.reply.get("type") == "image_generation_result"


class SealedPrompt:
    """A prompt ready to seal: the request as the node will read it, and whether it
    needs a fresh node session first (see :meth:`SealedConversation.plan`)."""

    __slots__ = ("context", "new_node_session", "payload", "request", "told")

    def __init__(
        self,
        payload: dict[str, Any],
        request: dict[str, Any],
        context: list[dict[str, str]],
        told: dict[str, Any],
        new_node_session: bool,
    ) -> None:
        self.payload = payload
        self.request = request
        self.context = context
        self.told = told
        self.new_node_session = new_node_session


class SealedConversation:
    """One socket's encrypted conversation, as the session layer knows it.

    Sending: :meth:`plan` decides how the conversation reaches the node (a deployed node
    ignores ``conversation_context`` inside the ciphertext and has no system-prompt
    field, so it travels as prompt text, see
    :func:`~langchain_fabstir.sessions.conversation.plan_turn`; a host that announced
    ``encrypted_context`` gets it as ``conversation_context``); when the plan asks for a
    fresh node session the driver awaits :attr:`renew` (a new ``encrypted_session_init``
    on the same socket, which re-keys this object with :meth:`rekey`); :meth:`seal`
    gives the ``encrypted_message`` text.

    Receiving: :meth:`open` turns ``encrypted_chunk`` into the ``stream_chunk`` it stands
    for (its index checked in order, its nonce new under the key), the sealed
    ``encrypted_response`` into the finish reason, and refuses answer text in clear,
    frames that do not authenticate (``DECRYPTION_FAILED``), reordered chunks
    (``CHUNK_OUT_OF_ORDER``), replayed frames (``CHUNK_REPLAYED``), an answer that ends
    "complete" without its sealed final frame or (hosts that announce ``chunk_count``,
    and any host once it sealed a count on this key) with fewer chunks than the host
    sealed (``ANSWER_TRUNCATED``). Deployed nodes seal no count: against them a relay
    that drops the last chunks of an answer and forwards the final frames cannot be
    detected.

    Attributes:
        cipher: the session key and its frame counters.
        node_session_id: the session id of the latest ``encrypted_session_init``.
        held: the conversation the node holds for that id, as far as the client knows
            (``None``: unknown).
    """

    def __init__(
        self,
        cipher: SessionCipher,
        *,
        host_url: str,
        features: list[str],
        node_session_id: str | None = None,
        fresh: bool = True,
        renew: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.host_url = host_url
        self.features = features
        self.cipher = cipher
        self.held: list[dict[str, str]] | None = [] if fresh else None
        self.node_session_id = node_session_id
        self.renew = renew
        """Opens a fresh node session on the socket (calls :meth:`rekey`)."""
        self._asked: list[dict[str, str]] = []
        self._answer: list[str] = []
        self._rid: Any = None  # the id of the prompt being answered
        self._final: str | None = None  # its authenticated finish reason
        self._counted = False  # this host sealed a chunk count in a final frame
        self._held_before: list[dict[str, str]] | None = None

    def rekey(
        self, cipher: SessionCipher, *, node_session_id: str | None = None, fresh: bool = True
    ) -> None:
        """A new ``encrypted_session_init`` was acked on the same socket."""
        self.cipher = cipher
        self.held = [] if fresh else None
        if node_session_id is not None:
            self.node_session_id = node_session_id

    @property
    def spent(self) -> bool:
        """The key carried enough chunks that the next answer should run on a fresh one
        (a new socket): see :class:`~langchain_fabstir.wire.encryption.SessionCipher`."""
        return self.cipher.spent

    # --- sending ------------------------------------------------------------------------

    def plan(self, payload: dict[str, Any]) -> SealedPrompt:
        """How ``payload`` (a dict from ``prompt_payload``) reaches the node."""
        request = dict(payload.get("request") or {})
        session_id = request.get("session_id")
        context = request.pop("conversation_context", None) or []
        for name in ("session_id", "job_id", "request_id", "chain_id"):
            request.pop(name, None)
        prompt = str(request.get("prompt", ""))
        # The checkpoints extension hashes the conversation as the client sees it,
        # whatever text carries it to the model (see plan_turn): say what it is (the
        # context only when the host may not hold it).
        told: dict[str, Any] = {"session": session_id, "prompt": prompt}
        renew = False
        if request.get("resume") is not None:
            context = []  # the answer goes on; the node session's history is unknown
            self.held = None
            told = {}
        elif ENCRYPTED_CONTEXT_FEATURE in self.features:
            if context != self.held:
                request["conversation_context"] = told["context"] = context
        else:
            plan: TurnPlan = plan_turn(context, prompt, self.held)
            renew = plan.new_node_session and self.renew is not None
            request["prompt"] = plan.prompt
            if plan.inlined and payload.get("images"):  # the new message is the last User:
                request["prompt"] = with_images(plan.prompt, prompt)
            if plan.inlined:
                told["context"] = context
        if payload.get("images"):  # (a node reads them inside the ciphertext, 6.2)
            request["images"] = payload["images"]
        return SealedPrompt(payload, request, context, told, renew)

    def seal(self, prompt: SealedPrompt) -> str:
        """The ``encrypted_message`` frame text of a planned prompt (after any renew)."""
        request, payload = prompt.request, prompt.payload
        checkpoint = request.get("checkpoint")
        if isinstance(checkpoint, dict) and prompt.told:
            request["checkpoint"] = {**checkpoint, **prompt.told}
        resuming = request.get("resume") is not None
        asked = str((payload.get("request") or {}).get("prompt", ""))
        self._asked = [] if resuming else [*prompt.context, {"role": "user", "content": asked}]
        self._answer = []
        self._held_before = self.held  # (what the node holds if it answers with an image)
        self.held = None  # known again when the answer completes
        cipher = self.cipher
        cipher.expect_chunk(0)
        self._rid, self._final = payload.get("id"), None
        frame: dict[str, Any] = {
            "type": "encrypted_message",
            "session_id": self.node_session_id or (payload.get("request") or {}).get("session_id"),
            "id": payload.get("id"),
            "payload": cipher.seal_message(json.dumps(request, separators=(",", ":"))),
        }
        return json.dumps(frame, separators=(",", ":"))

    def seal_action(self, body: dict[str, Any], request_id: str) -> str:
        """The ``encrypted_message`` frame text of an ``action`` (e.g. ``image_generation``,
        PROTOCOL.md 6.3): sent as is, outside the conversation (a node stores nothing of
        it in the session's history)."""
        self._asked, self._answer = [], []
        self._held_before = self.held
        cipher = self.cipher
        cipher.expect_chunk(0)
        self._rid, self._final = request_id, None
        frame: dict[str, Any] = {
            "type": "encrypted_message",
            "session_id": self.node_session_id,
            "id": request_id,
            "payload": cipher.seal_message(json.dumps(body, separators=(",", ":"))),
        }
        return json.dumps(frame, separators=(",", ":"))

    # --- receiving ----------------------------------------------------------------------

    def open(self, obj: Any) -> Any:
        """A decoded frame as the plaintext protocol would carry it (see the class
        docstring); raises :class:`~langchain_fabstir.errors.EncryptionError` subclasses."""
        if type(obj) is not dict:
            return obj
        kind = obj.get("type")
        cipher = self.cipher
        if kind == "encrypted_chunk":
            try:
                text = cipher.open_chunk(obj.get("payload"))
            except FabstirError as exc:
                exc.host_url = self.host_url
                raise
            self._answer.append(text)
            chunk: dict[str, Any] = {
                "type": "stream_chunk",
                "content": text,
                "tokens": obj.get("tokens", 1),
            }
            if "id" in obj:
                chunk["id"] = obj["id"]
            return chunk
        if kind == "stream_chunk" and obj.get("content"):
            raise EncryptionModeError(
                f"host {self.host_url} sent answer text in clear in an encrypted session "
                "(refused, not shown)",
                host_url=self.host_url,
            )
        if kind == "encrypted_response":
            payload = obj.get("payload")
            aad = payload.get("aadHex") if isinstance(payload, dict) else None
            if isinstance(aad, str) and aad.lower() == _IMAGE_AAD_HEX:
                return self._open_image(obj, cipher)  # (the AEAD checks the AAD is so)
            return self._open_final(obj, cipher)
        if kind == "stream_resumed" and type(obj.get("offset")) is int:
            cipher.expect_chunk(obj["offset"])
            self._answer = []  # (the answer's text before the resume is not here)
        elif kind == "stream_end":
            if obj.get("reason") == "complete" and obj.get("id") in (None, self._rid):
                if self._final is None:
                    raise AnswerTruncatedError(
                        f"host {self.host_url} ended an encrypted answer as complete without "
                        "its sealed encrypted_response (frames were dropped on the way)",
                        host_url=self.host_url,
                    )
                obj = dict(obj, finish_reason=self._final)  # the sealed one
                text = "".join(self._answer)
                if self._asked and text:  # (a node stores no turn for an empty answer)
                    self.held = [*self._asked, {"role": "assistant", "content": text}]
            self._asked, self._answer = [], []
        return obj

    def _open_image(self, obj: dict[str, Any], cipher: SessionCipher) -> ImageReply:
        """An image reply: a node sends it alone (no chunks, no ``stream_end``) and
        stores nothing in the session's history."""
        try:
            text = cipher.open_image(obj.get("payload"))
            try:
                reply = loads_untrusted(text)
            except ValueError:
                reply = None
            if not isinstance(reply, dict) or reply.get("type") not in _IMAGE_REPLIES:
                raise ProtocolError(
                    f"host {self.host_url} sealed an image reply that is neither an "
                    "image_generation_result nor an image_generation_error"
                )
        except FabstirError as exc:
            exc.host_url = self.host_url
            raise
        if obj.get("id") in (None, self._rid):
            self.held, self._asked, self._answer = self._held_before, [], []
        return ImageReply(obj.get("id"), reply)

    def _open_final(self, obj: dict[str, Any], cipher: SessionCipher) -> Any:
        """``encrypted_response``: the sealed finish reason, and the sealed chunk count
        where the host gives one (checked against the chunks received)."""
        try:
            finish_reason = cipher.open_final(obj.get("payload"))
            count = obj.get("count")
            if count is not None and obj.get("id") in (None, self._rid):
                cipher.check_count(count)
                self._counted = True
            elif obj.get("id") in (None, self._rid) and (
                self._counted or "chunk_count" in self.features
            ):
                raise AnswerTruncatedError(
                    f"host {self.host_url} announced sealed chunk counts and this answer's "
                    "final frame has none (removed on the way?)",
                )
        except FabstirError as exc:
            exc.host_url = self.host_url
            raise
        if obj.get("id") in (None, self._rid):
            self._final = finish_reason
        out = dict(obj, finish_reason=finish_reason)
        out.pop("payload", None)
        out.pop("count", None)
        return out
