"""Checkpoints inside a session: make, co-sign, verify and announce proofs.

The session layer drives a :class:`~langchain_fabstir.checkpoints.CheckpointTracker`
per conversation. Every proof it makes goes through :func:`settle_proof`:

1. If the host announced the ``checkpoints`` extension (and its ``host_address``), it
   pushed a signed ``checkpoint`` frame for the same checkpoint. The host's signature must
   recover to the announced address, and its ``conversationHash``, ``tokenCount`` and
   boundary must equal the client's own: the client never trusts a hash it did not
   compute. The proof then carries ``host_signature`` (and the host's timestamp, which
   the host signed).
2. With a user key, the client signs the proof (``signature``, ``signer``).
3. A proof that cannot be verified is a ``CHECKPOINT_FAILED`` warning (logged, and the
   ``checkpoint_failed`` event fires); with ``require_verified_checkpoints`` it is raised.

The host extension (request field ``checkpoint``) is ``{"interval": N, "scope": S}``:
with scope ``"session"`` the host's tracker starts from the first prompt's
``conversation_context`` and then adds each prompt and answer; with ``"request"`` it
covers the request's context, prompt and answer only. The client uses the same rule, so
both compute the same hashes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain_fabstir.checkpoints import (
    CheckpointProof,
    CheckpointTracker,
    sign_proof,
    verify_host_signature,
)
from langchain_fabstir.errors import CheckpointError

__all__ = ["new_tracker", "settle_proof"]

log = logging.getLogger(__name__)


def new_tracker(
    session_id: str,
    interval: int,
    messages: Sequence[dict[str, str]],
    signing_key: Any = None,
) -> CheckpointTracker:
    """A tracker that starts with ``messages`` (complete) and no proofs."""
    tracker = CheckpointTracker(session_id, checkpoint_interval=interval, signing_key=signing_key)
    for m in messages:
        tracker.add_message(m["role"], m["content"])
    tracker.end_message()
    return tracker


def _cosign(
    proof: CheckpointProof, attestation: dict[str, Any] | None, host_address: str
) -> CheckpointProof:
    if attestation is None:
        raise CheckpointError(
            f"host announced checkpoints but sent none for checkpoint {proof.checkpoint_number}",
            session_id=proof.session_id,
            details={"reason": "host_missing", "checkpoint_number": proof.checkpoint_number},
        )
    host_proof = CheckpointProof.from_dict(attestation)
    verify_host_signature(host_proof, host_address)
    mine = (proof.session_id, proof.conversation_hash, proof.token_count, proof.boundary)
    theirs = (
        host_proof.session_id,
        host_proof.conversation_hash,
        host_proof.token_count,
        host_proof.boundary,
    )
    if mine != theirs:
        raise CheckpointError(
            f"host's checkpoint {proof.checkpoint_number} differs from the client's "
            f"(host hash {host_proof.conversation_hash}, tokens {host_proof.token_count}; "
            f"client hash {proof.conversation_hash}, tokens {proof.token_count})",
            session_id=proof.session_id,
            details={"reason": "host_mismatch", "checkpoint_number": proof.checkpoint_number},
        )
    return proof.model_copy(
        update={"host_signature": host_proof.host_signature, "timestamp": host_proof.timestamp}
    )


async def settle_proof(
    proof: CheckpointProof,
    *,
    host_checkpoints: dict[int, dict[str, Any]],
    host_address: str | None,
    signing_key: Any,
    require_verified: bool,
    emit: Callable[[str, Any], Awaitable[None]],
    host_url: str | None = None,
) -> CheckpointProof:
    """Co-sign (when the host signs), sign, and announce one proof; see the module doc."""
    if host_address:
        try:
            proof = _cosign(
                proof, host_checkpoints.pop(proof.checkpoint_number, None), host_address
            )
            if signing_key is not None:
                proof = sign_proof(proof, signing_key)
        except CheckpointError as exc:
            exc.host_url = host_url
            if require_verified:
                raise
            log.warning("checkpoint not verified: %s", exc)
            await emit("checkpoint_failed", exc)
    await emit("checkpoint", proof)
    return proof
