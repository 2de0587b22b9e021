"""Probing one host over HTTP: ``/health``, ``/v1/models`` and ``/v1/version`` in parallel.

A probe never raises for anything the host does: refused connections, timeouts, HTTP errors,
non-JSON bodies and wrong shapes all end as an unhealthy :class:`HostInfo` whose ``status`` is
``unreachable`` or ``invalid`` and whose ``reason`` says what happened. A ``404`` from
``/v1/models`` or ``/v1/version`` is not a failure: that part is simply unknown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ValidationError

from langchain_fabstir.discovery._http import FetchError, JsonReply, get_json
from langchain_fabstir.discovery.hosts import HostInfo

__all__ = ["ProbeSettings", "probe_host"]


def _default_timeout() -> httpx.Timeout:
    return httpx.Timeout(connect=2.0, read=3.0, write=2.0, pool=2.0)


@dataclass(frozen=True)
class ProbeSettings:
    """Limits for one probe.

    ``timeout`` is per phase (connect/read/write/pool) for each request; ``deadline_s`` bounds
    the whole probe of one host; ``max_bytes`` bounds each reply body.
    """

    timeout: httpx.Timeout = field(default_factory=_default_timeout)
    deadline_s: float = 6.0
    max_bytes: int = 256 * 1024


class _Health(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    issues: list[Any] = []


class _Model(BaseModel):
    id: str
    name: str | None = None


class _Models(BaseModel):
    models: list[_Model]


class _Version(BaseModel):
    version: str
    features: list[str] = []


class _Bad(Exception):
    def __init__(self, status: Literal["unreachable", "invalid"], reason: str) -> None:
        super().__init__(reason)
        self.status: Literal["unreachable", "invalid"] = status
        self.reason = reason


def _shape(model: type[BaseModel], reply: JsonReply, what: str) -> Any:
    try:
        return model.model_validate(reply.body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise _Bad("invalid", f"{what}: unexpected reply ({where}: {err['msg']})") from None


def _failure(result: BaseException, what: str) -> _Bad:
    if isinstance(result, FetchError):
        status: Literal["unreachable", "invalid"] = (
            "invalid" if result.kind == "invalid" else "unreachable"
        )
        return _Bad(status, result.message)
    return _Bad("unreachable", f"{what}: {type(result).__name__}: {result}")


def _issue_text(item: Any) -> str:
    return item if isinstance(item, str) else json.dumps(item, default=str)[:200]


async def _probe(host: HostInfo, client: httpx.AsyncClient, settings: ProbeSettings) -> HostInfo:
    def get(path: str, *, accept_error_body: bool = False) -> Coroutine[Any, Any, JsonReply]:
        return get_json(
            client,
            host.url + path,
            timeout=settings.timeout,
            max_bytes=settings.max_bytes,
            accept_error_body=accept_error_body,
        )

    replies: list[JsonReply | BaseException] = list(
        await asyncio.gather(
            get("/health", accept_error_body=True),
            get("/v1/models"),
            get("/v1/version"),
            return_exceptions=True,
        )
    )
    health_r, models_r, version_r = replies
    for result in replies:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
    out = host.model_copy(deep=True)
    out.issues, out.version, out.features, out.latency_s = [], None, [], None
    problems: list[_Bad] = []

    if isinstance(health_r, BaseException):
        problems.append(_failure(health_r, "GET /health"))
    else:
        out.latency_s = health_r.elapsed_s
        try:
            health = _shape(_Health, health_r, "GET /health")
            out.issues = [_issue_text(i) for i in health.issues]
            out.status = health.status
        except _Bad as bad:
            problems.append(bad)

    if isinstance(models_r, FetchError) and models_r.status == 404:
        pass  # the host does not list models: keep what the source declared
    elif isinstance(models_r, BaseException):
        problems.append(_failure(models_r, "GET /v1/models"))
    else:
        try:
            models = _shape(_Models, models_r, "GET /v1/models")
            probed = [m.id for m in models.models]
            if out.models_pinned:  # the source's names stay; the host's own names join them
                out.models = list(dict.fromkeys([*host.models, *probed]))
            else:
                out.models = probed
            out.models_known = True
        except _Bad as bad:
            problems.append(bad)

    if isinstance(version_r, FetchError) and version_r.status == 404:
        pass
    elif isinstance(version_r, BaseException):
        problems.append(_failure(version_r, "GET /v1/version"))
    else:
        try:
            version = _shape(_Version, version_r, "GET /v1/version")
            out.version, out.features = version.version, list(version.features)
        except _Bad as bad:
            problems.append(bad)

    if problems:
        out.healthy = False
        out.status = problems[0].status
        out.reason = "; ".join(p.reason for p in problems)
    elif out.status == "unhealthy":
        out.healthy = False
        out.reason = "host reports unhealthy" + (f": {', '.join(out.issues)}" if out.issues else "")
    else:
        out.healthy = True
        out.reason = None
    return out


async def probe_host(
    host: HostInfo,
    client: httpx.AsyncClient,
    *,
    settings: ProbeSettings | None = None,
    clock: Callable[[], float] | None = None,
) -> HostInfo:
    """Probe ``host`` and return a copy with the probed fields filled in (never raises for
    host misbehaviour; see the module docstring). ``last_probe`` is ``clock()`` if given."""
    settings = settings or ProbeSettings()
    try:
        out = await asyncio.wait_for(_probe(host, client, settings), settings.deadline_s)
    except asyncio.TimeoutError:
        out = host.model_copy(deep=True)
        out.healthy, out.status, out.latency_s = False, "unreachable", None
        out.reason = f"probe did not finish within {settings.deadline_s} s"
    if clock is not None:
        out.last_probe = clock()
    return out
