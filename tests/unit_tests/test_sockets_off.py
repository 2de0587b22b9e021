"""The unit suite's guard holds: a unit test cannot open a network socket."""

from __future__ import annotations

import asyncio
import socket

import pytest
import pytest_socket


def test_network_sockets_are_refused() -> None:
    with pytest.raises(pytest_socket.SocketBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_unix_sockets_and_event_loops_work() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    a.close()
    b.close()
    assert asyncio.run(asyncio.sleep(0, result=1)) == 1
