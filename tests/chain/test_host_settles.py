"""The reference host settles its paid sessions by itself, as deployed nodes do (CHAIN.md 4):
a short session pays the padded first proof, the host waits the contract's dispute window
before completing, a client that comes back in that wait keeps its job open, and a chain
that does not answer never holds up the token stream (typed errors, logged). Real anvil,
real portal, real host, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from langchain_fabstir import SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.chain.client import ChainClient
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.errors import ChainUnavailableError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import S5PortalClient, generate_phrase
from langchain_fabstir.s5.cid import CID
from langchain_fabstir.wire.encryption import host_public_key, parse_private_key
from tests.cli.conftest import run_cli
from tests.localchain import (
    DEPLOYER,
    HOST1,
    HOST2,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    STATUS_ACTIVE,
    STATUS_COMPLETED,
    USER,
    LocalChain,
)

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[LocalPortal]:
    async with LocalPortal(tmp_path / "portal", port=0) as p:
        yield p


@pytest.fixture
def market(chain: LocalChain) -> ChainConfig:
    return ChainConfig.from_mapping(chain.config())


def _host(portal: LocalPortal, market: ChainConfig, **kw: Any) -> ReferenceHost:
    return ReferenceHost(
        EchoEngine(),
        host_key=HOST1.private_key,
        rate_limit_per_minute=None,
        portal_url=portal.url,
        s5_seed_phrase=generate_phrase(),
        chain=ChainClient(market, SecretStr(HOST1.private_key)),
        **kw,
    )


async def test_a_short_session_pays_the_padded_first_proof_after_the_dispute_window(
    chain: LocalChain, portal: LocalPortal, market: ChainConfig, smollm2: bytes
) -> None:
    await asyncio.to_thread(
        chain.send, chain.market.functions.setDisputeWindow(1), DEPLOYER
    )  # (30 s on the local contract; nodes wait it plus 5 s)
    async with _host(portal, market) as host:
        assert host.chain is not None
        host.chain.settle_margin = 0.5
        chain.register_reference_host(host, [smollm2], price_native=10**12)
        async with SessionManager(chain=market, private_key=USER.private_key) as manager:
            s = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
            assert s.job_id is not None
            answer = await manager.prompt(s.id, "a few words only")
            assert answer.text == "Echo: a few words only"
            loop = asyncio.get_running_loop()
            closed = loop.time()
            await manager.end_session(s.id)
            tx = await asyncio.wait_for(host.chain.wait_settled(s.job_id), 30)
            assert loop.time() - closed >= 1.5  # the dispute window (1 s) plus the margin
        job = chain.session(s.job_id)
        assert job["status"] == STATUS_COMPLETED and job["tokensUsed"] == 1000  # padded
        assert tx
        (proof,) = host.chain.proofs(s.job_id)
        assert proof["tokens"] == 1000 and proof["deltaCID"]
        # The proof bytes are at the proofCID; their sha256 is the proofHash on chain.
        async with S5PortalClient(portal.url) as s5:
            body = await s5.download(CID.coerce(proof["proofCID"]))
        assert "0x" + hashlib.sha256(body).hexdigest() == proof["proofHash"]
        assert job["lastProofHash"] == bytes.fromhex(proof["proofHash"][2:])
        assert job["lastProofCID"] == proof["proofCID"]


async def test_a_client_back_within_the_dispute_window_keeps_its_job(
    chain: LocalChain,
    portal: LocalPortal,
    market: ChainConfig,
    smollm2: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _host(portal, market, settle_delay=600) as host:
        assert host.chain is not None
        chain.register_reference_host(host, [smollm2], price_native=10**12)
        async with SessionManager(chain=market, private_key=USER.private_key) as manager:
            s = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
            assert s.job_id is not None
            await manager.prompt(s.id, "before the drop")
            job = host.chain._jobs[s.job_id]
            unbound = asyncio.Event()  # a spy: the host saw the socket close
            unbind = host.chain.unbind

            def spy(job_id: int) -> None:
                unbind(job_id)
                unbound.set()

            monkeypatch.setattr(host.chain, "unbind", spy)
            for conn in list(host.connections):  # the socket drops
                await conn.ws.close()
            await asyncio.wait_for(unbound.wait(), 10)
            assert job.settle is not None and job.sockets == 0  # the host began settling
            # The client comes back on a new socket, on the job it paid for.
            again = await manager.prompt(s.id, "after the drop")
            assert again.text == "Echo: after the drop"
            assert job.settle is None and job.sockets == 1  # settlement called off
            assert chain.session(s.job_id)["status"] == STATUS_ACTIVE
            host.chain.settle_delay = 0
            await manager.end_session(s.id)
            await asyncio.wait_for(host.chain.wait_settled(s.job_id), 30)
        assert chain.session(s.job_id)["status"] == STATUS_COMPLETED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_chain_never_holds_up_the_stream(
    chain: LocalChain, portal: LocalPortal, caplog: pytest.LogCaptureFixture
) -> None:
    dead = ChainConfig.from_mapping(
        {**chain.config(), "rpc_url": f"http://127.0.0.1:{_free_port()}"}
    )
    caplog.set_level(logging.WARNING, logger="langchain_fabstir.host.chain_proofs")
    async with _host(portal, dead, settle_delay=0) as host:
        assert host.chain is not None
        async with aiohttp.ClientSession() as http, http.ws_connect(host.ws_url) as ws:
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "session_init", "session_id": "77", "job_id": 77})
            assert (await ws.receive_json(timeout=5))["type"] == "session_init_ack"
            words = " ".join(f"w{i}" for i in range(150))
            await ws.send_json({"type": "prompt", "prompt": words, "id": "p"})
            frames = []
            while not frames or frames[-1]["type"] != "stream_end":
                frames.append(await ws.receive_json(timeout=5))
            assert frames[-1]["reason"] == "complete" and len(frames) > 150
        with pytest.raises(ChainUnavailableError):
            await asyncio.wait_for(host.chain.wait_settled(77), 60)
        assert any(isinstance(e, ChainUnavailableError) for e in host.chain.errors)
    assert "CHAIN_UNAVAILABLE" in caplog.text and "job 77" in caplog.text


async def test_a_job_of_another_host_is_neither_proven_nor_completed(
    chain: LocalChain, portal: LocalPortal, market: ChainConfig, smollm2: bytes
) -> None:
    chain.register_host(HOST2, "http://127.0.0.1:9", [smollm2])
    theirs = chain.create_eth_session(HOST2, smollm2, deposit=10**15)
    async with _host(portal, market, settle_delay=0) as host:
        assert host.chain is not None
        chain.register_reference_host(host, [smollm2], price_native=10**12)
        async with aiohttp.ClientSession() as http:
            for job_id in (theirs, 999):  # another host's job; no job at all
                async with http.ws_connect(host.ws_url) as ws:
                    await ws.receive_json(timeout=5)
                    init = {"type": "session_init", "session_id": str(job_id), "job_id": job_id}
                    await ws.send_json(init)
                    await ws.receive_json(timeout=5)
                    words = " ".join(f"w{i}" for i in range(150))
                    await ws.send_json({"type": "prompt", "prompt": words, "id": "p"})
                    while (await ws.receive_json(timeout=5))["type"] != "stream_end":
                        pass
                assert await asyncio.wait_for(host.chain.wait_settled(job_id), 30) == ""
                assert host.chain.proofs(job_id) == []
    job = chain.session(theirs)
    assert job["status"] == STATUS_ACTIVE and job["tokensUsed"] == 0


def _secret_file(path: Path, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return str(path)


async def test_fabstir_host_with_a_chain_settles_its_sessions(
    chain: LocalChain,
    portal: LocalPortal,
    market: ChainConfig,
    smollm2: bytes,
    chain_config_file: Path,
    tmp_path: Path,
) -> None:
    key = _secret_file(tmp_path / "host.key", HOST1.private_key)
    seed = _secret_file(tmp_path / "host.seed", generate_phrase())
    common = ["--engine", "echo", "--host-key-file", key, "--portal-url", portal.url]
    # A chain without an S5 store for the proofs: a one-line refusal.
    done = await asyncio.to_thread(
        run_cli,
        "host",
        "--engine",
        "echo",
        "--host-key-file",
        key,
        "--chain-config",
        str(chain_config_file),
    )
    assert done.returncode != 0 and "S5 store for the proofs" in done.stderr
    proc, url = await asyncio.to_thread(
        start_host_process,
        *common,
        "--seed-file",
        seed,
        "--chain-config",
        str(chain_config_file),
        "--settle-delay",
        "0",
    )
    try:
        public = host_public_key(parse_private_key(HOST1.private_key))
        chain.register_host(HOST1, url, [smollm2], public_key=public)
        async with SessionManager(chain=market, private_key=USER.private_key) as manager:
            s = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
            assert s.job_id is not None and s.encrypted
            assert (await manager.prompt(s.id, "over the cli")).text == "Echo: over the cli"
            await manager.end_session(s.id)
            settled = await manager.watch_settlement(s.job_id, max_wait=60, poll_interval=0.2)
            assert settled.state == "completed" and settled.tokens_used == 1000
            audit = await manager.audit_job(s.job_id, portal=portal.url)
            assert audit.clean and [p.verdict for p in audit.proofs] == ["ok"]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


async def test_no_claim_goes_beyond_what_the_deposit_pays_for(
    chain: LocalChain, portal: LocalPortal, market: ChainConfig, smollm2: bytes
) -> None:
    words = [f"zebra{i} " for i in range(37)]
    async with ReferenceHost(
        EchoEngine(words, fill=True),
        host_key=HOST1.private_key,
        rate_limit_per_minute=None,
        portal_url=portal.url,
        s5_seed_phrase=generate_phrase(),
        chain=ChainClient(market, SecretStr(HOST1.private_key)),
        settle_delay=0,
    ) as host:
        assert host.chain is not None
        # 0.001 ETH at 1e15 wei per 1,000 tokens pays for exactly 1,000 tokens.
        chain.register_reference_host(host, [smollm2], price_native=10**15)
        job_id = chain.create_eth_session(HOST1, smollm2, deposit=10**15)
        async with aiohttp.ClientSession() as http, http.ws_connect(host.ws_url) as ws:
            await ws.receive_json(timeout=5)
            init = {"type": "session_init", "session_id": str(job_id), "job_id": job_id}
            await ws.send_json(init)
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "prompt", "prompt": "long", "max_tokens": 1350})
            while (await ws.receive_json(timeout=10))["type"] != "stream_end":
                pass
        assert await asyncio.wait_for(host.chain.wait_settled(job_id), 30)
        assert [p["tokens"] for p in host.chain.proofs(job_id)] == [1000]  # 350 unpaid
        assert not host.chain.errors  # nothing sent that the contract refuses
    job = chain.session(job_id)
    assert job["status"] == STATUS_COMPLETED and job["tokensUsed"] == 1000


async def test_a_chain_needs_the_host_key_and_an_s5_store(
    portal: LocalPortal, market: ChainConfig
) -> None:
    with pytest.raises(ValueError, match="must hold the host key"):
        ReferenceHost(
            EchoEngine(),
            host_key=HOST1.private_key,
            portal_url=portal.url,
            s5_seed_phrase=generate_phrase(),
            chain=ChainClient(market, SecretStr(USER.private_key)),
        )
    with pytest.raises(ValueError, match="an S5 store"):
        ReferenceHost(
            EchoEngine(),
            host_key=HOST1.private_key,
            chain=ChainClient(market, SecretStr(HOST1.private_key)),
        )


async def test_one_socket_binds_a_bounded_number_of_jobs(
    portal: LocalPortal, market: ChainConfig
) -> None:
    async with _host(portal, market, settle_delay=3600) as host:
        assert host.chain is not None
        async with aiohttp.ClientSession() as http, http.ws_connect(host.ws_url) as ws:
            await ws.receive_json(timeout=5)
            for job_id in range(1000, 1040):
                await ws.send_json({"type": "session_init", "session_id": "s", "job_id": job_id})
                assert (await ws.receive_json(timeout=5))["type"] == "session_init_ack"
            assert len(host.chain._jobs) == 16
