"""``SessionManager.audit_job`` and ``recover_from_chain`` on the local chain, against a
reference host that proves and settles its paid sessions by itself, as deployed nodes do
(``ReferenceHost(chain=...)``, :class:`~langchain_fabstir.host.chain_proofs.HostChain`: a
proof per published checkpoint delta, its bytes at the host's S5 path, ``proofHash`` = their
SHA-256 (also the delta's ``proofHash``), ``deltaCID``; the rest and ``completeSessionJob``
when the socket closes). The audit reads the events back in bounded block ranges and checks
every byte: bytes tampered on the portal after the host stored them are pointed at, and so
are a dishonest host's substituted proof and doctored delta (submitted by the test as that
host)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_fabstir import ChatFabstir, SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.errors import DecryptionKeyRequiredError, InvalidRequestError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5Identity, S5PortalClient
from langchain_fabstir.s5.cid import CID
from langchain_fabstir.wire.encryption import RecoveryKey
from tests._support.chain import self_settling_host
from tests.cli.conftest import run_cli
from tests.localchain import (
    HOST1,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    STATUS_COMPLETED,
    USER,
    LocalChain,
)

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"
PHRASE = (
    "sign weight spy quality sudden minute pizza great fear "
    "adapt nobody evident control alive crime"
)
WORDS = [f"zebra{i} " for i in range(37)]


@pytest.fixture
def market(chain: LocalChain) -> ChainConfig:
    return ChainConfig.from_mapping(chain.config())


@pytest.fixture
async def host(
    portal: LocalPortal, chain: LocalChain, market: ChainConfig, smollm2: bytes
) -> AsyncIterator[ReferenceHost]:
    """A host that proves and settles its jobs itself (no dispute-window wait)."""
    async with self_settling_host(
        chain, EchoEngine(WORDS, fill=True), portal.url, phrase=PHRASE
    ) as h:
        chain.register_reference_host(h, [smollm2], price_native=10**12)
        yield h


@pytest.fixture
async def offchain_host(
    portal: LocalPortal, chain: LocalChain, smollm2: bytes
) -> AsyncIterator[ReferenceHost]:
    """A host without a chain: the test proves for it (a dishonest host's proofs)."""
    async with ReferenceHost(
        EchoEngine(WORDS, fill=True),
        host_key=HOST1.private_key,
        rate_limit_per_minute=None,
        portal_url=portal.url,
        s5_seed_phrase=PHRASE,
    ) as h:
        chain.register_reference_host(h, [smollm2], price_native=10**12)
        yield h


async def _upload(portal: LocalPortal, data: bytes) -> str:
    identity = S5Identity.from_phrase(PHRASE)  # the host's own S5 account
    async with S5PortalClient(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        return str(await client.upload(data))


def _node_proof(job_id: int, tokens: int) -> bytes:
    """The JSON proof a node built without the STARK feature submits (CHAIN.md 6.5)."""
    return json.dumps(
        {
            "timestamp": int(time.time()),
            "tokensUsed": tokens,
            "hostAddress": HOST1.address,
            "jobId": job_id,
            "mock": True,
            "hasRealContentHashes": False,
        }
    ).encode()


async def _prove_like_a_node(
    chain: LocalChain,
    portal: LocalPortal,
    job_id: int,
    entries: list[Any],
    *,
    substitute: int | None = None,
    doctored_delta: dict[int, str] | None = None,
) -> None:
    """Per checkpoint: proof bytes to S5, sha256 as proofHash, its delta's CID; then
    complete. ``substitute``: that proof's CID names other bytes than the hash commits to.
    ``doctored_delta``: that proof names another delta CID."""
    for n, entry in enumerate(entries):
        start, end = entry.token_range
        proof = _node_proof(job_id, end - start)
        cid = await _upload(portal, proof)
        if n == substitute:
            cid = await _upload(portal, proof.replace(b'"mock": true', b'"mock": false'))
        delta_cid = (doctored_delta or {}).get(n, entry.delta_cid)
        await asyncio.to_thread(
            chain.submit_proof,
            job_id,
            end - start,
            proof_hash=hashlib.sha256(proof).digest(),
            proof_cid=cid,
            delta_cid=delta_cid,
        )
    await asyncio.to_thread(chain.complete, job_id)


async def _paid_session(
    manager: SessionManager, portal: LocalPortal, host: ReferenceHost | None = None
) -> tuple[int, Any, list]:
    """A session of 1,350 tokens (checkpoints 0-1000, 1000-1200, 1200-1350), ended; with
    ``host`` (one that settles by itself), returned once the host completed the job."""
    s = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
    assert s.job_id is not None and s.encrypted
    await manager.prompt(s.id, "first question", max_tokens=1200)
    await manager.prompt(s.id, "second question", max_tokens=150)
    published = await manager.fetch_host_checkpoints(s.id, portal=portal.url)
    assert len(published.index.checkpoints) == 3
    key = s.recovery_key
    await manager.end_session(s.id)  # the client's part ends with the socket
    if host is not None:
        assert host.chain is not None
        tx = await asyncio.wait_for(host.chain.wait_settled(s.job_id), 60)
        assert tx.startswith("0x") or len(tx) == 64
    return s.job_id, key, list(published.index.checkpoints)


async def test_audit_of_an_honest_job_is_clean(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig, portal: LocalPortal
) -> None:
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        job_id, key, entries = await _paid_session(manager, portal, host)
        assert host.chain is not None
        sent = host.chain.proofs(job_id)  # what the host did by itself
        assert [p["deltaCID"] for p in sent] == [e.delta_cid for e in entries]
        assert [p["tokens"] for p in sent] == [1000, 200, 150]
        assert len({p["proofCID"] for p in sent}) == 3  # one path, a CID per version
        # As on a node, the delta's proofHash is the one on chain (sha256 of the proof).
        assert [p["proofHash"] for p in sent] == [e.proof_hash for e in entries]
        assert chain.session(job_id)["status"] == STATUS_COMPLETED

        audit = await manager.audit_job(job_id, portal=portal.url, recovery_key=key, block_range=2)
        assert audit.clean and audit.suspect == []
        assert [p.verdict for p in audit.proofs] == ["ok", "ok", "ok"]
        assert all(p.proof_verified and p.delta_verified for p in audit.proofs)
        assert all(p.delta_proof_hash_matches for p in audit.proofs)
        ranges = [tuple(e.token_range) for e in entries]
        assert [p.delta_token_range for p in audit.proofs] == ranges
        assert audit.tokens_claimed == 1350 == audit.tokens_settled
        assert audit.settlement_event == "SessionCompleted" and audit.settlement_matches
        assert audit.state == "completed" and audit.host == HOST1.address

        # The manager that ran the session opens its deltas with the session's key itself.
        again = await manager.audit_job(job_id, portal=portal.url)
        assert [p.verdict for p in again.proofs] == ["ok", "ok", "ok"]

    # Anyone can audit, with no key: the proofs are checked, the deltas stay sealed.
    async with SessionManager(chain=market, private_key="") as stranger:
        blind = await stranger.audit_job(job_id, portal=portal.url)
        assert [p.verdict for p in blind.proofs] == ["delta_encrypted"] * 3
        assert blind.clean and all(p.proof_verified for p in blind.proofs)
        with pytest.raises(InvalidRequestError):
            await stranger.audit_job(True, portal=portal.url)  # type: ignore[arg-type]


def _tamper(data_dir: Path, cid: str) -> None:
    """Flip one byte of the blob ``cid`` where the portal keeps it (same size)."""
    name = CID.coerce(cid).hash.hex()
    path = data_dir / "blobs" / name[:2] / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


async def test_audit_points_at_bytes_tampered_after_the_host_stored_them(
    chain: LocalChain,
    host: ReferenceHost,
    market: ChainConfig,
    portal: LocalPortal,
    tmp_path: Path,
) -> None:
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        job_id, key, _ = await _paid_session(manager, portal, host)
        assert host.chain is not None
        sent = host.chain.proofs(job_id)
        _tamper(tmp_path / "portal", sent[1]["proofCID"])  # proof 1's bytes
        _tamper(tmp_path / "portal", sent[2]["deltaCID"])  # proof 2's delta
        audit = await manager.audit_job(job_id, portal=portal.url, recovery_key=key)
        assert not audit.clean and audit.suspect == [1, 2]
        assert [p.verdict for p in audit.proofs] == ["ok", "proof_unavailable", "delta_unavailable"]
        assert "does not match its hash" in audit.proofs[1].problems[0]
        assert audit.proofs[1].proof_verified is False
        assert "does not match its hash" in audit.proofs[2].problems[0]
        assert audit.proofs[2].proof_verified is True and audit.proofs[2].delta_verified is False


async def test_audit_points_at_a_dishonest_hosts_proof_and_delta(
    chain: LocalChain,
    offchain_host: ReferenceHost,
    market: ChainConfig,
    portal: LocalPortal,
    chain_config_file: Path,
) -> None:
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        job_id, key, entries = await _paid_session(manager, portal)
        # Proof 1's CID names other bytes; proof 2 names a delta of another checkpoint.
        await _prove_like_a_node(
            chain,
            portal,
            job_id,
            entries,
            substitute=1,
            doctored_delta={2: entries[0].delta_cid},
        )
        audit = await manager.audit_job(job_id, portal=portal.url, recovery_key=key)
        assert not audit.clean and audit.suspect == [1, 2]
        verdicts = [p.verdict for p in audit.proofs]
        assert verdicts == ["ok", "proof_hash_mismatch", "delta_invalid"]
        assert audit.proofs[1].proof_verified is False
        assert "sha256" in audit.proofs[1].problems[0]
        assert "expects" in audit.proofs[2].problems[0]

    # The same from the command line (no key, so the deltas stay sealed: the substituted
    # proof is still found), exit status 1.
    opts = ["--chain-config", str(chain_config_file), "--portal", portal.url]
    done = await asyncio.to_thread(run_cli, "jobs", "audit", str(job_id), *opts, "--json")
    assert done.returncode == 1, done.stderr
    view = json.loads(done.stdout)
    assert view["clean"] is False
    assert [p["verdict"] for p in view["proofs"]] == [
        "delta_encrypted",
        "proof_hash_mismatch",
        "delta_encrypted",
    ]
    text = await asyncio.to_thread(run_cli, "jobs", "audit", str(job_id), *opts)
    assert f"job {job_id}: completed, 3 proof(s), SUSPECT proofs [1]" in text.stdout
    assert "paid by     " + USER.address in text.stdout


async def test_recover_from_chain_with_the_host_gone(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig, portal: LocalPortal
) -> None:
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        s = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
        assert s.job_id is not None
        await manager.prompt(s.id, "first question", max_tokens=1200)
        await manager.prompt(s.id, "second question", max_tokens=150)
        history = [(m.role, m.content) for m in await manager.get_conversation_history(s.id)]
        key = s.recovery_key
        await manager.end_session(s.id)
        assert host.chain is not None
        await asyncio.wait_for(host.chain.wait_settled(s.job_id), 60)  # by the host itself
    await host.stop()

    async with SessionManager(chain=market, private_key=USER.private_key) as fresh:
        recovered = await fresh.recover_from_chain(s.job_id, portal=portal.url, recovery_key=key)
        assert [(m["role"], m["content"]) for m in recovered.messages] == history
        assert recovered.complete and recovered.token_count == 1350
        assert len(recovered.deltas) == 3 and recovered.audit.clean
        with pytest.raises(DecryptionKeyRequiredError):  # sealed, and no key given
            await fresh.recover_from_chain(s.job_id, portal=portal.url)


async def test_a_job_with_several_node_sessions_audits_clean(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig, portal: LocalPortal
) -> None:
    """One ``ChatFabstir`` serving unrelated calls opens a fresh node session for each under
    the job it paid (issue 21): each node session has its own chain of deltas."""
    llm = ChatFabstir(
        chain=market,
        private_key=USER.private_key,
        model=MODEL,
        deposit=Decimal("0.001"),
        max_tokens=150,
    )
    await llm.ainvoke("alpha asks")
    await llm.ainvoke([SystemMessage("be brief"), HumanMessage("bravo asks something else")])
    await llm.aclose()
    assert host.chain is not None
    (job_id,) = list(host.chain._jobs)
    assert len(host.chain._jobs[job_id].sessions) == 2
    assert all(
        s == str(job_id) or s.startswith(f"{job_id}~") for s in host.chain._jobs[job_id].sessions
    )
    await asyncio.wait_for(host.chain.wait_settled(job_id), 60)
    assert [p["tokens"] for p in host.chain.proofs(job_id)] == [1000, 150]
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        key = RecoveryKey(USER.private_key)  # ChatFabstir seals to the user's key
        audit = await manager.audit_job(job_id, portal=portal.url, recovery_key=key)
        assert audit.clean, [p.problems for p in audit.proofs]
        assert [p.verdict for p in audit.proofs] == ["ok", "ok"]
        assert all(p.delta_token_range == (0, p.tokens_claimed) for p in audit.proofs[1:])
        assert audit.tokens_claimed == 1150 == audit.tokens_settled
        # Recovered from the chain: each node session's conversation, in the order they began.
        recovered = await manager.recover_from_chain(job_id, portal=portal.url, recovery_key=key)
        roles = [m["role"] for m in recovered.messages]
        assert roles == ["user", "assistant", "user", "assistant"]
        assert "alpha asks" in recovered.messages[0]["content"]
        assert "bravo asks" in recovered.messages[2]["content"]
        assert recovered.token_count == 300 and recovered.complete
