"""Driving ``fabstir`` as a user would: child processes, a pseudo-terminal, real servers.

Every wait is bounded: output is read with ``select`` against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.conftest import ThreadedHost
from tests.localchain import (  # noqa: F401 (fixtures: a local chain for test_cli_chain.py)
    anvil,
    chain,
    chain_config_file,
    deployed,
    smollm2,
)
from tests.storage.conftest import ThreadedPortal

CLI = [sys.executable, "-m", "langchain_fabstir.cli"]
START_TIMEOUT = 60.0
"""A child's interpreter start on a loaded 2-core machine can take several seconds."""


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FABSTIR_")  # the user's own settings must not leak in
    }
    env.update({"PYTHONUNBUFFERED": "1", "HOME": env.get("HOME", "/tmp")})
    env.update(extra)
    return env


class Terminal:
    """``fabstir ...`` in a pseudo-terminal: it is the child's controlling terminal, so
    ``\\x03`` is Ctrl-C (SIGINT from the line discipline) and ``\\x04`` is Ctrl-D."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes fabstir
            try:
                os.execve(CLI[0], [*CLI, *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = b""
        self.status: int | None = None

    def expect(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """Read until ``text`` appears (after what earlier calls consumed)."""
        deadline = time.monotonic() + timeout
        want = text.encode()
        while want not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen in {timeout}s; got {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{text!r} not seen before the end; got {self.seen!r}")
                self.seen += data
        before, _, self.seen = self.seen.partition(want)
        return (before + want).decode("utf-8", "replace")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"fabstir did not exit in {timeout}s; output {self.seen!r}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ProcessLookupError:
                pass
        os.close(self.fd)


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    """``fabstir ARGS`` with pipes (not a terminal), bounded in time."""
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or child_env(),
        timeout=timeout,
        check=False,
    )


def wait_event(threaded: ThreadedHost, event: asyncio.Event, timeout: float = 30.0) -> bool:
    """Wait (bounded) for an event of the host's loop."""

    async def waiter() -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    return asyncio.run_coroutine_threadsafe(waiter(), threaded.loop).result(timeout + 5)


@pytest.fixture
def slow_host() -> Iterator[ThreadedHost]:
    """An echo host answering one word every 50 ms (a long prompt: a long answer)."""
    threaded = ThreadedHost(ReferenceHost(EchoEngine(delay=0.05), rate_limit_per_minute=None))
    yield threaded
    threaded.stop()


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedPortal]:
    p = ThreadedPortal(tmp_path_factory.mktemp("portal"))
    yield p
    p.stop()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A fresh ``fabstir keys new`` directory (made in-process: fast)."""
    from langchain_fabstir.cli import main

    directory = tmp_path / "keys"
    assert main(["keys", "new", "--dir", str(directory)]) == 0
    return directory
