"""A spending budget for unattended agents: the deposits a manager commits never exceed it.

:class:`SpendBudget` is what ``SessionManager(max_spend=..., spend_ledger=...)`` uses. Every
payment is *reserved* before its transaction is sent; with a ledger file the reservation is on
disk (written atomically: a temporary file, ``fsync``, ``rename``) before anything leaves, so
a crash between the write and the transaction can only make the budget stricter, never forget
a payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import BudgetExceededError, InvalidRequestError, SpendLedgerError

if TYPE_CHECKING:
    from langchain_fabstir.chain.client import ChainClient
    from langchain_fabstir.chain.marketplace import CreatedJob
    from langchain_fabstir.chain.registry import HostRecord, ModelRecord, PaymentToken

__all__ = ["SpendBudget", "SpendReservation", "paid_create"]

LEDGER_FORMAT = "fabstir-spend-ledger/1"
MAX_LEDGER_BYTES = 8 * 1024 * 1024

try:  # POSIX: several processes may share one ledger file
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per ledger
    fcntl = None  # type: ignore[assignment]


def _money(value: Any, what: str) -> Decimal:
    if isinstance(value, (bool, float)) or not isinstance(value, (Decimal, str, int)):
        raise InvalidRequestError(
            f"{what} must be a Decimal, str or int (not {type(value).__name__}: money)"
        )
    try:
        amount = Decimal(value)
    except (InvalidOperation, ValueError):
        raise InvalidRequestError(f"{what} {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequestError(f"{what} must be a finite amount >= 0, got {value!r}")
    return amount


@dataclass(frozen=True)
class SpendReservation:
    """One payment counted against the budget (``id`` names it in the ledger)."""

    id: str
    token: str
    amount: Decimal
    what: str


class SpendBudget:
    """The most a manager may commit in session deposits, per token, for its whole life.

    ``max_spend`` maps a token (``"ETH"``, ``"USDC"``) to whole tokens (``Decimal``, ``str``
    or ``int``; never ``float`` or ``bool``). A token it does not name has a budget of 0: a
    budget that forgot a token never pays in it. What counts is every session deposit this
    manager sends (a direct deposit, one drawn from the pre-funded balance, or one a
    delegate pays for its payer); refunds do not give budget back, and moving money into or
    out of the pre-funded balance (``deposit``/``withdraw``) is not spending.

    ``ledger`` (a path) makes the budget survive restarts: every reservation is written to it
    atomically before the payment transaction is sent, and a new budget on the same file
    starts from what it records. Several processes may share the file (an advisory lock
    serializes them on POSIX). An unreadable ledger is a ``SPEND_LEDGER_INVALID`` error and
    nothing is paid.

    >>> budget = SpendBudget({"ETH": "0.002"})
    >>> r = budget.reserve("ETH", Decimal("0.0015"), what="job")
    >>> budget.remaining("ETH")
    Decimal('0.0005')
    >>> budget.reserve("ETH", Decimal("0.001"), what="job")
    Traceback (most recent call last):
    ...
    langchain_fabstir.errors.BudgetExceededError: [BUDGET_EXCEEDED] ...
    """

    def __init__(
        self,
        max_spend: Mapping[str, Decimal | str | int],
        ledger: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(max_spend, Mapping) or not max_spend:
            raise InvalidRequestError(
                'max_spend must map tokens to amounts, e.g. {"USDC": Decimal("5")}'
            )
        self.limits: dict[str, Decimal] = {}
        for token, amount in max_spend.items():
            if token not in ("ETH", "USDC"):
                raise InvalidRequestError(f"max_spend names {token!r}; tokens are ETH and USDC")
            self.limits[token] = _money(amount, f"max_spend[{token!r}]")
        self.ledger = Path(ledger) if ledger is not None else None
        self._lock = threading.Lock()
        self._entries: list[dict[str, str]] = []
        if self.ledger is not None:
            self._entries = self._read()  # refuse a bad ledger now, not at the first payment

    def __repr__(self) -> str:
        return f"SpendBudget(limits={self.limits!r}, ledger={str(self.ledger)!r})"

    # --- reading --------------------------------------------------------------------

    def spent(self, token: str) -> Decimal:
        """What was committed in ``token`` (whole tokens), as the ledger says now."""
        with self._lock, self._locked_file():
            if self.ledger is not None:
                self._entries = self._read()
            return self._spent(token)

    def remaining(self, token: str) -> Decimal:
        """What may still be committed in ``token``."""
        return max(Decimal(0), self.limits.get(token, Decimal(0)) - self.spent(token))

    def _spent(self, token: str) -> Decimal:
        return sum((Decimal(e["amount"]) for e in self._entries if e["token"] == token), Decimal(0))

    # --- reserving ------------------------------------------------------------------

    def reserve(self, token: str, amount: Decimal | str | int, *, what: str) -> SpendReservation:
        """Count ``amount`` of ``token`` as spent, or raise ``BUDGET_EXCEEDED``. With a
        ledger, the reservation is on disk when this returns: send the transaction after."""
        value = _money(amount, "amount")
        with self._lock, self._locked_file():
            if self.ledger is not None:
                self._entries = self._read()
            limit = self.limits.get(token, Decimal(0))
            spent = self._spent(token)
            if spent + value > limit:
                raise BudgetExceededError(
                    f"paying {value} {token} ({what}) would take this manager's spending to "
                    f"{spent + value} {token}, above its max_spend of {limit} {token} "
                    f"({spent} already committed); nothing was sent",
                    details={
                        "token": token,
                        "spent": str(spent),
                        "limit": str(limit),
                        "amount": str(value),
                    },
                )
            entry = {
                "id": os.urandom(8).hex(),
                "token": token,
                "amount": str(value),
                "what": what[:200],
                "at": str(int(time.time())),
            }
            entries = [*self._entries, entry]
            if self.ledger is not None:
                self._write(entries)
            self._entries = entries
        return SpendReservation(id=entry["id"], token=token, amount=value, what=what)

    def release(self, reservation: SpendReservation) -> None:
        """Give a reservation back: only when the payment certainly did not happen (refused
        before sending, or its transaction reverted)."""
        with self._lock, self._locked_file():
            if self.ledger is not None:
                self._entries = self._read()
            entries = [e for e in self._entries if e["id"] != reservation.id]
            if len(entries) != len(self._entries) and self.ledger is not None:
                self._write(entries)
            self._entries = entries

    # --- the ledger file ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[None]:
        if self.ledger is None or fcntl is None:
            yield
            return
        lock_path = self.ledger.with_name(self.ledger.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpendLedgerError(
                f"cannot open the spend ledger lock {lock_path}: {exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> list[dict[str, str]]:
        assert self.ledger is not None
        try:
            raw = self.ledger.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SpendLedgerError(f"cannot read the spend ledger {self.ledger}: {exc}") from None
        bad = SpendLedgerError(
            f"the spend ledger {self.ledger} is not a {LEDGER_FORMAT} file; nothing is paid "
            "until it is fixed or another path is given"
        )
        try:
            doc = loads_untrusted(raw, max_bytes=MAX_LEDGER_BYTES)
        except ValueError:
            raise bad from None
        if not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT:
            raise bad
        entries = doc.get("entries")
        if not isinstance(entries, list):
            raise bad
        out: list[dict[str, str]] = []
        for e in entries:
            if not isinstance(e, dict) or not all(
                isinstance(e.get(k), str) for k in ("id", "token", "amount")
            ):
                raise bad
            try:
                amount = Decimal(e["amount"])
            except InvalidOperation:
                raise bad from None
            if not amount.is_finite() or amount < 0:
                raise bad
            out.append({k: str(v) for k, v in e.items() if isinstance(v, str)})
        return out

    def _write(self, entries: list[dict[str, str]]) -> None:
        assert self.ledger is not None
        data = json.dumps({"format": LEDGER_FORMAT, "entries": entries}, indent=1).encode()
        directory = self.ledger.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.ledger.name + ".", dir=directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.ledger)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            with contextlib.suppress(OSError):  # the rename itself, durable (POSIX)
                dfd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise SpendLedgerError(
                f"cannot write the spend ledger {self.ledger}: {exc}; nothing was sent"
            ) from None


# Errors raised before a payment transaction is sent, or by a transaction that reverted: the
# deposit certainly did not move, so its reservation is given back.
def _not_paid(exc: BaseException) -> bool:
    from langchain_fabstir.errors import (
        DelegateError,
        DepositLimitError,
        InsufficientFundsError,
        PriceLimitError,
        TransactionRevertedError,
    )

    return isinstance(
        exc,
        (
            InvalidRequestError,
            DepositLimitError,
            PriceLimitError,
            InsufficientFundsError,
            DelegateError,
            TransactionRevertedError,
        ),
    )


async def paid_create(
    client: ChainClient,
    host: HostRecord,
    model: ModelRecord,
    *,
    deposit: Decimal | str | int,
    token: PaymentToken,
    max_price_per_token: Decimal | str | int | None,
    from_deposit: bool = False,
    budget: SpendBudget | None = None,
    payer: str | None = None,
) -> CreatedJob:
    """Create the session job (directly, from the deposit balance with ``from_deposit``, or
    as a delegate for ``payer``), checking the deposit limits and reserving the deposit in
    the budget before any transaction is sent."""
    from langchain_fabstir.chain.funds import (
        check_deposit_limits,
        create_session_as_delegate,
        create_session_from_deposit,
    )
    from langchain_fabstir.chain.marketplace import (
        create_session_job,
        from_base_units,
        to_base_units,
        token_decimals,
    )

    decimals = await token_decimals(client, token)
    amount = to_base_units(deposit, decimals, what="deposit")
    if amount > 0:
        await check_deposit_limits(client, token, amount)
    reservation = None
    if budget is not None:
        reservation = await asyncio.to_thread(
            budget.reserve,
            token,
            from_base_units(amount, decimals),
            what=f"session deposit with host {host.address}",
        )
    try:
        if payer is not None:
            return await create_session_as_delegate(
                client,
                payer,
                host,
                model,
                deposit=deposit,
                token=token,
                max_price_per_token=max_price_per_token,
            )
        if from_deposit:
            return await create_session_from_deposit(
                client,
                host,
                model,
                deposit=deposit,
                token=token,
                max_price_per_token=max_price_per_token,
            )
        return await create_session_job(
            client,
            host,
            model,
            deposit=deposit,
            token=token,
            max_price_per_token=max_price_per_token,
        )
    except BaseException as exc:
        if reservation is not None and budget is not None and _not_paid(exc):
            await asyncio.to_thread(budget.release, reservation)
        raise
