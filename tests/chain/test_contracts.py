"""The project's test contracts on a real EVM: the interface and rules of CHAIN.md sections 3-4.

Every rule is a revert with its reason string; whole sessions (ETH, USDC, from the deposit
balance) settle to exact amounts: host earnings = tokens x price / 1000 minus 10%, refund =
the rest of the deposit, credited to the depositor's in-contract balance and withdrawn.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

from tests.localchain import (
    DEFAULT_PRICE_NATIVE,
    DEFAULT_PRICE_STABLE,
    DEPLOYER,
    ETH,
    HOST1,
    HOST2,
    SESSION_FIELDS,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    STATUS_ACTIVE,
    STATUS_COMPLETED,
    STATUS_TIMED_OUT,
    STRANGER,
    USER,
    LocalChain,
)

PUBKEY = "02" + "ab" * 32
ETH_DEPOSIT = 10**15  # 0.001 ETH: 1,000,000 tokens at the default price
USDC_DEPOSIT = 2_000_000  # 2 USDC


def _paid(tokens: int, price: int) -> tuple[int, int]:
    """(host earnings, treasury fee) for ``tokens`` at ``price`` per 1,000 tokens."""
    cost = tokens * price // 1000
    fee = cost * 10 // 100
    return cost - fee, fee


def _gas(chain: LocalChain, receipt: TxReceipt) -> int:
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


@pytest.fixture
def hosts(chain: LocalChain, smollm2: bytes) -> LocalChain:
    """HOST1 (with a public key) and HOST2 registered for SmolLM2."""
    chain.register_host(HOST1, "http://127.0.0.1:9001", [smollm2], public_key=PUBKEY)
    chain.register_host(
        HOST2, "http://127.0.0.1:9002", [smollm2], price_native=3 * 10**12, price_stable=3000
    )
    return chain


# ---- discovery reads (section 3) ----


def test_model_registry_reads(chain: LocalChain, smollm2: bytes) -> None:
    other = chain.add_model("org/other-GGUF", "other.Q4.gguf", b"\x11" * 32)
    assert chain.models.functions.getAllModels().call() == [smollm2, other]
    repo, file_name, sha, tier, active, timestamp = chain.models.functions.getModel(other).call()
    assert (repo, file_name, sha, active) == ("org/other-GGUF", "other.Q4.gguf", b"\x11" * 32, True)
    assert tier == 1 and timestamp > 0
    assert chain.models.functions.getModelId("org/other-GGUF", "other.Q4.gguf").call() == other
    chain.send(chain.models.functions.deactivateModel(other), DEPLOYER)
    assert chain.models.functions.isModelApproved(other).call() is False
    with pytest.raises(ContractLogicError, match="Only owner"):
        chain.send(chain.models.functions.addModel("a", "b", b"\0" * 32), STRANGER)
    with pytest.raises(ContractLogicError, match="Model already exists"):
        chain.add_model(SMOLLM2_REPO, SMOLLM2_FILE)


def test_node_registry_reads(hosts: LocalChain, smollm2: bytes) -> None:
    chain = hosts
    nodes = chain.nodes.functions
    assert nodes.getAllActiveNodes().call() == [HOST1.address, HOST2.address]
    assert nodes.getNodesForModel(smollm2).call() == [HOST1.address, HOST2.address]
    assert nodes.getNodesForModel(b"\x22" * 32).call() == []
    info = nodes.getNodeFullInfo(HOST1.address).call()
    operator, staked, active, metadata, api_url, models, min_native, min_stable = info
    assert (operator, staked, active, api_url, models) == (
        HOST1.address,
        0,
        True,
        "http://127.0.0.1:9001",
        [smollm2],
    )
    assert (min_native, min_stable) == (DEFAULT_PRICE_NATIVE, DEFAULT_PRICE_STABLE)
    meta = json.loads(metadata)
    assert meta["publicKey"] == PUBKEY and "capabilities" in meta
    assert "publicKey" not in json.loads(nodes.getNodeFullInfo(HOST2.address).call()[3])
    assert nodes.nodeSupportsModel(HOST1.address, smollm2).call() is True
    assert nodes.nodeSupportsModel(HOST1.address, b"\x22" * 32).call() is False
    assert nodes.isActiveNode(HOST1.address).call() is True
    assert nodes.isActiveNode(STRANGER.address).call() is False


def test_pricing_falls_back_to_the_node_minimum(hosts: LocalChain, smollm2: bytes) -> None:
    chain, usdc = hosts, hosts.usdc_address
    assert chain.host_price(HOST1, smollm2, ETH) == DEFAULT_PRICE_NATIVE
    assert chain.host_price(HOST1, smollm2, usdc) == DEFAULT_PRICE_STABLE
    chain.set_model_price(HOST1, smollm2, 5 * 10**12)
    chain.set_model_price(HOST1, smollm2, 7000, token=usdc)
    assert chain.host_price(HOST1, smollm2, ETH) == 5 * 10**12
    assert chain.host_price(HOST1, smollm2, usdc) == 7000
    prices = chain.nodes.functions.getHostModelPrices(HOST1.address, usdc).call()
    assert prices == [[smollm2], [7000]]
    assert chain.nodes.functions.getHostModelPrices(HOST2.address, ETH).call() == [
        [smollm2],
        [3 * 10**12],
    ]
    with pytest.raises(ContractLogicError, match="Model not supported"):
        chain.set_model_price(HOST1, b"\x22" * 32, 1)
    with pytest.raises(ContractLogicError, match="Not registered"):
        chain.set_model_price(STRANGER, smollm2, 1)


def test_inactive_and_unregistered_hosts_are_not_listed(hosts: LocalChain, smollm2: bytes) -> None:
    chain = hosts
    chain.set_model_price(HOST1, smollm2, 5 * 10**12)
    chain.set_host_active(HOST1, False)
    assert chain.nodes.functions.getAllActiveNodes().call() == [HOST2.address]
    assert chain.nodes.functions.isActiveNode(HOST1.address).call() is False
    chain.set_host_active(HOST1, True)
    chain.unregister_host(HOST1)
    assert chain.nodes.functions.getNodesForModel(smollm2).call() == [HOST2.address]
    assert chain.nodes.functions.getNodeFullInfo(HOST1.address).call()[0] == ETH
    # registering again starts afresh: the old per-model price is gone
    chain.register_host(HOST1, "http://127.0.0.1:9003", [smollm2])
    assert chain.host_price(HOST1, smollm2) == DEFAULT_PRICE_NATIVE


def test_registration_rules(chain: LocalChain, smollm2: bytes) -> None:
    with pytest.raises(ContractLogicError, match="Model not approved"):
        chain.register_host(HOST1, "http://127.0.0.1:1", [b"\x22" * 32])
    with pytest.raises(ContractLogicError, match="No models"):
        chain.register_host(HOST1, "http://127.0.0.1:1", [])
    with pytest.raises(ContractLogicError, match="Empty API URL"):
        chain.register_host(HOST1, "", [smollm2])
    with pytest.raises(ContractLogicError, match="Price must be positive"):
        chain.register_host(HOST1, "http://127.0.0.1:1", [smollm2], price_native=0)
    chain.register_host(HOST1, "http://127.0.0.1:1", [smollm2])
    with pytest.raises(ContractLogicError, match="Already registered"):
        chain.register_host(HOST1, "http://127.0.0.1:1", [smollm2])


# ---- the rules of a session (section 4) ----


def _create_eth(chain: LocalChain, model: bytes, **kw: Any) -> int:
    return chain.create_eth_session(
        kw.pop("host", HOST1), model, kw.pop("deposit", ETH_DEPOSIT), **kw
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ({"host": STRANGER}, "Host not registered"),
        ({"price": DEFAULT_PRICE_NATIVE - 1}, "Price below host minimum"),
        ({"price": 0}, "Price must be positive"),
        ({"deposit": 10**14 - 1}, "Deposit below minimum"),
        ({"proof_interval": 99}, "Proof interval below minimum"),
        ({"proof_timeout_window": 59}, "Invalid proof timeout window"),
        ({"proof_timeout_window": 3601}, "Invalid proof timeout window"),
        ({"max_duration": 0}, "Invalid max duration"),
        # 0.0001 ETH at 10**12 per 1,000 tokens buys 100,000 tokens
        ({"deposit": 10**14, "proof_interval": 100_001}, "Deposit too small for proof interval"),
    ],
)
def test_eth_session_rules(
    hosts: LocalChain, smollm2: bytes, case: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ContractLogicError, match=reason):
        _create_eth(hosts, smollm2, **case)


def test_boundaries_are_allowed(hosts: LocalChain, smollm2: bytes) -> None:
    _create_eth(hosts, smollm2, proof_timeout_window=60, proof_interval=100, deposit=10**14)
    _create_eth(hosts, smollm2, proof_timeout_window=3600, deposit=10**14, proof_interval=100_000)


def test_price_must_reach_the_per_model_price(hosts: LocalChain, smollm2: bytes) -> None:
    hosts.set_model_price(HOST1, smollm2, 5 * 10**12)
    with pytest.raises(ContractLogicError, match="Price below host minimum"):
        _create_eth(hosts, smollm2, price=5 * 10**12 - 1)
    _create_eth(hosts, smollm2, price=5 * 10**12)


def test_host_state_rules(hosts: LocalChain, smollm2: bytes) -> None:
    other = hosts.add_model("org/other-GGUF", "other.Q4.gguf")
    with pytest.raises(ContractLogicError, match="Host does not support model"):
        _create_eth(hosts, other, price=DEFAULT_PRICE_NATIVE)
    hosts.set_host_active(HOST1, False)
    with pytest.raises(ContractLogicError, match="Host not active"):
        _create_eth(hosts, smollm2)
    hosts.set_host_active(HOST1, True)
    hosts.send(hosts.models.functions.deactivateModel(smollm2), DEPLOYER)
    with pytest.raises(ContractLogicError, match="Model not approved"):
        _create_eth(hosts, smollm2)


def test_usdc_session_rules(hosts: LocalChain, smollm2: bytes) -> None:
    chain, usdc = hosts, hosts.usdc_address
    chain.mint_usdc(USER, USDC_DEPOSIT)
    assert chain.market.functions.tokenMinDeposits(usdc).call() == 500_000
    assert chain.market.functions.tokenMinDeposits(ETH).call() == 0
    with pytest.raises(ContractLogicError, match="Deposit below minimum"):
        chain.create_usdc_session(HOST1, smollm2, 499_999)
    with pytest.raises(ContractLogicError, match="Price below host minimum"):
        chain.create_usdc_session(HOST1, smollm2, 500_000, price=DEFAULT_PRICE_STABLE - 1)
    # an allowance short of the deposit: the token's own reason
    chain.send(chain.usdc.functions.approve(chain.market.address, 500_000), USER)
    fn = chain.market.functions.createSessionJobForModelWithToken(
        HOST1.address, smollm2, usdc, 600_000, DEFAULT_PRICE_STABLE, 3600, 1000, 300
    )
    with pytest.raises(ContractLogicError, match="ERC20: insufficient allowance"):
        chain.send(fn, USER)
    not_accepted = chain.market.address  # any address that is not an accepted token
    fn = chain.market.functions.createSessionJobForModelWithToken(
        HOST1.address, smollm2, not_accepted, 600_000, DEFAULT_PRICE_STABLE, 3600, 1000, 300
    )
    with pytest.raises(ContractLogicError, match="Token not accepted"):
        chain.send(fn, USER)


def test_proof_and_settlement_rules(hosts: LocalChain, smollm2: bytes) -> None:
    chain = hosts
    job = _create_eth(chain, smollm2, deposit=10**14)  # pays for 100,000 tokens
    with pytest.raises(ContractLogicError, match="Only the job's host"):
        chain.submit_proof(job, 1000, host=USER)
    with pytest.raises(ContractLogicError, match="No tokens claimed"):
        chain.submit_proof(job, 0)
    with pytest.raises(ContractLogicError, match="Tokens exceed deposit"):
        chain.submit_proof(job, 100_001)
    with pytest.raises(ContractLogicError, match="Job not found"):
        chain.submit_proof(job + 1, 1000, host=HOST1)
    with pytest.raises(ContractLogicError, match="Only host or depositor"):
        chain.complete(job, by=STRANGER)
    with pytest.raises(ContractLogicError, match="Session not timed out"):
        chain.trigger_timeout(job)
    chain.complete(job)
    with pytest.raises(ContractLogicError, match="Session not active"):
        chain.complete(job)
    with pytest.raises(ContractLogicError, match="Session not active"):
        chain.submit_proof(job, 1000)
    with pytest.raises(ContractLogicError, match="Session not active"):
        chain.trigger_timeout(job)


# ---- whole sessions ----


def test_whole_eth_session(hosts: LocalChain, smollm2: bytes) -> None:
    chain, market = hosts, hosts.market
    price = DEFAULT_PRICE_NATIVE
    fn = market.functions.createSessionJobForModel(HOST1.address, smollm2, price, 3600, 1000, 300)
    receipt = chain.send(fn, USER, value=ETH_DEPOSIT)
    [created] = chain.events(market, "SessionJobCreated", receipt)
    [for_model] = chain.events(market, "SessionJobCreatedForModel", receipt)
    job = created["jobId"]
    assert job >= 1
    assert created == {
        "jobId": job,
        "depositor": USER.address,
        "host": HOST1.address,
        "deposit": ETH_DEPOSIT,
    }
    assert for_model == {**created, "modelId": smollm2}
    assert chain.events(market, "SessionCreatedByDepositor", receipt) == []

    s = chain.session(job)
    assert len(market.functions.sessionJobs(job).call()) == len(SESSION_FIELDS) == 18
    start = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert s == {
        "id": job,
        "depositor": USER.address,
        "host": HOST1.address,
        "paymentToken": ETH,
        "deposit": ETH_DEPOSIT,
        "pricePerToken": price,
        "tokensUsed": 0,
        "maxDuration": 3600,
        "startTime": start,
        "lastProofTime": start,
        "proofInterval": 1000,
        "proofTimeoutWindow": 300,
        "status": STATUS_ACTIVE,
        "withdrawnByHost": 0,
        "refundedToUser": 0,
        "conversationCID": "",
        "lastProofHash": b"\0" * 32,
        "lastProofCID": "",
    }
    assert market.functions.sessionModel(job).call() == smollm2

    proof = chain.submit_proof(job, 1000, proof_hash=b"\x01" * 32, proof_cid="u1", delta_cid="d1")
    assert chain.events(market, "ProofSubmitted", proof) == [
        {
            "jobId": job,
            "host": HOST1.address,
            "tokensClaimed": 1000,
            "proofHash": b"\x01" * 32,
            "proofCID": "u1",
            "deltaCID": "d1",
        }
    ]
    chain.submit_proof(job, 234, proof_hash=b"\x02" * 32, proof_cid="u2")
    s = chain.session(job)
    assert (s["tokensUsed"], s["lastProofHash"], s["lastProofCID"]) == (1234, b"\x02" * 32, "u2")

    done = chain.complete(job, conversation_cid="conv")
    earned, fee = _paid(1234, price)
    refund = ETH_DEPOSIT - 1234 * price // 1000
    assert chain.events(market, "SessionCompleted", done) == [
        {"jobId": job, "totalTokensUsed": 1234, "hostEarnings": earned, "userRefund": refund}
    ]
    assert chain.events(market, "RefundCreditedToDeposit", done) == [
        {"jobId": job, "depositor": USER.address, "amount": refund, "token": ETH}
    ]
    s = chain.session(job)
    assert (s["status"], s["withdrawnByHost"], s["refundedToUser"], s["conversationCID"]) == (
        STATUS_COMPLETED,
        earned,
        refund,
        "conv",
    )
    assert chain.host_earnings(HOST1) == earned
    assert market.functions.treasuryEarnings(ETH).call() == fee
    assert chain.deposit_balance(USER) == refund

    # the refund comes back to the user's wallet, exactly
    before = chain.eth_balance(USER)
    out = chain.send(market.functions.withdrawNative(refund), USER)
    assert chain.eth_balance(USER) == before + refund - _gas(chain, out)
    assert chain.deposit_balance(USER) == 0
    assert chain.events(market, "WithdrawalProcessed", out) == [
        {"depositor": USER.address, "amount": refund, "token": ETH}
    ]
    with pytest.raises(ContractLogicError, match="Insufficient deposit balance"):
        chain.send(market.functions.withdrawNative(1), USER)

    before = chain.eth_balance(HOST1)
    out = chain.send(market.functions.withdrawEarnings(ETH), HOST1)
    assert chain.eth_balance(HOST1) == before + earned - _gas(chain, out)
    assert chain.eth_balance(market.address) == fee


def test_whole_usdc_session(hosts: LocalChain, smollm2: bytes) -> None:
    chain, market, usdc = hosts, hosts.market, hosts.usdc_address
    assert chain.usdc.functions.decimals().call() == 6
    chain.mint_usdc(USER, USDC_DEPOSIT)
    price = chain.host_price(HOST2, smollm2, usdc)
    assert price == 3000
    job = chain.create_usdc_session(HOST2, smollm2, USDC_DEPOSIT)
    assert chain.usdc_balance(USER) == 0
    assert chain.usdc_balance(market.address) == USDC_DEPOSIT
    s = chain.session(job)
    assert (s["paymentToken"], s["deposit"], s["pricePerToken"]) == (usdc, USDC_DEPOSIT, price)

    chain.submit_proof(job, 1000)
    chain.submit_proof(job, 1000)
    done = chain.complete(job, by=USER)  # the depositor may end it
    earned, fee = _paid(2000, price)
    refund = USDC_DEPOSIT - 2000 * price // 1000
    assert (earned, fee, refund) == (5400, 600, 1_994_000)
    assert chain.events(market, "SessionCompleted", done) == [
        {"jobId": job, "totalTokensUsed": 2000, "hostEarnings": earned, "userRefund": refund}
    ]
    assert chain.events(market, "RefundCreditedToDeposit", done) == [
        {"jobId": job, "depositor": USER.address, "amount": refund, "token": usdc}
    ]
    assert chain.deposit_balance(USER, usdc) == refund
    assert chain.host_earnings(HOST2, usdc) == earned
    chain.send(market.functions.withdrawToken(usdc, refund), USER)
    assert chain.usdc_balance(USER) == refund
    chain.send(market.functions.withdrawEarnings(usdc), HOST2)
    assert chain.usdc_balance(HOST2) == earned
    assert chain.usdc_balance(market.address) == fee


def test_ending_before_the_first_proof_costs_the_minimum_fee(
    hosts: LocalChain, smollm2: bytes
) -> None:
    chain, market = hosts, hosts.market
    assert market.functions.minTokensFee().call() == 100
    assert market.functions.disputeWindow().call() == 30
    job = _create_eth(chain, smollm2)
    done = chain.complete(job, by=USER)
    earned, _ = _paid(100, DEFAULT_PRICE_NATIVE)
    [completed] = chain.events(market, "SessionCompleted", done)
    assert completed["totalTokensUsed"] == 0
    assert completed["hostEarnings"] == earned
    assert completed["userRefund"] == ETH_DEPOSIT - 100 * DEFAULT_PRICE_NATIVE // 1000


def test_cost_is_capped_by_the_deposit(hosts: LocalChain, smollm2: bytes) -> None:
    chain, market = hosts, hosts.market
    chain.send(market.functions.setMinTokensFee(10**9), DEPLOYER)
    job = _create_eth(chain, smollm2, deposit=10**14)
    done = chain.complete(job)
    [completed] = chain.events(market, "SessionCompleted", done)
    assert completed["hostEarnings"] == 10**14 - 10**13  # the whole deposit minus 10%
    assert completed["userRefund"] == 0
    assert chain.events(market, "RefundCreditedToDeposit", done) == []


def test_timeout_after_the_deadline_pays_proven_tokens(hosts: LocalChain, smollm2: bytes) -> None:
    chain, market = hosts, hosts.market
    job = _create_eth(chain, smollm2, max_duration=600)
    chain.submit_proof(job, 1000)
    # the deadline is startTime + maxDuration (the chain's clock follows the wall clock, so
    # the test stays clear of the exact second)
    assert chain.now() < chain.session(job)["startTime"] + 600
    with pytest.raises(ContractLogicError, match="Session not timed out"):
        chain.trigger_timeout(job)
    chain.increase_time(601)
    out = chain.trigger_timeout(job, by=STRANGER)
    earned, _ = _paid(1000, DEFAULT_PRICE_NATIVE)
    refund = ETH_DEPOSIT - 1000 * DEFAULT_PRICE_NATIVE // 1000
    assert chain.events(market, "SessionTimedOut", out) == [
        {"jobId": job, "hostEarnings": earned, "userRefund": refund}
    ]
    assert chain.events(market, "RefundCreditedToDeposit", out) == [
        {"jobId": job, "depositor": USER.address, "amount": refund, "token": ETH}
    ]
    assert chain.session(job)["status"] == STATUS_TIMED_OUT
    assert chain.deposit_balance(USER) == refund
    with pytest.raises(ContractLogicError, match="Session not active"):
        chain.complete(job)


def test_session_from_the_deposit_balance(hosts: LocalChain, smollm2: bytes) -> None:
    chain, market, usdc = hosts, hosts.market, hosts.usdc_address
    price = DEFAULT_PRICE_NATIVE
    create = market.functions.createSessionFromDepositForModel(
        smollm2, HOST1.address, ETH, ETH_DEPOSIT, price, 3600, 1000, 300
    )
    with pytest.raises(ContractLogicError, match="Insufficient deposit balance"):
        chain.send(create, USER)
    got = chain.send(market.functions.depositNative(), USER, value=3 * ETH_DEPOSIT)
    assert chain.events(market, "DepositReceived", got) == [
        {"depositor": USER.address, "amount": 3 * ETH_DEPOSIT, "token": ETH}
    ]
    receipt = chain.send(create, USER)
    [by_depositor] = chain.events(market, "SessionCreatedByDepositor", receipt)
    [for_model] = chain.events(market, "SessionJobCreatedForModel", receipt)
    assert chain.events(market, "SessionJobCreated", receipt) == []
    job = by_depositor["sessionId"]
    assert by_depositor == {
        "sessionId": job,
        "depositor": USER.address,
        "host": HOST1.address,
        "deposit": ETH_DEPOSIT,
    }
    assert for_model["jobId"] == job and for_model["modelId"] == smollm2
    assert chain.deposit_balance(USER) == 2 * ETH_DEPOSIT
    chain.submit_proof(job, 1000)
    chain.complete(job)
    assert chain.deposit_balance(USER) == 3 * ETH_DEPOSIT - 1000 * price // 1000

    # tokens: depositToken after approve, then a session from that balance
    chain.mint_usdc(USER, USDC_DEPOSIT)
    chain.send(chain.usdc.functions.approve(market.address, USDC_DEPOSIT), USER)
    chain.send(market.functions.depositToken(usdc, USDC_DEPOSIT), USER)
    assert chain.deposit_balance(USER, usdc) == USDC_DEPOSIT
    create = market.functions.createSessionFromDepositForModel(
        smollm2, HOST1.address, usdc, 500_000, DEFAULT_PRICE_STABLE, 3600, 1000, 300
    )
    chain.send(create, USER)
    assert chain.deposit_balance(USER, usdc) == USDC_DEPOSIT - 500_000


@pytest.mark.parametrize(
    ("generated", "expected_tokens"),
    [
        (37, 1000),  # a short session: the first proof is padded up to the proof interval
        (2050, 2000),  # 50 unproven tokens are below the 100 a host bothers to prove
        (2150, 2150),
    ],
)
def test_settle_like_host(
    hosts: LocalChain, smollm2: bytes, generated: int, expected_tokens: int
) -> None:
    chain = hosts
    job = _create_eth(chain, smollm2)
    done = chain.settle_like_host(job, generated, conversation_cid="c")
    [completed] = chain.events(chain.market, "SessionCompleted", done)
    assert completed["totalTokensUsed"] == expected_tokens
    assert completed["hostEarnings"] == _paid(expected_tokens, DEFAULT_PRICE_NATIVE)[0]
    assert chain.session(job)["status"] == STATUS_COMPLETED
