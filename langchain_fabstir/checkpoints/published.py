"""Fetch and verify the checkpoints a real host published to S5 (PROTOCOL.md section 3).

A host with a key writes, under its own S5 namespace, a signed *delta* every 1,000
generated tokens (and at the end of a response when at least 100 tokens are unproven)
and a signed *index* of them, which it serves at ``GET /v1/checkpoints/{sessionId}``.
:func:`fetch_host_checkpoints` gets that index from the host, then every delta from an
S5 portal **by its CID**, and checks everything the TypeScript SDK does not:

Details and examples: :func:`fetch_host_checkpoints`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from langchain_fabstir import _http
from langchain_fabstir._compat import timeout as deadline_after
from langchain_fabstir._eth import keccak256 as keccak
from langchain_fabstir._http import ReplyTooLarge, read_capped, whole_reply_deadline
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir._sync import run_sync
from langchain_fabstir.checkpoints import (
    HostCheckpointDelta,
    HostCheckpointEntry,
    HostCheckpointIndex,
    canonical_json,
    rebuild_conversation,
    verify_host_delta,
    verify_host_index,
)
from langchain_fabstir.checkpoints.signing import (
    PrivateKey,
    normalize_address,
    personal_sign,
    recover_personal_signer,
)
from langchain_fabstir.errors import (
    CheckpointError,
    ConnectionFailedError,
    DecryptionKeyRequiredError,
    EncryptionError,
    EncryptionModeError,
    HostDisconnectedError,
    HostError,
    IntegrityError,
    InvalidEncryptedPayloadError,
    InvalidRequestError,
    ProtocolError,
    ResponseTimeoutError,
)
from langchain_fabstir.s5.cid import CID, InvalidCIDError
from langchain_fabstir.s5.client import S5PortalClient
from langchain_fabstir.wire.encryption import (
    RecoveryKey,
    open_checkpoint_delta,
    seal_checkpoint_delta,
)

__all__ = [
    "PROOF_HASH_FIELDS",
    "HostCheckpoints",
    "decrypt_host_delta",
    "delta_proof_hash",
    "encrypt_host_delta",
    "fetch_host_checkpoints",
    "fetch_host_checkpoints_sync",
]

PROOF_HASH_FIELDS = ("checkpointIndex", "endToken", "messages", "sessionId", "startToken")
"""The delta fields :func:`delta_proof_hash` covers (all but the hash and signature)."""

_MAX_INDEX_BYTES = 8 * 1024 * 1024
_EXCERPT = 200
_DOWNLOADS_AT_ONCE = 8


def delta_proof_hash(delta: Mapping[str, Any]) -> str:
    """``0x`` + keccak256 of the canonical JSON of a delta's :data:`PROOF_HASH_FIELDS`.

    The reference host's ``proofHash`` (see :func:`fetch_host_checkpoints`). ``delta`` is the JSON
    object with camelCase keys, as written to S5.
    """
    try:
        body = {name: delta[name] for name in PROOF_HASH_FIELDS}
    except KeyError as exc:
        raise CheckpointError(
            f"host delta has no {exc.args[0]!r} field", details={"reason": "malformed_delta"}
        ) from None
    return "0x" + keccak(canonical_json(body).encode("utf-8")).hex()


def encrypt_host_delta(
    delta: Mapping[str, Any], recovery_public_key: str | bytes, host_key: PrivateKey
) -> dict[str, Any]:
    """The encrypted envelope of a signed delta, sealed to ``recovery_public_key`` and
    signed by ``host_key`` (EIP-191 over the hex of ``keccak256(ciphertext)``), as
    deployed nodes write it (see :func:`fetch_host_checkpoints`)."""
    envelope = seal_checkpoint_delta(canonical_json(delta).encode("utf-8"), recovery_public_key)
    digest = keccak(bytes.fromhex(envelope["ciphertext"])).hex()
    envelope["hostSignature"] = personal_sign(digest, host_key)
    return envelope


def decrypt_host_delta(
    envelope: Mapping[str, Any], recovery_key: RecoveryKey, host_address: str
) -> dict[str, Any]:
    """Check an envelope's ``hostSignature`` against ``host_address``, open it with
    ``recovery_key`` and return the plain delta (still to verify, see
    :func:`~langchain_fabstir.checkpoints.verify_host_delta`).

    Raises:
        CheckpointError: the envelope is not signed by ``host_address`` (``wrong_signer``).
        EncryptionError: see :func:`~langchain_fabstir.wire.encryption.open_checkpoint_delta`;
            a plaintext that is not a JSON object (``INVALID_PAYLOAD``).
    """
    ciphertext = envelope.get("ciphertext")
    signature = envelope.get("hostSignature")
    if isinstance(ciphertext, str) and isinstance(signature, str):
        try:
            digest = keccak(bytes.fromhex(ciphertext)).hex()
        except ValueError:
            digest = None  # open_checkpoint_delta names the bad hex
        if digest is not None:
            expected = normalize_address(host_address, what="host address")
            recovered = recover_personal_signer(digest, signature)
            if recovered != expected:
                raise CheckpointError(
                    f"encrypted delta is not signed by host {expected} (signature recovers "
                    f"to {recovered}: tampered with, or signed by another key)",
                    details={"reason": "wrong_signer", "expected": expected},
                )
    else:
        raise CheckpointError(
            "encrypted delta has no ciphertext or hostSignature",
            details={"reason": "malformed_delta"},
        )
    plaintext = open_checkpoint_delta(envelope, recovery_key)
    try:
        raw = loads_untrusted(plaintext)
    except (ValueError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict):
        raise InvalidEncryptedPayloadError(
            "the decrypted checkpoint delta is not a JSON object", details={"field": "ciphertext"}
        )
    return raw


class HostCheckpoints(BaseModel):
    """A host's checkpoints of one session, verified, and the conversation they prove.

    Attributes:
        session_id: the session asked for (the index and every delta name it).
        host_url: the host that served the index.
        host_address: the signer of the index and of every delta (checksum form).
        host_address_source: ``"caller"`` when you passed ``host_address`` (the host is
            who you think), ``"index"`` when it was taken from the index itself (the
            data is intact and self-consistent, but anyone could have signed it).
        index: the verified index.
        deltas: the verified deltas, in checkpoint order.
        messages: the conversation rebuilt from the deltas (``role``, ``content``,
            ``timestamp``; a last message still being streamed keeps
            ``metadata: {"partial": true}``).
        token_count: generated tokens the checkpoints cover (end of the last range).
        signatures_verified, cids_verified: always ``True`` on a returned result
            (a failure raises); kept so logs and APIs can show what was checked.
        proof_hashes_verified: every ``proofHash`` equals :func:`delta_proof_hash`.
        encrypted_deltas: how many deltas were encrypted on S5 (and opened with your
            recovery key); ``deltas`` and ``messages`` hold them decrypted.
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    host_url: str
    host_address: str
    host_address_source: Literal["caller", "index"]
    index: HostCheckpointIndex
    deltas: list[HostCheckpointDelta]
    messages: list[dict[str, Any]]
    token_count: int
    signatures_verified: bool = True
    cids_verified: bool = True
    proof_hashes_verified: bool
    encrypted_deltas: int = 0

    @property
    def complete(self) -> bool:
        """True when the last checkpointed message is whole (no answer cut mid-way)."""
        return not (self.messages and self.messages[-1].get("metadata", {}).get("partial"))


def _http_base(host_url: str) -> str:
    base = host_url.strip().rstrip("/")
    if base.endswith("/v1/ws"):
        base = base[: -len("/v1/ws")]
    if base.startswith("ws://"):
        return "http://" + base[len("ws://") :]
    if base.startswith("wss://"):
        return "https://" + base[len("wss://") :]
    return base


async def _get_index(client: httpx.AsyncClient, host_url: str, session_id: str) -> dict[str, Any]:
    """GET the index; every failure becomes a typed error."""
    url = f"{_http_base(host_url)}/v1/checkpoints/{quote(session_id, safe='')}"
    facts: dict[str, Any] = {"host_url": host_url, "session_id": session_id}
    # The whole GET is bounded in time too (as for an index of 256 KiB, about 800
    # checkpoints; a larger one must come faster): a host that trickles cannot hold it.
    deadline = whole_reply_deadline(client.timeout, 256 * 1024)
    try:
        async with deadline_after(deadline), client.stream("GET", url) as response:
            body = await read_capped(response, _MAX_INDEX_BYTES)
            status = response.status_code
    except ReplyTooLarge:
        raise ProtocolError(
            f"checkpoint index from {host_url} exceeds {_MAX_INDEX_BYTES} bytes", **facts
        ) from None
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise ResponseTimeoutError(
            f"host {host_url} did not send its whole checkpoint index within {deadline:g}s",
            **facts,
        ) from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ConnectionFailedError(
            f"host {host_url} is unreachable: {type(exc).__name__}: {exc}"[:300], **facts
        ) from exc
    except httpx.TimeoutException as exc:
        raise ResponseTimeoutError(
            f"host {host_url} did not send its checkpoint index in time", **facts
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise InvalidRequestError(f"not an HTTP(S) host URL: {host_url!r}", **facts) from exc
    except httpx.TransportError as exc:
        raise HostDisconnectedError(
            f"host {host_url} dropped the connection: {type(exc).__name__}: {exc}"[:300],
            **facts,
        ) from exc
    except httpx.InvalidURL as exc:
        raise InvalidRequestError(f"invalid host URL {host_url!r}: {exc}", **facts) from exc
    excerpt = body[:_EXCERPT].decode("utf-8", "replace")
    if status == 404:
        raise CheckpointError(
            f"host {host_url} has published no checkpoints for session {session_id}",
            **facts,
            details={"reason": "none", "status": status},
        )
    if status == 503:
        raise CheckpointError(
            f"host {host_url} does not publish checkpoints now (HTTP 503: no S5 store or "
            f"no chain configured, or its storage is down): {excerpt}",
            **facts,
            details={"reason": "unavailable", "status": status, "excerpt": excerpt},
        )
    if status >= 500:
        raise HostError(
            f"host {host_url} failed to serve checkpoints: HTTP {status}: {excerpt}",
            **facts,
            details={"status": status, "excerpt": excerpt},
        )
    if status != 200:
        raise ProtocolError(
            f"host {host_url} answered the checkpoint index with HTTP {status}: {excerpt}",
            **facts,
            details={"status": status, "excerpt": excerpt},
        )
    try:
        raw = loads_untrusted(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(
            f"host {host_url} sent a checkpoint index that is not JSON",
            **facts,
            details={"excerpt": excerpt},
        ) from None
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"host {host_url} sent a checkpoint index that is not a JSON object",
            **facts,
            details={"excerpt": excerpt},
        )
    return raw


def _check_entries(index: HostCheckpointIndex) -> list[HostCheckpointEntry]:
    """Entries in order, numbered 0..n-1, token ranges contiguous from 0."""
    entries = sorted(index.checkpoints, key=lambda e: e.index)
    expected_start = 0
    for position, entry in enumerate(entries):
        start, end = entry.token_range
        problem = None
        if entry.index != position:
            problem = f"checkpoint {position} is missing (next listed is {entry.index})"
        elif start != expected_start or end < start:
            problem = (
                f"checkpoint {entry.index} covers tokens {start}..{end}, expected a range "
                f"starting at {expected_start}"
            )
        if problem is not None:
            raise CheckpointError(
                f"host index: {problem}",
                session_id=index.session_id,
                details={"reason": "token_gap", "checkpoint_index": entry.index},
            )
        expected_start = end
    return entries


async def _fetch_delta(
    portal: S5PortalClient,
    entry: HostCheckpointEntry,
    address: str,
    session_id: str,
    recovery_key: RecoveryKey | None,
) -> tuple[HostCheckpointDelta, bool]:
    """Download, check and parse one delta; return it and whether its proofHash is ours."""
    try:
        cid = CID.parse(entry.delta_cid)
    except InvalidCIDError:
        raise CheckpointError(
            f"checkpoint {entry.index}: deltaCid {entry.delta_cid[:80]!r} is not an S5 CID",
            session_id=session_id,
            details={"reason": "bad_cid", "checkpoint_index": entry.index},
        ) from None
    body = await portal.download(cid)  # raises IntegrityError when the bytes do not match
    if CID.from_bytes(body) != cid:
        raise IntegrityError(
            f"checkpoint {entry.index}: delta bytes do not match deltaCid {cid}",
            session_id=session_id,
            details={"reason": "cid_mismatch", "checkpoint_index": entry.index},
        )
    try:
        raw = loads_untrusted(body)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(
            f"checkpoint {entry.index}: delta {cid} is not JSON",
            session_id=session_id,
            details={"reason": "malformed_delta", "checkpoint_index": entry.index},
        ) from None
    sealed = isinstance(raw, dict) and raw.get("encrypted") is True
    if sealed != entry.encrypted:
        said, found = ("encrypted", "plain") if entry.encrypted else ("plain", "encrypted")
        raise EncryptionModeError(
            f"checkpoint {entry.index}: the index marks the delta {said} but {cid} is {found}",
            session_id=session_id,
            details={"reason": "marking_mismatch", "checkpoint_index": entry.index},
        )
    if sealed:
        assert recovery_key is not None  # checked before any download
        try:
            raw = decrypt_host_delta(raw, recovery_key, address)
        except (CheckpointError, EncryptionError) as exc:
            exc.session_id = exc.session_id or session_id
            exc.details.setdefault("checkpoint_index", entry.index)
            exc.message = f"checkpoint {entry.index}: {exc.message}"
            raise
    delta = verify_host_delta(raw, address, entry=entry)
    if delta.session_id != session_id:
        raise CheckpointError(
            f"checkpoint {entry.index} belongs to session {delta.session_id!r}, not {session_id!r}",
            session_id=session_id,
            details={"reason": "wrong_session", "checkpoint_index": entry.index},
        )
    return delta, delta_proof_hash(raw).lower() == delta.proof_hash.lower()


async def fetch_host_checkpoints(
    host_url: str,
    session_id: str,
    *,
    portal: S5PortalClient | str,
    host_address: str | None = None,
    http_client: httpx.AsyncClient | None = None,
    require_proof_hash: bool = False,
    timeout: float = 10.0,
    recovery_key: RecoveryKey | None = None,
) -> HostCheckpoints:
    """Get a host's checkpoint index and deltas of ``session_id``, verify all, rebuild.

    1. the index signature (EIP-191 over the canonical JSON of ``checkpoints``), against
       the ``host_address`` you pass, or else against the address the index names (then
       :attr:`HostCheckpoints.host_address_source` is ``"index"``: the signature proves the
       index is intact, not *who* the host is);
    2. checkpoints numbered 0..n-1 with contiguous token ranges starting at 0;
    3. each delta's bytes against its ``deltaCid`` (BLAKE3, by the portal client and again
       here), each delta signature (over its ``messages``), and each delta against its index
       entry (number, ``proofHash``, token range, session);
    4. each ``proofHash`` against :func:`delta_proof_hash` (see below);

    and rebuilds the conversation, joining messages cut by a checkpoint
    (``metadata.partial``).

    Encrypted sessions (PROTOCOL.md section 4.5)
    --------------------------------------------
    A host seals the deltas of an encrypted session to the ``recoveryPublicKey`` the client
    named in its ``encrypted_session_init``, and marks their index entries
    ``"encrypted": true``. Each such delta on S5 is an envelope, as deployed nodes write it
    (see :data:`~langchain_fabstir.wire.encryption.CHECKPOINT_ENVELOPE_FIELDS`)::

        {"encrypted":true,"version":1,"userRecoveryPubKey":"0x02...","ephemeralPublicKey":"0x03...",
         "nonce":"<24 bytes hex>","ciphertext":"<hex>","hostSignature":"0x..."}

    whose ciphertext is the signed plain delta (canonical JSON). Pass the session's
    :class:`~langchain_fabstir.wire.encryption.RecoveryKey` (``Session.recovery_key``; the
    :class:`~langchain_fabstir.sessions.manager.SessionManager` method of the same name does
    it for you) as ``recovery_key``: each envelope's ``hostSignature`` (EIP-191 over the hex
    of ``keccak256(ciphertext)``) is checked against the host, then it is opened and verified
    as a plain delta. Without the key, an encrypted entry raises ``DECRYPTION_KEY_REQUIRED``
    before anything is downloaded; an entry whose marking does not match its delta raises
    ``ENCRYPTION_MODE_MISMATCH``; another session's key or changed bytes,
    ``DECRYPTION_FAILED``. Plain deltas read as before, with or without a key.

    What ``proofHash`` is
    ---------------------
    On hosts with a chain, ``proofHash`` is the SHA-256 of the host's proof of work (the
    bytes at the ``proofCID`` of its ``ProofSubmitted`` event), which a client cannot
    recompute from the delta (``SessionManager.audit_job`` checks it from the chain); this
    project's reference host does the same when it runs with a chain. Without one it sets
    it to :func:`delta_proof_hash`: keccak256 of the canonical JSON of the delta without
    ``proofHash`` and ``hostSignature``, i.e. of ``{checkpointIndex, endToken, messages,
    sessionId, startToken}``. A mismatch is therefore reported
    (:attr:`HostCheckpoints.proof_hashes_verified` is ``False``), not raised, unless you
    pass ``require_proof_hash=True``. Tampering is caught either way: the index signature
    covers each entry's ``proofHash``, ``tokenRange`` and ``deltaCid``, and the CID covers
    every byte of the delta.

    Example (a host at ``host_url``, its portal at ``portal_url``)::

        result = await fetch_host_checkpoints(host_url, "123", portal=portal_url,
                                              host_address="0xAbC...")
        for message in result.messages:
            print(message["role"], message["content"][:60])

    :func:`delta_proof_hash` is pure:

    >>> delta_proof_hash({"checkpointIndex": 0, "startToken": 0, "endToken": 1,
    ...     "sessionId": "1", "messages": [{"role": "assistant", "content": "Hi"}]})
    '0xd117c2101ff36d3ab4245db86dd4faa8b91b3cf0f3c24a5d9ee332daff6f19d2'

    Args:
        host_url: the host's base URL (``http(s)://`` or its ``ws(s)://`` URL).
        session_id: the session whose checkpoints to fetch.
        portal: an :class:`S5PortalClient`, or a portal URL (a client is opened and
            closed here). Downloads need no account.
        host_address: the host's address, when you know it (from discovery or the
            ``connected`` greeting): the index and deltas must be signed by it. Without
            it the address named by the index is used, and the result says so.
        http_client: an ``httpx.AsyncClient`` to reuse for the host request.
        require_proof_hash: raise when a ``proofHash`` is not :func:`delta_proof_hash`
            (right for reference hosts; hosts with a chain hash their proof instead).
        timeout: seconds for the host request when no ``http_client`` is given.
        recovery_key: the session's :class:`~langchain_fabstir.wire.encryption.RecoveryKey`
            (``Session.recovery_key``), to open the deltas of an encrypted session.

    Raises:
        CheckpointError: ``details["reason"]`` is ``"none"`` (HTTP 404: nothing
            published), ``"unavailable"`` (HTTP 503: the host publishes no checkpoints),
            or what failed verification (``wrong_signer``, ``wrong_host``,
            ``index_mismatch``, ``token_gap``, ``wrong_session``, ``malformed_index``,
            ``proof_hash_mismatch``...).
        IntegrityError: a delta's bytes do not match its CID.
        ConnectionFailedError / ResponseTimeoutError / HostDisconnectedError: the host
            could not be reached, was too slow, or dropped the connection.
        ProtocolError: the host's reply is not a JSON object (or another HTTP status).
        StorageError: the portal failed (``BlobNotFoundError`` for a missing delta).
        DecryptionKeyRequiredError: encrypted deltas and no ``recovery_key``.
        EncryptionModeError: an index entry's ``encrypted`` marking is not what its delta
            is (``ENCRYPTION_MODE_MISMATCH``).
        DecryptionFailedError / InvalidEncryptedPayloadError: an encrypted delta sealed to
            another key, changed, or malformed (``details["checkpoint_index"]`` says which).
    """
    own_http = http_client is None
    http = http_client or _http.client(timeout)
    try:
        raw_index = await _get_index(http, host_url, session_id)
    finally:
        if own_http:
            await http.aclose()
    source: Literal["caller", "index"] = "caller" if host_address else "index"
    claimed = host_address or raw_index.get("hostAddress")
    if not isinstance(claimed, str):
        raise CheckpointError(
            f"host {host_url}: checkpoint index names no hostAddress",
            host_url=host_url,
            session_id=session_id,
            details={"reason": "malformed_index"},
        )
    try:
        address = normalize_address(claimed, what="host address")
        index = verify_host_index(raw_index, address)
        if index.session_id != session_id:
            raise CheckpointError(
                f"the index served for session {session_id!r} is session {index.session_id!r}'s",
                details={"reason": "wrong_session"},
            )
        entries = _check_entries(index)
    except CheckpointError as exc:
        exc.host_url = exc.host_url or host_url
        exc.session_id = exc.session_id or session_id
        raise
    sealed = [e.index for e in entries if e.encrypted]
    if sealed and recovery_key is None:
        raise DecryptionKeyRequiredError(
            f"host {host_url}: {len(sealed)} checkpoint(s) of session {session_id} are "
            "encrypted (an encrypted session): pass recovery_key=session.recovery_key, or use "
            "SessionManager.fetch_host_checkpoints",
            host_url=host_url,
            session_id=session_id,
            details={"checkpoint_indices": sealed[:20]},
        )
    own_portal = isinstance(portal, str)
    client = S5PortalClient(portal) if isinstance(portal, str) else portal
    limit = asyncio.Semaphore(_DOWNLOADS_AT_ONCE)

    async def one(entry: HostCheckpointEntry) -> tuple[HostCheckpointDelta, bool]:
        async with limit:
            return await _fetch_delta(client, entry, address, session_id, recovery_key)

    try:
        outcomes = await asyncio.gather(*(one(e) for e in entries), return_exceptions=True)
    finally:
        if own_portal:
            await client.aclose()
    deltas: list[HostCheckpointDelta] = []
    ours = True
    for entry, outcome in zip(entries, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, CheckpointError | IntegrityError | EncryptionError):
                outcome.host_url = outcome.host_url or host_url
            raise outcome
        delta, matches = outcome
        if not matches and require_proof_hash:
            raise CheckpointError(
                f"checkpoint {entry.index}: proofHash {delta.proof_hash[:18]}... is not the "
                "hash of the delta's content",
                host_url=host_url,
                session_id=session_id,
                details={"reason": "proof_hash_mismatch", "checkpoint_index": entry.index},
            )
        ours = ours and matches
        deltas.append(delta)
    try:
        messages = rebuild_conversation(deltas)
    except CheckpointError as exc:
        exc.host_url = exc.host_url or host_url
        raise
    return HostCheckpoints(
        session_id=session_id,
        host_url=host_url,
        host_address=address,
        host_address_source=source,
        index=index,
        deltas=deltas,
        messages=messages,
        token_count=entries[-1].token_range[1] if entries else 0,
        proof_hashes_verified=ours,
        encrypted_deltas=len(sealed),
    )


def fetch_host_checkpoints_sync(
    host_url: str,
    session_id: str,
    *,
    portal: str,
    host_address: str | None = None,
    require_proof_hash: bool = False,
    timeout: float = 10.0,
    recovery_key: RecoveryKey | None = None,
) -> HostCheckpoints:
    """Blocking :func:`fetch_host_checkpoints` (safe inside a running event loop too).

    ``portal`` is a URL here: a client made on another event loop cannot be shared.
    """
    return run_sync(
        fetch_host_checkpoints(
            host_url,
            session_id,
            portal=portal,
            host_address=host_address,
            require_proof_hash=require_proof_hash,
            timeout=timeout,
            recovery_key=recovery_key,
        )
    )
