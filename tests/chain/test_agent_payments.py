"""Agents that pay safely (issue 24 items 1-3) on the local chain with reference hosts: the
pre-funded deposit balance, a delegate paying for its payer within an allowance, a spending
budget kept in a ledger across a process restart, and the contract's deposit limits read and
enforced before anything is sent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from eth_account import Account

from langchain_fabstir import ChatFabstir, SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.errors import (
    BudgetExceededError,
    DelegateAllowanceInsufficientError,
    DelegateBalanceInsufficientError,
    DelegateNotAuthorizedError,
    DelegateUsdcRequiredError,
    DepositLimitError,
    InsufficientDepositError,
    InvalidRequestError,
    SpendLedgerError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.sessions.budget import SpendBudget
from tests._support.chain import self_settling_host
from tests.localchain import DEPLOYER, HOST1, SMOLLM2_FILE, SMOLLM2_REPO, USER, LocalChain

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"
PRICE, USDC_PRICE = 10**12, 1_000  # per 1,000 tokens
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def host() -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(
        EchoEngine(), host_key=HOST1.private_key, rate_limit_per_minute=None
    ) as h:
        yield h


@pytest.fixture
def market(chain: LocalChain, host: ReferenceHost, smollm2: bytes) -> ChainConfig:
    chain.register_reference_host(host, [smollm2], price_native=PRICE, price_stable=USDC_PRICE)
    return ChainConfig.from_mapping(chain.config())


def _nonce(chain: LocalChain, address: str = USER.address) -> int:
    return int(chain.w3.eth.get_transaction_count(address))


def _gas(chain: LocalChain, address: str, since_block: int) -> int:
    """Wei ``address`` paid in gas for its transactions mined after ``since_block``."""
    total = 0
    for n in range(since_block + 1, chain.w3.eth.block_number + 1):
        for tx in chain.w3.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["from"].lower() == address.lower():
                r = chain.w3.eth.get_transaction_receipt(tx["hash"])
                total += int(r["gasUsed"]) * int(r["effectiveGasPrice"])
    return total


# --- item 1: the pre-funded balance ------------------------------------------------------


@pytest.fixture
async def settling_host(
    chain: LocalChain, smollm2: bytes, tmp_path: Path
) -> AsyncIterator[ReferenceHost]:
    """A host that proves and settles its jobs itself, as nodes do (no dispute-window wait)."""
    async with (
        LocalPortal(tmp_path / "portal", port=0) as portal,
        self_settling_host(chain, EchoEngine(), portal.url) as h,
    ):
        chain.register_reference_host(h, [smollm2], price_native=PRICE, price_stable=USDC_PRICE)
        yield h


async def test_session_from_the_deposit_balance_and_refund_back_into_it(
    chain: LocalChain, settling_host: ReferenceHost
) -> None:
    market = ChainConfig.from_mapping(chain.config())
    block = chain.w3.eth.block_number
    wallet = chain.eth_balance(USER)
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        balance = await manager.deposit(Decimal("0.003"), payment_token="ETH")
        assert balance == Decimal("0.003") and balance.free == Decimal("0.003")
        assert (balance.locked, balance.total) == (0, Decimal("0.003"))

        session = await manager.create_session(
            model=MODEL, deposit=Decimal("0.001"), from_deposit=True
        )
        assert session.job_id is not None and session.encrypted
        job = chain.session(session.job_id)
        assert (job["depositor"], job["deposit"]) == (USER.address, 10**15)
        during = await manager.deposit_balance("ETH")
        assert (during.free, during.locked, during.total) == (
            Decimal("0.002"),
            Decimal("0.001"),
            Decimal("0.003"),
        )
        assert chain.deposit_balance(USER) == 2 * 10**15  # down by exactly the deposit
        # The wallet paid the 0.003 deposit and gas, nothing for the session itself.
        assert wallet - chain.eth_balance(USER) == 3 * 10**15 + _gas(chain, USER.address, block)

        assert (await manager.prompt(session.id, "from the balance")).text.startswith("Echo")
        await manager.end_session(session.id)  # the host settles, as nodes do
        assert settling_host.chain is not None
        await asyncio.wait_for(settling_host.chain.wait_settled(session.job_id), 60)
        settled = await manager.settlement(session.job_id)
        assert settled.state == "completed" and settled.tokens_used == 1000  # padded proof
        cost = settled.tokens_used * PRICE // 1000
        after = await manager.deposit_balance("ETH")
        assert chain.deposit_balance(USER) == 3 * 10**15 - cost  # the refund came back
        assert (after.locked, after.total) == (0, after.free)

        # Not enough in the balance: refused before anything is sent.
        nonce = _nonce(chain)
        with pytest.raises(InsufficientDepositError) as short:
            await manager.create_session(model=MODEL, deposit=Decimal("0.0031"), from_deposit=True)
        assert short.value.code == "INSUFFICIENT_DEPOSIT"
        with pytest.raises(InsufficientDepositError):
            await manager.withdraw(Decimal("1"), "ETH")
        with pytest.raises(InvalidRequestError):
            await manager.deposit(True)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError):
            await manager.deposit(0.001)  # type: ignore[arg-type]
        assert _nonce(chain) == nonce

        before = chain.eth_balance(USER)
        block = chain.w3.eth.block_number
        assert await manager.withdraw(Decimal("0.001"), "ETH") == Decimal("0.001")
        assert chain.eth_balance(USER) - before == 10**15 - _gas(chain, USER.address, block)
        assert chain.deposit_balance(USER) == 2 * 10**15 - cost


# --- item 2: delegates ------------------------------------------------------------------


async def test_a_delegate_pays_for_its_payer_within_the_allowance(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig
) -> None:
    delegate = Account.create()
    await asyncio.to_thread(chain.set_eth_balance, delegate.address, 10**18)  # gas only
    await asyncio.to_thread(chain.mint_usdc, USER, 10_000_000)  # 10 USDC
    async with SessionManager(chain=market, private_key=USER.private_key) as payer:
        status = await payer.delegate_status(delegate.address)
        assert (status.authorized, status.allowance) == (False, 0)
        status = await payer.authorize_delegate(delegate.address, Decimal("3"))
        assert (status.authorized, status.allowance, status.payer_balance) == (
            True,
            Decimal("3"),
            Decimal("10"),
        )
    agent = SessionManager(chain=market, private_key=delegate.key.hex(), payer=USER.address)
    async with agent:
        session = await agent.create_session(
            model=MODEL, deposit=Decimal("2"), payment_token="USDC"
        )
        assert session.job_id is not None
        job = chain.session(session.job_id)
        assert (job["depositor"], job["deposit"]) == (USER.address, 2_000_000)
        assert chain.market.functions.sessionDelegate(session.job_id).call() == delegate.address
        assert chain.usdc_balance(USER) == 8_000_000  # the payer paid
        assert chain.usdc_balance(delegate.address) == 0
        assert (await agent.prompt(session.id, "on the payer")).text == "Echo: on the payer"
        await agent.end_session(session.id)

        nonce = _nonce(chain, delegate.address)
        with pytest.raises(DelegateAllowanceInsufficientError):  # 1 USDC left of 3
            await agent.create_session(model=MODEL, deposit=Decimal("1.5"), payment_token="USDC")
        with pytest.raises(DelegateUsdcRequiredError):
            await agent.create_session(model=MODEL, deposit=Decimal("0.001"))
        with pytest.raises(InvalidRequestError):
            await agent.create_session(
                model=MODEL, deposit=Decimal("1"), payment_token="USDC", from_deposit=True
            )
        assert _nonce(chain, delegate.address) == nonce

    async with SessionManager(chain=market, private_key=USER.private_key) as payer:
        await payer.authorize_delegate(delegate.address, Decimal("50"))
        await asyncio.to_thread(  # the payer spends its USDC elsewhere
            chain.send, chain.usdc.functions.transfer(DEPLOYER.address, 7_500_000), USER
        )
        async with SessionManager(
            chain=market, private_key=delegate.key.hex(), payer=USER.address
        ) as agent:
            with pytest.raises(DelegateBalanceInsufficientError):
                await agent.create_session(model=MODEL, deposit=Decimal("1"), payment_token="USDC")
            await payer.revoke_delegate(delegate.address)
            status = await payer.delegate_status(delegate.address)
            assert (status.authorized, status.allowance) == (False, 0)
            nonce = _nonce(chain, delegate.address)
            with pytest.raises(DelegateNotAuthorizedError) as refused:
                await agent.create_session(
                    model=MODEL, deposit=Decimal("0.5"), payment_token="USDC"
                )
            assert refused.value.code == "DELEGATE_NOT_AUTHORIZED"
            assert _nonce(chain, delegate.address) == nonce
    assert chain.usdc_balance(USER) == 500_000


# --- item 3: the budget -----------------------------------------------------------------

_FIRST_PAYMENT = """
import asyncio, json, sys
from decimal import Decimal
from langchain_fabstir import ChatFabstir, SessionManager
from langchain_fabstir.chain import ChainConfig

async def main():
    config, key, ledger = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    manager = SessionManager(chain=ChainConfig.from_mapping(config), private_key=key,
                             max_spend={"ETH": Decimal("0.0025")}, spend_ledger=ledger)
    async with manager:
        s = await manager.create_session(model=sys.argv[4], deposit=Decimal("0.001"),
                                         connect=False)
        print(s.job_id)

asyncio.run(main())
"""


async def test_budget_refuses_the_payment_that_would_cross_it_across_a_restart(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig, tmp_path: Path
) -> None:
    ledger = tmp_path / "spend.json"
    # The first payment in another process, which then exits.
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            textwrap.dedent(_FIRST_PAYMENT),
            json.dumps(chain.config()),
            USER.private_key,
            str(ledger),
            MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env={**os.environ, "FABSTIR_PRIVATE_KEY": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first_job = int(done.stdout.split()[-1])
    assert chain.session(first_job)["deposit"] == 10**15
    assert json.loads(ledger.read_text())["entries"][0]["amount"] == "0.001"

    # A new manager on the same ledger knows 0.001 ETH is already committed.
    budget = {"ETH": Decimal("0.0025")}
    async with SessionManager(
        chain=market, private_key=USER.private_key, max_spend=budget, spend_ledger=ledger
    ) as manager:
        assert manager.budget is not None and manager.budget.spent("ETH") == Decimal("0.001")
        second = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
        await manager.end_session(second.id)
        nonce = _nonce(chain)
        with pytest.raises(BudgetExceededError) as over:
            await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
        assert over.value.code == "BUDGET_EXCEEDED"
        assert over.value.details["spent"] == "0.002"
        with pytest.raises(BudgetExceededError):  # a token the budget does not name
            await manager.create_session(model=MODEL, deposit=Decimal("1"), payment_token="USDC")
        # A payment refused before sending gives its reservation back.
        with pytest.raises(DepositLimitError):
            await manager.create_session(model=MODEL, deposit=Decimal("0.00005"))
        assert _nonce(chain) == nonce
        assert manager.budget.spent("ETH") == Decimal("0.002")
        # Within what is left, it still pays (from the deposit balance too).
        await manager.deposit(Decimal("0.0005"))
        third = await manager.create_session(
            model=MODEL, deposit=Decimal("0.0005"), from_deposit=True, connect=False
        )
        assert third.job_id is not None
    async with SessionManager(
        chain=market, private_key=USER.private_key, max_spend=budget, spend_ledger=ledger
    ) as again:
        nonce = _nonce(chain)
        with pytest.raises(BudgetExceededError):
            await again.create_session(model=MODEL, deposit=Decimal("0.0001"))
        assert _nonce(chain) == nonce
    assert [e["amount"] for e in json.loads(ledger.read_text())["entries"]] == [
        "0.001",
        "0.001",
        "0.0005",
    ]
    assert sorted(os.listdir(tmp_path)) == ["spend.json", "spend.json.lock"]  # no temp files


def test_a_ledger_that_cannot_be_read_pays_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "spend.json"
    ledger.write_text('{"entries": "not mine"}')
    with pytest.raises(SpendLedgerError) as bad:
        SpendBudget({"ETH": "1"}, ledger)
    assert bad.value.code == "SPEND_LEDGER_INVALID"
    for money in (True, 0.5, "lots"):
        with pytest.raises(InvalidRequestError):
            SpendBudget({"ETH": money})  # type: ignore[dict-item]


# --- deposit limits -----------------------------------------------------------------------


async def test_deposit_limits_are_read_and_enforced_before_sending(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig
) -> None:
    await asyncio.to_thread(chain.mint_usdc, USER, 20_000_000)
    usdc = chain.usdc_address
    await asyncio.to_thread(
        chain.send, chain.market.functions.updateTokenMaxDeposit(usdc, 5_000_000), DEPLOYER
    )
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        await manager.deposit(Decimal("10"), payment_token="USDC")
        nonce = _nonce(chain)
        for from_deposit in (False, True):
            with pytest.raises(DepositLimitError, match="above the contract's maximum of 5"):
                await manager.create_session(
                    model=MODEL,
                    deposit=Decimal("5.000001"),
                    payment_token="USDC",
                    from_deposit=from_deposit,
                )
            with pytest.raises(DepositLimitError, match="below the contract's minimum"):
                await manager.create_session(
                    model=MODEL,
                    deposit=Decimal("0.4"),
                    payment_token="USDC",
                    from_deposit=from_deposit,
                )
        assert _nonce(chain) == nonce
        session = await manager.create_session(
            model=MODEL, deposit=Decimal("5"), payment_token="USDC", from_deposit=True
        )
        assert session.job_id is not None
        assert chain.session(session.job_id)["deposit"] == 5_000_000


# --- the same on ChatFabstir ------------------------------------------------------------


async def test_chat_model_pays_from_the_deposit_within_one_budget_for_every_loop(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig
) -> None:
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        await manager.deposit(Decimal("0.002"))
    llm = ChatFabstir(
        chain=market,
        model=MODEL,
        private_key=USER.private_key,
        deposit=Decimal("0.001"),
        from_deposit=True,
        max_spend={"ETH": Decimal("0.0015")},
    )
    assert (await llm.ainvoke("first")).content == "Echo: first"
    assert chain.deposit_balance(USER) == 10**15  # drawn from the balance, not the wallet

    def another_loop() -> None:  # a new event loop gets its own session: a second payment
        asyncio.run(llm.ainvoke("second"))

    nonce = _nonce(chain)
    with pytest.raises(BudgetExceededError):
        await asyncio.to_thread(another_loop)
    assert _nonce(chain) == nonce and chain.deposit_balance(USER) == 10**15
    with pytest.raises(InvalidRequestError, match="float"):
        ChatFabstir(chain=market, model=MODEL, max_spend={"ETH": 0.5})


async def test_a_payment_whose_outcome_is_unknown_stays_in_the_ledger(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig, tmp_path: Path
) -> None:
    """The ledger is written before the transaction is sent: a payment sent but not seen
    mined (here: mining stopped, the wait for the receipt gives up) is still counted, and a
    new manager on the ledger knows it; the job then appears once mining resumes."""
    from langchain_fabstir.chain import ChainClient
    from langchain_fabstir.errors import ChainError

    ledger = tmp_path / "spend.json"
    budget = {"ETH": Decimal("0.0015")}
    client = ChainClient(market, USER.private_key, receipt_timeout=1.0, poll_interval=0.1)
    jobs_before = int(chain.market.functions.nextJobId().call())
    await asyncio.to_thread(chain._rpc, "evm_setAutomine", [False])
    try:
        async with SessionManager(chain=client, max_spend=budget, spend_ledger=ledger) as m:
            with pytest.raises(ChainError, match="not mined"):
                await m.create_session(model=MODEL, deposit=Decimal("0.001"), connect=False)
    finally:
        await asyncio.to_thread(chain._rpc, "evm_setAutomine", [True])
        await asyncio.to_thread(chain._rpc, "evm_mine", [])
        await client.aclose()
    assert int(chain.market.functions.nextJobId().call()) == jobs_before + 1  # it was paid
    again = SpendBudget(budget, ledger)
    assert again.spent("ETH") == Decimal("0.001")
    with pytest.raises(BudgetExceededError):
        again.reserve("ETH", Decimal("0.001"), what="a second job")


async def test_a_revoke_that_cannot_finish_is_a_typed_error(
    chain: LocalChain, host: ReferenceHost, market: ChainConfig
) -> None:
    from langchain_fabstir.errors import DelegateRevokeIncompleteError

    payer, delegate = Account.create(), Account.create()
    await asyncio.to_thread(chain.set_eth_balance, payer.address, 10**18)
    async with SessionManager(chain=market, private_key=payer.key.hex()) as manager:
        await manager.authorize_delegate(delegate.address, "2")
        await asyncio.to_thread(chain.set_eth_balance, payer.address, 0)  # no gas left
        with pytest.raises(DelegateRevokeIncompleteError) as half:
            await manager.revoke_delegate(delegate.address)
        assert half.value.code == "DELEGATE_REVOKE_INCOMPLETE"
        assert half.value.details["step"] == "authorize"
        status = await manager.delegate_status(delegate.address)
        assert status.authorized and status.allowance == 2  # still open: said so, not hidden
        await asyncio.to_thread(chain.set_eth_balance, payer.address, 10**18)
        await manager.revoke_delegate(delegate.address)  # run again: done
        status = await manager.delegate_status(delegate.address)
        assert (status.authorized, status.allowance) == (False, 0)
