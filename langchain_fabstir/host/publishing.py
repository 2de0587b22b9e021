"""The host side of S5 checkpoints: what a real host with a key publishes (PROTOCOL.md 3).

A :class:`S5CheckpointWriter` counts the tokens a host generates in each session. Every
``interval`` tokens (1,000), and at the end of a response when at least
``min_final_tokens`` (100) are unproven, it cuts a checkpoint and writes, under the
host's own namespace on S5 (plain JSON, so any client can read them: they are
published proofs)::

Details and examples: :class:`S5CheckpointWriter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from langchain_fabstir._json import MAX_STORED_BYTES, MAX_STORED_DEPTH, loads_untrusted
from langchain_fabstir.checkpoints import (
    PrivateKey,
    address_of,
    sign_host_delta,
    sign_host_index,
    verify_host_index,
)
from langchain_fabstir.checkpoints.published import delta_proof_hash, encrypt_host_delta
from langchain_fabstir.errors import FabstirError, StorageError
from langchain_fabstir.s5.client import S5PortalClient
from langchain_fabstir.s5.fs import S5FileSystem
from langchain_fabstir.s5.seed import S5Identity

__all__ = [
    "AnswerRecorder",
    "S5CheckpointWriter",
    "checkpoint_index_response",
    "valid_session_id",
]

logger = logging.getLogger(__name__)

Message = dict[str, Any]


def valid_session_id(session_id: object) -> bool:
    """Whether ``session_id`` can name a directory (one path segment, at most 128 chars).

    >>> valid_session_id("123"), valid_session_id("a/b"), valid_session_id("..")
    (True, False, False)
    """
    return (
        isinstance(session_id, str)
        and 0 < len(session_id) <= 128
        and "/" not in session_id
        and "\x00" not in session_id
        and session_id not in (".", "..")
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Cut:
    """A checkpoint cut but not yet written: its messages and how many tokens it covers."""

    messages: list[Message]
    tokens: int
    timestamp: int
    recipient: str | None = None  # an encrypted session's recoveryPublicKey (section 4.5)


@dataclass
class _SessionLog:
    session_id: str
    next_cut: int
    tokens: int = 0  # generated in this session (by this process)
    cut_at: int = 0  # ``tokens`` at the last cut
    pending: list[Message] = field(default_factory=list)  # since the last cut
    queue: list[_Cut] = field(default_factory=list)  # cut, not yet written
    task: asyncio.Task[None] | None = None
    entries: list[dict[str, Any]] | None = None  # the index on S5 (None: not loaded)
    index: dict[str, Any] | None = None
    answers: set[AnswerRecorder] = field(default_factory=set)  # not finished yet
    recipient: str | None = None  # the recoveryPublicKey of the session's latest answer


class AnswerRecorder:
    """One answer being generated: feeds its tokens to the session's checkpoint log.

    Made by :meth:`S5CheckpointWriter.start_answer`; call :meth:`token` for every
    generated token and :meth:`finish` once when the answer ends (or
    :meth:`finish_when` with the event that says so).
    """

    __slots__ = ("_cuts", "_done", "_ended", "_log", "_pieces", "_timestamp", "_user", "_writer")

    def __init__(self, writer: S5CheckpointWriter, log: _SessionLog, prompt: str) -> None:
        self._writer = writer
        self._log = log
        self._pieces: list[str] = []  # generated since the last cut
        self._cuts = 0  # checkpoints cut inside this answer
        self._timestamp = _now_ms()
        self._user: Message = {"role": "user", "content": prompt, "timestamp": self._timestamp}
        self._done = False
        self._ended: asyncio.Event | None = None
        log.pending.append(self._user)
        log.answers.add(self)

    def token(self, text: str) -> None:
        """Record one generated token (cuts a checkpoint first when one is due)."""
        log = self._log
        if log.tokens >= log.next_cut:
            self._cut(partial=True)
        self._pieces.append(text)
        log.tokens += 1

    def billable(self, tokens: int) -> None:
        """Count ``tokens`` the session's job is billed for beyond generated ones (what a
        vision sidecar used on the prompt's images), as a node adds them to the job."""
        self._log.tokens += max(0, tokens)

    def _cut(self, *, partial: bool) -> None:
        log = self._log
        if partial:
            piece: Message = {
                "role": "assistant",
                "content": "".join(self._pieces),
                "timestamp": self._timestamp,
                "metadata": {"partial": True},
            }
            log.pending.append(piece)
            self._pieces = []
            self._cuts += 1
        self._writer._cut(log)

    def finish(self) -> None:
        """The answer ended: close its message; cut a checkpoint if enough is unproven."""
        if self._done:
            return
        self._done = True
        log = self._log
        log.answers.discard(self)
        if (
            not self._pieces and not self._cuts
        ):  # no answer at all: the prompt is not part of the record
            with contextlib.suppress(ValueError):
                log.pending.remove(self._user)
            return
        log.pending.append(
            {
                "role": "assistant",
                "content": "".join(self._pieces),
                "timestamp": self._timestamp,
            }
        )
        self._pieces = []
        if log.tokens - log.cut_at >= self._writer.min_final_tokens:
            self._cut(partial=False)

    def finish_when(self, event: asyncio.Event) -> None:
        """Call :meth:`finish` once ``event`` is set (covers cancelled answers).

        :meth:`S5CheckpointWriter.index` also finishes an answer whose event is set,
        so an index asked for after an answer ended always includes its checkpoint.
        """
        self._ended = event

        def done(_: object) -> None:
            self.finish()

        asyncio.ensure_future(event.wait()).add_done_callback(done)


class S5CheckpointWriter:
    """Publishes a host's checkpoints of every session to S5 (PROTOCOL.md 3).

        home/checkpoints/{hostAddress}/{sessionId}/delta_{n}.json
        home/checkpoints/{hostAddress}/{sessionId}/index.json

    (``hostAddress`` in lower case, as hosts write it). A delta holds the messages since
    the previous delta: the user prompt(s) and the assistant text generated, an answer cut
    by the checkpoint marked ``metadata.partial = true`` and continued by the first message
    of the next delta. Its ``proofHash`` is
    :func:`~langchain_fabstir.checkpoints.published.delta_proof_hash` (keccak256 of the
    delta's canonical content; hosts with a chain hash their proof of work instead), and
    ``hostSignature`` is EIP-191 over the canonical JSON of ``messages``. The index lists
    every delta by CID and is signed over ``checkpoints``. ``GET /v1/checkpoints/{id}``
    serves the index (:func:`checkpoint_index_response`).

    Encrypted sessions (PROTOCOL.md section 4.5): an answer started with
    ``recovery_public_key`` (the reference host passes the ``recoveryPublicKey`` of the
    session's ``encrypted_session_init``) has its checkpoints written as encrypted envelopes
    (:func:`~langchain_fabstir.checkpoints.published.encrypt_host_delta`: a fresh ephemeral
    key per delta, so only the client reads them) and marked ``"encrypted": true`` in the
    index, which stays plain and signed.

    The per-token cost is a comparison, a list append and an integer add
    (:meth:`AnswerRecorder.token`); S5 writes run as one background task per session, in
    checkpoint order. A write that fails (portal down) is logged and retried at the
    session's next checkpoint or at :meth:`S5CheckpointWriter.flush`; checkpoint numbers
    and token ranges are assigned when a delta is written, continuing the index already on
    S5, so they stay contiguous.

    What a host records is what it saw: each prompt and the answer it generated. The
    ``conversation_context`` a client sends is its own claim and is not republished.
    Sessions stream one answer at a time (as the protocol has it).

    Wiring (the reference host does this when given ``portal_url`` and ``s5_seed_phrase``)::

        writer = S5CheckpointWriter.from_portal(portal_url, seed_phrase, host_key)
        recorder = writer.start_answer(session_id, prompt)   # when a prompt is accepted
        recorder.token(text)                                  # per generated token
        recorder.finish()                                     # when the answer ends
        index = await writer.index(session_id)                # GET /v1/checkpoints/{id}

    Runnable, against a local portal (3-token checkpoints to keep it short):

    >>> import asyncio, tempfile
    >>> from langchain_fabstir.portal import LocalPortal
    >>> from langchain_fabstir.s5 import generate_phrase
    >>> async def demo():
    ...     async with LocalPortal(tempfile.mkdtemp()) as portal:
    ...         writer = S5CheckpointWriter.from_portal(
    ...             portal.url, generate_phrase(), "0x" + "42" * 32, interval=3, min_final_tokens=1)
    ...         answer = writer.start_answer("s1", "Count to five")
    ...         for word in ["one ", "two ", "three ", "four ", "five"]:
    ...             answer.token(word)
    ...         answer.finish()
    ...         index = await writer.index("s1")
    ...         await writer.aclose()
    ...         return [(c["index"], c["tokenRange"]) for c in index["checkpoints"]]
    >>> asyncio.run(demo())
    [(0, [0, 3]), (1, [3, 5])]

    Args:
        fs: the host's :class:`S5FileSystem` (authenticated on its portal).
        host_key: the host's secp256k1 key; signs every delta and index.
        interval: tokens per checkpoint (real hosts: 1,000).
        min_final_tokens: at the end of a response, cut a checkpoint when at least this
            many tokens are unproven (real hosts: 100).
        index_wait: seconds :meth:`index` waits for a session's writes in progress.
        max_sessions: sessions kept in memory (older ones reload their index from S5).
        prepare: an async callable run once before the first write (log in).
        on_close: an async callable run by :meth:`aclose` (close an owned client).
    """

    def __init__(
        self,
        fs: S5FileSystem,
        host_key: PrivateKey,
        *,
        interval: int = 1000,
        min_final_tokens: int = 100,
        index_wait: float = 5.0,
        max_sessions: int = 4096,
        prepare: Callable[[], Awaitable[None]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if interval < 1 or min_final_tokens < 1:
            raise ValueError("interval and min_final_tokens must be at least 1")
        self.fs = fs
        self._key = host_key if not isinstance(host_key, str) else SecretStr(host_key)
        self.host_address = address_of(self._key).lower()
        self.interval = interval
        self.min_final_tokens = min_final_tokens
        self.index_wait = index_wait
        self.max_sessions = max_sessions
        self._prepare = prepare
        self._prepared: asyncio.Future[None] | None = None
        self._on_close = on_close
        self._sessions: OrderedDict[str, _SessionLog] = OrderedDict()
        self.published = 0
        """Deltas written so far."""
        self.failures = 0
        """Writes that failed (each is retried later)."""
        self.last_error: BaseException | None = None
        self.prover: Callable[[str, int, int], bytes | None] | None = None
        """Hook of a host with a chain (``host/chain_proofs.py``): ``prover(session,
        number, tokens)`` -> the proof bytes of a delta about to be written, whose
        SHA-256 becomes its ``proofHash`` (as on deployed nodes); ``None``: the keccak
        of the delta."""
        self.on_checkpoint: Callable[[str, dict[str, Any]], None] | None = None
        """Hook called with ``(session, index entry)`` once a delta and its index are on S5."""

    def __repr__(self) -> str:
        return f"S5CheckpointWriter({self.host_address}, interval={self.interval})"

    @classmethod
    def from_portal(
        cls,
        portal_url: str,
        seed_phrase: str | SecretStr,
        host_key: PrivateKey,
        **kw: Any,
    ) -> S5CheckpointWriter:
        """A writer with its own portal client and S5 identity (from the seed phrase).

        It logs in (or registers) on the first write and closes the client in
        :meth:`aclose`. The phrase is not kept.
        """
        phrase = (
            seed_phrase.get_secret_value() if isinstance(seed_phrase, SecretStr) else seed_phrase
        )
        identity = S5Identity.from_phrase(phrase)
        client = S5PortalClient(portal_url)
        key_pair = identity.portal_account_key_pair()

        async def login() -> None:
            await client.ensure_account(key_pair, label="fabstir-host")

        return cls(
            S5FileSystem(client, identity), host_key, prepare=login, on_close=client.aclose, **kw
        )

    @classmethod
    def for_host(
        cls,
        host_key: PrivateKey | None,
        *,
        fs: S5FileSystem | None = None,
        portal_url: str | None = None,
        seed_phrase: str | SecretStr | None = None,
        **kw: Any,
    ) -> S5CheckpointWriter | None:
        """The writer of a host configured with these options, or ``None`` (no S5 store).

        Raises:
            ValueError: an S5 store without a host key, or a portal without a phrase.
        """
        if fs is None and portal_url is None:
            return None
        if host_key is None:
            raise ValueError("publishing checkpoints to S5 needs a host key (host_key=...)")
        if fs is not None:
            return cls(fs, host_key, **kw)
        if seed_phrase is None:
            raise ValueError("portal_url needs s5_seed_phrase (the host's S5 identity)")
        assert portal_url is not None
        return cls.from_portal(portal_url, seed_phrase, host_key, **kw)

    # --- paths ------------------------------------------------------------------------

    def path(self, session_id: str, name: str = "index.json") -> str:
        """Where a session's file lives: ``home/checkpoints/{address}/{session}/{name}``."""
        return f"home/checkpoints/{self.host_address}/{session_id}/{name}"

    # --- the generation side (synchronous, no I/O) ------------------------------------

    def start_answer(
        self, session_id: str | None, prompt: str, *, recovery_public_key: str | None = None
    ) -> AnswerRecorder | None:
        """Start recording an answer to ``prompt`` (``None`` for an unusable session id).

        ``recovery_public_key``: in an encrypted session, the ``recoveryPublicKey`` of the
        client's ``encrypted_session_init``; the checkpoints cut from now on are sealed to
        it (PROTOCOL.md section 4.5), ``None`` writes them in clear.
        """
        if not valid_session_id(session_id):
            return None
        assert session_id is not None
        log = self._sessions.get(session_id)
        if log is None:
            log = _SessionLog(session_id, next_cut=self.interval)
            self._sessions[session_id] = log
            self._evict()
        else:
            self._sessions.move_to_end(session_id)
        log.recipient = recovery_public_key
        return AnswerRecorder(self, log, prompt)

    def _evict(self) -> None:
        while len(self._sessions) > self.max_sessions:
            for sid, old in self._sessions.items():
                if not (old.queue or old.answers) and (old.task is None or old.task.done()):
                    del self._sessions[sid]
                    break
            else:
                return

    def _cut(self, log: _SessionLog) -> None:
        log.queue.append(_Cut(log.pending, log.tokens - log.cut_at, _now_ms(), log.recipient))
        log.pending = []
        log.cut_at = log.tokens
        log.next_cut = log.tokens + self.interval
        self._kick(log)

    def _kick(self, log: _SessionLog) -> None:
        if log.queue and (log.task is None or log.task.done()):
            log.task = asyncio.get_running_loop().create_task(self._pump(log))

    # --- the storage side (background) ------------------------------------------------

    async def _ready(self) -> None:
        if self._prepare is None:
            return
        failed = (
            self._prepared is not None
            and self._prepared.done()
            and (self._prepared.cancelled() or self._prepared.exception() is not None)
        )
        if self._prepared is None or failed:
            self._prepared = asyncio.ensure_future(self._prepare())
        await asyncio.shield(self._prepared)

    async def _pump(self, log: _SessionLog) -> None:
        """Write the session's cut checkpoints, in order; stop (keeping them) on failure."""
        try:
            await self._ready()
            if log.entries is None:
                log.entries, log.index = await self._load(log.session_id)
            while log.queue:
                await self._write(log, log.queue[0])
                log.queue.pop(0)
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            logger.warning(
                "checkpoint of session %s not written yet (%d waiting, retried later): %s",
                log.session_id,
                len(log.queue),
                exc,
            )

    async def _load(self, session_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The index already on S5 (written by an earlier run), if it is this host's."""
        data = await self.fs.get(self.path(session_id))
        if data is None:
            return [], None
        try:
            raw = loads_untrusted(data, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES)
            verify_host_index(raw, self.host_address)
        except (ValueError, FabstirError) as exc:
            logger.warning(
                "replacing unreadable checkpoint index of session %s: %s", session_id, exc
            )
            return [], None
        return list(raw["checkpoints"]), raw

    async def _write(self, log: _SessionLog, cut: _Cut) -> None:
        assert log.entries is not None
        last = log.entries[-1] if log.entries else None
        number = int(last["index"]) + 1 if last else 0
        start = int(last["tokenRange"][1]) if last else 0
        delta: dict[str, Any] = {
            "checkpointIndex": number,
            "startToken": start,
            "endToken": start + cut.tokens,
            "sessionId": log.session_id,
            "messages": cut.messages,
        }
        proof = self.prover(log.session_id, number, cut.tokens) if self.prover else None
        if proof is not None:
            delta["proofHash"] = "0x" + hashlib.sha256(proof).hexdigest()
        else:
            delta["proofHash"] = delta_proof_hash(delta)
        signed = sign_host_delta(delta, self._key)
        if cut.recipient is not None:  # an encrypted session: sealed to the client
            signed = encrypt_host_delta(signed, cut.recipient, self._key)
        info = await self.fs.put(
            self.path(log.session_id, f"delta_{number}.json"),
            _json_bytes(signed),
            media_type="application/json",
            encrypt=False,
        )
        entry = {
            "index": number,
            "proofHash": delta["proofHash"],
            "deltaCid": str(info.cid),
            "tokenRange": [start, start + cut.tokens],
            "timestamp": cut.timestamp,
            "encrypted": cut.recipient is not None,
        }
        entries = [*log.entries, entry]
        index = sign_host_index(
            {"sessionId": log.session_id, "hostAddress": self.host_address, "checkpoints": entries},
            self._key,
        )
        await self.fs.put(
            self.path(log.session_id),
            _json_bytes(index),
            media_type="application/json",
            encrypt=False,
        )
        log.entries, log.index = entries, index
        self.published += 1
        if self.on_checkpoint is not None:
            self.on_checkpoint(log.session_id, entry)

    def add_tokens(self, session_id: str | None, tokens: int) -> None:
        """Bill ``tokens`` that are not text (an image: PROTOCOL.md 6.3) into the session's
        count; a checkpoint is cut as at the end of an answer (its delta adds no message:
        nodes store nothing of an image in the conversation)."""
        if not valid_session_id(session_id) or tokens <= 0:
            return
        assert session_id is not None
        log = self._sessions.get(session_id)
        if log is None:
            log = self._sessions[session_id] = _SessionLog(session_id, next_cut=self.interval)
            self._evict()
        log.tokens += tokens
        if not log.answers and log.tokens - log.cut_at >= self.min_final_tokens:
            self._cut(log)

    def end_session(self, session_id: str, *, force: bool = False) -> None:
        """The session's socket closed: cut a checkpoint of its unproven tokens when
        there are at least ``min_final_tokens`` (any, with ``force``)."""
        log = self._sessions.get(session_id)
        if log is None:
            return
        for answer in list(log.answers):
            if answer._ended is not None and answer._ended.is_set():
                answer.finish()
        unproven = log.tokens - log.cut_at
        if unproven > 0 and not log.answers and (force or unproven >= self.min_final_tokens):
            self._cut(log)

    async def drain(self, session_id: str) -> bool:
        """Wait (at most ``index_wait`` seconds) for the session's writes in progress,
        retrying a failed one once; True when nothing is left to write."""
        log = self._sessions.get(session_id)
        if log is None:
            return True
        self._kick(log)
        if log.task is not None and not log.task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(log.task), self.index_wait)
        return not log.queue

    # --- reading and lifecycle --------------------------------------------------------

    async def index(self, session_id: str) -> dict[str, Any] | None:
        """The signed index of ``session_id`` (``None`` when nothing is published).

        Waits up to ``index_wait`` seconds for the session's writes in progress, so a
        client asking right after an answer ended sees its checkpoint.

        Raises:
            StorageError: the index is not in memory and S5 cannot be read.
        """
        if not valid_session_id(session_id):
            return None
        log = self._sessions.get(session_id)
        if log is not None:
            for answer in list(log.answers):
                if answer._ended is not None and answer._ended.is_set():
                    answer.finish()
            if log.task is not None and not log.task.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(log.task), self.index_wait)
            if log.index is not None:
                return log.index
        data = await self.fs.get(self.path(session_id))
        if data is None:
            return None
        try:
            raw = loads_untrusted(data, MAX_STORED_DEPTH, max_bytes=MAX_STORED_BYTES)
        except ValueError as exc:
            raise StorageError(f"the stored checkpoint index of {session_id} is not JSON") from exc
        return raw if isinstance(raw, dict) else None

    async def flush(self) -> bool:
        """Write every cut checkpoint now (retrying failed ones); True when none is left."""
        for log_ in list(self._sessions.values()):
            self._kick(log_)
        tasks = [s.task for s in self._sessions.values() if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return not any(s.queue for s in self._sessions.values())

    async def aclose(self, timeout: float = 10.0) -> None:
        """Flush (for at most ``timeout`` seconds), then close an owned portal client."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        if self._on_close is not None:
            await self._on_close()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def checkpoint_index_response(
    writer: S5CheckpointWriter | None, session_id: str
) -> web.Response:
    """``GET /v1/checkpoints/{session_id}``: the index, 404 when none, 503 without S5."""
    if writer is None:
        return web.json_response(
            {"error": "this host publishes no checkpoints (no S5 store configured)"}, status=503
        )
    try:
        index = await writer.index(session_id)
    except StorageError as exc:
        return web.json_response({"error": f"checkpoint storage unavailable: {exc}"}, status=503)
    if index is None:
        return web.json_response({"error": f"no checkpoints for session {session_id}"}, status=404)
    return web.json_response(index, dumps=lambda v: json.dumps(v, ensure_ascii=False))
