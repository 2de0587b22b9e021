"""``fabstir hosts``: every host the configured sources know, probed.

Sources are small objects with a ``name`` and an ``async load()`` returning
:class:`~langchain_fabstir.discovery.HostInfo` entries: the ``--host`` list,
``FABSTIR_HOSTS``, a registry file or URL (``--registry``), and the chain's NodeRegistry
(``--chain-config PATH`` or ``FABSTIR_CHAIN_CONFIG``, or ``--network base-sepolia``): its
active hosts, for ``--model`` when given, priced in ``--payment-token``. Hosts are merged by
URL (the first source declaring a field wins), then probed together by
:class:`~langchain_fabstir.discovery.HostDiscovery` (``/health``, ``/v1/models``,
``/v1/version``).

A host from the chain shows its on-chain price per 1,000 tokens in whole ETH or USDC (its
price for ``--model``, else its minimum price), its address, and whether its record has a
public key (then sessions with it are encrypted). In ``--json`` such a row has
``price_per_1k_tokens`` as a decimal string (money is never a float), ``payment_token``,
``price_base_units`` (wei or 10^-6 USDC) and ``encryption``; other rows have the registry's
number and ``null`` there.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from langchain_fabstir.cli._common import (
    CliError,
    add_chain_options,
    chain_config,
    help_text,
    money,
    terminal_text,
)

if TYPE_CHECKING:
    from langchain_fabstir.chain import ChainConfig, HostRecord, PaymentToken
    from langchain_fabstir.discovery import HostInfo

__all__ = [
    "ChainSource",
    "EnvSource",
    "HostSource",
    "ListSource",
    "RegistrySource",
    "add_hosts_parser",
]


class HostSource(Protocol):
    """Where hosts come from."""

    name: str

    async def load(self) -> list[HostInfo]: ...


class ListSource:
    """Hosts given on the command line (``--host URL``, repeatable)."""

    name = "list"

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)

    async def load(self) -> list[HostInfo]:
        from langchain_fabstir.discovery.sources import parse_entries

        return parse_entries(self.urls, source="--host")


class EnvSource:
    """``FABSTIR_HOSTS``: comma-separated URLs, or a JSON registry."""

    name = "env"

    def __init__(self, value: str) -> None:
        self.value = value

    async def load(self) -> list[HostInfo]:
        from langchain_fabstir.discovery import parse_env_hosts

        return parse_env_hosts(self.value)


class RegistrySource:
    """A registry: a JSON file or an http(s) URL (``[{address, url, models, price}]``)."""

    name = "registry"

    def __init__(self, location: str, *, timeout: float = 10.0) -> None:
        self.location = location
        self.timeout = timeout

    async def load(self) -> list[HostInfo]:
        import httpx

        from langchain_fabstir._http import client as http_client
        from langchain_fabstir.discovery import load_registry

        async with http_client() as client:
            return await load_registry(
                self.location, client=client, timeout=httpx.Timeout(self.timeout)
            )


class ChainSource:
    """The chain's NodeRegistry: a :class:`~langchain_fabstir.chain.ChainHostSource` read
    over a client opened (and closed) for the load. ``records`` keeps each host's on-chain
    record by URL, ``decimals`` the payment token's."""

    name = "chain"

    def __init__(
        self, config: ChainConfig, model: str | None = None, token: PaymentToken = "ETH"
    ) -> None:
        self.config = config
        self.model = model
        self.token: PaymentToken = token
        self.records: dict[str, HostRecord] = {}
        self.decimals = 18

    async def load(self) -> list[HostInfo]:
        from langchain_fabstir.chain import ChainClient, ChainHostSource, require_web3
        from langchain_fabstir.chain.marketplace import token_decimals

        require_web3()
        async with ChainClient(self.config) as client:
            source = ChainHostSource(client, self.model, token=self.token)
            hosts = list(await source.load())
            self.records = dict(source.records)
            self.decimals = await token_decimals(client, self.token)
        return hosts

    def price(self, record: HostRecord) -> int:
        """Base units per 1,000 tokens: the price for the model, else the host's minimum."""
        if record.price is not None:
            return record.price
        return record.min_price_native if self.token == "ETH" else record.min_price_stable


def sources(args: argparse.Namespace) -> list[HostSource]:
    """The configured sources, in precedence order."""
    found: list[HostSource] = []
    if args.host:
        found.append(ListSource(args.host))
    env = os.environ.get("FABSTIR_HOSTS", "").strip()
    if env:
        found.append(EnvSource(env))
    if args.registry:
        found.append(RegistrySource(args.registry))
    chain = chain_config(args)
    if chain is not None:
        found.append(ChainSource(chain, args.model, args.payment_token))
    return found


async def list_hosts(args: argparse.Namespace) -> list[dict[str, Any]]:
    from langchain_fabstir.discovery import HostDiscovery, ProbeSettings
    from langchain_fabstir.discovery.sources import merge_hosts

    configured = sources(args)
    if not configured:
        raise CliError(
            "no hosts configured: give --host URL (repeatable), --registry FILE|URL, "
            "--chain-config PATH (or --network base-sepolia), or set FABSTIR_HOSTS"
        )
    where: dict[str, list[str]] = {}
    groups = []
    for source in configured:
        hosts = await source.load()
        for h in hosts:
            where.setdefault(h.url, [])
            if source.name not in where[h.url]:
                where[h.url].append(source.name)
        groups.append(hosts)
    merged = merge_hosts(*groups)
    settings = ProbeSettings(deadline_s=args.timeout) if args.timeout else None
    async with HostDiscovery(merged, use_env=False, probe_settings=settings) as discovery:
        probed = await discovery.refresh()
    chains = [s for s in configured if isinstance(s, ChainSource)]
    rows = []
    for h in probed:
        on_chain = next((c for c in chains if h.url in c.records), None)
        # A chain source already read only the hosts registered for the model (by any of its
        # names: repo/file, repo:file, 0x id).
        if args.model and on_chain is None and h.serves(args.model) == "no":
            continue
        rows.append(
            {
                "url": h.url,
                "address": h.address,
                "state": h.status,
                "healthy": h.healthy,
                "reason": h.reason,
                "latency_ms": None if h.latency_s is None else round(h.latency_s * 1000, 1),
                "models": h.models,
                "price_per_1k_tokens": h.price,
                "version": h.version,
                "features": h.features,
                "sources": where.get(h.url, []),
                "payment_token": None,
                "price_base_units": None,
                "encryption": None,
            }
        )
        if on_chain is not None:
            from langchain_fabstir.chain.marketplace import from_base_units

            record = on_chain.records[h.url]
            price = on_chain.price(record)
            rows[-1].update(
                address=record.address,
                price_per_1k_tokens=money(from_base_units(price, on_chain.decimals)),
                payment_token=on_chain.token,
                price_base_units=price,
                encryption=record.public_key is not None,
            )
    return rows


def _short(reason: str, limit: int = 60) -> str:
    first = reason.split(";")[0].strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _price(row: dict[str, Any]) -> str:
    price = row["price_per_1k_tokens"]
    if price is None:
        return "-"
    if row["payment_token"] is not None:
        return f"{price} {row['payment_token']}"
    return f"{price:g}"


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["URL", "STATE", "LATENCY", "PRICE/1K", "MODELS", "ADDRESS", "KEY", "SOURCE"]
    body = [
        [
            r["url"],
            r["state"] + (f" ({_short(r['reason'])})" if r["reason"] and not r["healthy"] else ""),
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms",
            _price(r),
            ",".join(r["models"]) or "-",
            r["address"] or "-",
            {True: "yes", False: "no", None: "-"}[r["encryption"]],
            ",".join(r["sources"]),
        ]
        for r in rows
    ]
    body = [[terminal_text(cell) for cell in line] for line in body]  # peer text, all of it
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [head, *body]
    ]
    return "\n".join(lines)


async def hosts_command(args: argparse.Namespace) -> int:
    rows = await list_hosts(args)
    if args.json:
        print(json.dumps(rows, indent=None))
    elif rows:
        print(_table(rows))
    else:
        print(terminal_text(f"no host serves {args.model!r}" if args.model else "no hosts"))
    return 0


def add_hosts_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    hosts = sub.add_parser(
        "hosts",
        parents=[common],
        help="list and probe the hosts of every configured source",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hosts.add_argument("--host", action="append", metavar="URL", help="a host URL, repeatable")
    hosts.add_argument(
        "--registry",
        metavar="FILE|URL",
        help="a host registry: a JSON file or an http(s) URL holding an array of hosts, "
        'each a URL string or an object {"url": ..., "address": "0x...", '
        '"models": ["id", ...], "price": PRICE_PER_1K_TOKENS} (only url is '
        'required), or {"hosts": [...]} holding that array; e.g. '
        '["http://127.0.0.1:8080", {"url": "https://h.example.org", '
        '"price": 0.2}]',
    )
    hosts.add_argument(
        "--model",
        help="only hosts that serve (or may serve) this model (on chain: repo/file, repo:file "
        "or its 0x id)",
    )
    hosts.add_argument("--json", action="store_true", help="print a JSON array")
    hosts.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds each host's probe may take in all (default: discovery's)",
    )
    chain = hosts.add_argument_group("hosts registered on chain")
    add_chain_options(chain)
    chain.add_argument(
        "--payment-token",
        choices=["ETH", "USDC"],
        default="ETH",
        help="the token whose on-chain prices are shown (ETH)",
    )
    hosts.set_defaults(run_async=hosts_command)
