"""Helpers shared by the tests: hand-written hosts and relays on 127.0.0.1 (port 0), and
raw-socket readers. Fixtures themselves live in ``tests/conftest.py``."""
