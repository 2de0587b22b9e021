"""examples/paid_session.py runs unchanged against a local chain: the environment names the
chain config, the key and the model, exactly as it would name Base Sepolia's."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost
from tests.localchain import (
    HOST1,
    HOST2,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    USER,
    LocalChain,
)

pytestmark = pytest.mark.llama

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "paid_session.py"


async def _settle_when_closed(chain: LocalChain, host: ReferenceHost) -> int:
    """Play the host's settlement: once the example's socket is closed, prove and complete
    its job (what a Fabstir node does on its own)."""
    while not (host.requests and not host.connections):  # noqa: ASYNC110 (the host has no event)
        await asyncio.sleep(0.05)
    job_id = host.requests[-1].job_id
    assert job_id is not None
    await asyncio.to_thread(chain.settle_like_host, job_id, 200)
    return int(job_id)


async def test_paid_session_example_runs_on_the_local_chain(
    chain: LocalChain,
    chain_config_file: Path,
    smollm2: bytes,
    llama_engine: LlamaEngine,
    tmp_path: Path,
) -> None:
    async with (
        ReferenceHost(llama_engine, host_key=HOST1.private_key, rate_limit_per_minute=None) as h1,
        ReferenceHost(EchoEngine(), host_key=HOST2.private_key, rate_limit_per_minute=None) as h2,
    ):
        chain.register_reference_host(h1, [smollm2], price_native=10**12)  # the cheaper
        chain.register_reference_host(h2, [smollm2], price_native=5 * 10**12)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FABSTIR_")},
            "FABSTIR_CHAIN_CONFIG": str(chain_config_file),
            "FABSTIR_PRIVATE_KEY": USER.private_key,
            "FABSTIR_MODEL": f"{SMOLLM2_REPO}/{SMOLLM2_FILE}",
            "FABSTIR_SETTLE_WAIT": "30",
        }
        out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
        with out_file.open("wb") as out_fh, err_file.open("wb") as err_fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLE), env=env, stdout=out_fh, stderr=err_fh
            )
            settler = asyncio.create_task(_settle_when_closed(chain, h1))
            try:
                await asyncio.wait_for(proc.wait(), 100)
            except asyncio.TimeoutError:
                pass
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                if not settler.done():
                    settler.cancel()
        out, err = out_file.read_text(), err_file.read_text()
        assert settler.done(), f"the example never closed its socket:\n{out}\n{err}"
        job_id = settler.result()
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "Traceback" not in err, err
    assert re.search(rf"^Job {job_id} with {re.escape(h1.url)} \(encrypted\)", out, re.M), out
    answer = re.search(r"^Assistant: (.+)$", out, re.M)
    assert answer and len(answer.group(1).split()) >= 3, out
    assert "Settled (completed, by the host)" in out, out
    assert re.search(r"^Refund withdrawn: 0\.000\d+ ETH$", out, re.M), out
    assert chain.deposit_balance(USER) == 0
