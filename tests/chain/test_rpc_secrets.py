"""An RPC URL's credentials (``user:pass@``, a provider key in the path or the query) appear
in no log record (any logger, DEBUG), no ``repr``, no error message: a real chain (anvil)
behind a small authenticating proxy on 127.0.0.1 that, like a provider, wants the key in the
path and the user and password in the URL."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from langchain_fabstir import ChatFabstir, SessionManager
from langchain_fabstir.chain import ChainClient, ChainConfig
from langchain_fabstir.errors import ChainUnavailableError, WrongChainError
from tests.localchain import USER, LocalChain

RPC_USER, RPC_PASS = "rpcuser7", "hunter2-Pw-Zx9q"
PATH_KEY = "Ab3dEf6hIj9kLm2nOp5qRs8tUv"  # an Alchemy-like key segment
QUERY_KEY = "q9Kx7Lm3Np5Rt8Vw"
SECRETS = (RPC_USER, RPC_PASS, PATH_KEY, QUERY_KEY)


@pytest.fixture
async def provider_proxy(chain: LocalChain) -> AsyncIterator[str]:
    """``http://127.0.0.1:PORT``: forwards ``POST /v2/<PATH_KEY>`` with the right basic auth
    to anvil; anything else is 401 (as a provider answers a wrong key)."""
    expected = "Basic " + base64.b64encode(f"{RPC_USER}:{RPC_PASS}".encode()).decode()
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        if (
            request.match_info["key"] != PATH_KEY
            or request.headers.get("Authorization") != expected
            or request.query.get("apikey") != QUERY_KEY
        ):
            return web.Response(status=401, text="bad key")
        body = await request.read()
        async with session.post(
            chain.rpc_url, data=body, headers={"Content-Type": "application/json"}
        ) as upstream:
            return web.Response(
                status=upstream.status, body=await upstream.read(), content_type="application/json"
            )

    app = web.Application()
    app.router.add_post("/v2/{key}", forward)
    runner = web.AppRunner(app, access_log=None)  # the proxy is the provider: its log is not ours
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await session.close()


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def test_rpc_credentials_are_in_no_log_repr_or_error(
    chain: LocalChain, provider_proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger, as an application might
    url = f"http://{RPC_USER}:{RPC_PASS}@{provider_proxy[7:]}/v2/{PATH_KEY}?apikey={QUERY_KEY}"
    config = ChainConfig.from_mapping({**chain.config(), "rpc_url": url})
    assert config.rpc_url.get_secret_value() == url
    shown: list[str] = [repr(config), str(config), config.model_dump_json()]

    async with ChainClient(config, private_key=USER.private_key, poll_interval=0.05) as client:
        shown.append(repr(client))
        # Reads and a transaction through the authenticating proxy: the secret URL works.
        assert await client.native_balance() > 0
        assert await client.block_time() > 0
        receipt = await client.transact(
            client.usdc.functions.approve(config.job_marketplace, 1), "approving USDC"
        )
        assert int(receipt["status"]) == 1
        shown.append(str(client.w3.provider))

    # WRONG_CHAIN, through the same credentials.
    wrong = config.model_copy(update={"chain_id": 8453})
    async with ChainClient(wrong) as client:
        with pytest.raises(WrongChainError) as wrong_chain:
            await client.ensure_chain()
    # CHAIN_UNAVAILABLE: a refused key (HTTP 401 quotes the URL in aiohttp's error) and a
    # port nobody listens on.
    refused = config.model_copy(update={"rpc_url": url.replace("apikey=", "apikey=x")})
    closed = config.model_copy(
        update={"rpc_url": f"http://{RPC_USER}:{RPC_PASS}@127.0.0.1:9/v2/{PATH_KEY}"}
    )
    unavailable = []
    for cfg in (refused, closed):
        async with ChainClient(cfg) as client:
            with pytest.raises(ChainUnavailableError) as down:
                await client.ensure_chain()
            unavailable.append(down.value)
    assert "401" in str(unavailable[0])
    for err in (wrong_chain.value, *unavailable):
        shown += [str(err), repr(err), repr(err.details), err.message]

    # The facades that hold the config.
    manager = SessionManager(chain=config, private_key=USER.private_key)
    shown.append(repr(manager))
    await manager.aclose()
    llm = ChatFabstir(
        chain=config, private_key=USER.private_key, model="m", deposit=Decimal("0.001")
    )
    shown.append(repr(llm))

    for text in shown:
        assert not _leaks(text), text
    formatter = logging.Formatter("%(name)s %(message)s")
    logged = [formatter.format(r) for r in caplog.records]
    assert any(r.name.startswith("web3") for r in caplog.records)  # web3.py did log, at DEBUG
    assert any("127.0.0.1" in line for line in logged)  # ...and showed the (redacted) URL
    for line in logged:
        assert not _leaks(line), line
