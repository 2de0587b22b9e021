"""The test contracts' CHAIN.md section 6 additions on a real EVM: the deposit balance with
locked/total views, delegation through an ERC-20 allowance, per-token deposit limits, the
proof submissions kept per session and ``SessionCompletedBy``; each rule a reason string."""

from __future__ import annotations

import pytest
from web3.exceptions import ContractLogicError

from tests.localchain import DEPLOYER, ETH, HOST1, STRANGER, USER, LocalChain

ETH_DEPOSIT = 10**15
USDC_DEPOSIT = 2_000_000
TERMS = (10**12, 3600, 1000, 300)  # price per 1,000 tokens (wei), duration, interval, window


@pytest.fixture
def hosted(chain: LocalChain, smollm2: bytes) -> LocalChain:
    chain.register_host(HOST1, "http://127.0.0.1:9001", [smollm2])
    return chain


def _from_deposit(chain: LocalChain, model: bytes, token: str, amount: int) -> int:
    price = chain.host_price(HOST1, model, token)
    fn = chain.market.functions.createSessionFromDepositForModel(
        model, HOST1.address, token, amount, price, 3600, 1000, 300
    )
    return chain._job_id(chain.send(fn, USER))


def test_deposit_sessions_lock_and_refunds_unlock(hosted: LocalChain, smollm2: bytes) -> None:
    chain, m = hosted, hosted.market.functions
    chain.send(m.depositNative(), USER, value=3 * ETH_DEPOSIT)
    job = _from_deposit(chain, smollm2, ETH, ETH_DEPOSIT)
    assert chain.deposit_balance(USER) == 2 * ETH_DEPOSIT
    assert m.getLockedBalanceNative(USER.address).call() == ETH_DEPOSIT
    assert m.getTotalBalanceNative(USER.address).call() == 3 * ETH_DEPOSIT
    assert m.getDepositBalances(USER.address, [ETH]).call() == [2 * ETH_DEPOSIT]
    assert m.userSessions(USER.address, 0).call() == job
    chain.submit_proof(job, 1000)
    receipt = chain.complete(job)
    cost = 1000 * 10**12 // 1000
    (by,) = chain.events(chain.market, "SessionCompletedBy", receipt)
    assert (by["completedBy"], by["paymentAmount"], by["refundAmount"]) == (
        HOST1.address,
        cost,
        ETH_DEPOSIT - cost,
    )
    assert m.getLockedBalanceNative(USER.address).call() == 0
    assert chain.deposit_balance(USER) == 3 * ETH_DEPOSIT - cost
    with pytest.raises(ContractLogicError, match="Insufficient deposit balance"):
        _from_deposit(chain, smollm2, ETH, 3 * ETH_DEPOSIT)


def test_delegate_creates_for_the_payer_through_the_allowance(
    hosted: LocalChain, smollm2: bytes
) -> None:
    chain, m, usdc = hosted, hosted.market.functions, hosted.usdc_address
    chain.mint_usdc(USER, 10 * USDC_DEPOSIT)
    price = chain.host_price(HOST1, smollm2, usdc)

    def as_delegate(token: str = usdc, amount: int = USDC_DEPOSIT) -> int:
        fn = m.createSessionForModelAsDelegate(
            USER.address, smollm2, HOST1.address, token, amount, price, 3600, 1000, 300
        )
        return chain._job_id(chain.send(fn, STRANGER))

    with pytest.raises(ContractLogicError, match="NotDelegate"):
        as_delegate()
    with pytest.raises(ContractLogicError, match="BadDelegateParams"):
        chain.send(m.authorizeDelegate(USER.address, True), USER)
    receipt = chain.send(m.authorizeDelegate(STRANGER.address, True), USER)
    assert chain.events(chain.market, "DelegateAuthorized", receipt)[0]["authorized"] is True
    assert m.isDelegateAuthorized(USER.address, STRANGER.address).call() is True
    with pytest.raises(ContractLogicError, match="ERC20Only"):
        as_delegate(ETH)
    with pytest.raises(ContractLogicError, match="insufficient allowance"):
        as_delegate()
    chain.send(chain.usdc.functions.approve(chain.market.address, USDC_DEPOSIT), USER)
    job = as_delegate()
    assert chain.usdc_balance(USER) == 9 * USDC_DEPOSIT
    assert chain.session(job)["depositor"] == USER.address
    assert m.sessionDelegate(job).call() == STRANGER.address
    with pytest.raises(ContractLogicError, match="insufficient allowance"):
        as_delegate()  # the allowance was used up
    chain.complete(job, by=STRANGER)  # the delegate may end what it created
    # no proof: the minimum fee of 100 tokens; the refund goes to the payer
    assert chain.deposit_balance(USER, usdc) == USDC_DEPOSIT - 100 * price // 1000
    chain.send(m.authorizeDelegate(STRANGER.address, False), USER)
    with pytest.raises(ContractLogicError, match="NotDelegate"):
        as_delegate()


def test_token_deposit_limits(hosted: LocalChain, smollm2: bytes) -> None:
    chain, m, usdc = hosted, hosted.market.functions, hosted.usdc_address
    assert m.tokenMinDeposits(usdc).call() == 500_000
    assert m.tokenMaxDeposits(usdc).call() == 1000 * 10**6
    assert m.acceptedTokens(usdc).call() is True
    chain.mint_usdc(USER, 10**10)
    with pytest.raises(ContractLogicError, match="Deposit above maximum"):
        chain.create_usdc_session(HOST1, smollm2, 1000 * 10**6 + 1)
    with pytest.raises(ContractLogicError, match="Only owner"):
        chain.send(m.updateTokenMaxDeposit(usdc, 0), USER)
    receipt = chain.send(m.updateTokenMaxDeposit(usdc, 5 * 10**6), DEPLOYER)
    (ev,) = chain.events(chain.market, "TokenMaxDepositUpdated", receipt)
    assert (ev["oldMaxDeposit"], ev["newMaxDeposit"]) == (1000 * 10**6, 5 * 10**6)
    with pytest.raises(ContractLogicError, match="Deposit above maximum"):
        chain.create_usdc_session(HOST1, smollm2, 5 * 10**6 + 1)
    chain.create_usdc_session(HOST1, smollm2, 5 * 10**6)
    chain.send(m.updateTokenMaxDeposit(usdc, 0), DEPLOYER)  # 0 = no maximum
    chain.create_usdc_session(HOST1, smollm2, 2000 * 10**6)


def test_every_proof_is_kept_with_its_delta_cid(hosted: LocalChain, smollm2: bytes) -> None:
    chain, m = hosted, hosted.market.functions
    job = chain.create_eth_session(HOST1, smollm2, ETH_DEPOSIT)
    chain.submit_proof(job, 1000, proof_hash=b"\1" * 32, proof_cid="cidA", delta_cid="dA")
    chain.submit_proof(job, 200, proof_hash=b"\2" * 32, proof_cid="cidB", delta_cid="dB")
    first = m.getProofSubmission(job, 0).call()
    second = m.getProofSubmission(job, 1).call()
    assert (first[0], first[1], first[3], first[4]) == (b"\1" * 32, 1000, False, "dA")
    assert (second[0], second[1], second[4]) == (b"\2" * 32, 200, "dB")
    with pytest.raises(ContractLogicError, match="Bad index"):
        m.getProofSubmission(job, 2).call()
