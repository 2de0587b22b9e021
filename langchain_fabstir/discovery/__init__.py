"""Host discovery without a blockchain: sources, HTTP probes, selection policies, breakers.

Where hosts come from (merged by URL, first source wins, later ones fill missing fields):

- an explicit list: ``HostDiscovery(["http://127.0.0.1:8080", {"url": ..., "price": 0.2}])``
- the ``FABSTIR_HOSTS`` environment variable: comma-separated URLs, or a JSON array;
- a registry: a JSON file path or an http(s) URL holding ``[{address, url, models, price}]``
  or ``{"hosts": [...]}``. Malformed content raises :class:`HostRegistryError`
  (code ``INVALID_HOST_REGISTRY``, a subclass of ``InvalidRequestError``).

Each refresh probes ``GET /health``, ``/v1/models`` and ``/v1/version`` of every host in
parallel (``httpx.AsyncClient``, injectable; per-phase timeouts). Then
``await discovery.candidates(model, policy)`` lists usable hosts in failover order and
``await discovery.select(...)`` returns the first or raises ``NoHostAvailableError`` with the
reason for every rejected host. ``price`` is per 1,000 tokens.

>>> from langchain_fabstir.discovery import HostInfo, SelectionPolicy
>>> HostInfo(url="ws://127.0.0.1:8080/v1/ws").url, SelectionPolicy("cheapest").name
('http://127.0.0.1:8080', 'CHEAPEST')
"""

from __future__ import annotations

from langchain_fabstir.discovery.breaker import BreakerState, CircuitBreaker
from langchain_fabstir.discovery.core import HostDiscovery
from langchain_fabstir.discovery.hosts import (
    HostInfo,
    HostRegistryError,
    HostStatus,
    SelectionPolicy,
    normalize_host_url,
)
from langchain_fabstir.discovery.probe import ProbeSettings, probe_host
from langchain_fabstir.discovery.ranking import auto_scores, rank
from langchain_fabstir.discovery.sources import (
    ENV_VAR,
    HostEntry,
    HostSource,
    env_hosts,
    load_registry,
    parse_env_hosts,
    parse_registry,
)

__all__ = [
    "ENV_VAR",
    "BreakerState",
    "CircuitBreaker",
    "HostDiscovery",
    "HostEntry",
    "HostInfo",
    "HostRegistryError",
    "HostSource",
    "HostStatus",
    "ProbeSettings",
    "SelectionPolicy",
    "auto_scores",
    "env_hosts",
    "load_registry",
    "normalize_host_url",
    "parse_env_hosts",
    "parse_registry",
    "probe_host",
    "rank",
]
