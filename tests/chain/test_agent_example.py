"""examples/agent_with_delegate.py runs unchanged against a local chain: a LangGraph agent
with a delegate's key pays for its payer in USDC, within a budget whose ledger survives the
process; the second run, over the budget, is refused before anything is sent."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from eth_account import Account

from langchain_fabstir import SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.localchain import HOST1, SMOLLM2_FILE, SMOLLM2_REPO, USER, LocalChain

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_with_delegate.py"


@pytest.fixture
async def host() -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(
        EchoEngine(), host_key=HOST1.private_key, rate_limit_per_minute=None
    ) as h:
        yield h


async def _run(env: dict[str, str], tmp_path: Path) -> tuple[int, str, str]:
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    with out_file.open("wb") as out_fh, err_file.open("wb") as err_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), env=env, stdout=out_fh, stderr=err_fh
        )
        try:
            await asyncio.wait_for(proc.wait(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return int(proc.returncode or 0), out_file.read_text(), err_file.read_text()


async def test_agent_pays_through_a_delegate_within_its_budget(
    chain: LocalChain,
    host: ReferenceHost,
    smollm2: bytes,
    chain_config_file: Path,
    tmp_path: Path,
) -> None:
    chain.register_reference_host(host, [smollm2], price_stable=1_000)
    delegate = Account.create()
    await asyncio.to_thread(chain.set_eth_balance, delegate.address, 10**18)
    await asyncio.to_thread(chain.mint_usdc, USER, 10_000_000)
    market = ChainConfig.from_mapping(chain.config())
    async with SessionManager(chain=market, private_key=USER.private_key) as payer:
        await payer.authorize_delegate(delegate.address, Decimal("5"))
    ledger = tmp_path / "spend.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABSTIR_")},
        "FABSTIR_CHAIN_CONFIG": str(chain_config_file),
        "FABSTIR_PRIVATE_KEY": delegate.key.hex(),
        "FABSTIR_PAYER": USER.address,
        "FABSTIR_MODEL": f"{SMOLLM2_REPO}/{SMOLLM2_FILE}",
        "FABSTIR_DEPOSIT": "1",
        "FABSTIR_MAX_SPEND": "1.5",
        "FABSTIR_SPEND_LEDGER": str(ledger),
    }
    code, out, err = await _run(env, tmp_path)
    assert code == 0, f"{out}\n{err}"
    assert "Traceback" not in err, err
    assert out.count("Agent: Echo") == 3, out  # three graph steps, one paid session
    assert f"Paid by {USER.address}; committed 1 of 1.5 USDC" in out, out
    assert chain.usdc_balance(USER) == 9_000_000  # the payer paid the one deposit
    assert chain.usdc_balance(delegate.address) == 0
    assert len(json.loads(ledger.read_text())["entries"]) == 1

    # A restarted agent on the same ledger: the next deposit would cross 1.5 USDC.
    nonce = chain.w3.eth.get_transaction_count(delegate.address)
    code, out, err = await _run(env, tmp_path)
    assert code == 1, f"{out}\n{err}"
    assert "1 already committed" in out and "Stopped: BUDGET_EXCEEDED" in out, out
    assert chain.w3.eth.get_transaction_count(delegate.address) == nonce
    assert chain.usdc_balance(USER) == 9_000_000
