"""Audit a session job from the chain alone: its proofs, their bytes on S5, and the settlement.

:func:`audit_job` (``SessionManager.audit_job``) reads every ``ProofSubmitted`` event of the
job (logs in bounded block ranges, from the job's creation block), fetches each proof's bytes
by ``proofCID`` from an S5 portal and checks ``sha256(bytes) == proofHash`` (what nodes put
on chain, CHAIN.md 6.5), fetches each ``deltaCID`` (the checkpoint delta, by its CID, so the
bytes are the ones the host named) and verifies its host signature, its session (the job's id,
or a fresh node session ``{job}~...`` a client opened under the job) and its place in that
session's chain of deltas (numbered in order, token ranges contiguous), opening encrypted deltas
with the session's recovery key; then sums the tokens claimed against the settlement.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import FabstirError, InvalidRequestError

if TYPE_CHECKING:
    from langchain_fabstir.chain.client import ChainClient
    from langchain_fabstir.s5.client import S5PortalClient
    from langchain_fabstir.wire.encryption import RecoveryKey

__all__ = ["ChainRecovery", "JobAudit", "ProofAudit", "audit_job", "recover_from_chain"]

#: The SDK reads logs 9,000 blocks at a time (RPC log-range limits, CHAIN.md 6.5).
DEFAULT_BLOCK_RANGE = 9000
#: The most proofs one audit reads (a job proves every 1,000 tokens; this is 100M tokens).
MAX_PROOFS = 100_000


class ProofAudit(BaseModel):
    """One ``ProofSubmitted`` of the job and what was found.

    ``verdict``: ``ok`` (the bytes at ``proof_cid`` hash to ``proof_hash`` and the delta, when
    named, is the host's, of this job, next in the chain); ``proof_unavailable`` (the portal
    has no such blob, or the CID is not one); ``proof_hash_mismatch`` (the bytes are not what
    the host committed to on chain: a tampered or substituted proof); ``delta_unavailable``;
    ``delta_invalid`` (bad signature, another session, out of order); ``delta_encrypted`` (no
    recovery key to open it: the proof itself was checked); ``wrong_host`` (submitted by
    another address than the job's host). ``problems`` says why. ``delta_proof_hash_matches``
    is reported, not required: deployed nodes put the on-chain ``proofHash`` in the delta
    (so does this project's reference host with a chain; without one it puts a keccak of
    the delta itself). Bytes that no longer match their CID on the portal (tampered after
    they were stored) are ``proof_unavailable`` / ``delta_unavailable``, the problem
    saying so.
    """

    model_config = ConfigDict(frozen=True)

    index: int
    block_number: int
    tx_hash: str
    host: str
    tokens_claimed: int
    proof_hash: str
    proof_cid: str
    delta_cid: str
    proof_verified: bool
    delta_verified: bool | None
    delta_token_range: tuple[int, int] | None = None
    delta_proof_hash_matches: bool | None = None
    verdict: str
    problems: list[str] = []


class JobAudit(BaseModel):
    """Every proof of a job and its settlement, checked (see :func:`audit_job`).

    ``clean`` is true when every proof is ``ok`` (or ``delta_encrypted``), the proofs came
    from the job's host, and the tokens the host was paid for equal the tokens it claimed.
    ``suspect`` lists the indexes of the proofs that are not.
    """

    model_config = ConfigDict(frozen=True)

    job_id: int
    host: str
    depositor: str
    payment_token: str
    state: str
    proofs: list[ProofAudit]
    tokens_claimed: int
    tokens_settled: int | None
    settlement_event: str | None
    settlement_matches: bool | None
    from_block: int
    to_block: int

    @property
    def suspect(self) -> list[int]:
        return [p.index for p in self.proofs if p.verdict not in ("ok", "delta_encrypted")]

    @property
    def clean(self) -> bool:
        return not self.suspect and self.settlement_matches is not False


async def _creation_block(client: ChainClient, start_time: int, latest: int) -> int:
    """The first block whose timestamp is >= ``start_time`` (binary search: log2(n) reads)."""
    lo, hi = 0, latest
    while lo < hi:
        mid = (lo + hi) // 2
        block = await client._rpc(client.w3.eth.get_block(mid), "reading a block")
        if int(block["timestamp"]) < start_time:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


class ChainRecovery(BaseModel):
    """A conversation rebuilt from the chain's events and S5 alone (the host not needed):
    the job's verified deltas, in order, and the messages they hold (``role``, ``content``,
    ``timestamp``; an answer cut by the last checkpoint keeps ``metadata.partial``)."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    host: str
    deltas: list[Any]
    messages: list[dict[str, Any]]
    token_count: int
    audit: JobAudit

    @property
    def complete(self) -> bool:
        return not (self.messages and self.messages[-1].get("metadata", {}).get("partial"))


async def recover_from_chain(
    client: ChainClient,
    job_id: int,
    portal: S5PortalClient,
    *,
    recovery_key: RecoveryKey | None = None,
    from_block: int | None = None,
    block_range: int = DEFAULT_BLOCK_RANGE,
) -> ChainRecovery:
    """Rebuild job ``job_id``'s conversation from its ``ProofSubmitted`` deltas. Every named
    delta must verify (host signature, session, chain): else ``CHECKPOINT_FAILED`` naming
    the proof (``DECRYPTION_KEY_REQUIRED`` for sealed deltas without ``recovery_key``)."""
    from langchain_fabstir.checkpoints.host import rebuild_conversation
    from langchain_fabstir.errors import CheckpointError, DecryptionKeyRequiredError

    deltas: list[Any] = []
    audit = await _audit(
        client,
        job_id,
        portal,
        recovery_key=recovery_key,
        from_block=from_block,
        block_range=block_range,
        check_proofs=False,
        deltas=deltas,
    )
    for proof, delta in zip(audit.proofs, deltas, strict=True):
        if not proof.delta_cid:
            continue
        if proof.verdict == "delta_encrypted":
            raise DecryptionKeyRequiredError(
                f"job {job_id}: the deltas are encrypted; pass recovery_key= (the session's)",
                details={"proof_index": proof.index},
            )
        if delta is None or not proof.delta_verified:
            raise CheckpointError(
                f"job {job_id}: proof {proof.index}'s delta cannot be used: "
                + "; ".join(proof.problems),
                details={"proof_index": proof.index, "reason": proof.verdict},
            )
    usable = [d for d in deltas if d is not None]
    by_session: dict[str, list[Any]] = {}  # node sessions in the order they began
    for delta in usable:
        by_session.setdefault(delta.session_id, []).append(delta)
    return ChainRecovery(
        job_id=job_id,
        host=audit.host,
        deltas=usable,
        messages=[m for group in by_session.values() for m in rebuild_conversation(group)],
        token_count=sum(group[-1].end_token for group in by_session.values()),
        audit=audit,
    )


async def audit_job(
    client: ChainClient,
    job_id: int,
    portal: S5PortalClient,
    *,
    recovery_key: RecoveryKey | None = None,
    from_block: int | None = None,
    block_range: int = DEFAULT_BLOCK_RANGE,
) -> JobAudit:
    """Audit job ``job_id`` (see the module docstring and :class:`JobAudit`)."""
    return await _audit(
        client,
        job_id,
        portal,
        recovery_key=recovery_key,
        from_block=from_block,
        block_range=block_range,
    )


async def _audit(
    client: ChainClient,
    job_id: int,
    portal: S5PortalClient,
    *,
    recovery_key: RecoveryKey | None,
    from_block: int | None,
    block_range: int,
    check_proofs: bool = True,
    deltas: list[Any] | None = None,
) -> JobAudit:
    from web3 import Web3

    from langchain_fabstir.chain.marketplace import JobStatus, read_job

    if block_range <= 0:
        raise InvalidRequestError("block_range must be > 0")
    job = await read_job(client, job_id)
    market = client.job_marketplace
    latest = int(await client._rpc(client.w3.eth.block_number, "reading the block number"))
    start = (
        from_block
        if from_block is not None
        else await _creation_block(client, job.start_time, latest)
    )
    names = ("ProofSubmitted", "SessionCompleted", "SessionTimedOut", "SessionCompletedBy")
    topics0 = {_hex(Web3.keccak(text=_signature(market, name))): name for name in names}
    job_topic = "0x" + job_id.to_bytes(32, "big").hex()
    found: list[tuple[str, Any]] = []
    block = start
    while block <= latest:
        end = min(latest, block + block_range - 1)
        logs = await client._rpc(
            client.w3.eth.get_logs(
                {
                    "address": market.address,
                    "fromBlock": block,
                    "toBlock": end,
                    "topics": [list(topics0), job_topic],
                }
            ),
            "reading the job's events",
        )
        for log in logs:
            name = topics0.get(_hex(log["topics"][0]))
            if name is not None:
                found.append((name, market.events[name]().process_log(log)))
        if sum(1 for n, _ in found if n == "ProofSubmitted") > MAX_PROOFS:
            raise InvalidRequestError(f"job {job_id} has more than {MAX_PROOFS} proofs")
        if any(n in ("SessionCompleted", "SessionTimedOut") for n, _ in found):
            latest = end  # settled: nothing of the job comes after (no scan to the chain head)
            break
        block = end + 1

    proofs: list[ProofAudit] = []
    # (checkpoint index, end token) of the last delta of each node session of the job
    previous: dict[str, tuple[int, int]] = {}
    for n, (_name, event) in enumerate(e for e in found if e[0] == "ProofSubmitted"):
        args = event["args"]
        audit, delta = await _audit_proof(
            n, event, args, job, portal, recovery_key, previous, check_proofs
        )
        proofs.append(audit)
        if deltas is not None:
            deltas.append(delta)

    claimed = sum(p.tokens_claimed for p in proofs)
    settled: int | None = None
    which: str | None = None
    for name, event in found:
        if name == "SessionCompleted":
            settled, which = int(event["args"]["totalTokensUsed"]), name
        elif name == "SessionTimedOut":
            settled, which = job.tokens_used, name
    state = {0: "active", 1: "completed", 2: "timed_out"}[int(job.status)]
    matches = None if settled is None else settled == claimed == job.tokens_used
    if job.status is JobStatus.ACTIVE:
        matches = None
    return JobAudit(
        job_id=job_id,
        host=job.host,
        depositor=job.depositor,
        payment_token=job.payment_token,
        state=state,
        proofs=proofs,
        tokens_claimed=claimed,
        tokens_settled=settled,
        settlement_event=which,
        settlement_matches=matches,
        from_block=start,
        to_block=latest,
    )


def _signature(market: Any, name: str) -> str:
    from langchain_fabstir.chain.abi import signature

    entry = next(e for e in market.abi if e.get("type") == "event" and e.get("name") == name)
    return signature(entry)


async def _audit_proof(
    n: int,
    event: Any,
    args: Any,
    job: Any,
    portal: S5PortalClient,
    recovery_key: RecoveryKey | None,
    previous: dict[str, tuple[int, int]],
    check_proof: bool = True,
) -> tuple[ProofAudit, Any]:
    from langchain_fabstir.checkpoints.host import verify_host_delta
    from langchain_fabstir.checkpoints.published import decrypt_host_delta
    from langchain_fabstir.s5.cid import CID

    problems: list[str] = []
    proof_hash = _hex(args["proofHash"])
    proof_cid, delta_cid = str(args["proofCID"]), str(args["deltaCID"])
    host = str(args["host"])
    if host.lower() != job.host.lower():
        problems.append(f"submitted by {host}, not the job's host {job.host}")
    verdict = "ok"
    proof_ok = False
    parsed: Any = None
    if check_proof:
        try:
            body = await portal.download(CID.coerce(proof_cid))
        except (FabstirError, ValueError) as exc:
            verdict = "proof_unavailable"
            problems.append(f"proof bytes at {proof_cid[:80]!r} not fetched: {exc}")
        else:
            proof_ok = "0x" + hashlib.sha256(body).hexdigest() == proof_hash.lower()
            if not proof_ok:
                verdict = "proof_hash_mismatch"
                problems.append(
                    f"sha256 of the {len(body)} bytes at {proof_cid} is not the proofHash on chain"
                )
    delta_ok: bool | None = None
    token_range: tuple[int, int] | None = None
    hash_matches: bool | None = None
    if delta_cid:
        delta_ok = False
        raw: Any = None
        try:
            data = await portal.download(CID.coerce(delta_cid))
            raw = loads_untrusted(data)
        except (FabstirError, ValueError, UnicodeDecodeError) as exc:
            problems.append(f"delta {delta_cid[:80]!r} not fetched: {exc}")
            verdict = verdict if verdict != "ok" else "delta_unavailable"
        if isinstance(raw, dict) and raw.get("encrypted") is True:
            if recovery_key is None:
                raw, delta_ok = None, None
                if verdict == "ok":
                    verdict = "delta_encrypted"
            else:
                try:
                    raw = decrypt_host_delta(raw, recovery_key, job.host)
                except FabstirError as exc:
                    raw = None
                    problems.append(f"delta {delta_cid} does not open: {exc.message}")
                    verdict = verdict if verdict != "ok" else "delta_invalid"
        if isinstance(raw, dict):
            try:
                delta = verify_host_delta(raw, job.host)
            except FabstirError as exc:
                problems.append(f"delta {delta_cid}: {exc.message}")
            else:
                parsed = delta
                token_range = (delta.start_token, delta.end_token)
                hash_matches = delta.proof_hash.lower() == proof_hash.lower()
                last = previous.get(delta.session_id)
                expected = (0, 0) if last is None else (last[0] + 1, last[1])
                if not _of_job(delta.session_id, job.id):
                    problems.append(f"delta {delta_cid} is of session {delta.session_id!r}")
                elif (delta.checkpoint_index, delta.start_token) != expected:
                    problems.append(
                        f"delta {delta_cid} is checkpoint {delta.checkpoint_index} from token "
                        f"{delta.start_token}; the chain of deltas expects {expected}"
                    )
                else:
                    delta_ok = True
                previous[delta.session_id] = (delta.checkpoint_index, delta.end_token)
            if delta_ok is False and verdict == "ok":
                verdict = "delta_invalid"
        elif raw is not None and verdict == "ok":
            verdict = "delta_invalid"
            problems.append(f"delta {delta_cid} is not a JSON object")
    if problems and verdict == "ok":
        verdict = "wrong_host"
    return (
        ProofAudit(
            index=n,
            block_number=int(event["blockNumber"]),
            tx_hash=_hex(event["transactionHash"]),
            host=host,
            tokens_claimed=int(args["tokensClaimed"]),
            proof_hash=proof_hash,
            proof_cid=proof_cid,
            delta_cid=delta_cid,
            proof_verified=proof_ok,
            delta_verified=delta_ok,
            delta_token_range=token_range,
            delta_proof_hash_matches=hash_matches,
            verdict=verdict,
            problems=problems,
        ),
        parsed if delta_ok else None,
    )


def _of_job(session_id: str, job_id: int) -> bool:
    """A node session of job ``job_id``: its id, or a fresh node session the client opened
    under it (``"{job}~{hex}"``, ``sessions/conversation.py``); each has its own chain of
    deltas."""
    return session_id == str(job_id) or session_id.startswith(f"{job_id}~")
