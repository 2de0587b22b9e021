""":class:`HostDiscovery`: find hosts, probe them, and hand out failover-ordered candidates."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

import httpx

from langchain_fabstir._http import client as http_client
from langchain_fabstir.discovery.breaker import CircuitBreaker
from langchain_fabstir.discovery.hosts import (
    HostInfo,
    HostRegistryError,
    SelectionPolicy,
    normalize_host_url,
)
from langchain_fabstir.discovery.probe import ProbeSettings, probe_host
from langchain_fabstir.discovery.ranking import rank
from langchain_fabstir.discovery.sources import (
    HostEntry,
    HostSource,
    env_hosts,
    load_registry,
    merge_hosts,
    parse_entries,
)
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    InvalidRequestError,
    NoHostAvailableError,
)

__all__ = ["HostDiscovery"]

logger = logging.getLogger(__name__)

_ADDRESS_PREFIX = "0x"


class HostDiscovery:
    """Host discovery without a blockchain: sources, probes, policies and circuit breakers.

    Hosts come from ``hosts`` (URLs, dicts or :class:`HostInfo`), the ``FABSTIR_HOSTS``
    environment variable (read once, here; unless ``use_env=False``; ``environ`` replaces
    ``os.environ``), ``registry`` (a JSON file path or an http(s) URL, re-read on every
    refresh; its hosts appear in :attr:`hosts` after the first refresh) and ``sources``
    (:class:`~langchain_fabstir.discovery.sources.HostSource` objects such as the chain's
    :class:`~langchain_fabstir.chain.ChainHostSource`, loaded on every refresh). If the registry URL
    becomes unreachable after a successful load, the last list is kept and the failure is
    stored in :attr:`registry_error`. Every refresh probes all hosts concurrently (at
    most ``max_concurrency`` at a time) with ``probe_settings``; :meth:`candidates` refreshes by
    itself when the last probe is older than ``probe_ttl`` seconds.

    The session layer reports connection outcomes with :meth:`record_failure` and
    :meth:`record_success`; after ``failure_threshold`` consecutive failures a host rests for
    ``reset_timeout`` seconds, then gets one trial. ``clock`` (``time.monotonic`` by default)
    drives breakers, ``probe_ttl`` and ``HostInfo.last_probe``.

    Usage::

        async with HostDiscovery(["http://127.0.0.1:8080"], registry="hosts.json") as d:
            for host in await d.candidates(model="smollm2", policy=SelectionPolicy.AUTO):
                try:
                    ...  # connect to host.ws_url
                except ConnectionFailedError as exc:
                    d.record_failure(host.url, exc)
                    continue
                d.record_success(host.url)
                break

    >>> d = HostDiscovery(["ws://127.0.0.1:1/v1/ws"], use_env=False)
    >>> [h.url for h in d.hosts]
    ['http://127.0.0.1:1']
    """

    def __init__(
        self,
        hosts: Iterable[HostEntry] | None = None,
        *,
        registry: str | os.PathLike[str] | None = None,
        sources: Sequence[HostSource] = (),
        use_env: bool = True,
        environ: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        probe_settings: ProbeSettings | None = None,
        max_concurrency: int = 16,
        probe_ttl: float = 30.0,
        failure_threshold: int = 3,
        reset_timeout: float = 30.0,
        latency_weight: float = 0.5,
        price_weight: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if failure_threshold < 1 or reset_timeout < 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout >= 0")
        self._static = merge_hosts(
            parse_entries(hosts or [], source="hosts"),
            env_hosts(environ) if use_env else [],
        )
        self._registry = registry
        self._registry_hosts: list[HostInfo] | None = None
        self._sources = list(sources)
        self._source_hosts: dict[int, list[HostInfo]] = {}
        self._extra: list[HostInfo] = []
        self._hosts: dict[str, HostInfo] = {h.url: h for h in self._static}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._client = client
        self._owns_client = client is None
        self._settings = probe_settings or ProbeSettings()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._lock = asyncio.Lock()
        self.probe_ttl = probe_ttl
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.latency_weight = latency_weight
        self.price_weight = price_weight
        self._clock = clock
        self._last_refresh: float | None = None
        self.registry_error: Exception | None = None
        """The last registry failure that was tolerated (hosts from the previous load kept)."""

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> HostDiscovery:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = http_client(self._settings.timeout)
        return self._client

    # --- state ------------------------------------------------------------------------

    @property
    def hosts(self) -> list[HostInfo]:
        """Copies of every known host with its last probed state, in source order."""
        return [h.model_copy(deep=True) for h in self._hosts.values()]

    def breaker(self, url: str) -> CircuitBreaker:
        """The circuit breaker of the host at ``url`` (any accepted URL form)."""
        key = self._key(url)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(
                failure_threshold=self.failure_threshold,
                reset_timeout=self.reset_timeout,
                clock=self._clock,
            )
        return self._breakers[key]

    def record_failure(self, url: str, error: BaseException | str | None = None) -> None:
        """Report that using the host at ``url`` failed (connect, handshake, stream)."""
        self.breaker(url).record_failure(error)

    def record_success(self, url: str) -> None:
        """Report that the host at ``url`` worked; closes its circuit breaker."""
        self.breaker(url).record_success()

    @staticmethod
    def _key(url: str) -> str:
        try:
            return normalize_host_url(url)
        except HostRegistryError as exc:
            raise InvalidRequestError(exc.message, host_url=url) from None

    # --- refresh ----------------------------------------------------------------------

    async def _load_sources(self) -> list[HostInfo]:
        if self._registry is not None:
            try:
                self._registry_hosts = await load_registry(
                    self._registry, client=self._http(), timeout=self._settings.timeout
                )
                self.registry_error = None
            except ConnectionFailedError as exc:
                if self._registry_hosts is None:
                    raise
                self.registry_error = exc
                logger.warning("host registry unreachable, keeping the last list: %s", exc)
        for index, source in enumerate(self._sources):
            try:
                self._source_hosts[index] = list(await source.load())
            except FabstirError as exc:
                if index not in self._source_hosts or not exc.is_retryable:
                    raise
                self.registry_error = exc
                logger.warning("host source %s failed, keeping its last list: %s", source.name, exc)
        from_sources = [h for i in sorted(self._source_hosts) for h in self._source_hosts[i]]
        return merge_hosts(self._static, self._registry_hosts or [], from_sources, self._extra)

    async def _probe_one(self, host: HostInfo) -> HostInfo:
        async with self._semaphore:
            return await probe_host(host, self._http(), settings=self._settings, clock=self._clock)

    async def refresh(self) -> list[HostInfo]:
        """Re-read the sources and probe every host; returns copies of the results.

        Raises :class:`HostRegistryError` for a malformed registry and
        :class:`ConnectionFailedError` for an unreachable registry that never loaded.
        """
        async with self._lock:
            await self._refresh_locked()
        return self.hosts

    async def _refresh_locked(self) -> None:
        hosts = await self._load_sources()
        probed = await asyncio.gather(*(self._probe_one(h) for h in hosts))
        self._hosts = {h.url: h for h in probed}
        self._last_refresh = self._clock()

    async def _ensure_fresh(self) -> None:
        async with self._lock:
            stale = (
                self._last_refresh is None or self._clock() - self._last_refresh >= self.probe_ttl
            )
            if stale:
                await self._refresh_locked()
                return
            new = [h for h in self._hosts.values() if h.last_probe is None]
            for host in await asyncio.gather(*(self._probe_one(h) for h in new)):
                self._hosts[host.url] = host

    # --- selection --------------------------------------------------------------------

    def _wanted(self, host_url: str | Sequence[str] | None) -> list[str] | None:
        if host_url is None:
            return None
        wanted = [host_url] if isinstance(host_url, str) else list(host_url)
        for item in wanted:
            if item.lower().startswith(_ADDRESS_PREFIX) and "://" not in item:
                continue
            url = self._key(item)
            if url not in self._hosts and all(h.url != url for h in self._extra):
                self._extra.append(HostInfo(url=url))
                self._hosts[url] = HostInfo(url=url)
        return wanted

    async def _plan(
        self,
        model: str | None,
        policy: SelectionPolicy | str,
        host_url: str | Sequence[str] | None,
    ) -> tuple[list[HostInfo], dict[str, str]]:
        try:
            policy = SelectionPolicy(policy)
        except ValueError:
            raise InvalidRequestError(f"unknown selection policy {policy!r}") from None
        if policy is SelectionPolicy.SPECIFIC and not host_url:
            raise InvalidRequestError("policy SPECIFIC needs host_url (a URL or a 0x address)")
        wanted = self._wanted(host_url)
        await self._ensure_fresh()

        reasons: dict[str, str] = {}
        pool = list(self._hosts.values())
        if wanted is not None:
            chosen: list[HostInfo] = []
            for item in wanted:
                found = [h for h in pool if h.matches(item) and h not in chosen]
                if not found:
                    reasons[item] = "no known host has this address"
                chosen.extend(found)
            pool = chosen

        usable: list[HostInfo] = []
        on_trial: set[str] = set()
        for host in pool:
            breaker = self.breaker(host.url)
            if not host.healthy:
                reasons[host.url] = host.reason or f"status {host.status}"
            elif host.serves(model) == "no":
                served = ", ".join(host.models) or "none"
                reasons[host.url] = f"does not serve model {model!r} (serves: {served})"
            elif not breaker.available():
                reasons[host.url] = breaker.describe()
            else:
                usable.append(host)
                if breaker.state == "half_open":
                    on_trial.add(host.url)
        ranked = rank(
            usable,
            policy,
            model=model,
            on_trial=frozenset(on_trial),
            latency_weight=self.latency_weight,
            price_weight=self.price_weight,
        )
        return ranked, reasons

    async def candidates(
        self,
        model: str | None = None,
        policy: SelectionPolicy | str = SelectionPolicy.AUTO,
        host_url: str | Sequence[str] | None = None,
    ) -> list[HostInfo]:
        """Usable hosts in failover order (healthy, serving ``model``, not resting).

        ``host_url`` (a URL in any accepted form, a 0x address, or a list of them) restricts
        the result to those hosts under any policy; :attr:`SelectionPolicy.SPECIFIC` requires
        it and keeps its order. A URL not known yet is added and probed. Hosts whose breaker
        is half-open are listed last, and listing them claims their single trial. Returns
        ``[]`` when nothing fits; :meth:`select` raises instead.
        """
        ranked, _ = await self._plan(model, policy, host_url)
        for host in ranked:
            self.breaker(host.url).try_acquire()
        return [h.model_copy(deep=True) for h in ranked]

    async def select(
        self,
        model: str | None = None,
        policy: SelectionPolicy | str = SelectionPolicy.AUTO,
        host_url: str | Sequence[str] | None = None,
    ) -> HostInfo:
        """The first of :meth:`candidates`, or :class:`NoHostAvailableError`.

        The error's ``details["reasons"]`` maps each rejected host to why it was rejected.
        """
        ranked, reasons = await self._plan(model, policy, host_url)
        for host in ranked:
            if self.breaker(host.url).try_acquire():
                return host.model_copy(deep=True)
        raise self._no_host(model, policy, host_url, reasons)

    def _no_host(
        self,
        model: str | None,
        policy: SelectionPolicy | str,
        host_url: str | Sequence[str] | None,
        reasons: dict[str, str],
    ) -> NoHostAvailableError:
        what = f"model {model!r}" if model else "any model"
        if not reasons:
            text = "no hosts configured (pass hosts=, set FABSTIR_HOSTS or a registry)"
        else:
            text = "; ".join(f"{url}: {why}" for url, why in reasons.items())
            if len(text) > 2000:
                text = text[:2000] + "..."
        return NoHostAvailableError(
            f"no host available for {what}: {text}",
            host_url=host_url if isinstance(host_url, str) else None,
            details={
                "reasons": dict(reasons),
                "model": model,
                "policy": SelectionPolicy(policy).value,
            },
        )
