"""Paying for sessions on chain: choose a host from the registry, create the job, settle.

:class:`SessionPayments` is the part of :class:`~langchain_fabstir.SessionManager` that talks
to the chain (see :mod:`langchain_fabstir.chain`). For a paid session it

1. resolves the model in the ModelRegistry and lists the active hosts registered for it, with
   their price for the payment token (a :class:`~langchain_fabstir.chain.ChainHostSource`
   inside a :class:`~langchain_fabstir.discovery.HostDiscovery`, so hosts are probed and ranked
   by the usual policies; ``cheapest`` is the on-chain price);
2. drops every host above the user's ``max_price_per_token`` (``PRICE_ABOVE_LIMIT`` when that
   leaves none; ``NO_HOST_FOR_MODEL`` when the chain lists none or none answers);
3. creates the job on the first host (the price is that host's, the deposit exactly the
   user's), takes the job id from the event and checks the job on chain.

A paid job belongs to one host: the session reconnects to it, never fails over to another
(another host cannot bill this job). If the socket cannot be opened after paying, the job is
completed at once by the user, so the deposit (less the contract's early-end fee) comes back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from pydantic import SecretStr

from langchain_fabstir.chain.config import ChainConfig
from langchain_fabstir.discovery import HostDiscovery, HostInfo, SelectionPolicy
from langchain_fabstir.errors import (
    ChainError,
    FabstirError,
    InvalidRequestError,
    NoHostForModelError,
    PriceLimitError,
)
from langchain_fabstir.sessions.trust import trusted_paid_host

if TYPE_CHECKING:
    from langchain_fabstir.chain.client import ChainClient
    from langchain_fabstir.chain.marketplace import CreatedJob, Settlement
    from langchain_fabstir.chain.registry import (
        ChainHostSource,
        HostRecord,
        ModelRecord,
        PaymentToken,
    )
    from langchain_fabstir.sessions.budget import SpendBudget

__all__ = ["PaidChoice", "SessionPayments"]

log = logging.getLogger(__name__)


@dataclass
class PaidChoice:
    """The host chosen for a paid session, the model record, and the job created."""

    host: HostRecord
    model: ModelRecord
    job: CreatedJob
    host_key: str | None = None
    """The host's key the session trusts (its record's, or proven by the host before paying:
    :func:`~langchain_fabstir.sessions.trust.trusted_paid_host`)."""


class SessionPayments:
    """Chain access for a :class:`~langchain_fabstir.SessionManager` (one client, one key)."""

    def __init__(
        self,
        chain: ChainConfig | ChainClient,
        private_key: SecretStr | None,
        *,
        probe_ttl: float = 30.0,
        budget: SpendBudget | None = None,
        payer: str | None = None,
    ) -> None:
        from langchain_fabstir.chain import require_web3

        require_web3()
        from langchain_fabstir.chain.client import ChainClient

        if isinstance(chain, ChainConfig):
            self.client = ChainClient(chain, private_key)
            self._owns_client = True
        else:
            self.client = chain
            self._owns_client = False
        self.probe_ttl = probe_ttl
        self.budget = budget
        self.payer = payer  # a delegate's payer (sessions via createSessionForModelAsDelegate)
        self._discoveries: dict[tuple[str, str], tuple[HostDiscovery, ChainHostSource]] = {}

    @property
    def address(self) -> str | None:
        return self.client.address

    def discovery(self, model: str, token: PaymentToken) -> tuple[HostDiscovery, ChainHostSource]:
        """The discovery (probes, breakers) for hosts of ``model`` priced in ``token``."""
        from langchain_fabstir.chain.registry import ChainHostSource

        key = (model, token)
        if key not in self._discoveries:
            source = ChainHostSource(self.client, model, token=token)
            found = HostDiscovery(use_env=False, sources=[source], probe_ttl=self.probe_ttl)
            self._discoveries[key] = (found, source)
        return self._discoveries[key]

    async def choose(
        self,
        model: str,
        *,
        token: PaymentToken,
        max_price_per_token: Decimal | str | int | None,
        policy: SelectionPolicy | str,
    ) -> tuple[list[HostRecord], ModelRecord]:
        """Hosts that can serve ``model`` within the price limit, best first."""
        from langchain_fabstir.chain.marketplace import price_limit, token_decimals

        discovery, source = self.discovery(model, token)
        await self.client.ensure_chain()
        candidates: list[HostInfo] = await discovery.candidates(model=model, policy=policy)
        record = source.model_record
        if record is None:  # pragma: no cover - load() always sets it when model is given
            raise ChainError(f"model {model!r} was not resolved")
        if not candidates:
            listed = len(source.records)
            why = (
                "no active host is registered for it"
                if not listed
                else f"none of the {listed} registered host(s) is usable now"
            )
            reasons = {h.url: h.reason or h.status for h in discovery.hosts if not h.healthy}
            raise NoHostForModelError(
                f"no host for model {record.name}: {why}"
                + (f" ({'; '.join(f'{u}: {r}' for u, r in reasons.items())})" if reasons else ""),
                details={"model": record.name, "model_id": record.id, "reasons": reasons},
            )
        records = [
            source.records[c.url]
            for c in candidates
            if c.url in source.records and (source.records[c.url].price or 0) > 0
        ]  # a host with no price for the model and token cannot be paid
        if not records:
            raise NoHostForModelError(
                f"no host for model {record.name} has a price in {token}",
                details={"model": record.name, "model_id": record.id},
            )
        if max_price_per_token is not None:
            limit = price_limit(max_price_per_token, await token_decimals(self.client, token))
            within = [r for r in records if r.price is not None and r.price <= limit]
            if not within:
                cheapest = min(r.price or 0 for r in records)
                raise PriceLimitError(
                    f"every host for {record.name} asks more than your max_price_per_token "
                    f"{max_price_per_token} {token} (the cheapest asks {cheapest} base units per "
                    "1,000 tokens); nothing was paid",
                    details={"limit": limit, "cheapest": cheapest},
                )
            records = within
        return records, record

    async def pay(
        self,
        model: str,
        *,
        deposit: Decimal | str | int,
        token: PaymentToken,
        max_price_per_token: Decimal | str | int | None,
        policy: SelectionPolicy | str,
        encryption: Literal["auto", "required", "off"] = "auto",
        from_deposit: bool = False,
    ) -> PaidChoice:
        """Choose a host and create the job (the user's limits are hard limits). The host
        must be who its record says before anything is paid (see
        :func:`~langchain_fabstir.sessions.trust.trusted_paid_host`). The job is paid from
        the deposit balance with ``from_deposit``, for the payer when this key is a delegate,
        and counted against the budget before the transaction is sent."""
        from langchain_fabstir.chain.marketplace import parse_amount
        from langchain_fabstir.sessions.budget import paid_create

        parse_amount(deposit, "deposit")  # refuse bad money before any request
        if max_price_per_token is not None:
            parse_amount(max_price_per_token, "max_price_per_token")
        if self.client.address is None:
            raise InvalidRequestError(
                "a paid session needs the user's key: pass private_key= or set FABSTIR_PRIVATE_KEY"
            )
        records, record = await self.choose(
            model, token=token, max_price_per_token=max_price_per_token, policy=policy
        )
        probed = {h.url: h.features for h in self.discovery(model, token)[0].hosts}
        host, host_key = await trusted_paid_host(records, probed, mode=encryption)
        job = await paid_create(
            self.client,
            host,
            record,
            deposit=deposit,
            token=token,
            max_price_per_token=max_price_per_token,
            from_deposit=from_deposit,
            budget=self.budget,
            payer=self.payer,
        )
        log.info("paid session job %s with host %s (%s)", job.job_id, host.address, host.url)
        return PaidChoice(host=host, model=record, job=job, host_key=host_key)

    def record_failure(self, choice: PaidChoice, error: BaseException) -> None:
        """Tell the discovery behind ``choice`` that its host failed."""
        for discovery, _source in self._discoveries.values():
            discovery.record_failure(choice.host.url, error)

    async def release(self, job_id: int) -> None:
        """End a job the user cannot use (the socket never opened): complete it as the
        depositor so the unused deposit is refunded. Failures are logged, not raised: the
        settlement watcher can still finish the job after its deadline."""
        from langchain_fabstir.chain.marketplace import complete_job

        try:
            await complete_job(self.client, job_id)
        except FabstirError as exc:
            log.warning("could not complete unused job %s: %s", job_id, exc)

    async def settlement(self, job_id: int) -> Settlement:
        from langchain_fabstir.chain.marketplace import settlement

        return await settlement(self.client, job_id)

    async def aclose(self) -> None:
        for discovery, _source in self._discoveries.values():
            await discovery.aclose()
        self._discoveries.clear()
        if self._owns_client:
            await self.client.aclose()
