"""A local S5 portal that serves the S5 HTTP API from a data directory.

In-process (tests, the embedded default)::

    async with LocalPortal(data_dir, host="127.0.0.1", port=0) as portal:
        print(portal.url)        # http://127.0.0.1:<port>

From a command line (the ``fabstir portal`` subcommand calls this)::

    run_portal("/var/lib/fabstir-portal", host="127.0.0.1", port=5050)

Data survives restarts: blobs are files named by hash, accounts, tokens and registry entries
live in SQLite in the same directory.

Logins are bound to the portal's public URL: a client signs its challenge response for the
``host[:port]`` it connects to, and only the names of ``public_url`` (default: the bound
address, plus ``localhost`` when bound to loopback) are accepted. Behind a reverse proxy, set
``public_url`` to the address clients use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

from aiohttp import web
from yarl import URL

from langchain_fabstir.portal.server import PortalConfig, build_app, portal_db, set_public_hosts
from langchain_fabstir.portal.store import PortalDB

__all__ = ["LocalPortal", "PortalConfig", "build_app", "public_host_names", "run_portal"]

logger = logging.getLogger(__name__)

_WILDCARDS = {"", "0.0.0.0", "::"}


def _host_port(host: str, port: int | None) -> list[str]:
    """The ``Host`` spellings of ``host:port`` (an IPv6 host with and without brackets)."""
    suffix = f":{port}" if port is not None else ""
    if ":" in host:  # IPv6: s5.js signs "[::1]:80", S5PortalClient "::1:80"
        return [f"[{host}]{suffix}", f"{host}{suffix}"]
    return [f"{host}{suffix}"]


def public_host_names(public_url: str | None, bind_host: str, port: int) -> list[str]:
    """The names challenge responses may be signed for.

    ``public_url`` (e.g. ``https://portal.example``) gives its ``host[:port]`` (the port left
    out when it is the scheme's default, as clients do). Without it, the bound address; a
    loopback or wildcard bind also accepts ``localhost`` and ``127.0.0.1`` on that port.
    """
    if public_url is not None:
        url = URL(public_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"public_url must be an http(s) URL with a host, not {public_url!r}")
        return _host_port(url.host.lower(), None if url.is_default_port() else url.port)
    names = []
    loopback = bind_host in _WILDCARDS or bind_host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(bind_host).is_loopback
        except ValueError:
            pass
    if bind_host not in _WILDCARDS:
        names += _host_port(bind_host.lower(), port)
    if loopback:
        names += [f"localhost:{port}", f"127.0.0.1:{port}", *_host_port("::1", port)]
    return list(dict.fromkeys(names))


class LocalPortal:
    """Run a local S5 portal on ``host:port`` (``port=0`` picks a free port).

    Args:
        data_dir: directory for blobs and the SQLite database.
        host: interface to listen on.
        port: TCP port; 0 for any free one (read it back from :attr:`port`).
        open_registration: anyone may create an account (default ``True``).
        registration_tokens: invite tokens accepted when registration is closed.
        public_url: the URL clients use to reach the portal (logins are bound to its
            ``host[:port]``); default the bound address.
        public_hosts: extra ``host:port`` names challenge responses may be signed for.
        max_upload_bytes: larger uploads get HTTP 413.
        idle_timeout: seconds before an idle connection, or one whose request line and
            headers never finish, is closed.
        body_timeout: seconds a request body may stop arriving, or a download stop being
            read, before its connection is closed.
        token_ttl: seconds an auth token stays valid (``None``: until revoked).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        open_registration: bool = True,
        registration_tokens: frozenset[str] | set[str] = frozenset(),
        public_url: str | None = None,
        public_hosts: tuple[str, ...] = (),
        max_upload_bytes: int = 64 * 1024 * 1024,
        idle_timeout: float = 30.0,
        body_timeout: float = 30.0,
        token_ttl: float | None = None,
    ) -> None:
        if public_url is not None:
            public_host_names(public_url, host, port)  # validates it now
        self.config = PortalConfig(
            data_dir=Path(data_dir),
            open_registration=open_registration,
            registration_tokens=frozenset(registration_tokens),
            public_hosts=public_hosts,
            max_upload_bytes=max_upload_bytes,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
            token_ttl=token_ttl,
        )
        self.host = host
        self.public_url = public_url
        self._requested_port = port
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL of the running portal, e.g. ``http://127.0.0.1:40123``."""
        if self._runner is None:
            raise RuntimeError("the portal is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def db(self) -> PortalDB:
        """Accounts, tokens and registry of the running portal (e.g. to revoke tokens)."""
        if self._runner is None:
            raise RuntimeError("the portal is not running")
        return portal_db(self._runner.app)

    async def start(self) -> None:
        """Open the data directory and start listening."""
        if self._runner is not None:
            return
        app = build_app(self.config)
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.config.idle_timeout,
            lingering_time=min(5.0, self.config.body_timeout),
            shutdown_timeout=min(5.0, self.config.body_timeout),  # then cut transfers
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._requested_port
        names = public_host_names(self.public_url, self.host, self.port)
        set_public_hosts(app, [*names, *self.config.public_hosts])
        if self.public_url is None and self.host in _WILDCARDS:
            logger.warning(
                "S5 portal bound to %r accepts logins for localhost only; set public_url "
                "(--public-url) to the address other machines use",
                self.host,
            )
        self._runner = runner
        logger.info("S5 portal listening on %s (data in %s)", self.url, self.config.data_dir)

    async def stop(self) -> None:
        """Stop listening and close the database (data stays on disk)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LocalPortal:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = self.url if self._runner else "stopped"
        return f"LocalPortal({str(self.config.data_dir)!r}, {state})"


def run_portal(
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 5050,
    *,
    open_registration: bool = True,
    public_url: str | None = None,
    max_upload_bytes: int = 64 * 1024 * 1024,
    idle_timeout: float = 30.0,
    body_timeout: float = 30.0,
    token_ttl: float | None = None,
) -> None:
    """Serve a portal until interrupted (Ctrl-C); for the ``fabstir portal`` command."""

    async def _serve() -> None:
        portal = LocalPortal(
            data_dir,
            host=host,
            port=port,
            open_registration=open_registration,
            public_url=public_url,
            max_upload_bytes=max_upload_bytes,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
            token_ttl=token_ttl,
        )
        async with portal:
            print(f"S5 portal listening on {portal.url} (data: {portal.config.data_dir})")
            await asyncio.Event().wait()

    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        pass
