"""A local S5 portal that serves the S5 HTTP API from a data directory.

In-process (tests, the embedded default)::

    async with LocalPortal(data_dir, host="127.0.0.1", port=0) as portal:
        print(portal.url)        # http://127.0.0.1:<port>

From a command line (the ``fabstir portal`` subcommand calls this)::

    run_portal("/var/lib/fabstir-portal", host="127.0.0.1", port=5050)

Data survives restarts: blobs are files named by hash, accounts, tokens and registry entries
live in SQLite in the same directory.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from langchain_fabstir.portal.server import PortalConfig, build_app

__all__ = ["LocalPortal", "PortalConfig", "build_app", "run_portal"]

logger = logging.getLogger(__name__)


class LocalPortal:
    """Run a local S5 portal on ``host:port`` (``port=0`` picks a free port).

    Args:
        data_dir: directory for blobs and the SQLite database.
        host: interface to listen on.
        port: TCP port; 0 for any free one (read it back from :attr:`port`).
        open_registration: anyone may create an account (default ``True``).
        registration_tokens: invite tokens accepted when registration is closed.
        public_hosts: extra ``host:port`` names challenge responses may be signed for.
        max_upload_bytes: larger uploads get HTTP 413.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        open_registration: bool = True,
        registration_tokens: frozenset[str] | set[str] = frozenset(),
        public_hosts: tuple[str, ...] = (),
        max_upload_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.config = PortalConfig(
            data_dir=Path(data_dir),
            open_registration=open_registration,
            registration_tokens=frozenset(registration_tokens),
            public_hosts=public_hosts,
            max_upload_bytes=max_upload_bytes,
        )
        self.host = host
        self._requested_port = port
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL of the running portal, e.g. ``http://127.0.0.1:40123``."""
        if self._runner is None:
            raise RuntimeError("the portal is not running")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Open the data directory and start listening."""
        if self._runner is not None:
            return
        runner = web.AppRunner(build_app(self.config), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._requested_port
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
    max_upload_bytes: int = 64 * 1024 * 1024,
) -> None:
    """Serve a portal until interrupted (Ctrl-C); for the ``fabstir portal`` command."""

    async def _serve() -> None:
        portal = LocalPortal(
            data_dir,
            host=host,
            port=port,
            open_registration=open_registration,
            max_upload_bytes=max_upload_bytes,
        )
        async with portal:
            print(f"S5 portal listening on {portal.url} (data: {portal.config.data_dir})")
            await asyncio.Event().wait()

    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        pass
