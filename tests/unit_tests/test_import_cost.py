"""What a plain import loads: a client-only import keeps the server side, the chain and
the optional extras out, and every ``fabstir`` command starts without the client stack.

Each check runs in a fresh interpreter (``sys.modules`` of this one is full of tests)."""

from __future__ import annotations

import json
import subprocess
import sys

# Never needed by `import langchain_fabstir` nor by `from langchain_fabstir import ChatFabstir`.
SERVER_SIDE = (
    "aiohttp",
    "web3",
    "eth_account",
    "numpy",
    "langgraph",
    "langchain_fabstir.host",
    "langchain_fabstir.host.server",
    "langchain_fabstir.portal",
    "langchain_fabstir.chain.client",
)
# Loaded on first use of a class that needs them, not by the package itself.
CLIENT_STACK = (
    "httpx",
    "websockets",
    "cbor2",
    "nacl",
    "pydantic",
    "langchain_core",
    "langchain_fabstir.sessions",
)


def _loaded(code: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    probe = (
        f"import sys\n{code}\nimport json\n"
        f"print(json.dumps({{'loaded': [m for m in {list(names)!r} if m in sys.modules], "
        "'dir': sorted(dir(sys.modules['langchain_fabstir']))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_plain_import_loads_neither_the_server_side_nor_the_client_stack() -> None:
    import langchain_fabstir

    seen = _loaded("import langchain_fabstir", SERVER_SIDE + CLIENT_STACK)
    assert seen["loaded"] == []
    # The lazy names are still there for dir(), `import *` and type checkers.
    assert set(langchain_fabstir.__all__) <= set(seen["dir"])
    # The chat model pulls the client stack, never the server side.
    seen = _loaded("from langchain_fabstir import ChatFabstir, SessionManager", SERVER_SIDE)
    assert seen["loaded"] == []
    # The subpackages are still attributes of the package, imported on first use.
    seen = _loaded(
        "import langchain_fabstir\nassert langchain_fabstir.sessions.SessionManager\n"
        "assert langchain_fabstir.errors.FabstirError",
        ("langchain_fabstir.sessions", "langchain_fabstir.errors"),
    )
    assert seen["loaded"] == ["langchain_fabstir.sessions", "langchain_fabstir.errors"]


def test_the_cli_starts_without_the_client_stack() -> None:
    seen = _loaded("from langchain_fabstir.cli import main", SERVER_SIDE + CLIENT_STACK)
    assert seen["loaded"] == []
