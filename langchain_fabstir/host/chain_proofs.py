"""The reference host's proofs on chain, submitted the way deployed nodes do (CHAIN.md 6.5).

:class:`NodeProofSubmitter` takes the checkpoints an :class:`~langchain_fabstir.host.publishing.
S5CheckpointWriter` published for a session job and, for each one not yet on chain, writes the
proof bytes to the host's S5 path ``home/proofs/job_{jobId}_proof.bin`` (one path per job,
overwritten by every later proof; the CID names each version), and sends
``submitProofOfWork(jobId, tokensClaimed, sha256(bytes), proofCID, deltaCID)`` with the
delta's CID, published before the transaction as nodes do. :meth:`NodeProofSubmitter.settle`
then completes the job. The chain client is given from above (a
:class:`~langchain_fabstir.chain.ChainClient` with the host's key): this layer does not import
the chain.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_fabstir.host.publishing import S5CheckpointWriter

__all__ = ["NodeProofSubmitter"]

# Positions in ``sessionJobs(uint256)`` (CHAIN.md section 4).
_TOKENS_USED, _PROOF_INTERVAL = 6, 10


class NodeProofSubmitter:
    """Submits a host's published checkpoints of a job as proofs of work, then settles.

    ``client`` holds the host's key (the contract accepts proofs from the job's host only);
    ``writer`` is the host's checkpoint writer (its S5 file system takes the proof bytes).
    The proof is the JSON a node built without the STARK feature submits
    (``{"timestamp", "tokensUsed", "hostAddress", "jobId", "mock": true,
    "hasRealContentHashes"}``); like a node, the first proof of a job claims at least the
    job's proof interval (CHAIN.md section 4), later ones the tokens of their checkpoint.
    Checkpoints already proven (counted per job by this submitter) are not sent again.
    """

    def __init__(self, client: Any, writer: S5CheckpointWriter) -> None:
        self.client = client
        self.writer = writer
        self._proven: dict[int, int] = {}

    def proof_path(self, job_id: int) -> str:
        return f"home/proofs/job_{job_id}_proof.bin"

    def proof_bytes(self, job_id: int, tokens: int) -> bytes:
        return json.dumps(
            {
                "timestamp": int(time.time()),
                "tokensUsed": tokens,
                "hostAddress": self.writer.host_address,
                "jobId": job_id,
                "mock": True,
                "hasRealContentHashes": False,
            },
            separators=(",", ":"),
        ).encode()

    async def submit(self, job_id: int) -> list[dict[str, Any]]:
        """Prove every published checkpoint of job ``job_id`` not proven yet; returns what
        was submitted (``tokens``, ``proofHash``, ``proofCID``, ``deltaCID``, ``tx_hash``)."""
        index = await self.writer.index(str(job_id))
        entries = list(index.get("checkpoints", [])) if index else []
        done = self._proven.get(job_id, 0)
        market = self.client.job_marketplace.functions
        job = await self.client.call(market.sessionJobs(job_id), f"reading job {job_id}")
        proven_tokens, interval = int(job[_TOKENS_USED]), int(job[_PROOF_INTERVAL])
        sent: list[dict[str, Any]] = []
        for entry in entries[done:]:
            start, end = (int(t) for t in entry["tokenRange"])
            tokens = end - start
            if proven_tokens == 0:
                tokens = max(tokens, interval)
            body = self.proof_bytes(job_id, tokens)
            info = await self.writer.fs.put(
                self.proof_path(job_id), body, media_type="application/octet-stream", encrypt=False
            )
            proof_hash = hashlib.sha256(body).digest()
            receipt = await self.client.transact(
                market.submitProofOfWork(
                    job_id, tokens, proof_hash, str(info.cid), str(entry["deltaCid"])
                ),
                f"submitting a proof of job {job_id}",
            )
            proven_tokens += tokens
            done += 1
            self._proven[job_id] = done
            sent.append(
                {
                    "tokens": tokens,
                    "proofHash": "0x" + proof_hash.hex(),
                    "proofCID": str(info.cid),
                    "deltaCID": str(entry["deltaCid"]),
                    "tx_hash": receipt["transactionHash"].hex(),
                }
            )
        return sent

    async def settle(self, job_id: int, conversation_cid: str = "") -> list[dict[str, Any]]:
        """:meth:`submit`, then ``completeSessionJob`` (without waiting the dispute window)."""
        sent = await self.submit(job_id)
        await self.client.transact(
            self.client.job_marketplace.functions.completeSessionJob(job_id, conversation_cid),
            f"completing job {job_id}",
        )
        return sent
