"""The test-side tooling itself: anvil starts and stops, accounts, deployment, config, isolation."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.localchain import (
    ACCOUNTS,
    ANVIL_CHAIN_ID,
    DEPLOYER,
    HOST1,
    HOST2,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    USER,
    Anvil,
    LocalChain,
    account_of,
)


def test_dev_accounts_are_anvils(chain: LocalChain) -> None:
    node_accounts = chain.w3.eth.accounts
    assert [a.address for a in ACCOUNTS] == list(node_accounts[: len(ACCOUNTS)])
    assert chain.chain_id == ANVIL_CHAIN_ID
    assert chain.eth_balance(USER) >= 10**21


def test_config_file_has_the_chain_config_keys(chain: LocalChain, chain_config_file: Path) -> None:
    data = json.loads(chain_config_file.read_text())
    assert set(data) == {
        "rpc_url",
        "chain_id",
        "job_marketplace",
        "node_registry",
        "model_registry",
        "usdc",
    }
    assert data["rpc_url"].startswith("http://127.0.0.1:")
    assert data["chain_id"] == ANVIL_CHAIN_ID
    for key in ("job_marketplace", "node_registry", "model_registry", "usdc"):
        assert Web3.is_checksum_address(data[key])
        assert chain.w3.eth.get_code(data[key]) != b""


def test_model_id_matches_the_contract(chain: LocalChain, smollm2: bytes) -> None:
    on_chain = chain.models.functions.getModelId(SMOLLM2_REPO, SMOLLM2_FILE).call()
    assert on_chain == smollm2
    assert chain.models.functions.isModelApproved(smollm2).call() is True


def test_each_test_starts_from_the_deployment_a(chain: LocalChain, smollm2: bytes) -> None:
    _changes_and_checks_clean(chain, smollm2)


def test_each_test_starts_from_the_deployment_b(chain: LocalChain, smollm2: bytes) -> None:
    _changes_and_checks_clean(chain, smollm2)


def _changes_and_checks_clean(chain: LocalChain, smollm2: bytes) -> None:
    # whichever of the two runs second sees none of the first's changes
    assert chain.nodes.functions.getAllActiveNodes().call() == []
    assert chain.usdc_balance(USER) == 0
    chain.register_host(HOST1, "http://127.0.0.1:1", [smollm2])
    chain.mint_usdc(USER, 5)
    assert chain.nodes.functions.getAllActiveNodes().call() == [HOST1.address]


def test_time_travel_moves_the_block_clock(chain: LocalChain) -> None:
    before = chain.now()
    assert chain.increase_time(4000) >= before + 4000


def test_anvil_stops_and_leaves_no_process() -> None:
    with Anvil() as node:
        proc = node.proc
        assert proc is not None
        chain = LocalChain(node.rpc_url).deploy()
        assert chain.w3.eth.get_code(chain.market.address) != b""
        assert chain.eth_balance(DEPLOYER) > 0
    assert proc.poll() is not None  # exited, reaped
    assert node.proc is None


async def test_reference_hosts_registered_on_chain(chain: LocalChain, smollm2: bytes) -> None:
    # two real reference hosts on 127.0.0.1, each with a dev account's key
    async with (
        ReferenceHost(EchoEngine(), rate_limit_per_minute=None, host_key=HOST1.private_key) as h1,
        ReferenceHost(EchoEngine(), rate_limit_per_minute=None, host_key=HOST2.private_key) as h2,
    ):
        assert chain.register_reference_host(h1, [smollm2]) == HOST1
        assert chain.register_reference_host(h2, [smollm2], price_native=3 * 10**12) == HOST2
        found = chain.nodes.functions.getNodesForModel(smollm2).call()
        assert found == [HOST1.address, HOST2.address]
        for address, host in zip(found, (h1, h2), strict=True):
            info = chain.nodes.functions.getNodeFullInfo(address).call()
            assert info[4] == host.url
            assert json.loads(info[3])["publicKey"] == host.host_public_key
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(info[4] + "/v1/models")
            assert answer.status_code == 200
    with pytest.raises(ValueError, match="not one of the dev accounts"):
        account_of("0x" + "12" * 20)
