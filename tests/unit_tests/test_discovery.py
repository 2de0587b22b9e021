"""Host discovery against real aiohttp hosts on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from langchain_fabstir.discovery import (
    HostDiscovery,
    HostInfo,
    HostRegistryError,
    ProbeSettings,
    SelectionPolicy,
    auto_scores,
    normalize_host_url,
    parse_env_hosts,
    probe_host,
)
from langchain_fabstir.errors import (
    ConnectionFailedError,
    FabstirError,
    InvalidRequestError,
    NoHostAvailableError,
)

# These tests start small registry and host servers of their own on loopback.
pytestmark = pytest.mark.allow_hosts(["127.0.0.1", "::1"])

ADDR_A = "0x" + "a1" * 20
ADDR_B = "0x" + "B2" * 20
SMOL = {"models": [{"id": "smollm2", "name": "SmolLM2", "description": "tiny"}]}
VERSION = {"version": "8.38.0", "build": "abc", "date": "2025-01-01", "features": ["ws", "ckpt"]}
FAST = ProbeSettings(timeout=httpx.Timeout(1.0), deadline_s=3.0, max_bytes=64 * 1024)

Body = Any  # a JSON value, raw bytes, or None (404)


@dataclass
class Spec:
    """How a fake host answers."""

    health: Body = field(default_factory=lambda: {"status": "healthy", "issues": []})
    models: Body = field(default_factory=lambda: SMOL)
    version: Body = field(default_factory=lambda: VERSION)
    health_status: int = 200
    delay: float = 0.0
    hang: bool = False


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)
    inflight: int = 0
    max_inflight: int = 0


class Servers:
    """Starts aiohttp apps on loopback port 0 and stops them all at the end."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.release = asyncio.Event()
        self.hosts_inflight = 0
        self.max_hosts_inflight = 0

    async def serve(self, app: web.Application) -> tuple[str, web.AppRunner]:
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{sock.getsockname()[1]}", runner

    async def host(self, spec: Spec | None = None) -> tuple[str, Stats]:
        spec = spec or Spec()
        stats = Stats()

        def handler(body: Body, status: int = 200) -> Callable[[web.Request], Awaitable[Any]]:
            async def handle(request: web.Request) -> web.StreamResponse:
                stats.requests[request.path] = stats.requests.get(request.path, 0) + 1
                stats.inflight += 1
                stats.max_inflight = max(stats.max_inflight, stats.inflight)
                if stats.inflight == 1:
                    self.hosts_inflight += 1
                    self.max_hosts_inflight = max(self.max_hosts_inflight, self.hosts_inflight)
                try:
                    if spec.hang:
                        await self.release.wait()
                    if spec.delay:
                        await asyncio.sleep(spec.delay)  # simulated slowness, not sync
                    if body is None:
                        return web.Response(status=404, text="not found")
                    if isinstance(body, bytes):
                        return web.Response(status=status, body=body)
                    return web.json_response(body, status=status)
                finally:
                    stats.inflight -= 1
                    if stats.inflight == 0:
                        self.hosts_inflight -= 1

            return handle

        app = web.Application()
        app.router.add_get("/health", handler(spec.health, spec.health_status))
        app.router.add_get("/v1/models", handler(spec.models))
        app.router.add_get("/v1/version", handler(spec.version))
        url, _ = await self.serve(app)
        return url, stats

    async def registry(self, payload: Body, status: int = 200) -> tuple[str, web.AppRunner]:
        async def handle(request: web.Request) -> web.Response:
            if isinstance(payload, bytes):
                return web.Response(body=payload, status=status)
            return web.json_response(payload, status=status)

        app = web.Application()
        app.router.add_get("/hosts.json", handle)
        url, runner = await self.serve(app)
        return url + "/hosts.json", runner

    async def close(self) -> None:
        self.release.set()
        for runner in self.runners:
            await runner.cleanup()


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    await s.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def discovery(hosts: list[Any], client: httpx.AsyncClient, **kw: Any) -> HostDiscovery:
    kw.setdefault("probe_settings", FAST)
    return HostDiscovery(hosts, use_env=False, client=client, **kw)


# --- HostInfo and sources ------------------------------------------------------------


def test_host_info_normalises_urls_and_checks_addresses() -> None:
    host = HostInfo(url="WSS://Node.Example:8443/v1/ws", address=ADDR_A)
    assert host.url == "https://node.example:8443"
    assert host.ws_url == "wss://node.example:8443/v1/ws"
    assert HostInfo(url="http://[::1]:80/").ws_url == "ws://[::1]:80/v1/ws"
    assert host.matches("wss://node.example:8443") and host.matches("0x" + ADDR_A[2:].upper())
    for bad in ("ftp://x", "http://", "not a url", "http://h:99999"):
        with pytest.raises(HostRegistryError):
            normalize_host_url(bad)
    with pytest.raises(ValueError, match="address"):
        HostInfo(url="http://h", address="0x1234")


def test_explicit_entries_and_merge() -> None:
    d = HostDiscovery(
        [
            "ws://127.0.0.1:9001/v1/ws",
            {"url": "http://127.0.0.1:9002", "models": ["m", {"id": "n"}], "price": "0.25"},
            HostInfo(url="http://127.0.0.1:9003", address=ADDR_B),
            {"url": "http://127.0.0.1:9001/", "price": 2, "address": ADDR_A},  # fills gaps
        ],
        use_env=False,
    )
    hosts = {h.url: h for h in d.hosts}
    assert list(hosts) == [
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
        "http://127.0.0.1:9003",
    ]
    assert (
        hosts["http://127.0.0.1:9001"].price == 2
        and hosts["http://127.0.0.1:9001"].address == ADDR_A
    )
    assert hosts["http://127.0.0.1:9002"].models == ["m", "n"]
    assert hosts["http://127.0.0.1:9002"].price == 0.25
    assert (
        hosts["http://127.0.0.1:9003"].healthy is None
        and hosts["http://127.0.0.1:9003"].status == "unknown"
    )


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([{"price": 1}], "missing 'url'"),
        ([{"url": "gopher://x"}], "must start with http"),
        ([{"url": "http://x", "price": -1}], "price"),
        ([{"url": "http://x", "address": "0xzz"}], "address"),
        ([{"url": "http://x", "models": "m"}], "models"),
        ([42], "expected a URL string or an object"),
    ],
)
def test_bad_explicit_entries_raise_typed_errors(entries: list[Any], fragment: str) -> None:
    with pytest.raises(HostRegistryError, match=fragment) as info:
        HostDiscovery(entries, use_env=False)
    assert info.value.code == "INVALID_HOST_REGISTRY"
    assert isinstance(info.value, InvalidRequestError)


def test_env_var_comma_list_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_HOSTS", " http://127.0.0.1:1 ,ws://127.0.0.1:2/v1/ws,")
    assert [h.url for h in HostDiscovery().hosts] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert HostDiscovery(use_env=False).hosts == []
    monkeypatch.setenv("FABSTIR_HOSTS", json.dumps([{"url": "http://h:3", "price": 0.5}]))
    assert [(h.url, h.price) for h in HostDiscovery().hosts] == [("http://h:3", 0.5)]
    env = {"FABSTIR_HOSTS": '{"hosts": ["http://h:4"]}'}
    assert [h.url for h in HostDiscovery(environ=env).hosts] == ["http://h:4"]
    monkeypatch.setenv("FABSTIR_HOSTS", "[not json")
    with pytest.raises(HostRegistryError, match="FABSTIR_HOSTS: not valid JSON"):
        HostDiscovery()
    assert parse_env_hosts("") == [] and parse_env_hosts(None) == []


async def test_registry_file(tmp_path: Path, servers: Servers, client: httpx.AsyncClient) -> None:
    good, _ = await servers.host()
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"hosts": [{"url": good, "address": ADDR_A, "price": 0.3}]}))
    d = HostDiscovery(registry=path, use_env=False, client=client, probe_settings=FAST)
    [host] = await d.refresh()
    assert (host.url, host.address, host.price, host.healthy) == (good, ADDR_A, 0.3, True)
    assert host.models == ["smollm2"] and host.models_known


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{nope", "not valid JSON"),
        (b'{"servers": []}', "must have a 'hosts' array"),
        (b'"http://x"', "expected a JSON array"),
        (b'[{"url": "http://x", "price": "cheap"}]', "entry 0: price"),
        (b'[{"url": "http://x"}, {"address": "0x"}]', "entry 1: missing 'url'"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_registry_file(
    tmp_path: Path, client: httpx.AsyncClient, content: bytes, fragment: str
) -> None:
    path = tmp_path / "hosts.json"
    path.write_bytes(content)
    d = HostDiscovery(registry=str(path), use_env=False, client=client)
    with pytest.raises(HostRegistryError, match=fragment):
        await d.refresh()


async def test_missing_registry_file(tmp_path: Path, client: httpx.AsyncClient) -> None:
    d = HostDiscovery(registry=tmp_path / "absent.json", use_env=False, client=client)
    with pytest.raises(HostRegistryError, match="cannot read registry file"):
        await d.candidates()


async def test_registry_over_http(servers: Servers, client: httpx.AsyncClient) -> None:
    good, _ = await servers.host()
    reg_url, reg_runner = await servers.registry([{"url": good, "models": ["x"], "price": 1}])
    d = HostDiscovery(registry=reg_url, use_env=False, client=client, probe_settings=FAST)
    [host] = await d.refresh()
    assert host.url == good and host.healthy and host.models == ["smollm2"]
    # The registry goes away: the last list is kept and the failure remembered.
    await reg_runner.cleanup()
    servers.runners.remove(reg_runner)
    [again] = await d.refresh()
    assert again.url == good
    assert isinstance(d.registry_error, ConnectionFailedError)


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (b"<html>oops</html>", 200, "not JSON"),
        ({"hosts": [{"url": 7}]}, 200, "entry 0: url"),
        ({"error": "boom"}, 500, "HTTP 500"),
        ({"hosts": 5}, 200, "expected a JSON array"),
    ],
)
async def test_bad_registry_over_http(
    servers: Servers, client: httpx.AsyncClient, payload: Any, status: int, fragment: str
) -> None:
    reg_url, _ = await servers.registry(payload, status)
    d = HostDiscovery(registry=reg_url, use_env=False, client=client)
    with pytest.raises(HostRegistryError, match=fragment):
        await d.refresh()


async def test_unreachable_registry_url(client: httpx.AsyncClient) -> None:
    d = HostDiscovery(registry=closed_port_url() + "/r.json", use_env=False, client=client)
    with pytest.raises(ConnectionFailedError, match=r"registry .* unreachable") as info:
        await d.refresh()
    assert info.value.code == "HOST_UNREACHABLE"


# --- probing -------------------------------------------------------------------------


async def test_probe_healthy_host(servers: Servers, client: httpx.AsyncClient) -> None:
    url, stats = await servers.host()
    host = await probe_host(
        HostInfo(url=url, models=["declared"]), client, settings=FAST, clock=lambda: 7.0
    )
    assert host.healthy is True and host.status == "healthy" and host.reason is None
    assert host.models == ["smollm2"] and host.models_known
    assert host.version == "8.38.0" and host.features == ["ws", "ckpt"]
    assert host.latency_s is not None and 0 < host.latency_s < 1.0
    assert host.last_probe == 7.0
    assert stats.requests == {"/health": 1, "/v1/models": 1, "/v1/version": 1}


async def test_probe_requests_run_in_parallel(servers: Servers, client: httpx.AsyncClient) -> None:
    url, stats = await servers.host(Spec(delay=0.2))
    host = await probe_host(HostInfo(url=url), client, settings=FAST)
    assert host.healthy and host.latency_s is not None and host.latency_s >= 0.2
    assert stats.max_inflight == 3


@pytest.mark.parametrize(
    ("spec", "status", "fragment"),
    [
        (Spec(health=b"<html>hi</html>"), "invalid", "/health: reply is not JSON"),
        (Spec(health={"status": "great"}), "invalid", "/health: unexpected reply (status"),
        (Spec(health=[1, 2]), "invalid", "/health: unexpected reply"),
        (Spec(models={"models": "all"}), "invalid", "/v1/models: unexpected reply (models"),
        (Spec(models={"models": [{"name": "no id"}]}), "invalid", "models.0.id"),
        (Spec(version={"version": 5}), "invalid", "/v1/version: unexpected reply (version"),
        (Spec(version=b"\x00\x01"), "invalid", "/v1/version: reply is not JSON"),
        (Spec(health=b"x" * 70_000), "invalid", "larger than 65536 bytes"),
        (Spec(health=b"down", health_status=500), "unreachable", "/health: HTTP 500"),
        (Spec(models=b"boom", health_status=200), "invalid", "/v1/models: reply is not JSON"),
    ],
)
async def test_probe_garbage_marks_unhealthy(
    servers: Servers, client: httpx.AsyncClient, spec: Spec, status: str, fragment: str
) -> None:
    url, _ = await servers.host(spec)
    host = await probe_host(HostInfo(url=url), client, settings=FAST)
    assert host.healthy is False
    assert host.status == status
    assert host.reason is not None and fragment in host.reason


async def test_probe_down_and_hanging_hosts(servers: Servers, client: httpx.AsyncClient) -> None:
    down = await probe_host(HostInfo(url=closed_port_url()), client, settings=FAST)
    assert down.healthy is False and down.status == "unreachable"
    assert down.reason is not None and "ConnectError" in down.reason
    hang_url, _ = await servers.host(Spec(hang=True))
    quick = ProbeSettings(timeout=httpx.Timeout(0.3), deadline_s=5.0)
    hung = await probe_host(HostInfo(url=hang_url), client, settings=quick)
    assert hung.status == "unreachable" and hung.reason is not None and "timed out" in hung.reason
    deadline = ProbeSettings(timeout=httpx.Timeout(5.0), deadline_s=0.3)
    hung = await probe_host(HostInfo(url=hang_url), client, settings=deadline)
    assert hung.status == "unreachable" and hung.reason == "probe did not finish within 0.3 s"


async def test_probe_health_states(servers: Servers, client: httpx.AsyncClient) -> None:
    degraded, _ = await servers.host(Spec(health={"status": "degraded", "issues": ["high load"]}))
    h = await probe_host(HostInfo(url=degraded), client, settings=FAST)
    assert (h.healthy, h.status, h.issues) == (True, "degraded", ["high load"])
    sick, _ = await servers.host(
        Spec(health={"status": "unhealthy", "issues": ["gpu lost", {"k": 1}]}, health_status=503)
    )
    h = await probe_host(HostInfo(url=sick), client, settings=FAST)
    assert (h.healthy, h.status) == (False, "unhealthy")
    assert h.reason == 'host reports unhealthy: gpu lost, {"k": 1}'


async def test_probe_404_leaves_models_and_version_unknown(
    servers: Servers, client: httpx.AsyncClient
) -> None:
    url, _ = await servers.host(Spec(models=None, version=None))
    h = await probe_host(HostInfo(url=url), client, settings=FAST)
    assert h.healthy and not h.models_known and h.version is None
    assert h.serves("anything") == "maybe"
    h = await probe_host(HostInfo(url=url, models=["declared"]), client, settings=FAST)
    assert h.models == ["declared"] and h.serves("declared") == "yes" and h.serves("x") == "no"


async def test_refresh_respects_concurrency_cap(
    servers: Servers, client: httpx.AsyncClient
) -> None:
    urls = [(await servers.host(Spec(delay=0.15)))[0] for _ in range(3)]
    await discovery(urls, client, max_concurrency=1).refresh()
    assert servers.max_hosts_inflight == 1
    servers.max_hosts_inflight = 0
    hosts = await discovery(urls, client).refresh()
    assert servers.max_hosts_inflight >= 2
    assert all(h.healthy for h in hosts)


async def test_own_client_is_created_and_closed(servers: Servers) -> None:
    url, _ = await servers.host()
    async with HostDiscovery([url], use_env=False, probe_settings=FAST) as d:
        assert (await d.select()).url == url
        own = d._client
        assert own is not None
    assert own.is_closed


async def test_injected_client_is_used_and_left_open(servers: Servers) -> None:
    url, _ = await servers.host()
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [hook]}) as c:
        async with HostDiscovery([url], use_env=False, client=c) as d:
            await d.refresh()
        assert not c.is_closed
    assert sorted(seen) == ["/health", "/v1/models", "/v1/version"]


async def test_candidates_refresh_when_stale(servers: Servers, client: httpx.AsyncClient) -> None:
    url, stats = await servers.host()
    clock = Clock()
    d = discovery([url], client, clock=clock, probe_ttl=10)
    await d.candidates()
    await d.candidates()
    assert stats.requests["/health"] == 1
    assert d.hosts[0].last_probe == 1000.0
    clock.now += 10
    await d.candidates()
    assert stats.requests["/health"] == 2 and d.hosts[0].last_probe == 1010.0


# --- policies ------------------------------------------------------------------------


@pytest.fixture
async def fleet(servers: Servers) -> dict[str, str]:
    """fast (price 1.0), slow (price 0.1), degraded (price 0.05), garbage, down."""
    return {
        "fast": (await servers.host())[0],
        "slow": (await servers.host(Spec(delay=0.25)))[0],
        "degraded": (await servers.host(Spec(health={"status": "degraded", "issues": ["x"]})))[0],
        "garbage": (await servers.host(Spec(health=b"garbage")))[0],
        "down": closed_port_url(),
    }


def fleet_entries(f: dict[str, str]) -> list[dict[str, Any]]:
    prices = {"fast": 1.0, "slow": 0.1, "degraded": 0.05, "garbage": 0.0, "down": 0.0}
    return [{"url": url, "price": prices[name]} for name, url in f.items()]


async def test_fastest_policy(fleet: dict[str, str], client: httpx.AsyncClient) -> None:
    d = discovery(fleet_entries(fleet), client)
    got = [h.url for h in await d.candidates(policy=SelectionPolicy.FASTEST)]
    assert set(got) == {fleet["fast"], fleet["slow"], fleet["degraded"]}
    assert got[-1] == fleet["slow"]
    assert (await d.select(policy="fastest")).url != fleet["slow"]


async def test_cheapest_policy_unknown_price_last(
    fleet: dict[str, str], client: httpx.AsyncClient
) -> None:
    entries = fleet_entries(fleet)
    entries[0]["price"] = None  # fast: unknown price
    d = discovery(entries, client)
    got = [h.url for h in await d.candidates(policy=SelectionPolicy.CHEAPEST)]
    assert got == [fleet["degraded"], fleet["slow"], fleet["fast"]]


async def test_auto_policy_health_then_score(
    fleet: dict[str, str], client: httpx.AsyncClient
) -> None:
    d = discovery(fleet_entries(fleet), client)
    got = [h.url for h in await d.candidates(policy=SelectionPolicy.AUTO)]
    # degraded last despite the lowest price; the weights decide between fast and slow
    assert got[-1] == fleet["degraded"] and set(got[:2]) == {fleet["fast"], fleet["slow"]}
    d.latency_weight, d.price_weight = 1.0, 0.0
    assert [h.url for h in await d.candidates()] == [
        fleet["fast"],
        fleet["slow"],
        fleet["degraded"],
    ]
    d.latency_weight, d.price_weight = 0.0, 1.0
    assert [h.url for h in await d.candidates()] == [
        fleet["slow"],
        fleet["fast"],
        fleet["degraded"],
    ]


def test_auto_scores_formula() -> None:
    hosts = [
        HostInfo(url="http://a", latency_s=0.1, price=2.0),
        HostInfo(url="http://b", latency_s=0.3, price=1.0),
        HostInfo(url="http://c", latency_s=None, price=None),
    ]
    assert auto_scores(hosts) == pytest.approx([0.5, 0.5 * 1 + 0.5 * 0, 1.0])
    assert auto_scores(hosts, latency_weight=1, price_weight=0) == pytest.approx([0, 1, 1])


async def test_specific_policy(fleet: dict[str, str], client: httpx.AsyncClient) -> None:
    entries = fleet_entries(fleet)
    entries[1]["address"] = ADDR_B
    d = discovery(entries, client)
    ws_form = fleet["slow"].replace("http://", "ws://") + "/v1/ws"
    got = await d.candidates(policy=SelectionPolicy.SPECIFIC, host_url=ws_form)
    assert [h.url for h in got] == [fleet["slow"]]
    got = await d.candidates(policy="specific", host_url=[fleet["degraded"], ADDR_B.lower()])
    assert [h.url for h in got] == [fleet["degraded"], fleet["slow"]]
    # host_url restricts other policies too
    assert [h.url for h in await d.candidates(host_url=fleet["fast"])] == [fleet["fast"]]
    with pytest.raises(InvalidRequestError, match="needs host_url"):
        await d.candidates(policy=SelectionPolicy.SPECIFIC)
    with pytest.raises(InvalidRequestError, match="unknown selection policy"):
        await d.candidates(policy="random")
    with pytest.raises(NoHostAvailableError) as info:
        await d.select(policy="specific", host_url=[ADDR_A, fleet["garbage"]])
    reasons = info.value.details["reasons"]
    assert reasons[ADDR_A] == "no known host has this address"
    assert "not JSON" in reasons[fleet["garbage"]]


async def test_specific_unknown_url_is_probed(servers: Servers, client: httpx.AsyncClient) -> None:
    known, _ = await servers.host()
    extra, stats = await servers.host(Spec(models={"models": [{"id": "big", "name": "Big"}]}))
    d = discovery([known], client)
    await d.refresh()
    host = await d.select(model="big", policy=SelectionPolicy.SPECIFIC, host_url=extra)
    assert host.url == extra and host.healthy and stats.requests["/health"] == 1
    assert {h.url for h in d.hosts} == {known, extra}


async def test_model_filtering(servers: Servers, client: httpx.AsyncClient) -> None:
    serves, _ = await servers.host()
    other, _ = await servers.host(Spec(models={"models": [{"id": "other", "name": "O"}]}))
    unknown, _ = await servers.host(Spec(models=None))
    empty, _ = await servers.host(Spec(models={"models": []}))
    d = discovery([unknown, other, empty, serves], client)
    got = [h.url for h in await d.candidates(model="smollm2", policy="fastest")]
    assert got == [serves, unknown]  # known-good first, then "maybe"
    assert len(await d.candidates()) == 4
    with pytest.raises(NoHostAvailableError) as info:
        await d.select(model="smollm2", host_url=[other, empty])
    assert info.value.details["reasons"] == {
        other: "does not serve model 'smollm2' (serves: other)",
        empty: "does not serve model 'smollm2' (serves: none)",
    }


async def test_no_host_available_lists_reasons(
    fleet: dict[str, str], client: httpx.AsyncClient
) -> None:
    d = discovery(fleet_entries(fleet), client)
    with pytest.raises(NoHostAvailableError) as info:
        await d.select(model="llama-70b")
    err = info.value
    assert err.code == "NO_HOST_AVAILABLE" and err.is_retryable
    assert isinstance(err, FabstirError)
    reasons = err.details["reasons"]
    assert set(reasons) == set(fleet.values())
    assert "ConnectError" in reasons[fleet["down"]]
    assert "not JSON" in reasons[fleet["garbage"]]
    assert reasons[fleet["fast"]].startswith("does not serve model 'llama-70b'")
    assert err.details["model"] == "llama-70b" and err.details["policy"] == "auto"
    assert fleet["down"] in str(err)
    assert await d.candidates(model="llama-70b") == []


async def test_no_hosts_configured(client: httpx.AsyncClient) -> None:
    with pytest.raises(NoHostAvailableError, match="no hosts configured"):
        await discovery([], client).select()


# --- circuit breaker -----------------------------------------------------------------


async def test_circuit_breaker_with_injected_clock(
    servers: Servers, client: httpx.AsyncClient
) -> None:
    a, _ = await servers.host()
    b, _ = await servers.host(Spec(delay=0.1))
    clock = Clock()
    d = discovery([a, b], client, clock=clock, probe_ttl=1e9, failure_threshold=2, reset_timeout=30)
    assert [h.url for h in await d.candidates(policy="fastest")] == [a, b]

    d.record_failure(a.replace("http://", "ws://") + "/v1/ws", ConnectionError("refused"))
    assert [h.url for h in await d.candidates(policy="fastest")] == [a, b]  # 1 < threshold
    d.record_failure(a, "handshake timed out")
    assert [h.url for h in await d.candidates(policy="fastest")] == [b]
    with pytest.raises(NoHostAvailableError) as info:
        await d.select(host_url=a)
    assert info.value.details["reasons"][a] == (
        "circuit open after 2 consecutive failures (last: handshake timed out); resting 30.0 s more"
    )

    clock.now += 30  # half-open: one trial, listed after the closed hosts
    assert [h.url for h in await d.candidates(policy="fastest")] == [b, a]
    assert [h.url for h in await d.candidates(policy="fastest")] == [b]  # trial taken
    d.record_failure(a, ConnectionError("still down"))  # failed trial: rest again
    assert d.breaker(a).state == "open"
    clock.now += 29
    assert [h.url for h in await d.candidates()] == [b]
    clock.now += 1
    assert (await d.select(host_url=a)).url == a  # select claims the trial
    with pytest.raises(NoHostAvailableError, match="half-open"):
        await d.select(host_url=a)
    d.record_success(a)
    assert d.breaker(a).state == "closed"
    assert [h.url for h in await d.candidates(policy="fastest")] == [a, b]


async def test_unreported_trial_expires(servers: Servers, client: httpx.AsyncClient) -> None:
    a, _ = await servers.host()
    clock = Clock()
    d = discovery([a], client, clock=clock, probe_ttl=1e9, failure_threshold=1, reset_timeout=5)
    d.record_failure(a)
    clock.now += 5
    assert len(await d.candidates()) == 1  # trial handed out, never reported
    assert await d.candidates() == []
    clock.now += 5
    assert len(await d.candidates()) == 1


def test_breaker_rejects_bad_urls_and_settings() -> None:
    d = HostDiscovery([], use_env=False)
    with pytest.raises(InvalidRequestError):
        d.record_failure("nonsense")
    with pytest.raises(ValueError, match="failure_threshold"):
        HostDiscovery([], use_env=False, failure_threshold=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        HostDiscovery([], use_env=False, max_concurrency=0)
