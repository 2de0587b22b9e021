"""``fabstir host --engine openai`` refuses to say READY in front of an upstream it cannot use."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.cli.conftest import run_cli


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


@pytest.fixture
def empty_upstream() -> Iterator[str]:
    """An OpenAI-compatible server listing no model."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_an_unreachable_upstream_is_one_line_not_ready(closed_port: int) -> None:
    upstream = f"http://127.0.0.1:{closed_port}/v1"
    done = run_cli("host", "--engine", "openai", "--upstream", upstream, "--port", "0", timeout=30)
    assert done.returncode == 1
    assert "READY" not in done.stdout
    line = _one_line(done.stderr)
    assert line.startswith("fabstir host: ") and "cannot be reached" in line
    assert f"127.0.0.1:{closed_port}" in line


def test_an_upstream_listing_no_model_needs_model(empty_upstream: str) -> None:
    done = run_cli(
        "host", "--engine", "openai", "--upstream", empty_upstream, "--port", "0", timeout=30
    )
    assert done.returncode == 1
    assert "READY" not in done.stdout
    # (the engine logs a warning first about the empty list: host/openai_engine.py)
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("fabstir host: ") and "lists no model" in line and "--model" in line
