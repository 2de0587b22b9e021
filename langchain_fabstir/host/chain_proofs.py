"""The reference host's proofs on chain and its settlement, done the way deployed nodes do
them (CHAIN.md sections 4 and 6.5).

:class:`HostChain` is what ``ReferenceHost(chain=..., host_key=..., portal_url=...)`` runs:
every checkpoint delta the host publishes for a paid session gets a proof (bytes to the
host's S5 path ``home/proofs/job_{jobId}_proof.bin``, ``proofHash`` = their SHA-256, the
delta's CID), and when the last socket of a job closes the host proves the rest, waits the
dispute window and completes the job. :class:`NodeProofSubmitter` does the same by hand
from a writer's published index (for tools and tests that drive a host from outside).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_fabstir.host.publishing import S5CheckpointWriter

__all__ = ["HostChain", "NodeProofSubmitter", "node_proof_bytes"]

log = logging.getLogger(__name__)

# Positions in ``sessionJobs(uint256)`` (CHAIN.md section 4).
_HOST, _DEPOSIT, _PRICE, _TOKENS_USED, _PROOF_INTERVAL, _STATUS = 2, 4, 5, 6, 10, 12
_PRICE_PRECISION = 1000  # prices are per 1,000 tokens


def node_proof_bytes(job_id: int, tokens: int, host_address: str) -> bytes:
    """The proof a node built without the STARK feature submits (CHAIN.md 6.5): JSON
    ``{"timestamp", "tokensUsed", "hostAddress", "jobId", "mock": true,
    "hasRealContentHashes": false}``."""
    return json.dumps(
        {
            "timestamp": int(time.time()),
            "tokensUsed": tokens,
            "hostAddress": host_address,
            "jobId": job_id,
            "mock": True,
            "hasRealContentHashes": False,
        },
        separators=(",", ":"),
    ).encode()


def _claim(tokens: int, job: Any) -> int:
    """Tokens a proof of ``tokens`` generated tokens claims: the first proof of a job is
    padded up to its proof interval (CHAIN.md 4); no claim goes beyond what the deposit
    pays for (the contract would refuse the proof)."""
    proven, interval = int(job[_TOKENS_USED]), int(job[_PROOF_INTERVAL])
    if proven == 0:
        tokens = max(tokens, interval)
    price = int(job[_PRICE])
    if price > 0:
        tokens = min(tokens, int(job[_DEPOSIT]) * _PRICE_PRECISION // price - proven)
    return tokens


def _ours(job: Any, host: str | None) -> bool:
    """The job is active and this host's (the contract takes proofs from its host only)."""
    return int(job[_STATUS]) == 0 and str(job[_HOST]).lower() == str(host).lower()


class NodeProofSubmitter:
    """Submits a host's published checkpoints of a job as proofs of work, then settles.

    ``client`` holds the host's key (the contract accepts proofs from the job's host only);
    ``writer`` is the host's checkpoint writer (its S5 file system takes the proof bytes).
    The proof is :func:`node_proof_bytes`; like a node, the first proof of a job claims at
    least the job's proof interval (CHAIN.md section 4), later ones the tokens of their
    checkpoint. Checkpoints already proven (counted per job by this submitter) are not
    sent again.
    """

    def __init__(self, client: Any, writer: S5CheckpointWriter) -> None:
        self.client = client
        self.writer = writer
        self._proven: dict[int, int] = {}

    def proof_path(self, job_id: int) -> str:
        return f"home/proofs/job_{job_id}_proof.bin"

    def proof_bytes(self, job_id: int, tokens: int) -> bytes:
        return node_proof_bytes(job_id, tokens, self.writer.host_address)

    async def prove(
        self, job_id: int, tokens: int, delta_cid: str, body: bytes | None = None
    ) -> dict[str, Any] | None:
        """One proof: ``body`` (default :meth:`proof_bytes`) to the job's S5 path, then
        ``submitProofOfWork``. ``None`` (nothing sent) when the job is not an active job
        of this host, or its deposit has no tokens left to claim."""
        market = self.client.job_marketplace.functions
        job = await self.client.call(market.sessionJobs(job_id), f"reading job {job_id}")
        if not _ours(job, self.client.address):
            log.info("job %s is not an active job of this host: no proof", job_id)
            return None
        claimed = _claim(tokens, job)
        if claimed <= 0:
            return None
        if body is None:
            body = self.proof_bytes(job_id, claimed)
        info = await self.writer.fs.put(
            self.proof_path(job_id), body, media_type="application/octet-stream", encrypt=False
        )
        proof_hash = hashlib.sha256(body).digest()
        receipt = await self.client.transact(
            market.submitProofOfWork(job_id, claimed, proof_hash, str(info.cid), delta_cid),
            f"submitting a proof of job {job_id}",
        )
        return {
            "tokens": claimed,
            "proofHash": "0x" + proof_hash.hex(),
            "proofCID": str(info.cid),
            "deltaCID": delta_cid,
            "tx_hash": receipt["transactionHash"].hex(),
        }

    async def submit(self, job_id: int) -> list[dict[str, Any]]:
        """Prove every published checkpoint of job ``job_id`` not proven yet; returns what
        was submitted (``tokens``, ``proofHash``, ``proofCID``, ``deltaCID``, ``tx_hash``)."""
        index = await self.writer.index(str(job_id))
        entries = list(index.get("checkpoints", [])) if index else []
        done = self._proven.get(job_id, 0)
        sent: list[dict[str, Any]] = []
        for entry in entries[done:]:
            start, end = (int(t) for t in entry["tokenRange"])
            proof = await self.prove(job_id, end - start, str(entry["deltaCid"]))
            done += 1
            self._proven[job_id] = done
            if proof is not None:
                sent.append(proof)
        return sent

    async def settle(self, job_id: int, conversation_cid: str = "") -> list[dict[str, Any]]:
        """:meth:`submit`, then ``completeSessionJob`` (without waiting the dispute window)."""
        sent = await self.submit(job_id)
        await self.client.transact(
            self.client.job_marketplace.functions.completeSessionJob(job_id, conversation_cid),
            f"completing job {job_id}",
        )
        return sent


@dataclass
class _Job:
    job_id: int
    sessions: set[str] = field(default_factory=set)
    queue: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # to prove
    proofs: list[dict[str, Any]] = field(default_factory=list)  # submitted
    sockets: int = 0  # open sockets bound to the job
    pump: asyncio.Task[None] | None = None
    settle: asyncio.Task[str] | None = None
    settled: asyncio.Future[str] | None = None


class HostChain:
    """A host's paid sessions on chain, as a deployed node handles them (CHAIN.md 4, 6.5).

    Made by the reference host when it has a chain, a host key and an S5 store; it hooks
    into the host's :class:`~langchain_fabstir.host.publishing.S5CheckpointWriter`:

    - **Per checkpoint** (every ``interval`` tokens, and at the end of an answer with at
      least 100 unproven tokens): the proof bytes (:func:`node_proof_bytes`) are made when
      the delta is written, their SHA-256 is the delta's ``proofHash`` (as on a node);
      once the delta is on S5 the bytes go to ``home/proofs/job_{jobId}_proof.bin`` and
      ``submitProofOfWork(jobId, tokensClaimed, sha256, proofCID, deltaCID)`` is sent.
      The first proof of a job claims at least its proof interval; no claim exceeds
      what the deposit pays for.
    - **When the last socket of a job closes**: the rest is proven (a checkpoint is cut
      for the unproven tokens when the job has no proof yet, so a short session pays the
      padded first proof; otherwise the answer-end rule already cut it), then the host
      waits ``settle_delay`` seconds (default: the contract's ``disputeWindow()`` plus 5,
      as nodes wait) and calls ``completeSessionJob(jobId, "")``. A socket that binds the
      job again during that wait (a client reconnecting) cancels the settlement: the
      session goes on, on the job already paid.

    Everything runs in background tasks: the token stream never waits for the chain.
    Every chain and S5 call is bounded (the :class:`~langchain_fabstir.chain.ChainClient`
    timeouts); a failure is logged as its typed error (``code``, message) and kept in
    :attr:`errors`; a proof that failed is retried at the job's next checkpoint and at
    settlement. A job that is not an active job of this host (read on chain first) gets
    no proof and is not completed; a proof the contract refuses is logged and dropped.
    At most ``max_jobs`` jobs are remembered (idle ones are forgotten first).
    """

    def __init__(
        self,
        client: Any,
        writer: S5CheckpointWriter,
        *,
        settle_delay: float | None = None,
        settle_margin: float = 5.0,
        max_jobs: int = 4096,
    ) -> None:
        self.client = client
        self.writer = writer
        self.submitter = NodeProofSubmitter(client, writer)
        self.settle_delay = settle_delay
        self.settle_margin = settle_margin
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[int, _Job] = OrderedDict()
        self._by_session: dict[str, int] = {}
        self._bodies: dict[tuple[str, int], bytes] = {}  # proof bytes of deltas being written
        self.errors: list[BaseException] = []
        """Failures of proofs and settlements (each also logged), newest last (at most 64)."""
        writer.prover = self._prover
        writer.on_checkpoint = self._on_checkpoint

    def __repr__(self) -> str:
        return f"HostChain({self.writer.host_address}, jobs={len(self._jobs)})"

    # --- hooks of the checkpoint writer (synchronous, no I/O) --------------------------

    def _prover(self, session_id: str, number: int, tokens: int) -> bytes | None:
        job_id = self._by_session.get(session_id)
        if job_id is None:
            return None
        body = node_proof_bytes(job_id, tokens, self.writer.host_address)
        self._bodies[(session_id, number)] = body
        return body

    def _on_checkpoint(self, session_id: str, entry: dict[str, Any]) -> None:
        job_id = self._by_session.get(session_id)
        job = self._jobs.get(job_id) if job_id is not None else None
        if job is None:
            self._bodies.pop((session_id, int(entry["index"])), None)
            return
        job.queue.append((session_id, entry))
        self._kick(job)

    # --- sockets -----------------------------------------------------------------------

    def _job(self, job_id: int) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = _Job(job_id)
            job.settled = asyncio.get_running_loop().create_future()
            while len(self._jobs) > self.max_jobs:
                for old_id, old in self._jobs.items():
                    idle = old.settle is None or old.settle.done()
                    if not old.sockets and not old.queue and idle:
                        del self._jobs[old_id]
                        for sid in old.sessions:
                            if self._by_session.get(sid) == old_id:
                                del self._by_session[sid]
                        break
                else:
                    break
        return job

    def bind(self, session_id: str | None, job_id: int, new_socket: bool = True) -> None:
        """A socket bound ``session_id`` to job ``job_id`` (a ``session_init`` or an
        encrypted init naming the job; ``new_socket=False`` for a re-init on a socket
        already bound to it). A pending settlement of the job is called off."""
        job = self._job(job_id)
        job.sockets += 1 if new_socket else 0
        if session_id is not None:
            job.sessions.add(session_id)
            self._by_session[session_id] = job_id
        if job.settle is not None and not job.settle.done():
            job.settle.cancel()
            job.settle = None
            log.info("job %s: the client is back, settlement called off", job_id)

    def unbind(self, job_id: int) -> None:
        """A socket bound to job ``job_id`` closed; the last one starts the settlement."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.sockets = max(0, job.sockets - 1)
        if job.sockets == 0 and (job.settle is None or job.settle.done()):
            if job.settled is None or job.settled.done():  # settled before: a new round
                job.settled = asyncio.get_running_loop().create_future()
            job.settle = asyncio.ensure_future(self._settle(job))

    async def wait_settled(self, job_id: int) -> str:
        """The hash of the ``completeSessionJob`` transaction of job ``job_id`` once the
        host sent it (``""`` when someone else completed the job first); raises what the
        settlement raised. It does not return before the job's last socket closed and
        the dispute window passed: bound it with ``asyncio.wait_for``."""
        job = self._jobs.get(job_id)
        if job is None or job.settled is None:
            raise LookupError(f"no socket of this host bound job {job_id}")
        return await asyncio.shield(job.settled)

    def proofs(self, job_id: int) -> list[dict[str, Any]]:
        """The proofs this host submitted for job ``job_id`` (in order)."""
        job = self._jobs.get(job_id)
        return list(job.proofs) if job is not None else []

    # --- background work -------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        code = getattr(exc, "code", type(exc).__name__)
        log.warning("%s failed (%s): %s", what, code, getattr(exc, "message", exc))
        self.errors.append(exc)
        del self.errors[:-64]

    def _kick(self, job: _Job) -> None:
        if job.queue and (job.pump is None or job.pump.done()):
            job.pump = asyncio.ensure_future(self._pump(job))

    async def _pump(self, job: _Job) -> None:
        """Prove the job's published checkpoints, in order; stop (keeping them) on failure."""
        while job.queue:
            session_id, entry = job.queue[0]
            start, end = (int(t) for t in entry["tokenRange"])
            body = self._bodies.get((session_id, int(entry["index"])))
            try:
                proof = await self.submitter.prove(
                    job.job_id, end - start, str(entry["deltaCid"]), body
                )
            except Exception as exc:
                self._failed(f"proof of job {job.job_id} (checkpoint {entry['index']})", exc)
                if getattr(exc, "code", None) != "TRANSACTION_REVERTED":
                    return  # (the chain or S5 did not answer: retried later)
                proof = None  # the contract refuses it (not this host's job, job over)
            job.queue.pop(0)
            self._bodies.pop((session_id, int(entry["index"])), None)
            if proof is not None:
                job.proofs.append(proof)
                log.info(
                    "job %s: proved %s tokens (delta %s)",
                    job.job_id,
                    proof["tokens"],
                    entry["deltaCid"],
                )

    async def _delay(self) -> float:
        if self.settle_delay is not None:
            return self.settle_delay
        market = self.client.job_marketplace.functions
        window = await self.client.call(market.disputeWindow(), "reading the dispute window")
        return float(window) + self.settle_margin

    async def _settle(self, job: _Job) -> str:
        assert job.settled is not None
        settled = job.settled
        try:
            tx = await self._settle_job(job)
        except Exception as exc:  # (a cancel: the client is back, or the host stops)
            self._failed(f"settlement of job {job.job_id}", exc)
            if not settled.done():
                settled.set_exception(exc)
                settled.add_done_callback(lambda f: f.exception())  # retrieved: logged above
            return ""
        if not settled.done():
            settled.set_result(tx)
        return tx

    async def _settle_job(self, job: _Job) -> str:
        # Cut what is unproven: always when the job has no proof yet (the padded first
        # proof), else by the writer's own rule (at least min_final_tokens).
        first = not job.proofs and not job.queue
        for session_id in sorted(job.sessions):
            self.writer.end_session(session_id, force=first)
        for session_id in sorted(job.sessions):
            await self.writer.drain(session_id)
        if job.pump is not None and not job.pump.done():
            await job.pump
        self._kick(job)  # a proof that failed earlier: once more
        if job.pump is not None and not job.pump.done():
            await job.pump
        delay = await self._delay()
        if delay > 0:
            await asyncio.sleep(delay)  # the dispute window, as nodes wait it
        market = self.client.job_marketplace.functions
        job_record = await self.client.call(market.sessionJobs(job.job_id), "reading the job")
        if not _ours(job_record, self.client.address):
            log.info("job %s is not an active job of this host: not completed", job.job_id)
            return ""
        receipt = await self.client.transact(
            market.completeSessionJob(job.job_id, ""), f"completing job {job.job_id}"
        )
        tx = str(receipt["transactionHash"].hex())
        log.info("job %s completed (%d proofs)", job.job_id, len(job.proofs))
        return tx

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop: proofs in flight get ``timeout`` seconds, settlements still waiting are
        called off (the job stays open; its client or a timeout ends it), the chain
        client is closed."""
        pumps = [j.pump for j in self._jobs.values() if j.pump is not None and not j.pump.done()]
        if pumps:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), timeout)
        for job in self._jobs.values():
            for task in (job.pump, job.settle):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            if job.settled is not None and not job.settled.done():
                job.settled.cancel()
        await self.client.aclose()
