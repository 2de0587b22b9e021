"""README.md: every fenced ``python`` block runs as written, each on its own (a fresh
namespace, as a user pastes it into a file), against real servers on 127.0.0.1.

The servers are the ones the README's "Next steps" section starts: a reference host with
the real SmolLM2 model (plus all-MiniLM-L6-v2 for ``/v1/embed``, and search and images
sidecars for ``/v1/search`` and ``/v1/images/generate``) and a local S5 portal; the
environment is the one it exports (``FABSTIR_HOST_URL``, ``FABSTIR_PORTAL_URL``,
``FABSTIR_S5_SEED``) plus a fresh ``FABSTIR_PRIVATE_KEY``. The README's fixed addresses
(``http://127.0.0.1:8080``, ``:5050``) are replaced by the servers' free ports.

Blocks fenced ```` ```python chain ```` pay on chain: they run on a local chain (anvil with
the project's contracts, ``tests/localchain.py``) named by ``FABSTIR_CHAIN_CONFIG``, where
the model they name is approved and a reference host with a host key is registered for
it; a thread plays the host's settlement once the block's socket is closed. A block that
cannot run here says why in its fence's info string, ```` ```python no-run: <reason> ````:
it is compiled (its syntax checked) and reported as a skip with that reason.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder
from langchain_fabstir.s5 import generate_phrase
from tests.conftest import ThreadedHost
from tests.localchain import (  # noqa: F401 (fixtures)
    HOST1,
    USER,
    LocalChain,
    anvil,
    chain,
    chain_config_file,
    deployed,
)
from tests.sidecars import LoopThread, diffusion_sidecar, search_sidecar
from tests.storage.conftest import ThreadedPortal

pytestmark = pytest.mark.llama

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)
NO_RUN = re.compile(r"^ no-run: (\S.*)$")
MAX_NO_RUN = 1
"""Blocks allowed to be compiled only."""
README_MODEL = ("CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf")
"""The model the chain blocks name (a model of Base Sepolia), approved on the local chain."""
README_HOST_KEY = "0x" + "7c" * 32
HOST_IN_README, PORTAL_IN_README = "http://127.0.0.1:8080", "http://127.0.0.1:5050"
KEY = "0x" + "4c" * 32  # a throwaway key: signs checkpoints, derives the SDK's S5 seed


@dataclass(frozen=True)
class Block:
    line: int
    heading: str
    info: str
    code: str

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"

    @property
    def chain(self) -> bool:
        return self.info == " chain"

    @property
    def no_run(self) -> str | None:
        found = NO_RUN.match(self.info)
        return found.group(1) if found else None


def readme_blocks() -> list[Block]:
    text = README.read_text("utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        heading = re.findall(r"^#+ (.*)$", before, re.M)[-1]
        line = before.count("\n") + 1
        blocks.append(Block(line, heading, match.group(1), match.group(2)))
    return blocks


BLOCKS = readme_blocks()
LOCAL = [b for b in BLOCKS if not b.chain]
ON_CHAIN = [b for b in BLOCKS if b.chain]


def test_every_python_block_runs_or_says_why_not() -> None:
    assert len(BLOCKS) >= 12
    for block in BLOCKS:
        known = block.info == "" or block.chain or block.no_run
        assert known, f"{block.name}: unknown fence {block.info!r}"
        compile(block.code, block.name, "exec")  # no-run blocks too: valid Python
    skipped = [b for b in BLOCKS if b.no_run]
    assert len(skipped) <= MAX_NO_RUN, [b.name for b in skipped]


@pytest.fixture(scope="module")
def servers(
    llama_engine: LlamaEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The host and portal of the README's "Next steps", on free ports."""
    lt = LoopThread()
    search = lt.enter(search_sidecar())
    images = lt.enter(diffusion_sidecar())
    host = lt.enter(
        ReferenceHost(
            llama_engine,
            host_key=README_HOST_KEY,  # encrypted sessions, as `fabstir host --host-key-file`
            rate_limit_per_minute=None,
            embedder=MiniLMEmbedder().load(),
            search_upstream=search.url,
            diffusion_upstream=images.url,
        )
    )
    portal = ThreadedPortal(tmp_path_factory.mktemp("portal"))
    try:
        yield {
            "FABSTIR_HOST_URL": host.url,
            "FABSTIR_PORTAL_URL": portal.url,
            "FABSTIR_S5_SEED": generate_phrase(),
            "FABSTIR_PRIVATE_KEY": KEY,
        }
    finally:
        portal.stop()
        lt.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", LOCAL, ids=lambda b: f"{b.name} {b.heading}")
def test_readme_block(
    block: Block,
    servers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if block.no_run:
        pytest.skip(f"{block.name}: {block.no_run}")
    for name in ("FABSTIR_HOSTS", "FABSTIR_CHAIN_CONFIG", "FABSTIR_RPC_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in servers.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    code = block.code.replace(HOST_IN_README, servers["FABSTIR_HOST_URL"])
    code = code.replace(PORTAL_IN_README, servers["FABSTIR_PORTAL_URL"])
    exec(compile(code, block.name, "exec"), {"__name__": "readme"})
    if "print(" in block.code:
        assert capsys.readouterr().out.strip(), f"{block.name} printed nothing"


def _settle_when_closed(local: LocalChain, host: ReferenceHost, stop: threading.Event) -> None:
    """The host's part on chain: once the block's socket is closed, prove and complete its
    job (what a Fabstir node does on its own). Polls the host, bounded by the test."""
    settled: set[int] = set()
    while not stop.wait(0.05):
        jobs = {int(r.job_id) for r in host.requests if r.job_id is not None}
        if host.connections or not jobs - settled:
            continue
        for job in sorted(jobs - settled):
            local.settle_like_host(job, 20)
            settled.add(job)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", ON_CHAIN, ids=lambda b: f"{b.name} {b.heading}")
def test_readme_chain_block(
    block: Block,
    chain: LocalChain,  # noqa: F811 (the fixture)
    chain_config_file: Path,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = chain.add_model(*README_MODEL)
    threaded = ThreadedHost(
        ReferenceHost(EchoEngine(), host_key=HOST1.private_key, rate_limit_per_minute=None)
    )
    stop = threading.Event()
    settler = threading.Thread(
        target=_settle_when_closed, args=(chain, threaded.host, stop), daemon=True
    )
    try:
        chain.register_reference_host(threaded.host, [model], price_stable=1_000)
        agent = Account.create()  # a hot key with a little ETH for gas
        chain.set_eth_balance(agent.address, 10**18)
        chain.mint_usdc(USER, 10_000_000)  # 10 USDC for the delegate to spend
        for name in ("FABSTIR_HOSTS", "FABSTIR_RPC_URL", "FABSTIR_HOST_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("FABSTIR_CHAIN_CONFIG", str(chain_config_file))
        monkeypatch.setenv("FABSTIR_PRIVATE_KEY", USER.private_key)
        monkeypatch.setenv("FABSTIR_AGENT_KEY", agent.key.hex())
        monkeypatch.chdir(tmp_path)
        settler.start()
        started = time.monotonic()
        exec(compile(block.code, block.name, "exec"), {"__name__": "readme"})
        assert time.monotonic() - started < 240
    finally:
        stop.set()
        if settler.is_alive():
            settler.join(30)
        threaded.stop()
    assert threaded.host.requests, f"{block.name} sent no prompt"
    assert capsys.readouterr().out.strip(), f"{block.name} printed nothing"
