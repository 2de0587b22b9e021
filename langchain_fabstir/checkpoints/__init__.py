"""Checkpoint proofs: what a conversation was at a token count, provably.

The pure layer of the seed API's checkpoints, usable without LangChain:
:class:`CheckpointProof` (a proof, JSON with camelCase names), :func:`verify_checkpoints`
(the hash chain recomputed from a history), :class:`CheckpointTracker` (the incremental
hasher a session drives per chunk, with an example), signatures (:func:`sign_proof`,
:func:`verify_proof_signature`...), and real hosts' S5 checkpoints
(:func:`verify_host_delta`, :func:`verify_host_index`, :func:`rebuild_conversation`).

Every failure is a :class:`~langchain_fabstir.errors.CheckpointError` (code
``CHECKPOINT_FAILED``) whose ``details["reason"]`` says what was wrong.
"""

from __future__ import annotations

from langchain_fabstir.checkpoints.hashchain import (
    ZERO_HASH,
    chain_step,
    conversation_deltas,
    conversation_hashes,
    verify_checkpoints,
)
from langchain_fabstir.checkpoints.host import (
    HostCheckpointDelta,
    HostCheckpointEntry,
    HostCheckpointIndex,
    HostDeltaMessage,
    rebuild_conversation,
    sign_host_delta,
    sign_host_index,
    verify_host_checkpoints,
    verify_host_delta,
    verify_host_index,
)
from langchain_fabstir.checkpoints.proof import (
    CheckpointBoundary,
    CheckpointProof,
    proof_signing_payload,
    recover_proof_signer,
    sign_proof,
    timestamp_ms,
    verify_host_signature,
    verify_proof_signature,
)
from langchain_fabstir.checkpoints.signing import (
    PrivateKey,
    address_of,
    canonical_json,
    personal_sign,
    recover_personal_signer,
)
from langchain_fabstir.checkpoints.tracker import (
    DEFAULT_CHECKPOINT_INTERVAL,
    CheckpointTracker,
    ConversationHasher,
)
from langchain_fabstir.errors import CheckpointError

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "ZERO_HASH",
    "CheckpointBoundary",
    "CheckpointError",
    "CheckpointProof",
    "CheckpointTracker",
    "ConversationHasher",
    "HostCheckpointDelta",
    "HostCheckpointEntry",
    "HostCheckpointIndex",
    "HostDeltaMessage",
    "PrivateKey",
    "address_of",
    "canonical_json",
    "chain_step",
    "conversation_deltas",
    "conversation_hashes",
    "personal_sign",
    "proof_signing_payload",
    "rebuild_conversation",
    "recover_personal_signer",
    "recover_proof_signer",
    "sign_host_delta",
    "sign_host_index",
    "sign_proof",
    "timestamp_ms",
    "verify_checkpoints",
    "verify_host_checkpoints",
    "verify_host_delta",
    "verify_host_index",
    "verify_host_signature",
    "verify_proof_signature",
]
