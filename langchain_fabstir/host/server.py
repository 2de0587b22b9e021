"""The reference host: ``/v1/ws`` and the HTTP endpoints of a Fabstir host, on one port.

It behaves like a deployed host (``docs/PROTOCOL.md``): the ``connected`` greeting,
``session_init_ack`` echoing ``id``, ``prompt`` and ``inference``, one ``stream_chunk``
per token, the final empty chunk, ``stream_end`` with ``usage``, both error shapes each
followed by ``stream_end`` reason ``error``, ``stream_cancel``, a shared prompt rate
limit, and in plaintext mode no memory of the conversation beyond the
``conversation_context`` of each prompt (last 10 messages). In encrypted mode it keeps
the history per session id as a node does (``host/history.py``; ``lenient=True`` is the
one way to make it read a ``conversation_context`` there). A request that does not
deserialize gets no answer at all, exactly as on real hosts.

This project's extensions are announced in ``connected.features`` and
``/v1/version.features``; a client uses them only when announced.

Start one in-process (tests do this on port 0):

>>> import asyncio
>>> from langchain_fabstir.host import EchoEngine, ReferenceHost
>>> async def main():
...     async with ReferenceHost(EchoEngine()) as host:
...         return host.url.startswith("http://127.0.0.1:")
>>> asyncio.run(main())
True

or from the shell: ``fabstir host --engine llama --port 8080``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from typing import Any, Literal

from aiohttp import WSMsgType, web
from pydantic import SecretStr

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir._version import __version__
from langchain_fabstir.checkpoints import CheckpointTracker, address_of, sign_proof
from langchain_fabstir.errors import EncryptionError, ProtocolError
from langchain_fabstir.host.chain_proofs import HostChain
from langchain_fabstir.host.embeddings import Embedder, EmbedRoute
from langchain_fabstir.host.engines import (
    Engine,
    EngineContextOverflow,
    EngineError,
    EngineRateLimited,
    EngineRequest,
)
from langchain_fabstir.host.history import (
    HistoryStore,
    extract_latest_user_message,
    strip_chat_template_markers,
)
from langchain_fabstir.host.images import (
    IMAGE_RESPONSE_AAD,
    ImageRoute,
    SocketImages,
    extract_last_user_query,
    wants_image,
)
from langchain_fabstir.host.jobs import AnswerJob
from langchain_fabstir.host.publishing import S5CheckpointWriter, checkpoint_index_response
from langchain_fabstir.host.search import SearchRoute
from langchain_fabstir.host.vectors import SessionVectors
from langchain_fabstir.host.vision import VisionSidecar
from langchain_fabstir.s5.fs import S5FileSystem
from langchain_fabstir.wire.encryption import (
    SessionCipher,
    SessionKeyLedger,
    answer_challenge,
    host_public_key,
    open_session_init,
    parse_private_key,
    parse_public_key,
    xchacha_encrypt,
)
from langchain_fabstir.wire.frames import (
    Connected,
    ErrorFrame,
    InferenceRequest,
    PromptFrame,
    SessionInit,
    SessionInitAck,
    StreamCancel,
    StreamEnd,
    StreamResumed,
    Usage,
    encode_frame,
    parse_frame,
)
from langchain_fabstir.wire.images import VISION_FEATURE
from langchain_fabstir.wire.tools import envelope_schema, tool_instructions

__all__ = [
    "CONTEXT_MESSAGES",
    "ENCRYPTED_CONTEXT_FEATURE",
    "HOST_FEATURES",
    "ReferenceHost",
    "run_host",
]

log = logging.getLogger(__name__)

CONTEXT_MESSAGES = 10
"""Real hosts use only the last 10 messages of ``conversation_context``."""

THINKING_MODES = ("enabled", "disabled", "low", "medium", "high")
"""``thinking`` values a node takes (``PROTOCOL.md`` 6.6); others are refused."""


def _invalid_thinking(value: str) -> str:
    """The node's message for a ``thinking`` value it does not take (6.6)."""
    return (
        f"Validation error for thinking: Invalid thinking mode '{value}'. "
        f"Valid: {', '.join(THINKING_MODES)}"
    )


HOST_FEATURES = ["seed", "response_format", "tools", "resume", "resume_token"]
"""Extensions this host serves (announced in ``connected`` and ``/v1/version``).

``resume_token``: the ``connected`` greeting carries a ``resume_token``, a secret given
to that socket only. Answers (and session-scope checkpoint state) begun on the socket
belong to it: a ``resume`` must carry it (``{"request_id", "offset", "token"}``), and a
successful resume, or a ``session_init`` carrying the old socket's ``resume_token``, hands
the old socket's state to the new one (whose own token then
names it).

With a vision sidecar (``vlm_upstream``) it announces ``vision``: the ``images`` of a prompt
are read as a node reads them (``host/vision.py``); without one a host that announces
its extensions without ``vision`` tells clients it would drop images.

With a host key the host also announces ``checkpoints``, ``encryption`` and
``chunk_count``: the ``encrypted_response`` of every complete encrypted answer carries a
``count`` field, the number of ``encrypted_chunk`` frames of the answer (final empty
chunk included) sealed under the session key (AAD ``encrypted_response_chunks``), so that
a client can tell an answer whose last chunks were dropped on the way. Clients of deployed
nodes ignore the extra field."""

ENCRYPTED_CONTEXT_FEATURE = "encrypted_context"
"""The extension of a lenient host (``ReferenceHost(lenient=True)``): a
``conversation_context`` inside the decrypted ``encrypted_message`` replaces the history
the host keeps for the session. Deployed nodes ignore it (``PROTOCOL.md`` 6.1)."""

PREPARE_WAIT = 130.0
"""Seconds a resume waits for the prompt it names to become an answer (a prompt's images
are read by the vision sidecar first, each call bounded by 120 s)."""

MAX_RESUME_FAILURES = 8
"""Failed resumes one socket may make before the host closes it (guessing is pointless
with a 192-bit token; this stops a socket from trying)."""

MAX_JOBS_PER_SOCKET = 16
"""On-chain jobs one socket may bind for proofs and settlement (a bound on what a peer
makes the host remember)."""

RECORD_LIMIT = 64 * 1024
"""Requests larger than this (bytes of JSON) are kept in :attr:`ReferenceHost.requests`
only in part: long strings cut, long lists shortened (see :func:`_record`)."""


def _recovery_key(value: object) -> str | None:
    """The client's ``recoveryPublicKey`` (compressed ``0x``-hex), ``None`` if unusable."""
    if not isinstance(value, str):
        return None
    try:
        return "0x" + parse_public_key(value).hex()
    except EncryptionError:
        return None


_MAX_SESSION_ID = 256
_UINT256 = 1 << 256


def _valid_session_id(value: object) -> bool:
    """A session id as clients send it: a short string, or a non-negative integer."""
    if isinstance(value, str):
        return len(value) <= _MAX_SESSION_ID
    return type(value) is int and 0 <= value < _UINT256


def _job_id(value: object) -> int | Literal[False] | None:
    """The job id of an encrypted init: an int; ``None`` when it names no on-chain job
    (absent, or a session id that is not decimal, as this package's client sends for a
    session without a job); ``False`` when it is not usable (a number out of range,
    digits that are not ASCII such as ``"²"``, another JSON type)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.isdigit():
            return None if len(value) <= _MAX_SESSION_ID else False
        if not value.isascii() or len(value) > 78:
            return False
        number = int(value)
    elif type(value) is int:
        number = value
    else:
        return False
    return number if 0 <= number < _UINT256 else False


class _RateLimiter:
    """Prompts per minute shared by all clients of a host (real hosts: 100)."""

    def __init__(self, per_minute: int | None) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque()

    def check(self) -> float | None:
        """Record a prompt; return seconds to wait when over the limit, else None."""
        if not self.per_minute:
            return None
        now = time.monotonic()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return max(1.0, 60.0 - (now - self._times[0]))
        self._times.append(now)
        return None


class _Connection:
    """One client socket: session binding and the stream in progress."""

    def __init__(self, host: ReferenceHost, ws: web.WebSocketResponse) -> None:
        self.host = host
        self.ws = ws
        self.token = secrets.token_urlsafe(24)
        """This socket's resume token (sent in its greeting only): what it starts is
        owned by this secret."""
        self.resume_failures = 0
        self.frame_size = 0  # bytes of the prompt frame being run
        self.session_id: str | None = None
        self.job_id: int | None = None
        self.chain_id: int | None = None
        self.cancel = asyncio.Event()
        self.gone = False
        """The socket closed: its answer goes on for a resume, unlike a cancel."""
        self.current_job: AnswerJob | None = None
        self.received = 0  # frames queued so far
        self.cancel_upto = 0  # a stream_cancel applies to prompts queued up to here
        # Encrypted mode (PROTOCOL.md section 4): the session key of the latest
        # encrypted_session_init, and the conversation the host keeps for the session.
        self.cipher: SessionCipher | None = None
        self.model_name: str | None = None
        self.client_address: str | None = None
        self.recovery_public_key: str | None = None  # S5 deltas are sealed to it (4.5)
        self.chunk_index = 0  # the index of the next encrypted_chunk of the answer
        self._session_json_cache: tuple[str | None, str] | None = None
        self.answer_parts: list[str] = []
        self.jobs: list[int] = []  # on-chain jobs this socket bound (settled at its close)
        self.vlm_tokens = 0  # what the vision sidecar used on the next prompt's images

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    def _session_json(self) -> str:
        """``session_id`` as JSON text (kept: it goes into every encrypted chunk)."""
        sid = self.session_id
        cached = self._session_json_cache
        if cached is None or cached[0] != sid:
            cached = self._session_json_cache = (sid, _json_str(sid) if sid is not None else "null")
        return cached[1]

    async def send_answer(self, text: str) -> None:
        """A frame of an answer: as it is, or (encrypted session) its text sealed with the
        session key: ``encrypted_chunk`` per chunk, ``encrypted_response`` before a
        complete ``stream_end`` (section 4.3). Frames without text stay plaintext."""
        cipher = self.cipher
        if cipher is None:
            await self.ws.send_str(text)
            return
        if text.startswith(_CHUNK_PREFIX + '"'):
            try:
                content, end = _scan_json_string(text, len(_CHUNK_PREFIX) + 1)
                fast = _CHUNK_TAIL.match(text, end)
            except ValueError:
                fast = None
            if fast is not None:  # a frame built by run_prompt: no JSON round trip
                self.answer_parts.append(content)
                index = self.chunk_index
                self.chunk_index += 1
                sealed = cipher.seal_chunk(content, index)
                tail = fast.group(0)
                if not content and fast.group(1) == "0":
                    tail = ',"final":true' + tail
                await self.ws.send_str(
                    '{"type":"encrypted_chunk","payload":{"ciphertextHex":"'
                    + sealed["ciphertextHex"]
                    + '","nonceHex":"'
                    + sealed["nonceHex"]
                    + '","aadHex":"'
                    + sealed["aadHex"]
                    + f'","index":{index}}},"session_id":'
                    + self._session_json()
                    + tail
                )
                return
        if text.startswith('{"type":"stream_chunk"'):
            obj = json.loads(text)
            content = obj.get("content", "")
            self.answer_parts.append(content)
            index = self.chunk_index
            self.chunk_index += 1
            frame: dict[str, Any] = {
                "type": "encrypted_chunk",
                "tokens": obj.get("tokens", 1),
                "payload": cipher.seal_chunk(content, index),
                "id": obj.get("id"),
                "session_id": self.session_id,
            }
            if not content and not obj.get("tokens"):
                frame["final"] = True
            await self.ws.send_str(json.dumps(frame, separators=(",", ":")))
            return
        if text.startswith('{"type":"stream_end"'):
            obj = json.loads(text)
            if obj.get("reason") == "complete":
                final = {
                    "type": "encrypted_response",
                    "payload": cipher.seal_final(obj.get("finish_reason") or "stop"),
                    # The chunk_count extension: the answer's chunks, sealed (an extra
                    # field, which clients of deployed nodes ignore).
                    "count": cipher.seal_count(self.chunk_index),
                    "id": obj.get("id"),
                    "session_id": self.session_id,
                }
                await self.ws.send_str(json.dumps(final, separators=(",", ":")))
            obj.setdefault("session_id", self.session_id)
            text = json.dumps(obj, separators=(",", ":"))
        await self.ws.send_str(text)

    async def serve(self) -> None:
        await self.send(encode_frame(self.host.greeting(resume_token=self.token)))
        # Bounded: a client cannot pile up prompts while an answer streams (the reader
        # stops reading, and TCP pushes back).
        inbox: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue(maxsize=64)
        reader = asyncio.create_task(self._read(inbox))
        try:
            while not (self.gone and inbox.empty()):
                item = await inbox.get()
                if item is None:
                    return
                await self._handle_idle(*item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, inbox: asyncio.Queue[tuple[int, str] | None]) -> None:
        """Read frames; a ``stream_cancel`` takes effect at once, even mid-stream."""
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data: str = msg.data
                if '"stream_cancel"' in data:
                    with contextlib.suppress(ProtocolError):
                        frame = parse_frame(data)
                        if isinstance(frame, StreamCancel):
                            self.cancel_upto = self.received  # also a prompt not yet begun
                            self.cancel.set()
                            if self.current_job is not None:
                                self.current_job._wake()
                            continue
                self.received += 1
                await inbox.put((self.received, data))
        finally:
            self.gone = True
            if self.current_job is not None:
                self.current_job._wake()
            with contextlib.suppress(asyncio.QueueFull):
                inbox.put_nowait(None)

    async def _handle_idle(self, seq: int, raw: str) -> None:
        try:
            frame = parse_frame(raw)
        except ProtocolError as exc:
            log.info("ignoring malformed frame: %s", exc)
            return
        if isinstance(frame, SessionInit):
            self.host.vectors.reset(frame.session_id)  # as a node's plaintext re-init (6.5)
            self.session_id = frame.session_id
            if frame.session_id is not None:  # a node replaces the entry: history wiped
                self.host.histories.reset(str(frame.session_id))
            self.job_id = frame.job_id
            self.chain_id = frame.chain_id
            self.host._bind_job(self, frame.job_id)
            previous = (frame.model_extra or {}).get("resume_token")
            if isinstance(previous, str):
                # A client back on a new socket: what its old socket owned is its now.
                self.host._adopt(previous, self.token)
            await self.send(
                encode_frame(
                    SessionInitAck(
                        session_id=frame.session_id,
                        job_id=frame.job_id,
                        chain_id=frame.chain_id,
                        message="Session initialized successfully",
                        id=frame.id,
                    )
                )
            )
        elif isinstance(frame, PromptFrame):
            try:
                job_id = frame.job_id if isinstance(frame.job_id, int) else self.job_id
                if isinstance(frame.job_id, str) and frame.job_id.isdigit():
                    job_id = int(frame.job_id)
                request = frame.effective_request(session_id=self.session_id, job_id=job_id)
            except ValueError as exc:  # a request that does not deserialize
                log.info("ignoring undeserializable request: %s", exc)
                return
            images = (frame.model_extra or {}).get("images")  # top level only (6.2)
            vlm_tokens = 0
            preparing = (  # (a resume names another answer: it is never prepared)
                self.host._preparing_begin(self.token, frame.id) if request.resume is None else None
            )
            try:
                if images and request.resume is None:
                    prompt, vlm_tokens = await self.host.vision.read(images, request.prompt)
                    request = request.model_copy(update={"prompt": prompt})
                if seq > self.cancel_upto:
                    self.cancel.clear()
                else:
                    self.cancel.set()  # cancelled before it began
                self.frame_size = len(raw)
                self.vlm_tokens = vlm_tokens
                await self.host.run_prompt(self, request, frame.id)
            finally:
                self.host._preparing_end(preparing)
        elif frame.type == "encrypted_session_init":
            await self._encrypted_init(frame.model_extra or {})
        elif frame.type == "encrypted_message":
            await self._encrypted_message(seq, len(raw), frame.model_extra or {})
        elif frame.type in ("uploadVectors", "searchVectors"):  # host RAG (host/vectors.py)
            reply = self.host.vectors.handle(self.session_id, frame.type, frame.model_extra or {})
            await self.send(json.dumps(reply, separators=(",", ":")))
        # stream_cancel while idle, unknown types: no answer, as on real hosts.

    async def _refuse(self, code: str, message: str, rid: Any = None, end: bool = False) -> None:
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        error["session_id"] = self.session_id
        if isinstance(rid, str):
            error["id"] = rid
        await self.send(json.dumps(error, separators=(",", ":")))
        if end:
            rid = rid if isinstance(rid, str) else None
            await self.send(encode_frame(StreamEnd(reason="error", tokens_used=0, id=rid)))

    async def _encrypted_init(self, extra: dict[str, Any]) -> None:
        """``encrypted_session_init`` (section 4.1): a new session key; a re-init keeps the
        session's history. Without a host key: ``ENCRYPTION_NOT_SUPPORTED``, at once.

        Beyond deployed nodes: a session key this host process has seen before (a
        recorded init sent again) is refused with ``SESSION_KEY_REUSED``, and an init
        that decrypts but carries a session or job id that is not one
        (``INVALID_PAYLOAD``); both close the socket after the error frame. A fresh key
        for the same session id is a re-init, as on deployed nodes."""
        session_id = extra.get("session_id", extra.get("sessionId"))
        if session_id is not None and not _valid_session_id(session_id):
            await self._refuse_init("INVALID_PAYLOAD", "session_id is not a short string", extra)
            return
        session_id = str(session_id) if session_id is not None else self.session_id
        key = self.host._encryption_key
        if key is None:
            self.session_id = session_id
            await self._refuse(
                "ENCRYPTION_NOT_SUPPORTED",
                "this host runs without a host key: it cannot open encrypted sessions",
                extra.get("id"),
            )
            return
        try:
            opened = open_session_init(key, extra.get("payload"))
        except EncryptionError as exc:
            await self._refuse(exc.code, exc.message, extra.get("id"))
            return
        data = opened.data
        job = _job_id(data.get("jobId", extra.get("job_id", extra.get("jobId"))))
        if job is False:
            msg = "jobId is not a job id (a uint256, as decimal digits or a number)"
            await self._refuse_init("INVALID_PAYLOAD", msg, extra)
            return
        if not self.host._session_keys.claim(opened.session_key):
            msg = (
                "this session key was used before: a recorded encrypted_session_init sent "
                "again is refused (clients make a fresh key for every init)"
            )
            await self._refuse_init("SESSION_KEY_REUSED", msg, extra)
            return
        self.session_id = session_id
        if session_id is not None:  # created only if absent: a re-init keeps the history
            self.host.histories.ensure(session_id)
        self.job_id = job
        self.host._bind_job(self, job)
        chain = extra.get("chain_id", extra.get("chainId"))
        self.chain_id = int(chain) if isinstance(chain, int) else self.chain_id
        model = data.get("modelName")
        self.model_name = model if isinstance(model, str) else self.model_name
        self.client_address = opened.client_address
        self.recovery_public_key = _recovery_key(data.get("recoveryPublicKey"))
        self.cipher = SessionCipher(opened.session_key)
        previous = extra.get("resume_token")
        if isinstance(previous, str):
            self.host._adopt(previous, self.token)
        ack = SessionInitAck(
            session_id=self.session_id,
            job_id=self.job_id,
            chain_id=self.chain_id,
            message="Encrypted session initialized successfully",
            id=extra.get("id") if isinstance(extra.get("id"), str) else None,
        )
        ack.__pydantic_extra__ = {
            "client_address": opened.client_address,
            "signature_digest": opened.digest,
        }
        await self.send(encode_frame(ack))

    async def _image_reply(self, body: dict[str, Any], rid: str | None) -> None:
        """Answer an image request as a node does (PROTOCOL.md 6.3): ONE
        ``encrypted_response`` (AAD ``encrypted_image_response``) holding the result or
        error JSON; no chunks, no ``stream_end``; the image's tokens billed into the job."""
        assert self.cipher is not None
        reply, tokens = await self.host.socket_images.answer(str(self.session_id or ""), body)
        if tokens and self.host.s5_checkpoints is not None:
            self.host.s5_checkpoints.add_tokens(self.session_id, tokens)
        self.host.image_tokens_billed += tokens
        plaintext = json.dumps(reply, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(24)
        sealed = xchacha_encrypt(self.cipher.key, nonce, plaintext, IMAGE_RESPONSE_AAD)
        frame: dict[str, Any] = {"type": "encrypted_response", "session_id": self.session_id}
        if rid is not None:
            frame["id"] = rid
        frame["payload"] = {
            "ciphertextHex": sealed.hex(),
            "nonceHex": nonce.hex(),
            "aadHex": IMAGE_RESPONSE_AAD.hex(),
        }
        await self.send(json.dumps(frame, separators=(",", ":")))

    async def _refuse_init(self, code: str, message: str, extra: dict[str, Any]) -> None:
        """Refuse an ``encrypted_session_init`` that decrypted (or nearly) but cannot be
        used, and close the socket: a typed error frame, never a traceback."""
        log.info("refused an encrypted_session_init: %s", code)
        await self._refuse(code, message, extra.get("id"))
        await self.ws.close(code=1008, message=b"encrypted_session_init refused")

    async def _encrypted_message(self, seq: int, size: int, extra: dict[str, Any]) -> None:
        """``encrypted_message`` (section 4.2): the prompt under the session key, read as a
        deployed node reads it (section 6.1): the host's own history of the session id as
        context, the prompt cut after the previous answer
        (:func:`~langchain_fabstir.host.history.extract_latest_user_message`), no
        system-prompt field, and the turn stored after a non-empty answer (also a
        cancelled one). A ``conversation_context`` inside the ciphertext is ignored, unless
        the host is lenient (the ``encrypted_context`` extension): then it replaces the
        session's history."""
        rid = extra.get("id") if isinstance(extra.get("id"), str) else None
        if self.cipher is None:
            msg = "no session key on this connection: send encrypted_session_init first"
            await self._refuse("SESSION_KEY_NOT_FOUND", msg, rid, end=True)
            return
        first = self.cipher.last_message < 0
        try:
            # (also refuses a counter that does not increase: a replayed message)
            text = self.cipher.open_message(extra.get("payload"))
        except EncryptionError as exc:
            await self._refuse(exc.code, exc.message, rid, end=True)
            return
        if first:
            self.host._session_keys.used(self.cipher.key)
        try:
            body = loads_untrusted(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"prompt": text}  # a body that is not JSON is the prompt
        preparing = None if body.get("resume") else self.host._preparing_begin(self.token, rid)
        try:
            await self._sealed_prompt(seq, size, extra, body, rid)
        finally:
            self.host._preparing_end(preparing)

    async def _sealed_prompt(
        self, seq: int, size: int, extra: dict[str, Any], body: dict[str, Any], rid: Any
    ) -> None:
        """The opened body of an ``encrypted_message``: images, an image action, or a prompt
        answered with the node's history."""
        vlm_tokens = 0  # images first, as a node reads them (6.1, 6.2); an action before them
        if (
            body.get("images")
            and body.get("action") != "image_generation"
            and isinstance(body.get("prompt"), str)
            and not body.get("resume")
        ):
            body["prompt"], vlm_tokens = await self.host.vision.read(body["images"], body["prompt"])
        image = self.host._image_request(self, body)
        if image is not None:  # an image action, or a prompt a node routes to one (6.3)
            await self._image_reply(image, rid)
            return
        histories = self.host.histories
        context = body.get("conversation_context")
        if self.host.lenient and isinstance(context, list) and self.session_id is not None:
            histories.replace(
                self.session_id,
                [
                    {"role": str(m.get("role")), "content": str(m.get("content"))}
                    for m in context[-CONTEXT_MESSAGES:]
                    if isinstance(m, dict)
                ],
            )
            history = histories.context(self.session_id)
        else:
            history = histories.context(self.session_id)
            if isinstance(body.get("prompt"), str):
                body["prompt"] = extract_latest_user_message(body["prompt"], history)
        drop = ("conversation_context", "stream", "action", "images")  # (unknown action: ignored)
        fields = {k: v for k, v in body.items() if k not in drop}
        if "thinking" not in fields and "thinking" in extra:  # as a node: else the frame's
            fields["thinking"] = extra["thinking"]
        fields.setdefault("model", self.model_name or "default")
        fields.setdefault("max_tokens", 4000)
        fields["conversation_context"] = history
        fields["session_id"] = self.session_id
        fields["job_id"] = self.job_id
        try:
            request = InferenceRequest.model_validate(fields)
        except ValueError as exc:
            msg = f"the decrypted request does not deserialize: {str(exc)[:200]}"
            await self._refuse("INVALID_PAYLOAD", msg, rid, end=True)
            return
        if seq > self.cancel_upto:
            self.cancel.clear()
        else:
            self.cancel.set()
        self.frame_size = size
        self.answer_parts = []
        self.vlm_tokens = vlm_tokens
        await self.host.run_prompt(self, request, rid)
        answer = "".join(self.answer_parts)
        if request.resume is None and answer:
            histories.add_turn(self.session_id, request.prompt, answer)
        self.answer_parts = []


class ReferenceHost:
    """A Fabstir host you can run: the protocol of deployed hosts over a real engine.

    Args:
        engine: an :class:`~langchain_fabstir.host.engines.Engine` (``EchoEngine`` or
            ``LlamaEngine``).
        host, port: where to listen (port 0 picks a free port; see :attr:`url`).
        rate_limit_per_minute: prompts a minute for all clients together (real hosts:
            100); ``None`` or 0 disables the limit.
        host_key: the host's secp256k1 key (hex). With it the host announces its
            ``host_address`` and the ``checkpoints`` extension, and pushes a signed
            ``checkpoint`` frame at every checkpoint a client asks for.
        resume_grace: seconds an answer is kept after it ends, so that a client whose
            socket dropped can resume it (the ``resume`` extension; only with the
            token its socket was given, see :data:`HOST_FEATURES`).
        unread_limit, unread_wait: after its socket dropped, an answer waits
            ``unread_wait`` seconds (default 5) for a resume, generating at most
            ``unread_limit`` tokens (default 256) ahead; a resume in that time gets the
            whole answer. Then its engine is closed (an upstream request too) and the
            answer ends with an ``Error:`` chunk; what was generated is kept
            ``resume_grace`` seconds.
        heartbeat: seconds between WebSocket pings; a peer that does not answer one
            within half that is disconnected (``None`` disables pings).
        max_frame_size: the largest WebSocket message accepted, in bytes (16 MiB, a
            node's frame limit: a prompt with a 10 MB image fits).
        portal_url, s5_seed_phrase, s5_fs: an S5 store (a portal and the host's seed
            phrase, or a ready ``S5FileSystem``). With it and ``host_key`` the host
            publishes signed checkpoints as real hosts do and serves them at
            ``GET /v1/checkpoints/{id}`` (see ``host/s5_checkpoints.py``); without it
            that endpoint answers 503.
        checkpoint_interval, checkpoint_min_tokens: tokens per S5 checkpoint (1,000),
            and the unproven tokens that make a checkpoint at the end of an answer (100).
        public_url: the URL clients reach the host at (behind a proxy or a tunnel),
            announced as ``url`` in ``/v1/version``; default: :attr:`url`.
        embedder: the engine of ``POST /v1/embed`` (see ``host/embeddings.py``):
            ``"auto"`` (all-MiniLM-L6-v2 from its wheel, loaded at the first request, as
            deployed nodes serve it), an ``Embedder``, or ``None`` (503, a node without
            embedding models).
        search_upstream: a search API for ``POST /v1/search`` (Brave's JSON shape, see
            ``host/search.py``); ``None``: 503, as a node without a search service.
        diffusion_upstream: an OpenAI-compatible images API for ``POST
            /v1/images/generate`` (see ``host/images.py``); ``None``: 503, as a node
            without a diffusion sidecar.
        vlm_upstream: an OpenAI-compatible vision endpoint (``POST
            {url}/v1/chat/completions``) that reads the ``images`` of prompts as a node's
            VLM sidecar does (see ``host/vision.py``; announced as the ``vision``
            feature); ``None``: images are dropped silently with no ``vlm_tokens``, as on
            a node without one.
        lenient: beyond a deployed node, honour a ``conversation_context`` inside an
            ``encrypted_message`` (announced as the ``encrypted_context`` feature).
            Default ``False``: encrypted sessions keep their conversation exactly as a
            node does (``PROTOCOL.md`` 6.1, see ``host/history.py``).
        chain: a :class:`~langchain_fabstir.chain.ChainClient` holding the host key
            (``ChainClient(config, host_key)``; the host closes it when it stops). With
            it (and ``host_key`` and an S5 store) the host proves its paid sessions on
            chain and settles them as deployed nodes do: a proof per published
            checkpoint, the rest when the job's last socket closes, then
            ``completeSessionJob`` after the dispute window
            (:class:`~langchain_fabstir.host.chain_proofs.HostChain`, at :attr:`chain`).
            The host key's account pays the gas.
        settle_delay: seconds between a job's last socket closing and its completion;
            default: the contract's ``disputeWindow()`` plus 5 s, as nodes wait.
        auto_image_routing: answer an encrypted prompt that asks for an image ("draw a
            cat", :func:`~langchain_fabstir.host.images.wants_image` of its last user
            query) with a generated image, as nodes do (PROTOCOL.md 6.3); default: on
            when ``diffusion_upstream`` is given (the node's ``AUTO_IMAGE_ROUTING``).
            ``action: "image_generation"`` is always served (an error without a sidecar).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_per_minute: int | None = 100,
        max_frame_size: int = 16 * 1024 * 1024,
        chain_id: int | None = None,
        host_key: str | None = None,
        resume_grace: float = 30.0,
        unread_limit: int = 256,
        unread_wait: float = 5.0,
        heartbeat: float | None = 30.0,
        portal_url: str | None = None,
        s5_seed_phrase: str | SecretStr | None = None,
        s5_fs: S5FileSystem | None = None,
        checkpoint_interval: int = 1000,
        checkpoint_min_tokens: int = 100,
        public_url: str | None = None,
        embedder: Embedder | Literal["auto"] | None = "auto",
        search_upstream: str | None = None,
        diffusion_upstream: str | None = None,
        vlm_upstream: str | None = None,
        lenient: bool = False,
        chain: Any = None,
        settle_delay: float | None = None,
        auto_image_routing: bool | None = None,
    ) -> None:
        self.engine = engine
        self.lenient = lenient
        self.histories = HistoryStore()
        """Encrypted mode: the history per session id, process-wide, as a node keeps it."""
        self.model_inputs: deque[list[dict[str, str]]] = deque(maxlen=64)
        """What the model saw for the latest requests (role and content of each message,
        newest last): for tests and inspection."""
        self.embed_route = EmbedRoute(embedder)
        """``POST /v1/embed`` (its ``requests`` counts the requests embedded)."""
        self.search_route = SearchRoute(search_upstream)
        """``POST /v1/search`` (its ``upstream_calls`` counts the searches sent on)."""
        self.image_route = ImageRoute(diffusion_upstream)
        """``POST /v1/images/generate`` (its ``generated`` counts the images)."""
        self.socket_images = SocketImages(self.image_route)
        """``action: "image_generation"`` on encrypted sessions (PROTOCOL.md 6.3)."""
        self.auto_image_routing = (
            diffusion_upstream is not None if auto_image_routing is None else auto_image_routing
        )
        self.image_tokens_billed = 0
        """Tokens billed for images generated over sockets (all sessions together)."""
        self.vision = VisionSidecar(vlm_upstream)
        """What reads a prompt's ``images`` (its ``calls`` counts the sidecar requests)."""
        self.public_url = public_url.rstrip("/") if public_url else None
        self._host_key = host_key
        self.host_address = address_of(host_key) if host_key else None
        self._encryption_key = parse_private_key(host_key) if host_key else None
        self.host_public_key = (
            host_public_key(self._encryption_key) if self._encryption_key else None
        )
        """The key clients encrypt sessions to (compressed, ``0x``-hex), with a host key."""
        # S5 checkpoints (host/s5_checkpoints.py): None when no S5 store is configured.
        self.s5_checkpoints = S5CheckpointWriter.for_host(
            host_key,
            fs=s5_fs,
            portal_url=portal_url,
            seed_phrase=s5_seed_phrase,
            interval=checkpoint_interval,
            min_final_tokens=checkpoint_min_tokens,
        )
        self.chain: HostChain | None = None
        """With ``chain``: the host's proofs and settlements on chain (``host/chain_proofs.py``)."""
        if chain is not None:
            if host_key is None or self.s5_checkpoints is None:
                raise ValueError(
                    "proofs on chain need a host key and an S5 store (host_key=..., "
                    "portal_url=... and s5_seed_phrase=..., or s5_fs=...)"
                )
            if str(getattr(chain, "address", None)).lower() != str(self.host_address).lower():
                raise ValueError(
                    "the chain client must hold the host key: proofs are accepted from "
                    f"the job's host only ({self.host_address})"
                )
            self.chain = HostChain(chain, self.s5_checkpoints, settle_delay=settle_delay)
        # Session-scope checkpoint trackers and resumable answers, by (owner token, id).
        self._trackers: OrderedDict[tuple[str, str], CheckpointTracker] = OrderedDict()
        self._jobs: OrderedDict[tuple[str, str], AnswerJob] = OrderedDict()
        self._preparing: dict[tuple[str, str], asyncio.Event] = {}
        self.resume_grace = resume_grace
        if unread_limit < 1 or unread_wait < 0:
            raise ValueError("unread_limit must be at least 1 and unread_wait not negative")
        self.unread_limit = unread_limit
        self.unread_wait = unread_wait
        self.heartbeat = heartbeat
        self.resumes = 0
        """How many answers were resumed by a reconnecting client."""
        self.bind_host = host
        self.bind_port = port
        self.max_frame_size = max_frame_size
        self.chain_id = chain_id
        self._limiter = _RateLimiter(rate_limit_per_minute)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port: int = port
        self.connections: set[_Connection] = set()
        self.received_cancels = 0
        """How many ``stream_cancel`` frames stopped a stream (tests read this)."""
        self.requests: deque[InferenceRequest] = deque(maxlen=64)
        """The latest requests run, newest last (for inspection and tests); a large one
        is kept only in part (:data:`RECORD_LIMIT`)."""
        self.cancel_seen = asyncio.Event()
        self._session_keys = SessionKeyLedger()
        """Session keys of encrypted inits seen by this process (replays are refused)."""
        self.vectors = SessionVectors()
        """Host RAG: the vectors uploaded per session id (``uploadVectors``, section 6.5)."""

    # --- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The HTTP base URL (the WebSocket is at ``{url}/v1/ws``)."""
        return f"http://{self.bind_host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.bind_host}:{self.port}/v1/ws"

    def features(self) -> list[str]:
        keyed = ["checkpoints", "encryption", "chunk_count"] if self._host_key else []
        if self._host_key and self.lenient:
            keyed.append(ENCRYPTED_CONTEXT_FEATURE)
        features = list(HOST_FEATURES) + keyed
        if self.vision.enabled:
            features.append(VISION_FEATURE)
        engine_features = getattr(self.engine, "host_features", None)
        return engine_features(features) if engine_features is not None else features

    def greeting(self, *, resume_token: str | None = None) -> Connected:
        greeting = Connected(
            message="WebSocket connected successfully",
            features=self.features(),
            models=[m["id"] for m in self.engine.models()],
            version=__version__,
            host_address=self.host_address,
            host_public_key=self.host_public_key,
        )
        if resume_token is not None:  # an extension field (Connected keeps extras)
            greeting.__pydantic_extra__ = {"resume_token": resume_token}
        return greeting

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_frame_size)
        app.router.add_get("/v1/ws", self._ws)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/inference", self._inference)
        app.router.add_get("/v1/checkpoints/{session_id}", self._checkpoints)
        app.router.add_post("/v1/auth/challenge", self._challenge)
        app.router.add_post("/v1/embed", self.embed_route.handle)
        app.router.add_post("/v1/search", self.search_route.handle)
        app.router.add_post("/v1/images/generate", self.image_route.handle)
        return app

    async def start(self) -> ReferenceHost:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.bind_host, self.bind_port)
        await self._site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = addresses[0][1]
        return self

    async def stop(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel()
        for conn in list(self.connections):
            conn.cancel.set()
            with contextlib.suppress(Exception):
                await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.chain is not None:  # the checkpoints already cut and their proofs
            assert self.s5_checkpoints is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.s5_checkpoints.flush(), 10)
            await self.chain.aclose()  # (settlements still waiting are called off)
        if self.s5_checkpoints is not None:  # write the checkpoints already cut
            await self.s5_checkpoints.aclose()

    async def __aenter__(self) -> ReferenceHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- WebSocket ------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            compress=True, max_msg_size=self.max_frame_size, heartbeat=self.heartbeat
        )
        try:
            await ws.prepare(request)
        except ConnectionResetError:  # the client left during the handshake
            return ws
        conn = _Connection(self, ws)
        self.connections.add(conn)
        try:
            await conn.serve()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.connections.discard(conn)
            if self.chain is not None:  # as a node: the socket closed, the job settles
                for job_id in conn.jobs:
                    self.chain.unbind(job_id)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            # What the socket owned waits resume_grace for a client to take it over
            # (session_init or resume with its token), then is let go.
            if self._trackers:
                asyncio.get_running_loop().call_later(
                    self.resume_grace, self._release_owner, conn.token
                )
        return ws

    def _bind_job(self, conn: _Connection, job_id: int | None) -> None:
        """A socket names an on-chain job: its checkpoints are proven for that job."""
        if self.chain is None or job_id is None:
            return
        session_id = conn.session_id
        again = job_id in conn.jobs  # a re-init on the same socket
        if not again and len(conn.jobs) >= MAX_JOBS_PER_SOCKET:
            log.info("socket names more than %d jobs: job %s not proven", len(conn.jobs), job_id)
            return
        self.chain.bind(str(session_id) if session_id is not None else None, job_id, not again)
        if not again:
            conn.jobs.append(job_id)

    def _image_request(self, conn: _Connection, body: dict[str, Any]) -> dict[str, Any] | None:
        """The image request in a decrypted message: its own (``action:
        "image_generation"``), or, with auto routing, ``{"prompt": <last user query>}``
        when that query asks for an image; ``None`` for a normal prompt."""
        if body.get("action") == "image_generation":
            return body
        prompt = body.get("prompt")
        if not (self.auto_image_routing and self.image_route.upstream and isinstance(prompt, str)):
            return None
        query = extract_last_user_query(prompt)
        if not wants_image(query):
            return None
        request: dict[str, Any] = {"prompt": query}
        if conn.chain_id is not None and 0 <= conn.chain_id < 2**64:
            request["chainId"] = conn.chain_id
        return request

    def _release_owner(self, token: str) -> None:
        """Forget the session checkpoint state of a socket gone for ``resume_grace``
        (its answers expire on their own; state handed over is under the new token)."""
        if any(conn.token == token for conn in self.connections):
            return  # pragma: no cover - tokens are per socket; a resumed one is renamed
        for key in [k for k in self._trackers if k[0] == token]:
            del self._trackers[key]

    def _messages(self, request: InferenceRequest) -> list[dict[str, str]]:
        # As a node: the last 10 context messages, roles kept, chat-template markers
        # stripped from each and from the prompt.
        context = request.conversation_context[-CONTEXT_MESSAGES:]
        strip = strip_chat_template_markers
        messages = [{"role": m.role, "content": strip(m.content)} for m in context]
        messages.append({"role": "user", "content": strip(request.prompt)})
        if request.tools and request.tool_choice != "none":
            # The model must see the tools it may call (as a chat template would show
            # them); decoding is then constrained to the envelope.
            text = tool_instructions(request.tools, request.tool_choice)
            if messages[0]["role"] == "system":
                messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + text}
            else:
                messages.insert(0, {"role": "system", "content": text})
        return messages

    def _prepare(
        self, request: InferenceRequest
    ) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
        """The model's messages and the decoding constraint for a request.

        Raises :class:`_InvalidTools` when ``tools`` / ``tool_choice`` cannot be used
        (both the WebSocket and the HTTP path answer it as a validation error).
        """
        try:
            return self._messages(request), _response_format(request)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            if not request.tools:
                raise
            raise _InvalidTools(str(exc)[:300]) from exc

    def _log_model_input(self, messages: list[dict[str, str]]) -> None:
        """Keep what the model saw (a large input only in part: :data:`RECORD_LIMIT`)."""
        if sum(len(m["content"]) for m in messages) > RECORD_LIMIT:
            messages = _shrink(messages, [RECORD_LIMIT // 2])
        self.model_inputs.append(messages)

    async def _error(self, conn: _Connection, frame: ErrorFrame, rid: str | None) -> None:
        await conn.send(encode_frame(frame))
        await conn.send(encode_frame(StreamEnd(reason="error", tokens_used=0, id=rid)))

    async def run_prompt(
        self, conn: _Connection, request: InferenceRequest, rid: str | None
    ) -> None:
        """Stream one answer to ``conn``: chunks, the final empty chunk, ``stream_end``
        (with ``vlm_tokens`` when the prompt's images were read, ``conn.vlm_tokens`` > 0:
        a job is billed for them as for generated tokens).

        The answer is generated by an :class:`AnswerJob` that outlives the socket; a
        request with ``resume = {"request_id", "offset"}`` (the ``resume`` extension)
        continues a job from the token the client last received.
        """
        vlm_tokens, conn.vlm_tokens = conn.vlm_tokens, 0
        # A resume counts as a prompt for the rate limit (guessing is limited too).
        wait = self._limiter.check()
        if wait is not None:
            msg = f"Rate limit exceeded, retry after {round(wait)} seconds"
            await self._error(conn, ErrorFrame(error=msg, id=rid), rid)
            return
        if request.resume is not None:
            await self._resume(conn, request.resume, rid)
            return
        if not request.prompt.strip():
            msg = "Validation error for prompt: Prompt cannot be empty"
            await self._error(conn, ErrorFrame(error=msg, id=rid), rid)
            return
        if request.thinking is not None and request.thinking not in THINKING_MODES:
            await self._error(
                conn, ErrorFrame(error=_invalid_thinking(request.thinking), id=rid), rid
            )
            return
        self.requests.append(_record(request, conn.frame_size))
        try:
            messages, response_format = self._prepare(request)
        except _InvalidTools as exc:
            msg = f"Validation error for tools: {exc}"
            await self._error(conn, ErrorFrame(error=msg, id=rid), rid)
            return
        self._log_model_input(messages)
        prompt_tokens = self.engine.count_prompt_tokens(messages)
        window = self.engine.context_window
        if prompt_tokens + 1 > window:
            await self._error(
                conn,
                ErrorFrame(
                    code="TOKEN_LIMIT_EXCEEDED",
                    message=(
                        f"Prompt ({prompt_tokens} tokens) exceeds the context window "
                        f"({window} tokens)"
                    ),
                    prompt_tokens=prompt_tokens,
                    context_window_size=window,
                    id=rid,
                ),
                rid,
            )
            return
        max_tokens = min(request.max_tokens, max(1, window - prompt_tokens))
        gen = self.engine.generate(
            EngineRequest(
                messages,
                max_tokens=max_tokens,
                temperature=request.temperature,
                seed=request.seed,
                response_format=response_format,
                # Tool arguments copy values from the prompt: no repetition penalty there.
                repeat_penalty=1.0 if request.tools else None,
                model=request.model,
            )
        )
        try:  # an engine that refuses before the first token: an error frame
            await gen.opened()
        except EngineError as exc:
            await self._error(conn, _engine_error_frame(exc, rid, window), rid)
            return
        tracker = self._checkpoint_tracker(conn, request)
        recorder = (  # S5 checkpoints: counts this answer's tokens in its session
            self.s5_checkpoints.start_answer(
                request.session_id or conn.session_id,
                request.prompt,
                recovery_public_key=conn.recovery_public_key if conn.cipher else None,
            )
            if self.s5_checkpoints is not None
            else None
        )
        if recorder is not None and vlm_tokens and request.job_id is not None:
            recorder.billable(vlm_tokens)  # as a node: the job's token count
        # The per-token path: one pre-built JSON text per token, nothing else.
        prefix = '{"type":"stream_chunk","content":'
        suffix = ',"tokens":1' + (f',"id":{_json_str(rid)}' if rid is not None else "") + "}"
        last_chunk = prefix + '""' + suffix.replace('"tokens":1', '"tokens":0')

        def chunk_frame(token: str, index: int) -> str:
            return prefix + _json_str(token) + suffix

        def on_token(token: str) -> list[str]:
            if recorder is not None:
                recorder.token(token)
            if tracker is None:
                return []
            proof = tracker.on_tokens(token, 1)
            return [] if proof is None else [self._checkpoint_frame(proof, rid)]

        def on_error(exc: Exception) -> str:
            return prefix + _json_str(f"Error: {exc}") + suffix.replace('"tokens":1', '"tokens":0')

        def end_frames(job: AnswerJob) -> list[str]:
            if recorder is not None:
                recorder.finish()
            frames = []
            if tracker is not None:
                proof = tracker.end_message()
                if proof is not None:
                    frames.append(self._checkpoint_frame(proof, rid))
            result = gen.result
            completion = result.completion_tokens or job.tokens
            prompt = result.prompt_tokens or prompt_tokens
            usage = Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                context_window_size=window,
            )
            end = StreamEnd(
                reason="complete",
                tokens_used=completion,
                id=rid,
                finish_reason=result.finish_reason,
                usage=usage,
            )
            if vlm_tokens > 0:  # only then, as a node
                end.vlm_tokens = vlm_tokens
            frames += [last_chunk, encode_frame(end)]
            return frames

        job = AnswerJob(
            rid or f"anonymous-{id(conn)}",
            owner=conn.token,
            tracker=tracker,
            chunk_frame=chunk_frame,
            end_frames=end_frames,
            on_token=on_token if tracker is not None or recorder is not None else None,
            on_error=on_error,
            unread_limit=self.unread_limit,
            unread_wait=self.unread_wait,
        )
        job.start(gen.tokens)
        if recorder is not None:
            recorder.finish_when(job.finished)  # cancelled answers end here
        self._remember(job, tracker)
        await self._consume(conn, job, 0)

    async def _resume(self, conn: _Connection, spec: dict[str, Any], rid: str | None) -> None:
        """Continue an answer for the client that holds its owner's token, else refuse
        (``RESUME_NOT_FOUND``; the socket is closed after too many refusals)."""
        token, request_id, offset = spec.get("token"), spec.get("request_id"), spec.get("offset")
        job = None
        if isinstance(request_id, str):
            # This socket's own (handed over at session_init), or the presented token's.
            job = self._jobs.get((conn.token, request_id))
            if job is None and isinstance(token, str):
                job = self._jobs.get((token, request_id))
        if job is None and isinstance(request_id, str):
            job = await self._prepared_job(conn.token, token, request_id)
        if job is None or job.cancelled or not isinstance(offset, int) or offset < 0:
            conn.resume_failures += 1
            msg = (
                f"no answer {request_id!r} to resume here for this client (it expired "
                f"after {self.resume_grace:.0f}s, ran on another host, or the resume did "
                "not carry the resume_token of the socket that asked for it)"
            )
            await self._error(conn, ErrorFrame(code="RESUME_NOT_FOUND", message=msg, id=rid), rid)
            if conn.resume_failures >= MAX_RESUME_FAILURES:
                log.info("closing a socket after %d failed resumes", conn.resume_failures)
                await conn.ws.close(code=1008, message=b"too many failed resumes")
            return
        if isinstance(token, str):
            self._adopt(token, conn.token)
        self.resumes += 1
        await conn.send(encode_frame(StreamResumed(id=rid, offset=offset)))
        await self._consume(conn, job, job.start_of_token(offset))

    def _preparing_begin(self, owner: str, rid: Any) -> tuple[str, str] | None:
        """A prompt was received and is being prepared (its images read, its engine
        opened) before it becomes a resumable answer: a resume of it waits for that."""
        if not isinstance(rid, str):
            return None
        key = (owner, rid)
        self._preparing[key] = asyncio.Event()
        return key

    def _preparing_end(self, key: tuple[str, str] | None) -> None:
        event = self._preparing.pop(key, None) if key is not None else None
        if event is not None:
            event.set()

    async def _prepared_job(self, own: str, presented: Any, request_id: str) -> AnswerJob | None:
        """The answer ``request_id`` once its prompt is prepared (bounded wait), or None."""
        owners = [own] + ([presented] if isinstance(presented, str) else [])
        for owner in owners:
            event = self._preparing.get((owner, request_id))
            if event is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), PREPARE_WAIT)
                break
        for owner in owners:
            job = self._jobs.get((owner, request_id))
            if job is not None:
                return job
        return None

    def _adopt(self, old: str, new: str) -> None:
        """Hand what the socket with token ``old`` owned (answers, session checkpoint
        state) to the socket with token ``new``: the client proved it holds ``old``."""
        if old == new:
            return
        for key in [k for k in self._jobs if k[0] == old]:
            job = self._jobs.pop(key)
            job.owner = new
            self._jobs[(new, key[1])] = job
        for key in [k for k in self._trackers if k[0] == old]:
            self._trackers[(new, key[1])] = self._trackers.pop(key)

    @staticmethod
    def _reap(job: AnswerJob) -> None:
        if job.consumers == 0 and not job.finished.is_set():
            job.cancel()

    def _remember(self, job: AnswerJob, tracker: CheckpointTracker | None = None) -> None:
        """Keep a job for ``resume_grace`` seconds after it ends (and at most 4096),
        under its owner's token and its request id."""
        assert job.owner is not None
        job.tracker = tracker
        key = (job.owner, job.request_id)
        self._jobs[key] = job
        self._preparing_end(key if key in self._preparing else None)
        while len(self._jobs) > 4096:
            self._jobs.popitem(last=False)

        def forget(_: object = None) -> None:
            def drop() -> None:
                if job.owner is not None and self._jobs.get((job.owner, job.request_id)) is job:
                    del self._jobs[(job.owner, job.request_id)]

            asyncio.get_running_loop().call_later(self.resume_grace, drop)

        asyncio.ensure_future(job.finished.wait()).add_done_callback(forget)

    async def _consume(self, conn: _Connection, job: AnswerJob, position: int) -> None:
        """Send the job's frames from ``position`` until it ends, the client cancels, or
        the socket goes away (then the job goes on, for a resume)."""
        conn.current_job = job
        conn.chunk_index = bisect.bisect_left(job.chunk_at, position)  # encrypted chunks
        job.consumers += 1
        job.attach()
        try:
            while True:
                frames = job.frames
                while position < len(frames) and not conn.cancel.is_set() and not conn.gone:
                    await conn.send_answer(frames[position])
                    position += 1
                if conn.gone or conn.ws.closed:
                    return
                if conn.cancel.is_set():
                    break
                if job.finished.is_set() and position >= len(job.frames):
                    return
                await job.wait_beyond(position)
        except (ConnectionResetError, RuntimeError):
            return  # the socket went away mid-send: the job stays for a resume
        finally:
            conn.current_job = None
            job.consumers -= 1
            if job.consumers == 0 and not job.finished.is_set():
                # Nobody reads it now: it waits unread_wait for a reader, at most
                # unread_limit tokens ahead (AnswerJob.detach), then stops.
                job.detach()
                asyncio.get_running_loop().call_later(self.resume_grace, self._reap, job)
        # stream_cancel: stop generating and say so.
        job.cancel()
        if job.tracker is not None:
            job.tracker.end_message()
        self.received_cancels += 1
        self.cancel_seen.set()
        tokens_sent = bisect.bisect_left(job.chunk_at, position)
        await conn.send(
            encode_frame(
                StreamEnd(
                    reason="cancelled",
                    tokens_used=tokens_sent,
                    finish_reason="cancelled",
                    session_id=conn.session_id,
                )
            )
        )

    def _checkpoint_tracker(
        self, conn: _Connection, request: InferenceRequest
    ) -> CheckpointTracker | None:
        """The tracker for a request that asked for checkpoints (the extension).

        Scope ``session``: one tracker per session id, started from the first prompt's
        ``conversation_context``, then each prompt and answer. Scope ``request``: the
        request's context, prompt and answer only. An encrypted client says what its
        conversation is in the spec (``session``, ``prompt``, ``context``): the prompt
        text a node reads carries more than the message (``sessions/conversation.py``).
        """
        spec = request.checkpoint
        if not self._host_key or not isinstance(spec, dict):
            return None
        interval = spec.get("interval")
        if not isinstance(interval, int) or interval < 1:
            return None
        session_id = request.session_id or conn.session_id or "anonymous"
        context = [{"role": m.role, "content": m.content} for m in request.conversation_context]
        prompt = request.prompt
        if conn.cipher is not None:
            told = spec.get("context")
            if isinstance(spec.get("session"), str):
                session_id = spec["session"]
            if isinstance(spec.get("prompt"), str):
                prompt = spec["prompt"]
            if isinstance(told, list):
                context = [
                    {"role": str(m.get("role")), "content": str(m.get("content"))}
                    for m in told[-CONTEXT_MESSAGES:]
                    if isinstance(m, dict)
                ]
        # Session state belongs to the socket (token) that began it: a stranger who
        # claims the same session id gets a tracker of its own.
        key = (conn.token, session_id)
        tracker = self._trackers.get(key) if spec.get("scope") == "session" else None
        if tracker is None:
            tracker = CheckpointTracker(session_id, checkpoint_interval=interval)
            for m in context:
                tracker.add_message(m["role"], m["content"])
            tracker.end_message()
            if spec.get("scope") == "session":
                self._trackers[key] = tracker
                while len(self._trackers) > 1024:
                    self._trackers.popitem(last=False)
        tracker.checkpoint_interval = interval
        tracker.add_message("user", prompt)
        tracker.add_message("assistant")
        return tracker

    def _checkpoint_frame(self, proof: Any, rid: str | None) -> str:
        """The ``checkpoint`` extension frame: the proof, signed with the host key."""
        assert self._host_key is not None
        signed = sign_proof(proof, self._host_key, field="host_signature")
        frame: dict[str, Any] = {"type": "checkpoint", "proof": signed.to_dict()}
        if rid is not None:
            frame["id"] = rid
        return json.dumps(frame, separators=(",", ":"))

    # --- HTTP -----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "issues": []})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": __version__,
                "build": "langchain-fabstir reference host",
                "date": "2026-11-24",
                "features": self.features(),
                "chains": [self.chain_id] if self.chain_id else [],
                "engine": self.engine.name,
                **_engine_description(self.engine),
                "host_address": self.host_address,
                "host_public_key": self.host_public_key,
                "url": self.public_url or self.url,
            }
        )

    async def _challenge(self, request: web.Request) -> web.Response:
        """``POST /v1/auth/challenge`` (section 4.4): ``{"challenge": hex32}`` ->
        ``{"signature": r||s hex, "recid"}`` over ``sha256(challenge)``, so that a client
        recovers the host's key (and checks it against the host's address)."""
        if self._encryption_key is None:
            return web.json_response(
                {"error_type": "not_supported", "message": "this host has no host key"},
                status=404,
            )
        try:
            body = loads_untrusted(await request.read())
            challenge = bytes.fromhex(body["challenge"].removeprefix("0x"))
        except (ValueError, TypeError, KeyError, AttributeError):
            challenge = b""
        if len(challenge) != 32:
            return web.json_response(
                {
                    "error_type": "validation_error",
                    "message": "challenge must be 32 bytes of hex",
                    "details": {"field": "challenge"},
                },
                status=400,
            )
        return web.json_response(answer_challenge(self._encryption_key, challenge))

    async def _models(self, request: web.Request) -> web.Response:
        refresh = getattr(self.engine, "refresh_models", None)
        if refresh is not None:  # an engine in front of another server: its list
            await refresh()
        body: dict[str, Any] = {"models": self.engine.models()}
        if self.chain_id:
            body["chain_id"] = self.chain_id
        return web.json_response(body)

    async def _inference(self, request: web.Request) -> web.Response:
        def invalid(message: str, field: str | None = None) -> web.Response:
            return web.json_response(
                {
                    "error_type": "validation_error",
                    "message": message,
                    "details": {"field": field} if field else {},
                },
                status=400,
            )

        try:
            body = loads_untrusted(await request.read())
            req = InferenceRequest.model_validate(body)
        except ValueError as exc:
            return invalid(f"invalid request body: {str(exc)[:300]}")
        if not req.prompt.strip():
            return invalid("Prompt cannot be empty", "prompt")
        if req.thinking is not None and req.thinking not in THINKING_MODES:
            return invalid(_invalid_thinking(req.thinking), "thinking")
        try:
            messages, response_format = self._prepare(req)
        except _InvalidTools as exc:
            return invalid(f"Validation error for tools: {exc}", "tools")
        if self._limiter.check() is not None:
            return web.json_response(
                {"error_type": "rate_limited", "message": "Rate limit exceeded"}, status=429
            )
        self._log_model_input(messages)
        gen = self.engine.generate(
            EngineRequest(
                messages,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                seed=req.seed,
                response_format=response_format,
                model=req.model,
            )
        )
        # A client that leaves stops the generation (and an upstream request) at the
        # next token: one attribute read per token.
        transport = request.transport
        parts: list[str] = []
        try:
            async for token in gen:
                parts.append(token)
                if transport is None or transport.is_closing():
                    return web.Response(status=499)  # nobody reads it
        except EngineError as exc:
            return web.json_response(
                {"error_type": "engine_error", "message": str(exc)}, status=500
            )
        finally:
            await gen.aclose()
        content = "".join(parts)
        result = gen.result
        prompt_tokens = result.prompt_tokens or self.engine.count_prompt_tokens(messages)
        return web.json_response(
            {
                "model": req.model,
                "content": content,
                "tokens_used": result.completion_tokens,
                "finish_reason": result.finish_reason,
                "request_id": req.request_id,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": prompt_tokens + result.completion_tokens,
                },
            }
        )

    async def _checkpoints(self, request: web.Request) -> web.Response:
        return await checkpoint_index_response(
            self.s5_checkpoints, request.match_info["session_id"]
        )


class _InvalidTools(ValueError):
    """``tools`` or ``tool_choice`` that cannot be used (a validation error)."""


def _shrink(value: Any, budget: list[int]) -> Any:
    """``value`` with at most ``budget[0]`` characters of strings and items of lists and
    dicts in all (the newest items of a list are kept); long strings are cut."""
    if isinstance(value, str):
        keep = max(0, budget[0])
        budget[0] -= min(len(value), keep)
        if len(value) <= keep:
            return value
        return value[:keep] + f"...[{len(value) - keep} characters not kept]"
    if isinstance(value, list):
        items = value[-max(0, budget[0]) :] if budget[0] > 0 else []
        budget[0] -= len(items)
        return [_shrink(v, budget) for v in items]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if budget[0] <= 0:
                break
            budget[0] -= 1
            out[_shrink(k, budget)] = _shrink(v, budget)
        return out
    return value


def _record(request: InferenceRequest, size: int) -> InferenceRequest:
    """What :attr:`ReferenceHost.requests` keeps of a request: the request itself when
    it is small, else a copy holding at most :data:`RECORD_LIMIT` characters (so that
    finished requests pin no memory)."""
    if size <= RECORD_LIMIT:
        return request
    budget = [RECORD_LIMIT // 2]
    context = [
        m.model_copy(update={"content": _shrink(m.content, budget)})
        for m in request.conversation_context[-CONTEXT_MESSAGES:]
    ]
    update: dict[str, Any] = {"prompt": _shrink(request.prompt, budget)}
    update["conversation_context"] = context
    for name in ("tools", "tool_choice", "response_format", "resume", "checkpoint"):
        update[name] = _shrink(getattr(request, name), budget)
    record = request.model_copy(update=update)
    record.__pydantic_extra__ = _shrink(dict(request.model_extra or {}), budget)
    return record


def _response_format(request: InferenceRequest) -> dict[str, Any] | None:
    """The decoding constraint for a request: its ``response_format``, or the tool-call
    envelope when tools are bound (the ``tools`` extension)."""
    if request.tools and request.tool_choice != "none":
        parallel = bool((request.model_extra or {}).get("parallel_tool_calls"))
        schema = envelope_schema(request.tools, request.tool_choice, parallel=parallel)
        return {"type": "json_schema", "json_schema": {"name": "tool_envelope", "schema": schema}}
    return request.response_format


def _engine_error_frame(exc: EngineError, rid: str | None, window: int) -> ErrorFrame:
    """The host's error frame for an engine that refused a request."""
    if isinstance(exc, EngineRateLimited):
        wait = max(1, round(exc.retry_after))
        return ErrorFrame(error=f"Rate limit exceeded, retry after {wait} seconds", id=rid)
    if isinstance(exc, EngineContextOverflow):
        return ErrorFrame(
            code="TOKEN_LIMIT_EXCEEDED",
            message=str(exc),
            prompt_tokens=exc.prompt_tokens,
            context_window_size=exc.context_window or window,
            id=rid,
        )
    return ErrorFrame(error=f"Engine error: {exc}", id=rid)


def _engine_description(engine: Engine) -> dict[str, Any]:
    describe = getattr(engine, "describe", None)
    return {"engine_info": describe()} if describe is not None else {}


_CHUNK_PREFIX = '{"type":"stream_chunk","content":'
_CHUNK_TAIL = re.compile(r',"tokens":(\d+)(?:,"id":"[^"\\]*")?\}\Z')
"""The rest of a chunk frame built by ``run_prompt`` after its content."""
_scan_json_string = json.decoder.scanstring  # type: ignore[attr-defined]


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


async def run_host(engine: Engine, *, host: str = "127.0.0.1", port: int = 8080, **kw: Any) -> None:
    """Serve until cancelled (used by ``fabstir host``)."""
    async with ReferenceHost(engine, host=host, port=port, **kw) as server:
        log.warning("Fabstir reference host (%s engine) at %s", engine.name, server.url)
        await asyncio.Event().wait()
