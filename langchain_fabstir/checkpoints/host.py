"""Checkpoints as real Fabstir hosts write them to S5 (PROTOCOL.md section 3).

Every 1,000 generated tokens a host with a key writes a *delta*
(``home/checkpoints/{hostAddress}/{sessionId}/delta_{n}.json``) and rewrites an *index*
(``.../index.json``). Both are signed with EIP-191 ``personal_sign`` by the host's key:
a delta over the canonical JSON of its ``messages`` array, an index over the canonical
JSON of its ``checkpoints`` array. The TypeScript SDK never checks these signatures;
these functions do. They are pure: fetching the JSON is the storage layer's job.

>>> from langchain_fabstir.checkpoints import address_of
>>> key = "0x" + "33" * 32
>>> delta = sign_host_delta({"checkpointIndex": 0, "startToken": 0, "endToken": 1000,
...     "sessionId": "123", "proofHash": "0x" + "00" * 32,
...     "messages": [{"role": "user", "content": "Hi", "timestamp": 1704844800000},
...                  {"role": "assistant", "content": "Hel", "metadata": {"partial": True}}]},
...     key)
>>> parsed = verify_host_delta(delta, address_of(key))
>>> parsed.messages[1].partial
True
>>> rebuild_conversation([parsed], require_complete=False)[1]
{'role': 'assistant', 'content': 'Hel', 'metadata': {'partial': True}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.checkpoints.signing import (
    PrivateKey,
    canonical_json,
    normalize_address,
    personal_sign,
    recover_personal_signer,
)
from langchain_fabstir.errors import CheckpointError

__all__ = [
    "HostCheckpointDelta",
    "HostCheckpointEntry",
    "HostCheckpointIndex",
    "HostDeltaMessage",
    "rebuild_conversation",
    "sign_host_delta",
    "sign_host_index",
    "verify_host_checkpoints",
    "verify_host_delta",
    "verify_host_index",
]

_CONFIG = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
    extra="allow",
    coerce_numbers_to_str=True,
)


class HostDeltaMessage(BaseModel):
    """One message (or piece of one) in a host delta."""

    model_config = _CONFIG

    role: str
    content: str
    timestamp: int | None = None
    metadata: dict[str, Any] | None = None

    @property
    def partial(self) -> bool:
        """True when the message goes on in the next delta (``metadata.partial``)."""
        return self.metadata is not None and self.metadata.get("partial") is True


class HostCheckpointDelta(BaseModel):
    """``delta_{n}.json``: the messages of one checkpoint, signed by the host."""

    model_config = _CONFIG

    checkpoint_index: int = Field(ge=0)
    start_token: int = Field(ge=0)
    end_token: int = Field(ge=0)
    session_id: str
    proof_hash: str
    messages: list[HostDeltaMessage]
    host_signature: str


class HostCheckpointEntry(BaseModel):
    """One line of a host index: where a checkpoint's delta is and what it covers."""

    model_config = _CONFIG

    index: int = Field(ge=0)
    proof_hash: str
    delta_cid: str
    token_range: tuple[int, int]
    timestamp: int
    encrypted: bool = False


class HostCheckpointIndex(BaseModel):
    """``index.json``: every checkpoint of a session on one host, signed by the host."""

    model_config = _CONFIG

    session_id: str
    host_address: str
    checkpoints: list[HostCheckpointEntry]
    host_signature: str


_M = TypeVar("_M", HostCheckpointDelta, HostCheckpointIndex)


def _raw(value: Any, model: type[_M], what: str) -> tuple[dict[str, Any], _M]:
    """The JSON object as received (what was signed) and its parsed model."""
    if isinstance(value, model):
        raw: Any = value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    elif isinstance(value, (str, bytes, bytearray)):
        try:
            raw = loads_untrusted(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"host {what} is not JSON: {exc}"[:200], details={"reason": f"malformed_{what}"}
            ) from None
    else:
        raw = value
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"host {what} must be a JSON object", details={"reason": f"malformed_{what}"}
        )
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or what
        raise CheckpointError(
            f"host {what} is malformed: {where}: {err.get('msg', 'invalid')}"[:200],
            details={"reason": f"malformed_{what}"},
        ) from None
    return dict(raw), parsed


def _check_signed(payload: Any, signature: str, host_address: str, what: str) -> None:
    expected = normalize_address(host_address, what="host address")
    try:
        recovered = recover_personal_signer(canonical_json(payload), signature)
    except CheckpointError as exc:
        exc.message = f"host {what}: {exc.message}"
        raise
    if recovered != expected:
        raise CheckpointError(
            f"host {what} is not signed by host {expected} (signature recovers to {recovered}:"
            " tampered with, or signed by another key)",
            details={"reason": "wrong_signer", "expected": expected, "recovered": recovered},
        )


def verify_host_delta(
    delta: HostCheckpointDelta | Mapping[str, Any] | str | bytes,
    host_address: str,
    *,
    entry: HostCheckpointEntry | None = None,
) -> HostCheckpointDelta:
    """Check a delta's ``hostSignature`` (over its ``messages``) and return it parsed.

    Pass the JSON as received (text or the decoded object) so the signed bytes are exactly
    the host's. With ``entry`` (its line in a verified index) the delta must also match
    the entry's index, proof hash and token range.

    Raises:
        CheckpointError: malformed delta, bad signature, wrong signer, or index mismatch.
    """
    raw, parsed = _raw(delta, HostCheckpointDelta, "delta")
    _check_signed(raw["messages"], parsed.host_signature, host_address, "delta")
    if entry is not None:
        _check_entry(parsed, entry)
    return parsed


def _check_entry(delta: HostCheckpointDelta, entry: HostCheckpointEntry) -> None:
    mine = (delta.checkpoint_index, delta.proof_hash, (delta.start_token, delta.end_token))
    theirs = (entry.index, entry.proof_hash, tuple(entry.token_range))
    if mine != theirs:
        raise CheckpointError(
            f"host delta {delta.checkpoint_index} does not match its index entry "
            f"(delta {mine}, index {theirs})",
            session_id=delta.session_id,
            details={"reason": "index_mismatch", "checkpoint_index": delta.checkpoint_index},
        )


def verify_host_index(
    index: HostCheckpointIndex | Mapping[str, Any] | str | bytes, host_address: str
) -> HostCheckpointIndex:
    """Check an index's ``hostSignature`` (over its ``checkpoints``) and return it parsed.

    The index must also name ``host_address`` as its host and list each checkpoint once.
    """
    raw, parsed = _raw(index, HostCheckpointIndex, "index")
    expected = normalize_address(host_address, what="host address")
    if parsed.host_address.lower() != expected.lower():
        raise CheckpointError(
            f"host index names host {parsed.host_address}, not {expected}",
            session_id=parsed.session_id,
            details={"reason": "wrong_host"},
        )
    _check_signed(raw["checkpoints"], parsed.host_signature, host_address, "index")
    numbers = [e.index for e in parsed.checkpoints]
    if len(set(numbers)) != len(numbers):
        raise CheckpointError(
            "host index lists a checkpoint twice",
            session_id=parsed.session_id,
            details={"reason": "duplicate_checkpoint"},
        )
    return parsed


def rebuild_conversation(
    deltas: Iterable[HostCheckpointDelta | Mapping[str, Any]],
    *,
    require_complete: bool = True,
) -> list[dict[str, Any]]:
    """Join host deltas back into the conversation, in ``checkpointIndex`` order.

    A message whose ``metadata.partial`` is true continues in the first message of the
    next delta (same role); the pieces are joined. A message still partial at the end
    (the response was still streaming) is kept with ``metadata: {"partial": true}``.
    Returns ``{"role", "content"}`` dicts, with the first piece's ``timestamp`` if any.

    Raises:
        CheckpointError: duplicate or missing deltas (with ``require_complete`` the first
            must be checkpoint 0), a partial message that is not the last of its delta,
            or a continuation with another role.
    """
    parsed = [
        d if isinstance(d, HostCheckpointDelta) else _raw(d, HostCheckpointDelta, "delta")[1]
        for d in deltas
    ]
    parsed.sort(key=lambda d: d.checkpoint_index)
    expected = 0 if require_complete else (parsed[0].checkpoint_index if parsed else 0)
    out: list[dict[str, Any]] = []
    carry: dict[str, Any] | None = None
    for delta in parsed:
        if delta.checkpoint_index != expected:
            word = "twice" if delta.checkpoint_index < expected else "after a gap"
            raise CheckpointError(
                f"host delta {delta.checkpoint_index} comes {word} (expected {expected})",
                session_id=delta.session_id,
                details={"reason": "missing_delta", "checkpoint_index": delta.checkpoint_index},
            )
        expected += 1
        last = len(delta.messages) - 1
        for position, message in enumerate(delta.messages):
            if carry is not None:
                if message.role != carry["role"]:
                    raise CheckpointError(
                        f"host delta {delta.checkpoint_index}: a partial {carry['role']} "
                        f"message continues as a {message.role} message",
                        session_id=delta.session_id,
                        details={"reason": "bad_continuation"},
                    )
                carry["content"] += message.content
                current = carry
            else:
                current = {"role": message.role, "content": message.content}
                if message.timestamp is not None:
                    current["timestamp"] = message.timestamp
            if message.partial:
                if position != last:
                    raise CheckpointError(
                        f"host delta {delta.checkpoint_index}: message {position} is partial "
                        "but is not the delta's last message",
                        session_id=delta.session_id,
                        details={"reason": "bad_continuation"},
                    )
                carry = current
            else:
                carry = None
                out.append(current)
    if carry is not None:
        out.append({**carry, "metadata": {"partial": True}})
    return out


def verify_host_checkpoints(
    index: HostCheckpointIndex | Mapping[str, Any] | str | bytes,
    deltas: Iterable[HostCheckpointDelta | Mapping[str, Any] | str | bytes],
    host_address: str,
) -> list[dict[str, Any]]:
    """Verify an index and all of its deltas, then rebuild the conversation from them."""
    verified_index = verify_host_index(index, host_address)
    entries = {e.index: e for e in verified_index.checkpoints}
    checked: list[HostCheckpointDelta] = []
    for delta in deltas:
        parsed = verify_host_delta(delta, host_address)
        entry = entries.get(parsed.checkpoint_index)
        if entry is None or parsed.session_id != verified_index.session_id:
            raise CheckpointError(
                f"host delta {parsed.checkpoint_index} of session {parsed.session_id!r} is "
                "not in the index",
                session_id=verified_index.session_id,
                details={"reason": "index_mismatch", "checkpoint_index": parsed.checkpoint_index},
            )
        _check_entry(parsed, entry)
        checked.append(parsed)
    if len(checked) != len(entries):
        raise CheckpointError(
            f"the index lists {len(entries)} checkpoints but {len(checked)} deltas were given",
            session_id=verified_index.session_id,
            details={"reason": "missing_delta"},
        )
    return rebuild_conversation(checked)


def _signed(value: Mapping[str, Any], field: str, private_key: PrivateKey) -> dict[str, Any]:
    out = dict(value)
    out["hostSignature"] = personal_sign(canonical_json(out[field]), private_key)
    return out


def sign_host_delta(delta: Mapping[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """A copy of a delta JSON object with ``hostSignature`` set (what a host writes)."""
    return _signed(delta, "messages", private_key)


def sign_host_index(index: Mapping[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """A copy of an index JSON object with ``hostSignature`` set (what a host writes)."""
    return _signed(index, "checkpoints", private_key)
