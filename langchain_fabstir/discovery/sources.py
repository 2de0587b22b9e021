"""Where host lists come from: explicit entries, ``FABSTIR_HOSTS``, a registry file or URL.

A registry is JSON: either an array of host objects, or ``{"hosts": [...]}``. A host object is
``{"address": "0x...", "url": "http://...", "models": ["id", ...], "price": 0.5}``; only
``url`` is required (``models`` may also list ``{"id": ...}`` objects). ``FABSTIR_HOSTS`` is a
comma-separated list of URLs, or the same JSON.

>>> [h.url for h in parse_env_hosts("http://a:1, ws://b:2/v1/ws")]
['http://a:1', 'http://b:2']
>>> parse_registry('{"hosts": [{"url": "http://c:3", "price": 1.5}]}', source="inline")[0].price
1.5
>>> try:
...     parse_registry('[{"url": 42}]', source="inline")
... except HostRegistryError as exc:
...     print(exc)
[INVALID_HOST_REGISTRY] inline: entry 0: url: must be a string, got int
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
from pydantic import ValidationError

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.discovery._http import FetchError, get_json
from langchain_fabstir.discovery.hosts import HostInfo, HostRegistryError
from langchain_fabstir.errors import ConnectionFailedError

__all__ = [
    "ENV_VAR",
    "HostEntry",
    "HostSource",
    "env_hosts",
    "load_registry",
    "merge_hosts",
    "parse_entries",
    "parse_env_hosts",
    "parse_registry",
]

ENV_VAR = "FABSTIR_HOSTS"
MAX_REGISTRY_BYTES = 4 * 1024 * 1024

HostEntry = str | Mapping[str, Any] | HostInfo
"""An explicit host: a URL string, a dict of :class:`HostInfo` fields, or a HostInfo."""

_DECLARED = ("address", "url", "models", "price")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "entry"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def _entry(item: object, *, source: str, index: int) -> HostInfo:
    where = f"{source}: entry {index}"
    if isinstance(item, HostInfo):
        return item.model_copy(deep=True)
    if isinstance(item, str):
        data: dict[str, Any] = {"url": item}
    elif isinstance(item, Mapping):
        data = {k: item[k] for k in _DECLARED if k in item}
        models = data.get("models")
        if isinstance(models, list):
            data["models"] = [m.get("id") if isinstance(m, Mapping) else m for m in models]
        if "url" not in data:
            raise HostRegistryError(f"{where}: missing 'url'", details={"source": source})
    else:
        raise HostRegistryError(
            f"{where}: expected a URL string or an object, got {type(item).__name__}",
            details={"source": source, "entry": index},
        )
    try:
        return HostInfo.model_validate(data)
    except ValidationError as exc:
        raise HostRegistryError(
            f"{where}: {_describe(exc)}", details={"source": source, "entry": index}
        ) from None


def parse_entries(items: Iterable[object], *, source: str = "hosts") -> list[HostInfo]:
    """Validate explicit host entries (strings, dicts or :class:`HostInfo`)."""
    if isinstance(items, (str, bytes, Mapping)):
        raise HostRegistryError(f"{source}: expected a list of hosts, got {type(items).__name__}")
    return [_entry(item, source=source, index=i) for i, item in enumerate(items)]


def _from_json_value(value: object, *, source: str) -> list[HostInfo]:
    if isinstance(value, Mapping):
        if "hosts" not in value:
            raise HostRegistryError(f"{source}: a JSON object must have a 'hosts' array")
        value = value["hosts"]
    if not isinstance(value, list):
        raise HostRegistryError(
            f"{source}: expected a JSON array of hosts, got {type(value).__name__}"
        )
    return parse_entries(value, source=source)


def parse_registry(text: str | bytes, *, source: str) -> list[HostInfo]:
    """Parse registry JSON (an array, or ``{"hosts": [...]}``) into hosts."""
    try:
        value = loads_untrusted(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HostRegistryError(f"{source}: not valid JSON ({exc})") from None
    return _from_json_value(value, source=source)


def parse_env_hosts(value: str | None, *, source: str = ENV_VAR) -> list[HostInfo]:
    """Parse ``FABSTIR_HOSTS``: JSON (starts with ``[`` or ``{``) or comma-separated URLs."""
    if value is None or not value.strip():
        return []
    text = value.strip()
    if text[0] in "[{":
        return parse_registry(text, source=source)
    return parse_entries([p.strip() for p in text.split(",") if p.strip()], source=source)


def env_hosts(environ: Mapping[str, str] | None = None) -> list[HostInfo]:
    """Hosts from the ``FABSTIR_HOSTS`` environment variable (``[]`` when unset)."""
    env = os.environ if environ is None else environ
    return parse_env_hosts(env.get(ENV_VAR))


async def load_registry(
    location: str | os.PathLike[str],
    *,
    client: httpx.AsyncClient,
    timeout: httpx.Timeout,
    max_bytes: int = MAX_REGISTRY_BYTES,
) -> list[HostInfo]:
    """Load a registry from a file path or an ``http(s)://`` URL.

    Raises :class:`HostRegistryError` for unreadable or malformed content (including an HTTP
    error status) and :class:`ConnectionFailedError` when the registry URL cannot be reached.
    """
    text = os.fspath(location)
    if text.lower().startswith(("http://", "https://")):
        try:
            reply = await get_json(client, text, timeout=timeout, max_bytes=max_bytes)
        except FetchError as exc:
            if exc.kind == "unreachable" and exc.status is None:
                raise ConnectionFailedError(
                    f"registry {text} unreachable: {exc.message}", details={"source": text}
                ) from exc
            raise HostRegistryError(f"registry {text}: {exc.message}") from exc
        return _from_json_value(reply.body, source=text)
    raw = await asyncio.to_thread(_read_file, Path(text), max_bytes)
    return parse_registry(raw, source=text)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise HostRegistryError(f"{path}: cannot read registry file: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise HostRegistryError(f"{path}: registry file larger than {max_bytes} bytes")
    return raw


def merge_hosts(*groups: Iterable[HostInfo]) -> list[HostInfo]:
    """Merge host lists by URL, keeping first-seen order; later entries fill missing fields."""
    merged: dict[str, HostInfo] = {}
    for group in groups:
        for host in group:
            known = merged.get(host.url)
            if known is None:
                merged[host.url] = host.model_copy(deep=True)
                continue
            if known.address is None and host.address is not None:
                known.address = host.address
            if known.price is None and host.price is not None:
                known.price = host.price
            if host.models_pinned and not known.models_pinned:
                known.models = list(dict.fromkeys([*host.models, *known.models]))
                known.models_pinned = True
            elif not known.models and host.models:
                known.models = list(host.models)
            if known.public_key is None and host.public_key is not None:
                known.public_key = host.public_key
            known.prices = {**host.prices, **known.prices}
            known.source = known.source or host.source
    return list(merged.values())


@runtime_checkable
class HostSource(Protocol):
    """One more place hosts come from (e.g. the chain's NodeRegistry).

    ``name`` labels it in errors; ``load()`` returns its hosts and is called on every refresh.
    A source that fails with a retryable error after a successful load keeps its last list
    (see :attr:`HostDiscovery.registry_error`); one that never loaded raises.
    """

    name: str

    async def load(self) -> Sequence[HostInfo]: ...
