"""Deeply nested JSON from a peer is an error, never a dead process (issue 20, item 1).

Deep JSON can overflow the C stack and kill the process (SIGSEGV) when the recursion limit
is high, so every scenario whose failure would be a crash runs in a child process: a
crash there is a failed assertion here. The clients in those children raise the limit to
100,000 first, as an application that imports web3 or py_ecc itself does: the bounds hold
whatever the limit is.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from coincurve import PrivateKey

from langchain_fabstir.cli import start_host_process
from tests._support.sdk import sdk_sealed_init

from .test_openai_engine import _start_cli_host, frames_until_end, send_prompt

REPO = str(Path(__file__).resolve().parents[2])
WAIT = 30.0
DEEP = "[" * 100_000
HOST_KEY = "0x" + "5a" * 32


def run_python(code: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository (``tests`` importable)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the recursion limit -----------------------------------------------------------------


def test_importing_and_signing_leave_the_recursion_limit_as_found() -> None:
    plain = run_python("import sys, langchain_fabstir; print(sys.getrecursionlimit())")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "1000"
    code = """
        import sys
        limits = [sys.getrecursionlimit()]
        import langchain_fabstir
        limits.append(sys.getrecursionlimit())
        assert "eth_account" not in sys.modules and "py_ecc" not in sys.modules
        assert "aiohttp" not in sys.modules  # the server side stays out of a plain import
        from langchain_fabstir.checkpoints import address_of
        from langchain_fabstir.checkpoints.signing import personal_sign, recover_personal_signer
        key = "0x" + "11" * 32
        assert recover_personal_signer("hi", personal_sign("hi", key)) == address_of(key)
        limits.append(sys.getrecursionlimit())
        assert "eth_account" not in sys.modules and "py_ecc" not in sys.modules
        import langchain_fabstir.chain.client  # web3.py, eth-account, py_ecc
        from langchain_fabstir.chain import ChainClient, list_hosts, settlement
        client = ChainClient(langchain_fabstir.chain.BASE_SEPOLIA, private_key=key)
        assert client.address == address_of(key)
        limits.append(sys.getrecursionlimit())
        assert "py_ecc" in sys.modules  # it was imported, and the limit restored
        print(limits)
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1000, 1000, 1000, 1000]"


def test_a_limit_the_application_chose_is_kept() -> None:
    code = """
        import sys
        sys.setrecursionlimit(5000)
        import langchain_fabstir.chain.client
        print(sys.getrecursionlimit())
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5000"


# --- a deep session init against a real keyed host ----------------------------------------


def _sealed_init(
    host_pub33: bytes, plaintext: bytes, session_id: str
) -> tuple[dict[str, Any], bytes]:
    """An ``encrypted_session_init`` sealing ``plaintext`` as it is (as sdk-core seals)."""
    return sdk_sealed_init(host_pub33, plaintext, session_id, frame_id="init-1")


async def test_a_deep_sealed_init_is_an_error_frame_and_the_host_serves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_fabstir.sessions import SessionManager

    monkeypatch.setenv("FABSTIR_HOST_KEY", HOST_KEY[2:])
    proc, url = await asyncio.to_thread(start_host_process, "--engine", "echo", "--rate-limit", "0")
    try:
        host_pub = "0x" + PrivateKey(bytes.fromhex(HOST_KEY[2:])).public_key.format().hex()
        async with SessionManager(host_url=url) as manager:
            session = await manager.create_session(host_public_key=host_pub)
            assert session.encrypted
            first = await manager.prompt(session.id, "before")
            assert first.text == "Echo: before"
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
                    await ws.receive_json(timeout=WAIT)  # connected
                    frame, _ = _sealed_init(bytes.fromhex(host_pub[2:]), DEEP.encode(), "66")
                    await ws.send_json(frame)
                    error = await ws.receive_json(timeout=WAIT)
            assert error["type"] == "error", error
            assert error["code"] == "INVALID_PAYLOAD"
            assert error["id"] == "init-1"
            assert proc.poll() is None  # the host lives
            # The session opened before goes on; so does a new one.
            second = await manager.prompt(session.id, "after")
            assert second.text == "Echo: after"
            other = await manager.create_session(host_public_key=host_pub)
            assert (await manager.prompt(other.id, "new")).text == "Echo: new"
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, WAIT)


# --- a host answering deep JSON to with_structured_output ---------------------------------


def test_a_deep_structured_answer_is_an_output_parser_exception() -> None:
    code = """
        import asyncio, json, sys
        sys.setrecursionlimit(100_000)  # as in an application that imported py_ecc itself
        from langchain_core.exceptions import OutputParserException
        from pydantic import BaseModel
        from langchain_fabstir import ChatFabstir
        from tests.faults.test_hostile_hosts import chunk, hostile_host

        DEEP = "[" * 100_000

        async def deep(ws, msg):
            await ws.send(chunk(msg, DEEP))
            end = {"type": "stream_end", "reason": "complete", "id": msg["id"]}
            await ws.send(json.dumps(end))

        class Answer(BaseModel):
            x: int

        async def main():
            seen = []
            async with hostile_host(deep) as url:
                llm = ChatFabstir(host_url=url)
                for method in ("json_schema", "json_mode"):
                    for schema in (Answer, Answer.model_json_schema()):
                        runnable = llm.with_structured_output(schema, method=method)
                        try:
                            await runnable.ainvoke("hi")
                            seen.append("no error")
                        except OutputParserException as exc:
                            assert "nests deeper than 64 levels" in str(exc), exc
                            seen.append("OutputParserException")
                        except Exception as exc:
                            seen.append(type(exc).__name__)
                raw = llm.with_structured_output(Answer, include_raw=True)
                out = await raw.ainvoke("hi")
                seen.append(type(out["parsing_error"]).__name__)
            print(json.dumps(seen))

        asyncio.run(main())
    """
    result = run_python(code)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert json.loads(result.stdout) == ["OutputParserException"] * 5


# --- an upstream sending deep JSON to a --engine openai host --------------------------------


@asynccontextmanager
async def deep_upstream(where: str) -> AsyncIterator[str]:
    """An OpenAI-compatible upstream whose stream event (``where="event"``) or error body
    (``where="error"``) is JSON nested 100,000 deep."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smollm2-135m"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        if where == "error":
            return web.Response(status=500, text=DEEP, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + DEEP.encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("where", ["event", "error"])
async def test_deep_upstream_json_is_an_error_frame_and_the_host_serves_on(where: str) -> None:
    async with deep_upstream(where) as upstream_url:
        proc, url = await asyncio.to_thread(_start_cli_host, upstream_url)
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(2):  # the host answers, and answers again
                    async with http.ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
                        await ws.receive_json(timeout=WAIT)
                        await send_prompt(ws)
                        frames = await frames_until_end(ws)
                    assert frames[0]["type"] == "error", frames
                    assert frames[-1]["reason"] == "error"
                    assert proc.poll() is None
                async with http.get(f"{url}/v1/version") as reply:
                    assert reply.status == 200
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.communicate, timeout=WAIT)
