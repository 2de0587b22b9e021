"""Incremental checkpointing: the tracker the session layer drives as a conversation grows.

:class:`CheckpointTracker` (alias :data:`ConversationHasher`) keeps the conversation as
lists of text pieces, counts generated tokens, and makes a
:class:`~langchain_fabstir.checkpoints.CheckpointProof` every ``checkpoint_interval``
tokens. A checkpoint hashes only the delta since the previous boundary (see
:mod:`langchain_fabstir.checkpoints.hashchain`), so its cost is proportional to what changed;
a streamed token costs one list append and two additions.

Details and examples: :class:`CheckpointTracker`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring as _json_string
from time import time_ns
from typing import Any

from langchain_fabstir.checkpoints.hashchain import (
    ZERO_HASH,
    Position,
    chain_text,
    message_role_content,
    piece_json,
    piece_suffixes,
    verify_checkpoints,
)
from langchain_fabstir.checkpoints.proof import (
    CheckpointProof,
    built_proof,
    made_proof,
    sign_proof,
)
from langchain_fabstir.checkpoints.signing import PrivateKey, _account
from langchain_fabstir.errors import CheckpointError

__all__ = ["DEFAULT_CHECKPOINT_INTERVAL", "CheckpointTracker", "ConversationHasher"]

#: Tokens between two automatic checkpoints, as on real hosts.
DEFAULT_CHECKPOINT_INTERVAL = 1000


class _Message:
    """A message as a list of text pieces: appending is O(1), joining happens once."""

    __slots__ = ("closed", "length", "parts", "role", "suffixes")

    def __init__(self, role: str, content: str) -> None:
        self.role = role
        self.parts: list[str] = [content] if content else []
        self.length = len(content)
        self.closed = False
        # How a one-piece delta of this message ends (whole, partial): see piece_suffixes.
        self.suffixes = piece_suffixes(role)


# A proof's fields, as built_proof takes them: session_id, checkpoint_number,
# conversation_hash, token_count, timestamp, message_index, char_offset, start_token.
_Made = tuple[str, int, str, int, datetime, int, int, int]

# A checkpoint waiting for its message to grow or end: where it ends (message index,
# offset), its token count, and when it was asked for.
_Pending = tuple[int, int, int, datetime]

_UTC = timezone.utc
_MILLISECONDS = tuple(timedelta(milliseconds=1) * ms for ms in range(1000))
# The last second _utc_now read, and that second as a datetime (one tuple: threads that
# replace it at the same time each leave a consistent pair).
_now_second = (0, datetime(1970, 1, 1, tzinfo=_UTC))


def _utc_now() -> datetime:
    """Now, in UTC, cut to whole milliseconds (what a proof keeps of its timestamp).

    The second is converted once (``fromtimestamp`` of an int: exact); each call adds
    its milliseconds to it, which costs a third as much.
    """
    global _now_second
    ms = time_ns() // 1_000_000
    second, start = _now_second
    offset = ms - second * 1000
    if not 0 <= offset < 1000:
        second = ms // 1000
        start = datetime.fromtimestamp(second, _UTC)
        _now_second = (second, start)
        offset = ms - second * 1000
    return start + _MILLISECONDS[offset]


class CheckpointTracker:
    """Hashes a conversation incrementally and makes checkpoint proofs.

    One subtlety shapes the API: whether a checkpoint's last piece is *partial* depends on
    whether its message goes on, which is unknown while the message is still streaming. So
    a checkpoint due at the end of a growing message is *pending* until the next text (then
    the piece is partial) or the end of the message (then it is whole); the proof comes back
    from whichever call settles it (:meth:`~CheckpointTracker.on_tokens`,
    :meth:`~CheckpointTracker.append_to_last`, :meth:`~CheckpointTracker.add_message`,
    :meth:`~CheckpointTracker.end_message` or :meth:`~CheckpointTracker.checkpoint`).

    >>> tracker = CheckpointTracker("s-1", checkpoint_interval=3)
    >>> tracker.add_message("user", "Count to five")
    >>> _ = tracker.add_message("assistant")
    >>> [tracker.on_tokens(t) is not None for t in ["one", " two", " three", " four", " five"]]
    [False, False, False, True, False]
    >>> final = tracker.checkpoint()   # end of the response: seals the message
    >>> [(p.checkpoint_number, p.start_token, p.end_token) for p in tracker.proofs]
    [(1, 0, 3), (2, 3, 5)]
    >>> verify_checkpoints(tracker.history(), tracker.proofs)   # anyone can recompute them

    A checkpoint costs work proportional to its delta; :func:`verify_checkpoints`
    recomputes the same hashes from the whole history:

    >>> from langchain_fabstir.checkpoints import verify_checkpoints
    >>> tracker = CheckpointTracker("demo", checkpoint_interval=2)
    >>> tracker.add_message("system", "Be brief.")
    >>> tracker.add_message("user", "Hi")
    >>> tracker.add_message("assistant")
    >>> for word in ["Hello", " there", "!"]:
    ...     proof = tracker.on_tokens(word)
    >>> proof.checkpoint_number, proof.boundary.as_tuple()
    (1, (2, 11))
    >>> verify_checkpoints(tracker.history(), tracker.proofs)

    Args:
        session_id: the session the proofs belong to.
        checkpoint_interval: generated tokens between automatic checkpoints
            (``None`` turns automatic checkpoints off).
        signing_key: when given, every proof is signed with it (:func:`sign_proof`).
        clock: returns "now" (UTC); for tests.

    Messages are open (may grow with :meth:`append_to_last`) until the next
    :meth:`add_message`, :meth:`end_message` or :meth:`checkpoint`. Not thread-safe: one
    session drives one tracker.

    Attributes:
        hashed_bytes: bytes fed to SHA-256 so far (each checkpoint adds 32 plus its
            delta's canonical JSON): the measure of checkpointing work.
    """

    def __init__(
        self,
        session_id: str,
        *,
        checkpoint_interval: int | None = DEFAULT_CHECKPOINT_INTERVAL,
        signing_key: PrivateKey | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not session_id:
            raise CheckpointError("session_id must not be empty", details={"reason": "bad_args"})
        if checkpoint_interval is not None and checkpoint_interval < 1:
            raise CheckpointError(
                f"checkpoint_interval must be >= 1 or None, got {checkpoint_interval}",
                details={"reason": "bad_args"},
            )
        self.session_id = session_id
        self.checkpoint_interval = checkpoint_interval
        self._account = _account(signing_key) if signing_key is not None else None
        self._clock = clock or _utc_now
        self._messages: list[_Message] = []
        # Where the next delta starts: message index, and part index inside it.
        self._cursor_message = 0
        self._cursor_part = 0
        self._previous_boundary: Position | None = None
        self._hash = ZERO_HASH
        # Each proof, or the fields of an unsigned one (built_proof's arguments), which
        # take a sixth of the memory and become the proof when asked for (_proof).
        self._proofs: list[CheckpointProof | _Made] = []
        self._tokens = 0
        self._proven_tokens = 0
        self._pending: _Pending | None = None
        self.hashed_bytes = 0

    def __repr__(self) -> str:
        return (
            f"CheckpointTracker(session_id={self.session_id!r}, messages={len(self._messages)}, "
            f"tokens={self._tokens}, checkpoints={len(self._proofs)})"
        )

    # --- resuming ---------------------------------------------------------------------

    @classmethod
    def resume(
        cls,
        session_id: str,
        history: Sequence[Any],
        proofs: Iterable[CheckpointProof | Mapping[str, Any]] = (),
        **kwargs: Any,
    ) -> CheckpointTracker:
        """A tracker that goes on from ``history`` and its earlier ``proofs``.

        The proofs are verified against the history first (:func:`verify_checkpoints`);
        every history message is taken as complete. Costs one pass over the history.
        """
        parsed = [CheckpointProof.from_dict(p) for p in proofs]
        verify_checkpoints(history, parsed)
        if parsed and parsed[0].session_id != session_id:
            raise CheckpointError(
                f"proofs belong to session {parsed[0].session_id!r}, not {session_id!r}",
                session_id=session_id,
                details={"reason": "wrong_session"},
            )
        tracker = cls(session_id, **kwargs)
        for i, item in enumerate(history):
            role, content = message_role_content(item, i)
            message = _Message(role, content)
            message.closed = True
            tracker._messages.append(message)
        if parsed:
            last = parsed[-1]
            mi, co = last.boundary.as_tuple()
            message = tracker._messages[mi]
            if co == message.length:
                tracker._cursor_message, tracker._cursor_part = mi + 1, 0
            else:
                content = "".join(message.parts)
                message.parts = [content[:co], content[co:]]
                tracker._cursor_message, tracker._cursor_part = mi, 1
            tracker._previous_boundary = (mi, co)
            tracker._hash = bytes.fromhex(last.conversation_hash[2:])
            tracker._proofs = list(parsed)
            tracker._tokens = tracker._proven_tokens = last.end_token
        return tracker

    # --- what the tracker knows -------------------------------------------------------

    @property
    def proofs(self) -> list[CheckpointProof]:
        """Every proof made so far, in order (a new list; each proof equals the one the
        call that made it returned, and is the same object from one read to the next)."""
        return [self._proof(i) for i in range(len(self._proofs))]

    @property
    def last_proof(self) -> CheckpointProof | None:
        """The latest proof, if any."""
        return self._proof(len(self._proofs) - 1) if self._proofs else None

    @property
    def tokens(self) -> int:
        """Generated tokens counted so far."""
        return self._tokens

    @property
    def conversation_hash(self) -> str:
        """The latest checkpoint's hash (``0x`` + 64 zeros before the first one)."""
        return "0x" + self._hash.hex()

    @property
    def has_pending(self) -> bool:
        """Whether a checkpoint waits for the current message to grow or end."""
        return self._pending is not None

    def history(self) -> list[dict[str, str]]:
        """The conversation as ``{"role", "content"}`` dicts (joins every message)."""
        return [{"role": m.role, "content": "".join(m.parts)} for m in self._messages]

    # --- the conversation grows -------------------------------------------------------

    def add_message(self, role: str, content: str = "") -> CheckpointProof | None:
        """Append a message (it stays open for :meth:`append_to_last`).

        Returns the proof of a pending checkpoint that this settles, if any.
        """
        ready = self._settle(False) if self._pending is not None else None
        if self._messages:
            self._messages[-1].closed = True
        self._messages.append(_Message(role, content))
        return ready

    def append_to_last(self, text: str) -> CheckpointProof | None:
        """Append streamed text to the last (open) message. O(1).

        Returns the proof of a pending checkpoint that this settles (as partial), if any.
        """
        if not self._messages or self._messages[-1].closed:
            raise CheckpointError(
                "append_to_last needs an open last message (add_message first; a message "
                "is closed by add_message, end_message and checkpoint)",
                session_id=self.session_id,
                details={"reason": "message_closed"},
            )
        if not text:
            return None
        ready = self._settle(True) if self._pending is not None else None
        message = self._messages[-1]
        message.parts.append(text)
        message.length += len(text)
        return ready

    def add_tokens(self, n_tokens: int) -> None:
        """Count ``n_tokens`` more generated tokens."""
        if n_tokens < 0:
            raise CheckpointError(
                f"token counts only grow (got {n_tokens})", details={"reason": "bad_args"}
            )
        self._tokens += n_tokens

    def on_tokens(self, text: str, n_tokens: int = 1) -> CheckpointProof | None:
        """A streamed chunk: append ``text``, count ``n_tokens``, keep the cadence.

        Returns a proof when one is complete (at most one per call; it covers the text up
        to the chunk that crossed the interval), else ``None``. O(1) unless a proof is due.
        """
        ready = self.append_to_last(text) if text else None
        self.add_tokens(n_tokens)
        if self._pending is None and self.should_checkpoint():
            made = self._due()  # a proof now only when the last message is closed
            if ready is None:
                return made
        return ready

    def end_message(self) -> CheckpointProof | None:
        """The last message is complete; returns a pending proof this settles, if any."""
        ready = self._settle(False) if self._pending is not None else None
        if self._messages:
            self._messages[-1].closed = True
        return ready

    # --- checkpoints ------------------------------------------------------------------

    def should_checkpoint(self, generated_tokens: int | None = None) -> bool:
        """Whether ``generated_tokens`` (default: the count so far) is at least one
        interval past the last checkpoint (pending ones included)."""
        if self.checkpoint_interval is None:
            return False
        count = self._tokens if generated_tokens is None else generated_tokens
        proven = self._pending[2] if self._pending is not None else self._proven_tokens
        return count - proven >= self.checkpoint_interval

    def request_checkpoint(self, token_count: int | None = None) -> CheckpointProof | None:
        """Checkpoint at the current end of the conversation as soon as that is unambiguous.

        If the last message is closed, the proof is made and returned now; if it is still
        open, the checkpoint becomes pending and the call that settles it returns it.
        """
        count = self._check_count(token_count)
        mi, co = self._end_position()
        if self._messages[mi].closed:
            return self._prove(mi, co, count, False, None)
        pending = self._pending
        if pending is not None:
            self._pending = (pending[0], pending[1], count, pending[3])
        else:
            self._pending = (mi, co, count, self._clock())
        return None

    def checkpoint(
        self, token_count: int | None = None, *, timestamp: datetime | None = None
    ) -> CheckpointProof:
        """Make a proof now, at the end of the conversation; closes the last message.

        ``token_count`` defaults to the tokens counted so far. Mid-stream checkpoints
        come from :meth:`on_tokens` (or :meth:`request_checkpoint`), which leave the
        message open.
        """
        count = self._check_count(token_count)
        mi, co = self._end_position()
        self._pending = None  # a pending checkpoint is at this very position: this is it
        self._messages[mi].closed = True
        return self._prove(mi, co, count, False, timestamp)

    # --- internals --------------------------------------------------------------------

    def _check_count(self, token_count: int | None) -> int:
        count = self._tokens if token_count is None else token_count
        if count < self._proven_tokens:
            raise CheckpointError(
                f"token_count {count} is below the last checkpoint's {self._proven_tokens}",
                session_id=self.session_id,
                details={"reason": "bad_args"},
            )
        return count

    def _end_position(self) -> Position:
        if not self._messages:
            raise CheckpointError(
                "nothing to checkpoint: the conversation is empty",
                session_id=self.session_id,
                details={"reason": "empty_conversation"},
            )
        return (len(self._messages) - 1, self._messages[-1].length)

    def _due(self) -> CheckpointProof | None:
        """:meth:`request_checkpoint` for :meth:`on_tokens`, whose count just crossed the
        interval: its common case made short (anything else takes the long way)."""
        messages = self._messages
        if (
            messages
            and not messages[-1].closed  # due at the end of the growing answer
            and self._tokens >= self._proven_tokens  # (what _check_count checks)
        ):
            last = messages[-1]
            self._pending = (len(messages) - 1, last.length, self._tokens, self._clock())
            return None
        return self.request_checkpoint()

    def _proof(self, index: int) -> CheckpointProof:
        """Proof ``index``, built from its fields the first time it is asked for."""
        stored = self._proofs[index]
        if isinstance(stored, CheckpointProof):
            return stored
        proof = self._proofs[index] = built_proof(*stored)
        return proof

    def _settle(self, partial: bool) -> CheckpointProof:
        pending = self._pending
        assert pending is not None
        self._pending = None
        return self._prove(pending[0], pending[1], pending[2], partial, pending[3])

    def _take_delta(self, last: int, partial: bool) -> str:
        """The pieces from the cursor to the end of message ``last`` (the current end of
        the conversation) as canonical JSON, moving the cursor."""
        pieces: list[str] = []
        for index in range(self._cursor_message, last + 1):
            message = self._messages[index]
            parts = message.parts
            start = self._cursor_part if index == self._cursor_message else 0
            content = "".join(parts[start:] if start else parts)
            pieces.append(piece_json(message.role, content, partial and index == last))
        if partial:
            self._cursor_message, self._cursor_part = last, len(self._messages[last].parts)
        else:
            self._cursor_message, self._cursor_part = last + 1, 0
        return "[" + ",".join(pieces) + "]"

    def _prove(
        self,
        mi: int,
        co: int,
        token_count: int,
        partial: bool,
        timestamp: datetime | None,
    ) -> CheckpointProof:
        """The proof of the checkpoint at ``(mi, co)``, the current end of the conversation.

        Runs once per checkpoint: the common case (a delta inside one message, fields the
        tracker made itself) takes the short way; anything else the general one.
        """
        boundary = (mi, co)
        if boundary == self._previous_boundary:
            delta = "[]"
        elif mi == self._cursor_message:  # one piece, of one message
            message = self._messages[mi]
            parts = message.parts
            start = self._cursor_part
            content = "".join(parts[start:] if start else parts)
            suffixes = message.suffixes
            if suffixes is not None:
                delta = '[{"content":' + _json_string(content) + suffixes[partial]
            else:
                delta = "[" + piece_json(message.role, content, partial) + "]"
            if partial:
                self._cursor_part = len(parts)
            else:
                self._cursor_message, self._cursor_part = mi + 1, 0
        else:
            delta = self._take_delta(mi, partial)
        digest, hashed = chain_text(self._hash, delta)
        self.hashed_bytes += hashed
        if timestamp is None:
            timestamp = self._clock()
        session_id = self.session_id
        start_token = self._proven_tokens
        stored: CheckpointProof | _Made
        if (
            type(session_id) is str
            and session_id
            and type(token_count) is int
            and type(start_token) is int
            and type(timestamp) is datetime
            and timestamp.tzinfo is _UTC
            and not timestamp.microsecond % 1000
        ):
            # Every field is as validation would leave it (_check_count keeps
            # 0 <= start_token <= token_count; positions come from len()).
            stored = (
                session_id,
                len(self._proofs) + 1,
                "0x" + digest.hex(),
                token_count,
                timestamp,
                mi,
                co,
                start_token,
            )
            proof = built_proof(*stored)
        else:
            proof = stored = made_proof(
                session_id,
                len(self._proofs) + 1,
                digest,
                token_count,
                timestamp,
                boundary,
                start_token,
            )
        if self._account is not None:
            proof = stored = sign_proof(proof, self._account)
        self._hash = digest
        self._previous_boundary = boundary
        self._proven_tokens = token_count
        self._proofs.append(stored)
        return proof


#: The same class under the name that says what it computes.
ConversationHasher = CheckpointTracker
