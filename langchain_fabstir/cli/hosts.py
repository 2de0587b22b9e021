"""``fabstir hosts``: every host the configured sources know, probed.

Sources are small objects with a ``name`` and an ``async load()`` returning
:class:`~langchain_fabstir.discovery.HostInfo` entries: the ``--host`` list,
``FABSTIR_HOSTS``, and a registry file or URL (``--registry``). Hosts are merged by URL
(the first source declaring a field wins), then probed together by
:class:`~langchain_fabstir.discovery.HostDiscovery` (``/health``, ``/v1/models``,
``/v1/version``). Another source (an on-chain registry) is one more class with ``load()``
added to :func:`sources`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol

from langchain_fabstir.cli._common import CliError
from langchain_fabstir.discovery import HostInfo

__all__ = ["EnvSource", "HostSource", "ListSource", "RegistrySource", "add_hosts_parser"]


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

        from langchain_fabstir.discovery import load_registry

        async with httpx.AsyncClient() as client:
            return await load_registry(
                self.location, client=client, timeout=httpx.Timeout(self.timeout)
            )


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
    return found


async def list_hosts(args: argparse.Namespace) -> list[dict[str, Any]]:
    from langchain_fabstir.discovery import HostDiscovery, ProbeSettings
    from langchain_fabstir.discovery.sources import merge_hosts

    configured = sources(args)
    if not configured:
        raise CliError(
            "no hosts configured: give --host URL (repeatable), --registry FILE|URL, "
            "or set FABSTIR_HOSTS"
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
    rows = []
    for h in probed:
        if args.model and h.serves(args.model) == "no":
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
            }
        )
    return rows


def _short(reason: str, limit: int = 60) -> str:
    first = reason.split(";")[0].strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["URL", "STATE", "LATENCY", "PRICE/1K", "MODELS", "SOURCE"]
    body = [
        [
            r["url"],
            r["state"] + (f" ({_short(r['reason'])})" if r["reason"] and not r["healthy"] else ""),
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms",
            "-" if r["price_per_1k_tokens"] is None else f"{r['price_per_1k_tokens']:g}",
            ",".join(r["models"]) or "-",
            ",".join(r["sources"]),
        ]
        for r in rows
    ]
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
        print(f"no host serves {args.model!r}" if args.model else "no hosts")
    return 0


def add_hosts_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    hosts = sub.add_parser(
        "hosts",
        parents=[common],
        help="list and probe the hosts of every configured source",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hosts.add_argument("--host", action="append", metavar="URL", help="a host URL, repeatable")
    hosts.add_argument(
        "--registry",
        metavar="FILE|URL",
        help="a host registry: a JSON file or an http(s) URL",
    )
    hosts.add_argument("--model", help="only hosts that serve (or may serve) this model")
    hosts.add_argument("--json", action="store_true", help="print a JSON array")
    hosts.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds each host's probe may take in all (default: discovery's)",
    )
    hosts.set_defaults(run_async=hosts_command)
