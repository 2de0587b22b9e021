"""examples/paid_session.py runs unchanged against a local chain: the environment names the
chain config, the key and the model, exactly as it would name Base Sepolia's. The cheaper
host proves and settles the job by itself once the example's socket closes, as a deployed
node does (:class:`~langchain_fabstir.host.chain_proofs.HostChain`, no dispute-window wait)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost
from langchain_fabstir.portal import LocalPortal
from tests._support.chain import self_settling_host
from tests.localchain import (
    HOST2,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    USER,
    LocalChain,
)

pytestmark = [pytest.mark.llama, pytest.mark.timeout(400)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "paid_session.py"
# The example's own waits bound it (30 s answer chunks, 30 s for the settlement); this is
# the test's outer bound, wide enough for a CI machine whose other core runs a model too.
EXAMPLE_BUDGET = 300


async def test_paid_session_example_runs_on_the_local_chain(
    chain: LocalChain,
    chain_config_file: Path,
    smollm2: bytes,
    llama_engine: LlamaEngine,
    tmp_path: Path,
) -> None:
    async with (
        LocalPortal(tmp_path / "portal", port=0) as portal,
        self_settling_host(chain, llama_engine, portal.url) as h1,
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
                sys.executable, "-X", "faulthandler", str(EXAMPLE),
                env=env, stdout=out_fh, stderr=err_fh,
            )  # fmt: skip
            try:
                await asyncio.wait_for(proc.wait(), EXAMPLE_BUDGET)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        out, err = out_file.read_text(), err_file.read_text()
        state = f"host: {len(h1.requests)} prompts, {len(h1.connections)} sockets open, " + (
            f"chain errors {h1.chain.errors if h1.chain else None}"
        )
        assert proc.returncode == 0, f"{out}\n{err}\n{state}"
    assert "Traceback" not in err, err
    job_id = h1.requests[-1].job_id
    assert re.search(rf"^Job {job_id} with {re.escape(h1.url)} \(encrypted\)", out, re.M), out
    answer = re.search(r"^Assistant: (.+)$", out, re.M)
    assert answer and len(answer.group(1).split()) >= 3, out
    assert "Settled (completed, by the host)" in out, out
    assert re.search(r"^Refund withdrawn: 0\.000\d+ ETH$", out, re.M), out
    assert chain.deposit_balance(USER) == 0
