"""The checkpoint proof: a signed statement of what a conversation was at a token count.

A :class:`CheckpointProof` carries the seed API's fields (``session_id``,
``checkpoint_number``, ``conversation_hash``, ``token_count``, ``timestamp``,
``signature``) plus the token range it covers, who signed it, and its ``boundary``:
the position in the conversation where its delta ends, so that anyone holding the
history can recompute every hash (see :mod:`langchain_fabstir.checkpoints.hashchain`).

Attribute names are snake_case; serialised forms use the seed's TypeScript names
(``sessionId``, ``checkpointNumber``...), and both are accepted on input.

>>> from datetime import datetime, timezone
>>> proof = CheckpointProof(
...     session_id="s-1", checkpoint_number=1, conversation_hash="0x" + "ab" * 32,
...     token_count=1000, start_token=0, end_token=1000,
...     timestamp=datetime(2024, 1, 10, tzinfo=timezone.utc),
...     boundary={"message_index": 1, "char_offset": 4000})
>>> d = proof.to_dict()
>>> d["sessionId"], d["timestamp"], d["boundary"]
('s-1', '2024-01-10T00:00:00.000Z', {'messageIndex': 1, 'charOffset': 4000})
>>> CheckpointProof.from_json(proof.to_json()) == proof
True
>>> key = "0x" + "22" * 32
>>> signed = sign_proof(proof, key)
>>> recover_proof_signer(signed) == signed.signer
True
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from langchain_fabstir.checkpoints.signing import (
    PrivateKey,
    address_of,
    canonical_json,
    normalize_address,
    normalize_signature,
    personal_sign,
    recover_personal_signer,
)
from langchain_fabstir.errors import CheckpointError

__all__ = [
    "CheckpointBoundary",
    "CheckpointProof",
    "proof_signing_payload",
    "recover_proof_signer",
    "sign_proof",
    "timestamp_ms",
    "verify_host_signature",
    "verify_proof_signature",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

_CONFIG = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
    frozen=True,
    extra="ignore",
)


def timestamp_ms(moment: datetime) -> int:
    """Whole milliseconds since the Unix epoch (the signed form of a timestamp).

    >>> timestamp_ms(datetime(2024, 1, 10, tzinfo=timezone.utc))
    1704844800000
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _MS


def _to_utc_ms(value: Any) -> Any:
    """Accept ms since the epoch, ISO strings and datetimes; return a UTC ms datetime."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be a datetime, an ISO string or ms since the epoch")
    if isinstance(value, (int, float)):
        value = _EPOCH + timedelta(milliseconds=int(value))
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"timestamp is not ISO 8601: {value[:40]!r}") from exc
    if isinstance(value, datetime):
        value = (
            value.replace(tzinfo=timezone.utc)
            if value.tzinfo is None
            else value.astimezone(timezone.utc)
        )
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


class CheckpointBoundary(BaseModel):
    """Where a checkpoint's delta ends (exclusive): a message index and a character
    offset (Python ``str`` index, i.e. code points) inside that message."""

    model_config = _CONFIG

    message_index: int = Field(ge=0)
    char_offset: int = Field(ge=0)

    def as_tuple(self) -> tuple[int, int]:
        """``(message_index, char_offset)``, which orders positions lexicographically."""
        return (self.message_index, self.char_offset)


class CheckpointProof(BaseModel):
    """One checkpoint of a session's conversation (immutable).

    Attributes:
        session_id: the session this checkpoint belongs to.
        checkpoint_number: 1 for the first checkpoint of a session, then 2, 3...
        conversation_hash: ``0x`` + 64 hex: the hash chain over the conversation up to
            ``boundary`` (see :func:`~langchain_fabstir.checkpoints.verify_checkpoints`).
        token_count: tokens generated in the session at this checkpoint.
        start_token / end_token: the token range ``[start, end)`` this checkpoint covers;
            ``end_token`` defaults to ``token_count``.
        timestamp: when the checkpoint was made (UTC, millisecond precision).
        boundary: where this checkpoint's delta ends in the conversation (exclusive).
        signature / signer: the client's EIP-191 signature and the address that made it.
        host_signature: the host's EIP-191 signature, when a host signed the proof.
    """

    model_config = _CONFIG

    session_id: str = Field(min_length=1)
    checkpoint_number: int = Field(ge=1)
    conversation_hash: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$")
    token_count: int = Field(ge=0)
    timestamp: datetime
    boundary: CheckpointBoundary
    start_token: int = Field(default=0, ge=0)
    end_token: int = Field(default=0, ge=0)
    signature: str | None = None
    signer: str | None = None
    host_signature: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_end_token(cls, data: Any) -> Any:
        if isinstance(data, dict) and "end_token" not in data and "endToken" not in data:
            count = data.get("token_count", data.get("tokenCount"))
            if count is not None:
                data = {**data, "end_token": count}
        return data

    @field_validator("timestamp", mode="before")
    @classmethod
    def _utc_ms(cls, value: Any) -> Any:
        return _to_utc_ms(value)

    @field_validator("conversation_hash")
    @classmethod
    def _lower_hash(cls, value: str) -> str:
        return value.lower()

    @field_validator("signature", "host_signature")
    @classmethod
    def _check_signature(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_signature(value)
        except CheckpointError as exc:
            raise ValueError(exc.message) from None

    @field_validator("signer")
    @classmethod
    def _check_signer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_address(value, what="signer")
        except CheckpointError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _check_range(self) -> CheckpointProof:
        if self.start_token > self.end_token:
            raise ValueError(f"start_token {self.start_token} is after end_token {self.end_token}")
        return self

    @field_serializer("timestamp")
    def _iso_timestamp(self, value: datetime) -> str:
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # --- (de)serialisation -----------------------------------------------------------

    def to_dict(self, *, by_alias: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (camelCase keys by default, ISO 8601 UTC timestamp)."""
        return self.model_dump(mode="json", by_alias=by_alias)

    def to_json(self) -> str:
        """The proof as canonical JSON (camelCase keys)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointProof:
        """Parse a proof dict (camelCase or snake_case); bad input is a CheckpointError."""
        if isinstance(data, CheckpointProof):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CheckpointError(
                f"not a checkpoint proof: {_first_error(exc)}",
                details={"reason": "malformed_proof"},
            ) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckpointProof:
        """Parse :meth:`to_json` output (or any proof JSON); bad input is a CheckpointError."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise CheckpointError(
                f"not a checkpoint proof: {_first_error(exc)}",
                details={"reason": "malformed_proof"},
            ) from None

    @property
    def key(self) -> tuple[str, int]:
        """``(session_id, checkpoint_number)``: what identifies a proof."""
        return (self.session_id, self.checkpoint_number)


def made_proof(
    session_id: str,
    checkpoint_number: int,
    digest: bytes,
    token_count: int,
    timestamp: datetime,
    boundary: tuple[int, int],
    start_token: int,
) -> CheckpointProof:
    """``CheckpointProof(...)`` of a checkpoint just made (``digest``: its 32-byte hash).

    When every field already has the form validation gives it (a non-empty ``str`` id,
    ``int`` counts in range, a UTC timestamp at millisecond precision), the proof is
    built without running validation, as ``model_construct`` would (a few microseconds
    instead of ~15: a tracker makes one every ``checkpoint_interval`` tokens); the result
    compares equal, field for field, to the validated one. Anything else is validated.
    """
    mi, co = boundary
    if (
        type(session_id) is str
        and session_id
        and type(checkpoint_number) is int
        and checkpoint_number >= 1
        and len(digest) == 32
        and type(token_count) is int
        and type(start_token) is int
        and 0 <= start_token <= token_count
        and type(mi) is int
        and type(co) is int
        and mi >= 0
        and co >= 0
        and type(timestamp) is datetime
    ):
        if timestamp.tzinfo is not timezone.utc:
            timestamp = _to_utc_ms(timestamp)
        elif timestamp.microsecond % 1000:
            timestamp -= timedelta(microseconds=timestamp.microsecond % 1000)
        return built_proof(
            session_id,
            checkpoint_number,
            "0x" + digest.hex(),
            token_count,
            timestamp,
            mi,
            co,
            start_token,
        )
    return CheckpointProof(
        session_id=session_id,
        checkpoint_number=checkpoint_number,
        conversation_hash="0x" + digest.hex(),
        token_count=token_count,
        timestamp=timestamp,
        boundary=CheckpointBoundary(message_index=mi, char_offset=co),
        start_token=start_token,
        end_token=token_count,
    )


def built_proof(
    session_id: str,
    checkpoint_number: int,
    conversation_hash: str,
    token_count: int,
    timestamp: datetime,
    message_index: int,
    char_offset: int,
    start_token: int,
) -> CheckpointProof:
    """The proof of fields that already have their validated form; nothing is checked.

    For callers that made every field themselves: a non-empty ``str`` id, ``int`` counts
    with ``1 <= checkpoint_number`` and ``0 <= start_token <= token_count``, a lowercase
    ``0x`` + 64 hex hash, a ``timezone.utc`` timestamp at millisecond precision, ``int``
    positions ``>= 0``. :func:`made_proof` checks that and validates anything else. The
    result is the object ``model_construct`` would make (about 1 us instead of 9).
    """
    where = _new(CheckpointBoundary)
    _set_dict(where, {"message_index": message_index, "char_offset": char_offset})
    _set_fields(where, set(_BOUNDARY_SET))
    _set_extra(where, None)
    _set_private(where, None)
    proof = _new(CheckpointProof)
    _set_dict(
        proof,
        {
            "session_id": session_id,
            "checkpoint_number": checkpoint_number,
            "conversation_hash": conversation_hash,
            "token_count": token_count,
            "timestamp": timestamp,
            "boundary": where,
            "start_token": start_token,
            "end_token": token_count,
            "signature": None,
            "signer": None,
            "host_signature": None,
        },
    )
    _set_fields(proof, set(_MADE_SET))
    _set_extra(proof, None)
    _set_private(proof, None)
    return proof


# The setters of BaseModel's four slots, called directly (a frozen model refuses setattr).
_new = object.__new__
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__
_BOUNDARY_SET = frozenset({"message_index", "char_offset"})
_MADE_SET = frozenset(
    {
        "session_id",
        "checkpoint_number",
        "conversation_hash",
        "token_count",
        "timestamp",
        "boundary",
        "start_token",
        "end_token",
    }
)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "proof"
    return f"{where}: {err.get('msg', 'invalid')}"[:200]


# --- signatures -----------------------------------------------------------------------


def proof_signing_payload(proof: CheckpointProof) -> str:
    """The exact text that is signed: canonical JSON of the seed's five fields.

    >>> p = CheckpointProof(session_id="s", checkpoint_number=2, conversation_hash="0x" + "0" * 64,
    ...     token_count=7, timestamp=1704844800000, boundary={"messageIndex": 0, "charOffset": 0})
    >>> proof_signing_payload(p)  # doctest: +NORMALIZE_WHITESPACE
    '{"checkpointNumber":2,"conversationHash":"0x0000000000000000000000000000000000000000000000000000000000000000","sessionId":"s","timestamp":1704844800000,"tokenCount":7}'
    """
    return canonical_json(
        {
            "sessionId": proof.session_id,
            "checkpointNumber": proof.checkpoint_number,
            "conversationHash": proof.conversation_hash,
            "tokenCount": proof.token_count,
            "timestamp": timestamp_ms(proof.timestamp),
        }
    )


def sign_proof(
    proof: CheckpointProof,
    private_key: PrivateKey,
    *,
    field: Literal["signature", "host_signature"] = "signature",
) -> CheckpointProof:
    """Return a copy of ``proof`` signed with ``private_key`` (EIP-191 ``personal_sign``).

    With ``field="signature"`` (the client) it also sets ``signer``; a host uses
    ``field="host_signature"`` and announces its address separately.
    """
    signature = personal_sign(proof_signing_payload(proof), private_key)
    update: dict[str, Any] = {field: signature}
    if field == "signature":
        update["signer"] = address_of(private_key)
    return proof.model_copy(update=update)


def recover_proof_signer(proof: CheckpointProof, signature: str | bytes | None = None) -> str:
    """The checksum address that made ``signature`` (default: ``proof.signature``)."""
    sig = proof.signature if signature is None else signature
    if sig is None:
        raise CheckpointError(
            f"checkpoint {proof.checkpoint_number} has no signature",
            session_id=proof.session_id,
            details={"reason": "unsigned", "checkpoint_number": proof.checkpoint_number},
        )
    return recover_personal_signer(proof_signing_payload(proof), sig)


def verify_proof_signature(
    proof: CheckpointProof,
    expected_address: str,
    signature: str | bytes | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless ``signature`` (default: ``proof.signature``)
    was made over ``proof`` by ``expected_address``."""
    expected = normalize_address(expected_address, what="expected signer address")
    try:
        recovered = recover_proof_signer(proof, signature)
    except CheckpointError as exc:
        exc.session_id = exc.session_id or proof.session_id
        exc.details.setdefault("checkpoint_number", proof.checkpoint_number)
        exc.message = f"checkpoint {proof.checkpoint_number}: {exc.message}"
        raise
    if recovered != expected:
        raise CheckpointError(
            f"checkpoint {proof.checkpoint_number}: signature was made by {recovered}, "
            f"not by the expected signer {expected}",
            session_id=proof.session_id,
            details={
                "reason": "wrong_signer",
                "checkpoint_number": proof.checkpoint_number,
                "expected": expected,
                "recovered": recovered,
            },
        )


def verify_host_signature(proof: CheckpointProof, host_address: str) -> None:
    """Raise :class:`CheckpointError` unless ``proof.host_signature`` is ``host_address``'s."""
    if proof.host_signature is None:
        raise CheckpointError(
            f"checkpoint {proof.checkpoint_number} has no host signature",
            session_id=proof.session_id,
            details={"reason": "unsigned", "checkpoint_number": proof.checkpoint_number},
        )
    verify_proof_signature(proof, host_address, proof.host_signature)
