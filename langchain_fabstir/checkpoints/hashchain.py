"""The conversation hash chain, recomputed from a full history.

Details and examples: :func:`verify_checkpoints`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring as _string  # json.dumps' own, ensure_ascii=False
from typing import Any

from langchain_fabstir.checkpoints.proof import (
    CheckpointBoundary,
    CheckpointProof,
    verify_host_signature,
    verify_proof_signature,
)
from langchain_fabstir.checkpoints.signing import canonical_json
from langchain_fabstir.errors import CheckpointError

__all__ = [
    "ZERO_HASH",
    "Position",
    "chain_step",
    "conversation_deltas",
    "conversation_hashes",
    "message_role_content",
    "piece_suffixes",
    "verify_checkpoints",
]

#: ``hash_0``: the hash before any delta.
ZERO_HASH = bytes(32)

Position = tuple[int, int]
BoundaryLike = CheckpointBoundary | tuple[int, int] | Sequence[int]


def chain_step(previous: bytes, delta: list[dict[str, Any]]) -> tuple[bytes, int]:
    """One link of the chain: ``(sha256(previous + canonical_json(delta)), bytes hashed)``.

    Text is UTF-8. A lone surrogate (which a peer can smuggle into a ``str`` with a JSON
    ``\\ud800`` escape) cannot be UTF-8: it is encoded as Python's ``surrogatepass``
    does, so that every string hashes, the same way everywhere.
    """
    return chain_text(previous, delta_json(delta))


def chain_text(previous: bytes, text: str) -> tuple[bytes, int]:
    """:func:`chain_step` of a delta already written as canonical JSON (``text``)."""
    data = previous + text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).digest(), len(data)


def delta_json(delta: list[dict[str, Any]]) -> str:
    """``canonical_json(delta)`` (the same text), written piece by piece with :func:`piece_json`.

    >>> delta_json([{"role": "u", "content": "Hi"}, {"role": "ai", "content": "", "partial": True}])
    '[{"content":"Hi","role":"u"},{"content":"","partial":true,"role":"ai"}]'
    """
    out = []
    for piece in delta:
        if (
            type(piece) is dict
            and "role" in piece
            and "content" in piece
            and (len(piece) == 2 or (len(piece) == 3 and piece.get("partial") is True))
        ):
            out.append(piece_json(piece["role"], piece["content"], len(piece) == 3))
        else:
            out.append(canonical_json(piece))
    return "[" + ",".join(out) + "]"


def piece_json(role: Any, content: Any, partial: bool) -> str:
    """``canonical_json`` of one delta piece, written directly when role and content are
    strings (about 3x faster than ``json.dumps``; the text is the same)."""
    if type(role) is str and type(content) is str:
        if partial:
            return f'{{"content":{_string(content)},"partial":true,"role":{_string(role)}}}'
        return f'{{"content":{_string(content)},"role":{_string(role)}}}'
    piece: dict[str, Any] = {"role": role, "content": content}
    if partial:
        piece["partial"] = True
    return canonical_json(piece)


def piece_suffixes(role: Any) -> tuple[str, str] | None:
    """What follows the content in a delta of one piece of ``role``, whole and partial:
    ``'[{"content":' + json(content) + suffix`` is ``canonical_json([piece])``, the
    :func:`piece_json` text, for a tracker to write a one-piece delta with one string
    escape. ``None`` when ``role`` is not a ``str`` (then use :func:`piece_json`).

    >>> whole, partial = piece_suffixes("ai")
    >>> '[{"content":"Hi"' + partial
    '[{"content":"Hi","partial":true,"role":"ai"}]'
    >>> '[{"content":"Hi"' + whole == delta_json([{"role": "ai", "content": "Hi"}])
    True
    """
    if type(role) is not str:
        return None
    role_json = _string(role)
    return f',"role":{role_json}}}]', f',"partial":true,"role":{role_json}}}]'


def message_role_content(item: Any, index: int) -> tuple[str, str]:
    """``(role, content)`` of a history item: a mapping or an object with ``.role`` and
    ``.content``, both strings; anything else is a :class:`CheckpointError`."""
    if isinstance(item, Mapping):
        role, content = item.get("role"), item.get("content")
    else:
        role, content = getattr(item, "role", None), getattr(item, "content", None)
    if not isinstance(role, str) or not isinstance(content, str):
        raise CheckpointError(
            f"history item {index} is not a message with a string role and content",
            details={"reason": "malformed_history", "message_index": index},
        )
    return role, content


def _as_position(boundary: BoundaryLike) -> Position:
    if isinstance(boundary, CheckpointBoundary):
        return boundary.as_tuple()
    mi, co = boundary
    return int(mi), int(co)


class _Cutter:
    """Cuts a full history into deltas, one boundary at a time (the pseudo-code)."""

    def __init__(self, history: Sequence[Any]) -> None:
        self.messages = [message_role_content(m, i) for i, m in enumerate(history)]
        self.mi = 0
        self.co = 0
        self.previous: Position | None = None

    def cut(self, boundary: Position) -> list[dict[str, Any]] | str:
        """The delta up to ``boundary``, or a string saying why the boundary is invalid."""
        ei, ec = boundary
        if ei < 0 or ec < 0:
            return f"boundary {boundary} is negative"
        if ei >= len(self.messages):
            return (
                f"boundary {boundary} is past the last message "
                f"(the history has {len(self.messages)})"
            )
        if ec > len(self.messages[ei][1]):
            return (
                f"boundary {boundary} is past the end of message {ei} "
                f"({len(self.messages[ei][1])} characters)"
            )
        if self.previous is not None:
            if boundary < self.previous:
                return f"boundary {boundary} is before the previous boundary {self.previous}"
            if boundary == self.previous:
                return []
        self.previous = boundary
        delta: list[dict[str, Any]] = []
        while self.mi <= ei:
            role, content = self.messages[self.mi]
            stop = len(content) if self.mi < ei else ec
            piece: dict[str, Any] = {"role": role, "content": content[self.co : stop]}
            if stop < len(content):
                piece["partial"] = True
                delta.append(piece)
                self.co = stop
                break
            delta.append(piece)
            self.mi, self.co = self.mi + 1, 0
        return delta


def conversation_deltas(
    history: Sequence[Any], boundaries: Iterable[BoundaryLike]
) -> Iterator[list[dict[str, Any]]]:
    """Yield the delta each boundary cuts from ``history`` (an invalid one raises)."""
    cutter = _Cutter(history)
    for n, boundary in enumerate(boundaries, start=1):
        delta = cutter.cut(_as_position(boundary))
        if isinstance(delta, str):
            raise CheckpointError(
                f"checkpoint {n}: {delta}",
                details={"reason": "bad_boundary", "checkpoint_number": n},
            )
        yield delta


def conversation_hashes(history: Sequence[Any], boundaries: Iterable[BoundaryLike]) -> list[str]:
    """The ``conversation_hash`` of each checkpoint, recomputed from ``history``."""
    previous = ZERO_HASH
    out: list[str] = []
    for delta in conversation_deltas(history, boundaries):
        previous, _ = chain_step(previous, delta)
        out.append("0x" + previous.hex())
    return out


def _fail(proof: CheckpointProof, reason: str, message: str, **extra: Any) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {proof.checkpoint_number}: {message}",
        session_id=proof.session_id,
        details={"reason": reason, "checkpoint_number": proof.checkpoint_number, **extra},
    )


def verify_checkpoints(
    history: Sequence[Any],
    proofs: Iterable[CheckpointProof | Mapping[str, Any]],
    *,
    signer: str | None = None,
    host_address: str | None = None,
) -> None:
    """Recompute every checkpoint of a session from its history; raise on the first bad one.

    The conversation is the list of messages ``{"role", "content"}`` in order (system prompt
    and initial context first). A *position* is ``(message_index, char_offset)`` with
    ``char_offset`` a Python ``str`` index (code points). Each proof's ``boundary`` is the
    position where its delta ends (exclusive). Starting from ``(0, 0)``, each boundary cuts
    the next *delta*: the list of message pieces ``{"role", "content"}`` between the previous
    position and the boundary, where a piece that stops before the end of its message gets
    ``"partial": true`` and the next delta goes on inside that message. Then::

        hash_0 = 32 zero bytes
        hash_n = sha256(hash_{n-1} + canonical_json(delta_n).encode("utf-8"))
        conversation_hash_n = "0x" + hash_n.hex()

    Edge cases, decided here once for the tracker and the verifier alike:

    - A boundary exactly at the end of message ``k`` (``char_offset == len(content)``) takes
      the whole message and the next delta starts at message ``k + 1``. Whether a piece is
      partial is read from the *final* history: that is why
      :class:`~langchain_fabstir.checkpoints.CheckpointTracker` holds back a checkpoint taken
      at the end of a still-growing message until it knows whether more text follows.
    - A boundary equal to the previous boundary cuts an empty delta ``[]``.
    - A boundary before the previous one, or past the end of the history (a message index
      beyond the last message, or an offset beyond its message's length), is invalid.
    - ``(k + 1, 0)`` after a boundary at the end of message ``k`` is a valid, distinct
      boundary: it cuts one empty piece of message ``k + 1`` (partial unless that message is
      empty).

    >>> history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    >>> deltas = conversation_deltas(history, [(1, 3), (1, 6)])
    >>> [d for d in deltas]  # doctest: +NORMALIZE_WHITESPACE
    [[{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hel', 'partial': True}],
     [{'role': 'assistant', 'content': 'lo!'}]]
    >>> hashes = conversation_hashes(history, [(1, 3), (1, 6)])
    >>> len(hashes), hashes[0][:2], len(hashes[0])
    (2, '0x', 66)

    ``history`` is the whole conversation (dicts with ``role``/``content`` or objects with
    ``.role``/``.content``); ``proofs`` are all of the session's proofs from the first
    one, in order (proof objects or their dicts). Checked for each proof, in this order:
    one session id throughout, numbers ``1, 2, 3...``, each ``start_token`` equal to the
    previous ``end_token``, a valid boundary (not before the previous one, inside the
    history), the recomputed ``conversation_hash``, and, when ``signer`` /
    ``host_address`` is given, that ``signature`` / ``host_signature`` was made by it.

    Raises:
        CheckpointError: naming the first bad checkpoint number; ``details["reason"]`` is
            one of ``malformed_proof``, ``wrong_session``, ``out_of_order``,
            ``token_gap``, ``bad_boundary``, ``hash_mismatch``, ``unsigned``,
            ``bad_signature``, ``bad_signature_format``, ``wrong_signer``.
    """
    cutter = _Cutter(history)
    previous_hash = ZERO_HASH
    session_id: str | None = None
    end_token: int | None = None
    for position, raw in enumerate(proofs):
        try:
            proof = CheckpointProof.from_dict(raw)
        except CheckpointError as exc:
            raise CheckpointError(
                f"checkpoint {position + 1}: {exc.message}",
                details={"reason": "malformed_proof", "checkpoint_number": position + 1},
            ) from None
        if session_id is None:
            session_id = proof.session_id
        elif proof.session_id != session_id:
            raise _fail(
                proof,
                "wrong_session",
                f"belongs to session {proof.session_id!r}, not {session_id!r}",
            )
        if proof.checkpoint_number != position + 1:
            raise _fail(
                proof,
                "out_of_order",
                f"found where checkpoint {position + 1} belongs (missing or reordered proofs)",
            )
        if end_token is not None and proof.start_token != end_token:
            raise _fail(
                proof,
                "token_gap",
                f"starts at token {proof.start_token} but the previous one ended at {end_token}",
            )
        end_token = proof.end_token
        delta = cutter.cut(proof.boundary.as_tuple())
        if isinstance(delta, str):
            raise _fail(proof, "bad_boundary", delta)
        previous_hash, _ = chain_step(previous_hash, delta)
        actual = "0x" + previous_hash.hex()
        if actual != proof.conversation_hash:
            raise _fail(
                proof,
                "hash_mismatch",
                "conversation hash does not match the history (a message was changed, "
                "added, removed or reordered)",
                expected=proof.conversation_hash,
                actual=actual,
            )
        if signer is not None:
            verify_proof_signature(proof, signer)
        if host_address is not None:
            verify_host_signature(proof, host_address)
