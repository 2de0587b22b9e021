"""Unit tests run with the network off: only Unix sockets (the event loop's self-pipe), and
loopback for the few tests marked ``allow_hosts`` that start servers of their own."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "unit_tests" in item.path.parts and item.get_closest_marker("allow_hosts") is None:
            item.add_marker(pytest.mark.disable_socket)
