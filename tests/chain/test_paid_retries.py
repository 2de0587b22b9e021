"""A retry never pays: one ``ChatFabstir`` call against a registered host that cannot serve
creates exactly one job (counted on the local chain), fails with a typed error, and the job
is ended so the deposit comes back. Money arguments are exact (no ``bool``), and the price
is the one on chain when paying."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from aiohttp import WSMsgType, web

from langchain_fabstir import ChatFabstir, SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.errors import (
    ConnectionFailedError,
    HostDisconnectedError,
    InvalidRequestError,
    PriceLimitError,
)
from tests.localchain import HOST1, SMOLLM2_FILE, SMOLLM2_REPO, STATUS_COMPLETED, USER, LocalChain

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"
PRICE = 10**12  # wei per 1,000 tokens


@dataclass
class HostileHost:
    """A registered host on 127.0.0.1 that answers discovery's probes, then cannot serve:
    with ``ws=True`` it greets, acks ``session_init`` and drops the socket on every prompt;
    with ``ws=False`` it has no ``/v1/ws`` at all (404)."""

    ws: bool = True
    url: str = ""
    sockets: int = 0
    prompts: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)
    host_address: str | None = HOST1.address
    host_public_key: str | None = None  # no key on chain: a plaintext session

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "issues": []})

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [{"id": MODEL, "name": MODEL}]})

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": "8.0.0", "features": []})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self.sockets += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "connected", "message": "hi", "features": []}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame.get("type") == "session_init":
                ack = {"type": "session_init_ack", "status": "success", "id": frame.get("id")}
                await ws.send_str(json.dumps(ack))
            elif frame.get("type") == "prompt":
                self.prompts += 1
                break  # drop the socket without a word
        await ws.close()
        return ws

    async def __aenter__(self) -> HostileHost:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/version", self._version)
        if self.ws:
            app.router.add_get("/v1/ws", self._ws)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def dropping_host() -> AsyncIterator[HostileHost]:
    async with HostileHost(ws=True) as host:
        yield host


@pytest.fixture
async def wsless_host() -> AsyncIterator[HostileHost]:
    async with HostileHost(ws=False) as host:
        yield host


def _register(chain: LocalChain, host: HostileHost, smollm2: bytes) -> ChainConfig:
    chain.register_host(HOST1, host.url, [smollm2], price_native=PRICE, price_stable=1_000)
    return ChainConfig.from_mapping(chain.config())


def _jobs_since(chain: LocalChain, block: int) -> list[int]:
    logs = chain.market.events.SessionJobCreatedForModel().get_logs(from_block=block)
    return [int(e["args"]["jobId"]) for e in logs]


def _llm(config: ChainConfig, **extra: object) -> ChatFabstir:
    return ChatFabstir(
        chain=config,
        private_key=USER.private_key,
        model=MODEL,
        deposit=Decimal("0.001"),
        max_price_per_token=Decimal("0.000000002"),
        **extra,
    )


@pytest.mark.timeout(60)
async def test_one_call_to_a_host_that_drops_every_socket_pays_one_job(
    chain: LocalChain, dropping_host: HostileHost, smollm2: bytes
) -> None:
    config = _register(chain, dropping_host, smollm2)
    start = chain.w3.eth.block_number
    llm = _llm(config, max_retries=2)
    with pytest.raises(HostDisconnectedError) as err:
        await asyncio.wait_for(llm.ainvoke("hello"), 40)
    assert err.value.code == "HOST_DISCONNECTED" and err.value.is_retryable
    jobs = _jobs_since(chain, start)
    assert len(jobs) == 1  # the retries reused the paid job
    # The documented total: 1 + max_retries sockets (and prompts) for the call, not a product.
    assert dropping_host.sockets == 3 and dropping_host.prompts == 3
    # The job was ended by the user so the deposit (less the early-end fee) comes back.
    assert chain.session(jobs[0])["status"] == STATUS_COMPLETED
    await llm.aclose()


@pytest.mark.timeout(60)
async def test_one_call_to_a_host_without_a_websocket_pays_one_job(
    chain: LocalChain, wsless_host: HostileHost, smollm2: bytes
) -> None:
    config = _register(chain, wsless_host, smollm2)
    start = chain.w3.eth.block_number
    llm = _llm(config, max_retries=2)
    with pytest.raises(ConnectionFailedError) as err:
        await asyncio.wait_for(llm.ainvoke("hello"), 40)
    assert err.value.code == "HOST_UNREACHABLE"
    jobs = _jobs_since(chain, start)
    assert len(jobs) == 1
    assert chain.session(jobs[0])["status"] == STATUS_COMPLETED  # released at once
    await llm.aclose()


# --- exactness ---------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [True, False])
async def test_a_bool_is_not_money(
    chain: LocalChain, dropping_host: HostileHost, smollm2: bytes, amount: bool
) -> None:
    config = _register(chain, dropping_host, smollm2)
    nonce = int(chain.w3.eth.get_transaction_count(USER.address))
    async with SessionManager(chain=config, private_key=USER.private_key) as manager:
        with pytest.raises(InvalidRequestError, match="bool"):
            await manager.create_session(model=MODEL, deposit=amount)
        with pytest.raises(InvalidRequestError, match="bool"):
            await manager.create_session(
                model=MODEL, deposit=Decimal("0.001"), max_price_per_token=amount
            )
    with pytest.raises(ValueError, match="bool"):
        ChatFabstir(chain=config, model=MODEL, deposit=amount)
    assert int(chain.w3.eth.get_transaction_count(USER.address)) == nonce


async def test_a_price_lowered_before_paying_is_paid_at_the_new_price(
    chain: LocalChain, smollm2: bytes
) -> None:
    from langchain_fabstir.chain import ChainClient
    from langchain_fabstir.chain.marketplace import create_session_job
    from langchain_fabstir.sessions.payments import SessionPayments

    async with HostileHost() as host:
        config = _register(chain, host, smollm2)
        payments = SessionPayments(config, None)
        async with ChainClient(config, USER.private_key) as client:
            records, record = await payments.choose(
                MODEL, token="ETH", max_price_per_token=None, policy="auto"
            )
            assert records[0].price == PRICE
            await asyncio.to_thread(chain.set_model_price, HOST1, smollm2, PRICE // 2)
            created = await create_session_job(client, records[0], record, deposit=Decimal("0.001"))
            assert created.job.price_per_token == PRICE // 2
            # Raised above the user's limit between discovery and payment: refused.
            await asyncio.to_thread(chain.set_model_price, HOST1, smollm2, PRICE * 5)
            nonce = int(chain.w3.eth.get_transaction_count(USER.address))
            with pytest.raises(PriceLimitError):
                await create_session_job(
                    client,
                    records[0],
                    record,
                    deposit=Decimal("0.001"),
                    max_price_per_token=Decimal("0.000000002"),
                )
            assert int(chain.w3.eth.get_transaction_count(USER.address)) == nonce
        await payments.aclose()


async def test_a_failed_usdc_create_leaves_no_allowance(chain: LocalChain, smollm2: bytes) -> None:
    from langchain_fabstir.chain import ChainClient
    from langchain_fabstir.chain.marketplace import create_session_job
    from langchain_fabstir.errors import ChainError
    from langchain_fabstir.sessions.payments import SessionPayments

    async with HostileHost() as host:
        config = _register(chain, host, smollm2)
        await asyncio.to_thread(chain.mint_usdc, USER, 5_000_000)
        payments = SessionPayments(config, None)
        async with ChainClient(config, USER.private_key) as client:
            records, record = await payments.choose(
                MODEL, token="USDC", max_price_per_token=None, policy="auto"
            )
            # The host goes inactive after discovery: the create reverts after the approve.
            await asyncio.to_thread(chain.set_host_active, HOST1, False)
            with pytest.raises(ChainError):
                await create_session_job(
                    client, records[0], record, deposit=Decimal("1"), token="USDC"
                )
        await payments.aclose()
        allowance = chain.usdc.functions.allowance(USER.address, config.job_marketplace).call()
        assert allowance == 0
        assert chain.usdc_balance(USER) == 5_000_000
