"""Paid sessions on the JobMarketplace: create a job, read it, settle it, take refunds back.

Amounts the user gives are :class:`~decimal.Decimal` in whole tokens (ETH, USDC) and are
converted exactly to base units (wei, USDC's 10^-6); prices on chain are **per 1,000 tokens**
in base units (``PRICE_PRECISION``), so a price per token of ``p`` ETH is ``p * 10**18 * 1000``
on chain:

>>> to_base_units(Decimal("0.0005"), 18)
500000000000000
>>> price_limit(Decimal("0.000002"), 6)   # USDC per token -> base units per 1,000 tokens
2000
>>> from_base_units(1500000, 6)
Decimal('1.5')

The user's limits are hard limits: :func:`create_session_job` refuses, before anything is
sent, a deposit or a price above what the user allowed.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from langchain_fabstir.chain.abi import SESSION_JOB_FIELDS
from langchain_fabstir.chain.client import ChainClient
from langchain_fabstir.chain.config import SessionTerms
from langchain_fabstir.chain.registry import (
    HostRecord,
    ModelRecord,
    PaymentToken,
    token_address,
)
from langchain_fabstir.errors import (
    ChainError,
    DepositLimitError,
    InsufficientFundsError,
    InvalidRequestError,
    PriceLimitError,
    ResponseTimeoutError,
    TransactionRevertedError,
)

__all__ = [
    "CreatedJob",
    "JobStatus",
    "SessionJob",
    "Settlement",
    "SettlementWatcher",
    "complete_job",
    "create_session_job",
    "deposit_balance",
    "from_base_units",
    "parse_amount",
    "price_limit",
    "read_job",
    "settlement",
    "timeout_job",
    "to_base_units",
    "token_decimals",
    "withdraw_refund",
]

log = logging.getLogger(__name__)

PRICE_PRECISION = 1000
MIN_NATIVE_DEPOSIT = 10**14  # 0.0001 ETH, the contract's floor for ETH jobs


def parse_amount(value: Decimal | str | int, what: str) -> Decimal:
    """An amount of money from the user: a ``Decimal``, ``str`` or ``int`` >= 0 (a ``float``
    is refused: it cannot say 0.1 exactly; a ``bool`` too: ``True`` is not 1 ETH)."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be a Decimal, str or int (not a bool: money)")
    if isinstance(value, float):
        raise InvalidRequestError(f"{what} must be a Decimal, str or int (not a float: money)")
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidRequestError(f"{what} {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequestError(f"{what} must be a finite amount >= 0, got {value!r}")
    return amount


def to_base_units(amount: Decimal | str | int, decimals: int, *, what: str = "amount") -> int:
    """``amount`` whole tokens in base units, rounded down (never more than asked)."""
    value = parse_amount(amount, what) * (Decimal(10) ** decimals)
    return int(value.to_integral_value(rounding=ROUND_DOWN))


def from_base_units(amount: int, decimals: int) -> Decimal:
    """Base units back to whole tokens (exact)."""
    return (Decimal(amount) / (Decimal(10) ** decimals)).normalize()


def price_limit(per_token: Decimal | str | int, decimals: int) -> int:
    """A price per token (whole tokens) as the contract's price per 1,000 tokens in base
    units, rounded down."""
    return to_base_units(
        parse_amount(per_token, "max_price_per_token") * PRICE_PRECISION,
        decimals,
        what="max_price_per_token",
    )


async def token_decimals(client: ChainClient, token: PaymentToken) -> int:
    """18 for ETH; the ERC-20's ``decimals()`` for USDC (6 on every chain Fabstir uses)."""
    if token == "ETH":
        return 18
    return int(await client.call(client.usdc.functions.decimals(), "reading USDC decimals"))


class JobStatus(IntEnum):
    """``sessionJobs(id).status``."""

    ACTIVE = 0
    COMPLETED = 1
    TIMED_OUT = 2


class SessionJob(BaseModel):
    """One session job as ``sessionJobs(uint256)`` returns it (the 18 values, snake_case).

    ``deadline`` is when a careful client stops waiting for the host to settle:
    ``start_time + max_duration + proof_timeout_window`` (chain time, seconds).
    """

    model_config = ConfigDict(frozen=True)

    id: int
    depositor: str
    host: str
    payment_token: str
    deposit: int
    price_per_token: int
    tokens_used: int
    max_duration: int
    start_time: int
    last_proof_time: int
    proof_interval: int
    proof_timeout_window: int
    status: JobStatus
    withdrawn_by_host: int
    refunded_to_user: int
    conversation_cid: str
    last_proof_hash: str
    last_proof_cid: str

    @property
    def exists(self) -> bool:
        return self.start_time != 0 or self.deposit != 0

    @property
    def deadline(self) -> int:
        return self.start_time + self.max_duration + self.proof_timeout_window

    @property
    def token(self) -> PaymentToken | str:
        return "ETH" if int(self.payment_token, 16) == 0 else self.payment_token


_SNAKE = {
    "paymentToken": "payment_token",
    "pricePerToken": "price_per_token",
    "tokensUsed": "tokens_used",
    "maxDuration": "max_duration",
    "startTime": "start_time",
    "lastProofTime": "last_proof_time",
    "proofInterval": "proof_interval",
    "proofTimeoutWindow": "proof_timeout_window",
    "withdrawnByHost": "withdrawn_by_host",
    "refundedToUser": "refunded_to_user",
    "conversationCID": "conversation_cid",
    "lastProofHash": "last_proof_hash",
    "lastProofCID": "last_proof_cid",
}


async def read_job(client: ChainClient, job_id: int) -> SessionJob:
    """The job's current record (``CHAIN_ERROR`` when it does not exist)."""
    raw = await client.call(
        client.job_marketplace.functions.sessionJobs(job_id), f"reading job {job_id}"
    )
    values: dict[str, Any] = {}
    for (_kind, name, *_), value in zip(SESSION_JOB_FIELDS, raw, strict=True):
        key = _SNAKE.get(name, name)
        values[key] = "0x" + bytes(value).hex() if isinstance(value, (bytes, bytearray)) else value
    try:
        job = SessionJob.model_validate(values)
    except ValueError as exc:
        raise ChainError(
            f"job {job_id}: the contract answered an unreadable record ({exc})"
        ) from None
    if not job.exists:
        raise ChainError(f"job {job_id} does not exist on {client.config.job_marketplace}")
    return job


class CreatedJob(BaseModel):
    """What :func:`create_session_job` did: the job id (from the event), the transaction and
    the job as the chain recorded it (checked against what was asked)."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    tx_hash: str
    approve_tx_hash: str | None = None
    job: SessionJob


def _check_job(job: SessionJob, *, depositor: str, host: str, deposit: int, price: int) -> None:
    problems = []
    if job.depositor.lower() != depositor.lower():
        problems.append(f"depositor {job.depositor}")
    if job.host.lower() != host.lower():
        problems.append(f"host {job.host}")
    if job.deposit != deposit:
        problems.append(f"deposit {job.deposit}")
    if job.price_per_token != price:
        problems.append(f"price {job.price_per_token}")
    if job.status is not JobStatus.ACTIVE:
        problems.append(f"status {job.status.name}")
    if problems:
        raise ChainError(
            f"job {job.id} on chain is not what was paid for: " + ", ".join(problems),
            details={"job_id": job.id},
        )


async def price_at_payment(
    client: ChainClient,
    host: HostRecord,
    model: ModelRecord,
    token: PaymentToken,
    decimals: int,
    amount: int,
    max_price_per_token: Decimal | str | int | None,
    terms: SessionTerms,
) -> int:
    """The host's price read now (``host.price`` from discovery may be stale), checked
    against the user's limit and the proof interval."""
    price = int(
        await client.call(
            client.node_registry.functions.getModelPricing(
                host.address, bytes.fromhex(model.id[2:]), token_address(client, token)
            ),
            f"reading host {host.address}'s price",
        )
    )
    if price <= 0:
        raise PriceLimitError(
            f"host {host.address} has no price for {model.name} in {token}",
            details={"host": host.address},
        )
    if max_price_per_token is not None:
        limit = price_limit(max_price_per_token, decimals)
        if price > limit:
            raise PriceLimitError(
                f"host {host.address} asks {from_base_units(price, decimals) / PRICE_PRECISION} "
                f"{token} per token, above your max_price_per_token {max_price_per_token}; "
                "nothing was paid",
                details={"host": host.address, "price": price, "limit": limit},
            )
    if amount * PRICE_PRECISION // price < terms.proof_interval:
        needed = -(-terms.proof_interval * price // PRICE_PRECISION)
        raise DepositLimitError(
            f"deposit {from_base_units(amount, decimals)} {token} buys fewer than "
            f"{terms.proof_interval} tokens (one proof interval) at this host's price; deposit "
            f"at least {from_base_units(needed, decimals)}",
            details={"needed": needed},
        )
    return price


async def priced_deposit(
    client: ChainClient,
    host: HostRecord,
    model: ModelRecord,
    *,
    deposit: Decimal | str | int,
    token: PaymentToken,
    max_price_per_token: Decimal | str | int | None,
    terms: SessionTerms | None,
) -> tuple[SessionTerms, int, int, int]:
    """What every way of creating a job checks first: ``(terms, decimals, amount, price)``,
    the deposit in base units (``DEPOSIT_LIMIT`` when zero) and the host's price read now
    (:func:`price_at_payment`)."""
    if max_price_per_token is not None:
        parse_amount(max_price_per_token, "max_price_per_token")
    terms = terms or client.config.terms
    decimals = await token_decimals(client, token)
    amount = to_base_units(deposit, decimals, what="deposit")
    if amount <= 0:
        raise DepositLimitError(f"deposit {deposit} {token} is zero")
    price = await price_at_payment(
        client, host, model, token, decimals, amount, max_price_per_token, terms
    )
    return terms, decimals, amount, price


async def create_session_job(
    client: ChainClient,
    host: HostRecord,
    model: ModelRecord,
    *,
    deposit: Decimal | str | int,
    token: PaymentToken = "ETH",
    max_price_per_token: Decimal | str | int | None = None,
    terms: SessionTerms | None = None,
) -> CreatedJob:
    """Create a session job with ``host`` for ``model``, paying ``deposit`` (whole tokens).

    The price is exactly the host's on-chain price for the model and token (as the SDK does),
    read again now: ``host.price`` (from discovery) may be stale, and a lowered price is paid
    lowered. ``max_price_per_token`` (whole tokens per token) caps it: above it (also when
    the host raised it since discovery), ``PRICE_ABOVE_LIMIT`` and nothing is sent. The
    deposit must cover one proof interval at that price and the contract's minimum
    (``DEPOSIT_LIMIT`` otherwise). For USDC the marketplace is approved for exactly the
    deposit first, and the approval is withdrawn again when the create fails. The job id
    comes from ``SessionJobCreatedForModel`` in the receipt, and the job is read back and
    checked (depositor, host, deposit, price).
    """
    depositor = client.address
    if depositor is None:
        raise InvalidRequestError("paying for a session needs the user's key (private_key=)")
    terms, decimals, amount, price = await priced_deposit(
        client,
        host,
        model,
        deposit=deposit,
        token=token,
        max_price_per_token=max_price_per_token,
        terms=terms,
    )
    market = client.job_marketplace
    if token == "ETH":
        if amount < MIN_NATIVE_DEPOSIT:
            raise DepositLimitError(
                f"deposit {deposit} ETH is below the contract's minimum of 0.0001 ETH"
            )
        fn = market.functions.createSessionJobForModel(
            host.address,
            bytes.fromhex(model.id[2:]),
            price,
            terms.max_duration_s,
            terms.proof_interval,
            terms.proof_timeout_window_s,
        )
        approve_hash = None
        receipt = await client.transact(fn, "creating the session job", value=amount)
    else:
        usdc = token_address(client, token)
        minimum = int(await client.call(market.functions.tokenMinDeposits(usdc), "reading minimum"))
        if amount < minimum:
            raise DepositLimitError(
                f"deposit {deposit} USDC is below the contract's minimum of "
                f"{from_base_units(minimum, decimals)} USDC"
            )
        balance = int(await client.call(client.usdc.functions.balanceOf(depositor), "USDC balance"))
        if balance < amount:
            raise InsufficientFundsError(
                f"{depositor} holds {from_base_units(balance, decimals)} USDC, the deposit is "
                f"{deposit}; nothing was sent",
                details={"balance": balance, "needed": amount},
            )
        approved = await client.transact(
            client.usdc.functions.approve(client.config.job_marketplace, amount),
            "approving the USDC deposit",
        )
        approve_hash = approved["transactionHash"].hex()
        fn = market.functions.createSessionJobForModelWithToken(
            host.address,
            bytes.fromhex(model.id[2:]),
            usdc,
            amount,
            price,
            terms.max_duration_s,
            terms.proof_interval,
            terms.proof_timeout_window_s,
        )
        try:
            receipt = await client.transact(fn, "creating the session job")
        except BaseException:
            await _withdraw_approval(client)
            raise
    events = market.events.SessionJobCreatedForModel().process_receipt(receipt, errors=_DISCARD)
    ours = [e for e in events if str(e["address"]).lower() == client.config.job_marketplace.lower()]
    if len(ours) != 1:
        raise ChainError(
            f"the job was created (tx {receipt['transactionHash'].hex()}) but its receipt has "
            f"{len(ours)} SessionJobCreatedForModel events; look the job up on chain",
            details={"tx_hash": receipt["transactionHash"].hex()},
        )
    job_id = int(ours[0]["args"]["jobId"])
    job = await read_job(client, job_id)
    _check_job(job, depositor=depositor, host=host.address, deposit=amount, price=price)
    return CreatedJob(
        job_id=job_id,
        tx_hash=receipt["transactionHash"].hex(),
        approve_tx_hash=approve_hash,
        job=job,
    )


async def _withdraw_approval(client: ChainClient) -> None:
    """Set the marketplace's USDC allowance back to 0 after a create that failed (an
    approval left standing could be spent later without the user asking). Best effort:
    a failure is logged, the create's own error is what the caller sees."""
    try:
        await client.transact(
            client.usdc.functions.approve(client.config.job_marketplace, 0),
            "withdrawing the USDC approval of a failed create",
        )
    except Exception as exc:
        log.warning("the USDC approval of a failed create is still standing: %s", exc)


def _discard() -> Any:
    from langchain_fabstir.chain._web3 import DISCARD

    return DISCARD


_DISCARD = _discard()


class Settlement(BaseModel):
    """Where a job stands: ``state`` (``active``, ``completed``, ``timed_out``), the tokens
    the host was paid for, the refund, and the ``deadline`` (chain time) after which the user
    may settle it."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    state: str
    settled: bool
    tokens_used: int
    deposit: int
    refunded_to_user: int
    payment_token: str
    deadline: int
    chain_time: int | None = None
    settled_by: str | None = Field(default=None, description="'host', 'user' or 'timeout'.")


async def settlement(client: ChainClient, job_id: int) -> Settlement:
    """The job's settlement state now."""
    job = await read_job(client, job_id)
    now = await client.block_time()
    return _settlement(job, now)


def _settlement(job: SessionJob, now: int | None, by: str | None = None) -> Settlement:
    return Settlement(
        job_id=job.id,
        state={0: "active", 1: "completed", 2: "timed_out"}[int(job.status)],
        settled=job.status is not JobStatus.ACTIVE,
        tokens_used=job.tokens_used,
        deposit=job.deposit,
        refunded_to_user=job.refunded_to_user,
        payment_token="ETH" if int(job.payment_token, 16) == 0 else job.payment_token,
        deadline=job.deadline,
        chain_time=now,
        settled_by=by,
    )


async def complete_job(client: ChainClient, job_id: int, conversation_cid: str = "") -> Any:
    """Complete the job as its depositor (the host loses tokens it has not proven)."""
    return await client.transact(
        client.job_marketplace.functions.completeSessionJob(job_id, conversation_cid),
        f"completing job {job_id}",
    )


async def timeout_job(client: ChainClient, job_id: int) -> Any:
    """Time the job out (allowed after its deadline)."""
    return await client.transact(
        client.job_marketplace.functions.triggerSessionTimeout(job_id), f"timing out job {job_id}"
    )


async def deposit_balance(client: ChainClient, token: PaymentToken = "ETH") -> int:
    """The user's in-contract deposit balance (refunds credited there), in base units."""
    who = client.address
    if who is None:
        raise InvalidRequestError("reading the deposit balance needs the user's address")
    fns = client.job_marketplace.functions
    if token == "ETH":
        return int(await client.call(fns.userDepositsNative(who), "reading the deposit balance"))
    return int(
        await client.call(
            fns.userDepositsToken(who, token_address(client, token)), "reading the deposit balance"
        )
    )


async def withdraw_refund(
    client: ChainClient, token: PaymentToken = "ETH", amount: int | None = None
) -> int:
    """Withdraw ``amount`` base units (default: all) of the user's in-contract balance to
    the wallet; returns what was withdrawn (0, and nothing sent, when the balance is empty)."""
    available = await deposit_balance(client, token)
    take = available if amount is None else amount
    if take <= 0:
        return 0
    if take > available:
        raise InsufficientFundsError(
            f"withdrawing {take} but the deposit balance is {available}",
            details={"balance": available},
        )
    fns = client.job_marketplace.functions
    if token == "ETH":
        await client.transact(fns.withdrawNative(take), "withdrawing the refund")
    else:
        await client.transact(
            fns.withdrawToken(token_address(client, token), take), "withdrawing the refund"
        )
    return take


class SettlementWatcher:
    """Waits for a job to be settled, and settles it itself once the host is late.

    The host settles a session after the socket closes (proofs, the dispute window, then
    ``completeSessionJob``). The watcher polls the job every ``poll_interval`` seconds; once
    the chain's clock passes the job's deadline (``start + maxDuration + proofTimeoutWindow``)
    and the job is still active, it completes the job as the depositor (the host is paid for
    what it proved, the rest is refunded) or, when completing reverts, times it out. Every
    wait is bounded: :meth:`wait` raises ``RESPONSE_TIMEOUT`` after ``max_wait`` seconds.

    Uses the chain's clock (block timestamps), so a dev chain's time travel is honoured.
    """

    def __init__(
        self,
        client: ChainClient,
        *,
        poll_interval: float = 15.0,
        settle_when_late: bool = True,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.client = client
        self.poll_interval = poll_interval
        self.settle_when_late = settle_when_late

    async def check(self, job_id: int) -> Settlement:
        """One look: settled -> its state; late -> settle it now; else the state as is."""
        job = await read_job(self.client, job_id)
        now = await self.client.block_time()
        if job.status is not JobStatus.ACTIVE:
            return _settlement(job, now)
        if not self.settle_when_late or now <= job.deadline:
            return _settlement(job, now)
        by = "user"
        try:
            await complete_job(self.client, job_id)
        except TransactionRevertedError as exc:
            log.info("completing late job %s reverted (%s); timing it out", job_id, exc.message)
            by = "timeout"
            await timeout_job(self.client, job_id)
        return _settlement(await read_job(self.client, job_id), now, by)

    async def wait(self, job_id: int, *, max_wait: float) -> Settlement:
        """Poll until the job is settled (by the host, or by :meth:`check` once late)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            state = await self.check(job_id)
            if state.settled:
                if state.settled_by is None:
                    state = state.model_copy(update={"settled_by": "host"})
                return state
            left = deadline - loop.time()
            if left <= 0:
                raise ResponseTimeoutError(
                    f"job {job_id} not settled within {max_wait} s "
                    f"(chain deadline {state.deadline}, chain time {state.chain_time})",
                    details={"job_id": job_id},
                )
            await asyncio.sleep(min(self.poll_interval, left))
