"""What discovery knows about one host: :class:`HostInfo`, plus URL normalisation.

A host is identified by its *base URL* (``http(s)://host:port``, no path). WebSocket URLs are
accepted wherever a URL is and normalised, so ``ws://h:8080/v1/ws`` and ``http://h:8080/``
name the same host:

>>> normalize_host_url("ws://127.0.0.1:8080/v1/ws")
'http://127.0.0.1:8080'
>>> normalize_host_url("WSS://Example.org/")
'https://example.org'
>>> HostInfo(url="wss://example.org/v1/ws").ws_url
'wss://example.org/v1/ws'
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from langchain_fabstir.errors import HostRegistryError

__all__ = [
    "HostInfo",
    "HostRegistryError",
    "HostStatus",
    "SelectionPolicy",
    "normalize_host_url",
]

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}

HostStatus = Literal["healthy", "degraded", "unhealthy", "unreachable", "invalid", "unknown"]
"""``healthy``/``degraded``/``unhealthy`` are what the host's ``/health`` said; ``unreachable``
means a request failed (refused, timeout, HTTP error); ``invalid`` means the host answered
garbage; ``unknown`` means not probed yet."""


class SelectionPolicy(str, Enum):
    """How :meth:`HostDiscovery.candidates` orders the hosts that can serve a request.

    - ``AUTO``: healthy before degraded, then the lowest score
      ``latency_weight * L + price_weight * P`` where ``L`` and ``P`` are the host's latency and
      price scaled to ``[0, 1]`` across the candidates (min -> 0, max -> 1; unknown -> 1).
    - ``FASTEST``: the lowest measured ``/health`` latency first.
    - ``CHEAPEST``: the lowest price first; hosts with unknown price last.
    - ``SPECIFIC``: only the host(s) named by ``host_url`` (a URL or a 0x address), in the
      order given.

    In every policy, hosts that are known to serve the requested model come before hosts whose
    model list is unknown, and hosts whose circuit breaker is half-open (on trial) come last.
    """

    AUTO = "auto"
    FASTEST = "fastest"
    CHEAPEST = "cheapest"
    SPECIFIC = "specific"


def normalize_host_url(url: str) -> str:
    """Return the base URL of a host: ``http(s)://host[:port]``, lower-case, no path.

    ``ws``/``wss`` become ``http``/``https``; a trailing ``/v1/ws`` (or any path) is dropped.
    Raises :class:`HostRegistryError` for anything that is not an absolute http(s)/ws(s) URL.

    >>> normalize_host_url("https://h.example:8443/v1/ws?x=1")
    'https://h.example:8443'
    """
    if not isinstance(url, str) or not url.strip():
        raise HostRegistryError(f"host URL must be a non-empty string, got {url!r}")
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise HostRegistryError(f"host URL {text!r} is not a valid URL: {exc}") from exc
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise HostRegistryError(
            f"host URL {text!r} must start with http://, https://, ws:// or wss://"
        )
    if not parts.hostname:
        raise HostRegistryError(f"host URL {text!r} has no host name")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


class HostInfo(BaseModel):
    """One host: what a source declared about it, and what the last probe found.

    Declared (from a registry, ``FABSTIR_HOSTS`` or an explicit list):

    - ``address``: the host's 0x Ethereum address, when known.
    - ``url``: base URL, normalised by :func:`normalize_host_url` (ws(s) accepted).
    - ``models``: model ids the host serves. Replaced by the host's ``/v1/models`` answer when a
      probe gets one; see ``models_known``.
    - ``price``: price **per 1,000 tokens**, in the registry's unit (e.g. USDC); ``None`` when
      unknown. Only compared between hosts, never converted. ``prices`` maps model names to a
      price for that model (a chain source knows them per model); it wins over ``price``.
    - ``public_key``: the host's compressed secp256k1 key (0x-hex) when a trusted source
      (the chain) declared it; encryption then needs no discovery round trip.
    - ``models_pinned``: the source's model list is authoritative (the chain's ``repo/file``
      names): a probe adds the host's own model names instead of replacing the list.
    - ``source``: where the host came from (``"chain"``), when a source says.

    Probed (by :meth:`HostDiscovery.refresh`):

    - ``healthy``: the host can take work now (``/health`` said healthy or degraded and every
      endpoint answered sensibly). ``None`` before the first probe.
    - ``status``: see :data:`HostStatus`; ``reason`` says why a host is not healthy.
    - ``latency_s``: round-trip time of ``GET /health`` in seconds.
    - ``version``, ``features``: from ``GET /v1/version``; ``issues``: from ``/health``.
    - ``last_probe``: the discovery clock's time of the last probe.

    >>> h = HostInfo(url="http://127.0.0.1:9000", models=["m"], price=0.5)
    >>> h.serves("m"), h.serves("other"), h.serves(None)
    ('yes', 'no', 'yes')
    >>> HostInfo(url="http://127.0.0.1:9000").serves("m")
    'maybe'
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    address: str | None = None
    url: str
    models: list[str] = Field(default_factory=list)
    price: float | None = Field(default=None, ge=0)
    prices: dict[str, float] = Field(default_factory=dict)
    public_key: str | None = None
    models_pinned: bool = False
    source: str | None = None
    models_known: bool = False
    healthy: bool | None = None
    status: HostStatus = "unknown"
    reason: str | None = None
    issues: list[str] = Field(default_factory=list)
    latency_s: float | None = None
    version: str | None = None
    features: list[str] = Field(default_factory=list)
    last_probe: float | None = None

    @field_validator("url", mode="before")
    @classmethod
    def _normalise_url(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        try:
            return normalize_host_url(value)
        except HostRegistryError as exc:
            raise ValueError(exc.message) from None

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _ADDRESS_RE.match(value):
            raise ValueError(f"{value!r} is not a 0x-prefixed 20-byte hex address")
        return value

    @property
    def ws_url(self) -> str:
        """The host's WebSocket endpoint (``ws(s)://.../v1/ws``)."""
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/ws"

    def serves(self, model: str | None) -> Literal["yes", "no", "maybe"]:
        """Whether this host serves ``model``: ``yes``, ``no`` or ``maybe`` (list unknown).

        A model list is known when a probe read ``/v1/models`` (even an empty one) or when a
        source declared a non-empty list. ``model=None`` means any model: always ``yes``.
        """
        if model is None:
            return "yes"
        if model in self.models:
            return "yes"
        if self.models_known or self.models:
            return "no"
        return "maybe"

    def price_for(self, model: str | None) -> float | None:
        """The price for ``model`` (per 1,000 tokens): its entry in ``prices``, else ``price``."""
        if model is not None and model in self.prices:
            return self.prices[model]
        return self.price

    def matches(self, wanted: str) -> bool:
        """True when ``wanted`` (a URL in any accepted form, or a 0x address) names this host."""
        if _ADDRESS_RE.match(wanted):
            return self.address is not None and self.address.lower() == wanted.lower()
        try:
            return normalize_host_url(wanted) == self.url
        except HostRegistryError:
            return False
