"""Paid sessions end to end: a local chain (anvil + the project's contracts), two reference
hosts registered on it, and the package's own client (SessionManager, ChatFabstir) paying."""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_fabstir import ChatFabstir, SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.chain.abi import (
    ERC20_ABI,
    JOB_MARKETPLACE_ABI,
    MODEL_REGISTRY_ABI,
    NODE_REGISTRY_ABI,
    signature,
)
from langchain_fabstir.errors import (
    ChainUnavailableError,
    DepositLimitError,
    InsufficientFundsError,
    InvalidRequestError,
    ModelNotAvailableError,
    NoHostForModelError,
    PriceLimitError,
    WrongChainError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.localchain import (
    HOST1,
    HOST2,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    STATUS_COMPLETED,
    USER,
    LocalChain,
    load_artifact,
)

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"
CHEAP, DEAR = 10**12, 3 * 10**12  # wei per 1,000 tokens
USDC_CHEAP, USDC_DEAR = 1_000, 3_000  # 1e-6 USDC per 1,000 tokens


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[ReferenceHost, ReferenceHost]]:
    engine1 = EchoEngine()
    engine2 = EchoEngine()
    async with (
        ReferenceHost(engine1, host_key=HOST1.private_key, rate_limit_per_minute=None) as h1,
        ReferenceHost(engine2, host_key=HOST2.private_key, rate_limit_per_minute=None) as h2,
    ):
        yield h1, h2


@pytest.fixture
def market(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], smollm2: bytes
) -> ChainConfig:
    """Host 1 is dear, host 2 cheap (in ETH and USDC); both registered with their keys."""
    h1, h2 = hosts
    chain.register_reference_host(h1, [smollm2], price_native=DEAR, price_stable=USDC_DEAR)
    chain.register_reference_host(h2, [smollm2], price_native=CHEAP, price_stable=USDC_CHEAP)
    return ChainConfig.from_mapping(chain.config())


def _nonce(chain: LocalChain) -> int:
    return int(chain.w3.eth.get_transaction_count(USER.address))


def _jobs_created(chain: LocalChain, since_block: int) -> int:
    logs = chain.market.events.SessionJobCreatedForModel().get_logs(from_block=since_block)
    return len(logs)


# --- the client's ABI is the contracts' ----------------------------------------------


@pytest.mark.parametrize(
    ("ours", "artifact"),
    [
        (NODE_REGISTRY_ABI, "NodeRegistry"),
        (MODEL_REGISTRY_ABI, "ModelRegistry"),
        (JOB_MARKETPLACE_ABI, "JobMarketplace"),
        (ERC20_ABI, "TestUSDC"),
    ],
)
def test_client_abi_matches_the_contracts(ours: list[dict], artifact: str) -> None:
    """Every function/event the client uses exists in the compiled contract with the same
    inputs, outputs (types, order) and indexed flags."""
    theirs = {(e["type"], signature(e)): e for e in load_artifact(artifact)["abi"] if "name" in e}
    for entry in ours:
        key = (entry["type"], signature(entry))
        assert key in theirs, f"{artifact} lacks {key}"
        if entry["type"] == "function":
            assert [signature({"name": "", "inputs": [o]}) for o in entry["outputs"]] == [
                signature({"name": "", "inputs": [o]}) for o in theirs[key]["outputs"]
            ], key
        else:
            assert [i["indexed"] for i in entry["inputs"]] == [
                i["indexed"] for i in theirs[key]["inputs"]
            ], key


# --- whole paid sessions ---------------------------------------------------------------


async def test_paid_eth_session_end_to_end(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    _, cheap_host = hosts
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        session = await manager.create_session(
            model=MODEL,
            deposit=Decimal("0.001"),
            payment_token="ETH",
            max_price_per_token=Decimal("0.000000002"),  # 2e12 wei / 1,000 tokens
            policy="cheapest",
        )
        # Discovery by model, the cheapest host, the job id as the session id, encrypted.
        assert session.host_url == cheap_host.url
        assert session.job_id is not None and session.id == str(session.job_id)
        assert session.encrypted
        job = chain.session(session.job_id)
        assert job["depositor"] == USER.address and job["host"] == HOST2.address
        assert job["deposit"] == 10**15 and job["pricePerToken"] == CHEAP

        first = "".join([t async for t in manager.stream_prompt(session.id, "hello chain")])
        second = await manager.prompt(session.id, "and again")
        assert first == "Echo: hello chain" and second.text == "Echo: and again"
        assert [r.job_id for r in cheap_host.requests][-2:] == [session.job_id] * 2

        summary = await manager.end_session(session.id)
        assert summary.job_id == session.job_id
        assert summary.settlement is not None and summary.settlement["state"] == "active"

        # The host settles (what a Fabstir node does after the socket closes).
        await asyncio.to_thread(chain.settle_like_host, session.job_id, summary.final_token_count)
        settled = await manager.settlement(session.job_id)
        assert settled.state == "completed" and settled.settled
        refund = settled.deposit - settled.tokens_used * CHEAP // 1000
        assert settled.refunded_to_user == refund > 0

        assert await manager.deposit_balance("ETH") == Decimal(refund) / 10**18
        before = chain.eth_balance(USER)
        taken = await manager.withdraw_refund("ETH")
        assert taken == Decimal(refund) / 10**18
        assert chain.deposit_balance(USER) == 0
        gained = chain.eth_balance(USER) - before
        assert refund - 10**15 < gained < refund  # the refund, less the gas of withdrawing
        assert await manager.withdraw_refund("ETH") == 0  # nothing left: nothing sent


async def test_paid_usdc_session_approves_then_deposits(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    _, cheap_host = hosts
    await asyncio.to_thread(chain.mint_usdc, USER, 5_000_000)  # 5 USDC
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        session = await manager.create_session(
            model=MODEL, deposit=Decimal("1.5"), payment_token="USDC", policy="cheapest"
        )
        assert session.host_url == cheap_host.url and session.encrypted
        assert session.job_id is not None
        job = chain.session(session.job_id)
        assert job["paymentToken"] == market.usdc and job["deposit"] == 1_500_000
        assert job["pricePerToken"] == USDC_CHEAP
        assert chain.usdc_balance(USER) == 3_500_000
        text = "".join([t async for t in manager.stream_prompt(session.id, "paid in usdc")])
        assert text == "Echo: paid in usdc"
        summary = await manager.end_session(session.id)
        await asyncio.to_thread(chain.settle_like_host, session.job_id, summary.final_token_count)
        settled = await manager.settlement(session.job_id)
        assert settled.state == "completed"
        refund = 1_500_000 - settled.tokens_used * USDC_CHEAP // 1000
        assert await manager.withdraw_refund("USDC") == Decimal(refund) / 10**6
        assert chain.usdc_balance(USER) == 3_500_000 + refund


async def test_limits_refuse_before_anything_is_sent(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    nonce = _nonce(chain)
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        with pytest.raises(PriceLimitError) as too_dear:
            await manager.create_session(
                model=MODEL,
                deposit=Decimal("0.001"),
                max_price_per_token=Decimal("0.0000000005"),  # below both hosts
            )
        assert too_dear.value.code == "PRICE_ABOVE_LIMIT"
        with pytest.raises(DepositLimitError):  # fewer tokens than one proof interval
            await manager.create_session(model=MODEL, deposit=Decimal("0.0000000001"))
        with pytest.raises(InsufficientFundsError):  # more ETH than the account holds
            await manager.create_session(model=MODEL, deposit=Decimal("100000"))
        with pytest.raises(InsufficientFundsError):  # no USDC at all
            await manager.create_session(model=MODEL, deposit=Decimal("1"), payment_token="USDC")
        with pytest.raises(ModelNotAvailableError):
            await manager.create_session(model="nobody/none.gguf", deposit=Decimal("0.001"))
        with pytest.raises(InvalidRequestError):  # a float is refused for money
            await manager.create_session(model=MODEL, deposit=0.001)  # type: ignore[arg-type]
    assert _nonce(chain) == nonce  # not one transaction was sent
    assert all(not h.requests for h in hosts)


async def test_only_hosts_within_the_price_limit_are_paid(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    """With the cheap host down, the dear one is the only one left: above the limit it is
    refused; with a limit that admits it, it is paid (its own price, never more)."""
    _, cheap_host = hosts
    await cheap_host.stop()
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        with pytest.raises(PriceLimitError):
            await manager.create_session(
                model=MODEL, deposit=Decimal("0.001"), max_price_per_token=Decimal("0.000000002")
            )
        session = await manager.create_session(
            model=MODEL, deposit=Decimal("0.001"), max_price_per_token=Decimal("0.000000003")
        )
        assert session.job_id is not None
        assert chain.session(session.job_id)["pricePerToken"] == DEAR
        await manager.end_session(session.id)


async def test_no_host_for_the_model(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost]
) -> None:
    config = ChainConfig.from_mapping(chain.config())  # nobody registered
    nonce = _nonce(chain)
    async with SessionManager(chain=config, private_key=USER.private_key) as manager:
        with pytest.raises(NoHostForModelError) as err:
            await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
    assert err.value.code == "NO_HOST_FOR_MODEL"
    assert _nonce(chain) == nonce


async def test_watcher_settles_a_job_the_host_never_settles(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        session = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
        await manager.prompt(session.id, "short")
        summary = await manager.end_session(session.id)
        assert session.job_id is not None and summary.settlement is not None
        # Before the deadline the watcher only waits (bounded).
        with pytest.raises(Exception, match="not settled within"):
            await manager.watch_settlement(session.job_id, max_wait=0.3, poll_interval=0.1)
        assert chain.session(session.job_id)["status"] == 0
        # Past start + maxDuration + proofTimeoutWindow (chain time), it settles the job.
        await asyncio.to_thread(chain.increase_time, 3600 + 300 + 1)
        done = await manager.watch_settlement(session.job_id, max_wait=30, poll_interval=0.1)
        assert done.settled and done.settled_by == "user"
        assert chain.session(session.job_id)["status"] == STATUS_COMPLETED
        assert await manager.deposit_balance("ETH") > 0  # the unused deposit came back


async def test_rpc_down_is_a_typed_error_and_nothing_is_sent(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = market.model_copy(update={"rpc_url": f"http://127.0.0.1:{port}"})
    nonce = _nonce(chain)
    async with SessionManager(chain=down, private_key=USER.private_key) as manager:
        with pytest.raises(ChainUnavailableError) as err:
            await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
    assert err.value.code == "CHAIN_UNAVAILABLE" and err.value.is_retryable
    wrong = market.model_copy(update={"chain_id": 8453})
    async with SessionManager(chain=wrong, private_key=USER.private_key) as manager:
        with pytest.raises(WrongChainError):
            await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
    assert _nonce(chain) == nonce
    assert all(not h.requests and not h.connections for h in hosts)


async def test_a_key_never_shows(market: ChainConfig) -> None:
    manager = SessionManager(chain=market, private_key=USER.private_key)
    secret = USER.private_key.removeprefix("0x")
    assert secret not in repr(manager.chain) and secret not in repr(manager.__dict__)
    await manager.aclose()


# --- LangChain: one paid session per ChatFabstir ---------------------------------------


def _paid_llm(config: ChainConfig) -> ChatFabstir:
    return ChatFabstir(
        chain=config,
        private_key=USER.private_key,
        model=MODEL,
        deposit=Decimal("0.001"),
        max_price_per_token=Decimal("0.000000002"),
    )


async def test_chat_fabstir_in_an_lcel_chain_pays_one_session(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    start = chain.w3.eth.block_number
    llm = _paid_llm(market)
    pipeline = ChatPromptTemplate.from_messages([("human", "{q}")]) | llm | StrOutputParser()
    assert await pipeline.ainvoke({"q": "first"}) == "Echo: first"
    assert await pipeline.ainvoke({"q": "second"}) == "Echo: second"
    chunks = [c async for c in pipeline.astream({"q": "third"})]
    assert "".join(chunks) == "Echo: third"
    assert _jobs_created(chain, start) == 1
    _, cheap_host = hosts
    assert cheap_host.connections
    await llm.aclose()  # ends the paid session: the host may settle
    assert not cheap_host.connections
    assert {r.job_id for r in cheap_host.requests} == {
        chain.market.functions.nextJobId().call() - 1
    }


async def test_chat_fabstir_in_a_langgraph_agent_pays_one_session(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    start = chain.w3.eth.block_number
    llm = _paid_llm(market)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(llm, [add])
    for question in ("what is 2 + 3?", "and 4 + 5?"):
        out = await agent.ainvoke({"messages": [("human", question)]})
        assert out["messages"][-1].content.startswith("Echo:")
    assert _jobs_created(chain, start) == 1
    await llm.aclose()


async def test_reverts_carry_the_contracts_reason_and_send_nothing(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    from langchain_fabstir.chain import ChainClient, complete_job, read_job
    from langchain_fabstir.errors import ChainError, TransactionRevertedError
    from tests.localchain import STRANGER

    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        session = await manager.create_session(model=MODEL, deposit=Decimal("0.001"))
        assert session.job_id is not None
        await manager.end_session(session.id)
    sent = int(chain.w3.eth.get_transaction_count(STRANGER.address))
    async with ChainClient(market, STRANGER.private_key) as stranger:
        with pytest.raises(TransactionRevertedError) as err:
            await complete_job(stranger, session.job_id)  # not the depositor, not the host
        assert err.value.details["reason"] == "Only host or depositor"
        assert "Only host or depositor" in str(err.value)
        with pytest.raises(ChainError, match="does not exist"):
            await read_job(stranger, 10_000)
    assert int(chain.w3.eth.get_transaction_count(STRANGER.address)) == sent
    assert chain.session(session.job_id)["status"] == 0


async def test_other_conversations_of_a_paid_job_run_in_node_sessions_of_that_job(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], market: ChainConfig
) -> None:
    """A node keeps history per session id: a conversation the job's node session does
    not hold gets a fresh node session id on the same socket, under the same paid job
    (the node bills the job named in the init); no new job is paid."""
    _, cheap_host = hosts
    async with SessionManager(chain=market, private_key=USER.private_key) as manager:
        session = await manager.create_session(
            model=MODEL,
            deposit=Decimal("0.001"),
            payment_token="ETH",
            max_price_per_token=Decimal("0.000000002"),
            policy="cheapest",
        )
        block = await asyncio.to_thread(lambda: chain.w3.eth.block_number)
        await manager.prompt(session.id, "zz-first conversation")
        async for _ in manager.open_stream(session.id, "zz-other", context=[], record=False):
            pass
        first, other = list(cheap_host.requests)[-2:]
        assert first.session_id == session.id and other.session_id != session.id
        assert other.session_id is not None and other.session_id.startswith(session.id + "~")
        assert first.job_id == other.job_id == session.job_id
        assert "zz-first" not in "".join(m["content"] for m in cheap_host.model_inputs[-1])
        assert _jobs_created(chain, block) == 1  # the session's own job, no other
        await manager.end_session(session.id)
