"""The pre-funded deposit balance, delegated payments and deposit limits (CHAIN.md section 6).

Amounts here are base units (wei, USDC's 10^-6) unless a name says otherwise; the
:class:`~langchain_fabstir.SessionManager` converts the user's whole tokens. Every check that
can refuse a payment runs before anything is sent: the deposit limits (``tokenMinDeposits`` /
``tokenMaxDeposits``), the deposit balance of a session drawn from it, and for a delegate the
payer's authorization, allowance and wallet balance (the SDK's checks, with its codes).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from langchain_fabstir.chain.client import ChainClient
from langchain_fabstir.chain.config import SessionTerms
from langchain_fabstir.chain.marketplace import (
    MIN_NATIVE_DEPOSIT,
    CreatedJob,
    _check_job,
    from_base_units,
    priced_deposit,
    read_job,
    token_decimals,
)
from langchain_fabstir.chain.registry import HostRecord, ModelRecord, PaymentToken, token_address
from langchain_fabstir.errors import (
    ChainError,
    DelegateAllowanceInsufficientError,
    DelegateBalanceInsufficientError,
    DelegateNotAuthorizedError,
    DelegateRevokeIncompleteError,
    DelegateUsdcRequiredError,
    DepositLimitError,
    FabstirError,
    InsufficientDepositError,
    InsufficientFundsError,
    InvalidRequestError,
)

__all__ = [
    "DelegateStatus",
    "DepositBalance",
    "authorize_delegate",
    "check_deposit_limits",
    "create_session_as_delegate",
    "create_session_from_deposit",
    "delegate_status",
    "deposit_funds",
    "deposit_limits",
    "read_balances",
    "revoke_delegate",
    "withdraw_funds",
]

ZERO = "0x0000000000000000000000000000000000000000"


def _token(client: ChainClient, token: PaymentToken) -> str:
    return ZERO if token == "ETH" else token_address(client, token)


def checked_address(value: str, what: str) -> str:
    """``value`` as a checksum address, or ``INVALID_REQUEST`` naming ``what``."""
    from web3 import Web3

    if not isinstance(value, str) or not Web3.is_address(value):
        raise InvalidRequestError(f"{what} {value!r} is not an address (0x + 40 hex digits)")
    return str(Web3.to_checksum_address(value))


class DepositBalance(Decimal):
    """The in-contract balance in whole tokens: the value is the **free** balance (what
    ``deposit_balance()`` always returned: withdrawable, and what sessions ``from_deposit``
    draw from); ``free``, ``locked`` (deposits of the account's active sessions) and ``total``
    (free + locked) as the contract's views say, and ``token``."""

    free: Decimal
    locked: Decimal
    total: Decimal
    token: str

    def __new__(cls, free: Decimal, locked: Decimal, total: Decimal, token: str) -> DepositBalance:
        self = super().__new__(cls, free)
        self.free, self.locked, self.total, self.token = free, locked, total, token
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # copy/pickle keep the parts
        return (DepositBalance, (self.free, self.locked, self.total, self.token))

    def __repr__(self) -> str:
        return (
            f"DepositBalance(free={self.free}, locked={self.locked}, total={self.total}, "
            f"token={self.token!r})"
        )


class DelegateStatus(BaseModel):
    """Where a delegate stands with its payer: ``authorized`` (``isDelegateAuthorized``),
    the payer's ``allowance`` to the marketplace and ``payer_balance`` in the token (whole
    tokens)."""

    model_config = ConfigDict(frozen=True)

    payer: str
    delegate: str
    token: str
    authorized: bool
    allowance: Decimal
    payer_balance: Decimal


async def read_balances(
    client: ChainClient, token: PaymentToken = "ETH", account: str | None = None
) -> tuple[int, int, int]:
    """(free, locked, total) base units of ``account`` (default: the client's)."""
    who = account or client.address
    if who is None:
        raise InvalidRequestError("reading the deposit balance needs the user's address")
    fns = client.job_marketplace.functions
    what = "reading the deposit balance"
    if token == "ETH":
        free = await client.call(fns.userDepositsNative(who), what)
        locked = await client.call(fns.getLockedBalanceNative(who), what)
        total = await client.call(fns.getTotalBalanceNative(who), what)
    else:
        addr = token_address(client, token)
        free = await client.call(fns.userDepositsToken(who, addr), what)
        locked = await client.call(fns.getLockedBalanceToken(who, addr), what)
        total = await client.call(fns.getTotalBalanceToken(who, addr), what)
    return int(free), int(locked), int(total)


async def deposit_limits(client: ChainClient, token: PaymentToken) -> tuple[int, int | None]:
    """(minimum, maximum or ``None``) session deposit in base units: ``MIN_DEPOSIT`` for ETH;
    ``tokenMinDeposits`` / ``tokenMaxDeposits`` (0 = no maximum) for an ERC-20."""
    fns = client.job_marketplace.functions
    if token == "ETH":
        return max(
            MIN_NATIVE_DEPOSIT, int(await client.call(fns.MIN_DEPOSIT(), "reading limits"))
        ), None
    addr = token_address(client, token)
    minimum = int(await client.call(fns.tokenMinDeposits(addr), "reading the minimum deposit"))
    maximum = int(await client.call(fns.tokenMaxDeposits(addr), "reading the maximum deposit"))
    if minimum <= 0:
        raise DepositLimitError(f"the marketplace does not accept {token} ({addr})")
    return minimum, maximum or None


async def check_deposit_limits(client: ChainClient, token: PaymentToken, amount: int) -> None:
    """``DEPOSIT_LIMIT`` (nothing sent) when ``amount`` base units is outside the limits."""
    minimum, maximum = await deposit_limits(client, token)
    decimals = await token_decimals(client, token)
    if amount < minimum:
        raise DepositLimitError(
            f"deposit {from_base_units(amount, decimals)} {token} is below the contract's "
            f"minimum of {from_base_units(minimum, decimals)} {token}; nothing was sent",
            details={"minimum": minimum, "amount": amount},
        )
    if maximum is not None and amount > maximum:
        raise DepositLimitError(
            f"deposit {from_base_units(amount, decimals)} {token} is above the contract's "
            f"maximum of {from_base_units(maximum, decimals)} {token}; nothing was sent",
            details={"maximum": maximum, "amount": amount},
        )


def _job_id(client: ChainClient, receipt: Any, first: str) -> int:
    from langchain_fabstir.chain._web3 import DISCARD

    market = client.job_marketplace
    ours = client.config.job_marketplace.lower()
    for name in (first, "SessionJobCreatedForModel"):
        events = market.events[name]().process_receipt(receipt, errors=DISCARD)
        found = [e for e in events if str(e["address"]).lower() == ours]
        if len(found) == 1:
            args = found[0]["args"]
            return int(args.get("sessionId", args.get("jobId", 0)))
    raise ChainError(
        f"the job was created (tx {receipt['transactionHash'].hex()}) but its receipt names no "
        "single job id; look the job up on chain",
        details={"tx_hash": receipt["transactionHash"].hex()},
    )


async def create_session_from_deposit(
    client: ChainClient,
    host: HostRecord,
    model: ModelRecord,
    *,
    deposit: Decimal | str | int,
    token: PaymentToken = "ETH",
    max_price_per_token: Decimal | str | int | None = None,
    terms: SessionTerms | None = None,
) -> CreatedJob:
    """``createSessionFromDepositForModel`` (``modelId`` first, then ``host``): the deposit is
    reserved out of the caller's in-contract balance. ``INSUFFICIENT_DEPOSIT`` (nothing sent)
    when the free balance is smaller; the limits and prices as for a direct session."""
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
    await check_deposit_limits(client, token, amount)
    free, _locked, _total = await read_balances(client, token)
    if free < amount:
        raise InsufficientDepositError(
            f"the deposit balance holds {from_base_units(free, decimals)} {token}, the session "
            f"needs {from_base_units(amount, decimals)}; deposit() more first. Nothing was sent",
            details={"balance": free, "needed": amount},
        )
    fn = client.job_marketplace.functions.createSessionFromDepositForModel(
        bytes.fromhex(model.id[2:]),
        host.address,
        _token(client, token),
        amount,
        price,
        terms.max_duration_s,
        terms.proof_interval,
        terms.proof_timeout_window_s,
    )
    receipt = await client.transact(fn, "creating the session job from the deposit balance")
    job_id = _job_id(client, receipt, "SessionCreatedByDepositor")
    job = await read_job(client, job_id)
    _check_job(job, depositor=depositor, host=host.address, deposit=amount, price=price)
    return CreatedJob(job_id=job_id, tx_hash=receipt["transactionHash"].hex(), job=job)


async def create_session_as_delegate(
    client: ChainClient,
    payer: str,
    host: HostRecord,
    model: ModelRecord,
    *,
    deposit: Decimal | str | int,
    token: PaymentToken = "USDC",
    max_price_per_token: Decimal | str | int | None = None,
    terms: SessionTerms | None = None,
) -> CreatedJob:
    """``createSessionForModelAsDelegate``: the client's key (the delegate) creates a session
    that ``payer`` pays from its wallet through its allowance to the marketplace. Checked
    first, as the SDK does: an ERC-20 (``DELEGATE_USDC_REQUIRED``), the authorization
    (``DELEGATE_NOT_AUTHORIZED``), the allowance (``DELEGATE_ALLOWANCE_INSUFFICIENT``) and
    the payer's balance (``DELEGATE_BALANCE_INSUFFICIENT``)."""
    delegate = client.address
    if delegate is None:
        raise InvalidRequestError("a delegated session needs the delegate's key (private_key=)")
    if token == "ETH":
        raise DelegateUsdcRequiredError(
            "a delegate pays in USDC (the contract's delegated sessions are ERC-20 only); "
            'use payment_token="USDC"'
        )
    payer = checked_address(payer, "payer")
    terms, decimals, amount, price = await priced_deposit(
        client,
        host,
        model,
        deposit=deposit,
        token=token,
        max_price_per_token=max_price_per_token,
        terms=terms,
    )
    await check_deposit_limits(client, token, amount)
    status = await delegate_status(client, payer, delegate, token)
    needed = from_base_units(amount, decimals)
    if not status.authorized:
        raise DelegateNotAuthorizedError(
            f"{payer} has not authorized {delegate} as its delegate (or revoked it); the payer "
            "runs authorize_delegate first. Nothing was sent",
            details={"payer": payer, "delegate": delegate},
        )
    if status.allowance < needed:
        raise DelegateAllowanceInsufficientError(
            f"{payer}'s {token} allowance left for delegates is {status.allowance}, the session "
            f"needs {needed}; the payer raises it with authorize_delegate. Nothing was sent",
            details={"allowance": str(status.allowance), "needed": str(needed)},
        )
    if status.payer_balance < needed:
        raise DelegateBalanceInsufficientError(
            f"{payer} holds {status.payer_balance} {token}, the session needs {needed}. "
            "Nothing was sent",
            details={"balance": str(status.payer_balance), "needed": str(needed)},
        )
    fn = client.job_marketplace.functions.createSessionForModelAsDelegate(
        payer,
        bytes.fromhex(model.id[2:]),
        host.address,
        token_address(client, token),
        amount,
        price,
        terms.max_duration_s,
        terms.proof_interval,
        terms.proof_timeout_window_s,
    )
    receipt = await client.transact(fn, "creating the session job as a delegate")
    job_id = _job_id(client, receipt, "SessionCreatedByDelegate")
    job = await read_job(client, job_id)
    _check_job(job, depositor=payer, host=host.address, deposit=amount, price=price)
    return CreatedJob(job_id=job_id, tx_hash=receipt["transactionHash"].hex(), job=job)


async def deposit_funds(client: ChainClient, amount: int, token: PaymentToken = "ETH") -> str:
    """Move ``amount`` base units from the wallet into the in-contract balance
    (``depositNative``; for USDC ``approve`` then ``depositToken``). Returns the tx hash."""
    if amount <= 0:
        raise InvalidRequestError("the amount to deposit must be > 0")
    fns = client.job_marketplace.functions
    if token == "ETH":
        receipt = await client.transact(fns.depositNative(), "depositing ETH", value=amount)
        return str(receipt["transactionHash"].hex())
    usdc = token_address(client, token)
    sender = client.address
    if sender is None:
        raise InvalidRequestError("depositing needs the user's key (private_key=)")
    balance = int(await client.call(client.usdc.functions.balanceOf(sender), "USDC balance"))
    if balance < amount:
        raise InsufficientFundsError(
            f"{sender} holds {from_base_units(balance, 6)} USDC, the deposit is "
            f"{from_base_units(amount, 6)}; nothing was sent",
            details={"balance": balance, "needed": amount},
        )
    await client.transact(
        client.usdc.functions.approve(client.config.job_marketplace, amount), "approving USDC"
    )
    try:
        receipt = await client.transact(fns.depositToken(usdc, amount), "depositing USDC")
    except FabstirError:
        try:  # leave no allowance behind for a deposit that did not happen
            await client.transact(
                client.usdc.functions.approve(client.config.job_marketplace, 0),
                "resetting the USDC allowance",
            )
        except FabstirError:
            pass
        raise
    return str(receipt["transactionHash"].hex())


async def withdraw_funds(client: ChainClient, amount: int, token: PaymentToken = "ETH") -> str:
    """Withdraw ``amount`` base units of the free balance to the wallet (tx hash)."""
    if amount <= 0:
        raise InvalidRequestError("the amount to withdraw must be > 0")
    free, _locked, _total = await read_balances(client, token)
    if amount > free:
        raise InsufficientDepositError(
            f"withdrawing {amount} base units but the free deposit balance is {free}; "
            "nothing was sent",
            details={"balance": free, "needed": amount},
        )
    fns = client.job_marketplace.functions
    if token == "ETH":
        receipt = await client.transact(fns.withdrawNative(amount), "withdrawing ETH")
    else:
        receipt = await client.transact(
            fns.withdrawToken(token_address(client, token), amount), "withdrawing USDC"
        )
    return str(receipt["transactionHash"].hex())


async def delegate_status(
    client: ChainClient, payer: str, delegate: str, token: PaymentToken = "USDC"
) -> DelegateStatus:
    """``isDelegateAuthorized(payer, delegate)``, the payer's allowance to the marketplace
    and the payer's wallet balance in ``token``."""
    if token == "ETH":
        raise DelegateUsdcRequiredError("delegates pay in USDC; ETH has no allowance")
    payer = checked_address(payer, "payer")
    delegate = checked_address(delegate, "delegate")
    decimals = await token_decimals(client, token)
    fns = client.job_marketplace.functions
    authorized = bool(
        await client.call(fns.isDelegateAuthorized(payer, delegate), "reading the delegation")
    )
    erc20 = client.token_contract(token_address(client, token))
    allowance = int(
        await client.call(
            erc20.functions.allowance(payer, client.config.job_marketplace), "reading allowance"
        )
    )
    balance = int(await client.call(erc20.functions.balanceOf(payer), "reading the balance"))
    return DelegateStatus(
        payer=payer,
        delegate=delegate,
        token=token,
        authorized=authorized,
        allowance=from_base_units(allowance, decimals),
        payer_balance=from_base_units(balance, decimals),
    )


async def authorize_delegate(
    client: ChainClient, delegate: str, allowance: int, token: PaymentToken = "USDC"
) -> None:
    """The payer: ``approve(marketplace, allowance)`` then ``authorizeDelegate(delegate,
    true)`` (the SDK's order). The allowance caps what every delegate together may spend."""
    if token == "ETH":
        raise DelegateUsdcRequiredError("delegates pay in USDC; an allowance is an ERC-20's")
    delegate = checked_address(delegate, "delegate")
    if client.address is not None and delegate.lower() == client.address.lower():
        raise InvalidRequestError("a delegate is another key than the payer's own")
    erc20 = client.token_contract(token_address(client, token))
    await client.transact(
        erc20.functions.approve(client.config.job_marketplace, allowance),
        "approving the delegate allowance",
    )
    await client.transact(
        client.job_marketplace.functions.authorizeDelegate(delegate, True),
        "authorizing the delegate",
    )


async def revoke_delegate(client: ChainClient, delegate: str, token: PaymentToken = "USDC") -> None:
    """The payer: ``authorizeDelegate(delegate, false)`` then ``approve(marketplace, 0)``.
    ``DELEGATE_REVOKE_INCOMPLETE`` when a step failed (``details["step"]``: ``authorize``
    when nothing changed, ``allowance`` when the delegate is de-authorized but the allowance
    is still open); running it again completes it."""
    delegate = checked_address(delegate, "delegate")
    erc20 = client.token_contract(token_address(client, token))
    try:
        await client.transact(
            client.job_marketplace.functions.authorizeDelegate(delegate, False),
            "de-authorizing the delegate",
        )
    except FabstirError as exc:
        raise DelegateRevokeIncompleteError(
            f"de-authorizing {delegate} failed ({exc.message}); the delegate may still pay "
            "through the allowance: run revoke_delegate again",
            details={"step": "authorize", "delegate": delegate},
        ) from exc
    try:
        await client.transact(
            erc20.functions.approve(client.config.job_marketplace, 0), "resetting the allowance"
        )
    except FabstirError as exc:
        raise DelegateRevokeIncompleteError(
            f"{delegate} is de-authorized but resetting the {token} allowance to 0 failed "
            f"({exc.message}); run revoke_delegate again",
            details={"step": "allowance", "delegate": delegate},
        ) from exc
