"""A real local EVM for tests: Foundry's ``anvil`` plus the project's own test contracts.

``anvil`` comes from the npm registry (``contracts/package.json``, installed by
``make install`` into ``contracts/node_modules``); the contracts are the project's own
(``contracts/src``, compiled into the committed ``contracts/build/*.json``). Nothing here
reaches beyond 127.0.0.1.

Fixtures (defined at the end; ``tests/chain/conftest.py`` imports them, any other test
directory's conftest may too): ``anvil`` (one node per run), ``deployed`` (contracts deployed
once, SmolLM2 approved), ``chain`` (that deployment for one test, every change undone after
it), ``smollm2`` (the model id), ``chain_config_file`` (the config JSON in ``tmp_path``).

By hand::

    with Anvil() as anvil:
        chain = LocalChain(anvil.rpc_url).deploy()
        model = chain.add_model(SMOLLM2_REPO, SMOLLM2_FILE)
        chain.register_host(HOST1, "http://127.0.0.1:8080", [model], public_key="02ab...")
        job = chain.create_eth_session(HOST1, model, deposit=10**15)
        chain.submit_proof(job, 1000)
        chain.complete(job)
        chain.write_config(tmp_path / "chain.json")

Transactions from the dev accounts are sent with ``eth_sendTransaction`` (anvil holds
their keys); a revert raises web3's ``ContractLogicError`` whose message carries the
contract's reason string. Prices are per 1,000 tokens (docs CHAIN.md section 2).
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3._utils.events import EventLogErrorFlags
from web3.contract import Contract
from web3.types import TxReceipt

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = ROOT / "contracts"
BUILD_DIR = CONTRACTS_DIR / "build"

#: anvil's default mnemonic; its accounts are public test keys (never use them elsewhere).
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_CHAIN_ID = 31337
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ETH = ZERO_ADDRESS  # the payment token address meaning native ETH

#: The model the reference host serves by default (``host/engines.py``).
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Default host prices per 1,000 tokens: wei (ETH) and 1e-6 USDC units.
DEFAULT_PRICE_NATIVE = 10**12
DEFAULT_PRICE_STABLE = 1_000

#: SDK defaults for a session (CHAIN.md section 4).
DEFAULT_MAX_DURATION = 3600
DEFAULT_PROOF_INTERVAL = 1000
DEFAULT_PROOF_TIMEOUT_WINDOW = 300

STATUS_ACTIVE, STATUS_COMPLETED, STATUS_TIMED_OUT = 0, 1, 2

#: The 18 values of ``sessionJobs(uint256)``, in order.
SESSION_FIELDS = (
    "id",
    "depositor",
    "host",
    "paymentToken",
    "deposit",
    "pricePerToken",
    "tokensUsed",
    "maxDuration",
    "startTime",
    "lastProofTime",
    "proofInterval",
    "proofTimeoutWindow",
    "status",
    "withdrawnByHost",
    "refundedToUser",
    "conversationCID",
    "lastProofHash",
    "lastProofCID",
)


class _Host(Protocol):  # what register_reference_host reads from a ReferenceHost
    @property
    def url(self) -> str: ...

    host_address: str | None
    host_public_key: str | None


@dataclass(frozen=True)
class DevAccount:
    """One of anvil's funded dev accounts (10,000 ETH each at start)."""

    name: str
    private_key: str

    @property
    def address(self) -> str:
        return str(Account.from_key(self.private_key).address)


# anvil's first accounts from ANVIL_MNEMONIC (m/44'/60'/0'/0/i), checked against the node
# by tests/chain/test_localchain.py.
DEPLOYER = DevAccount(
    "deployer", "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
)
USER = DevAccount("user", "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
HOST1 = DevAccount("host1", "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a")
HOST2 = DevAccount("host2", "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6")
STRANGER = DevAccount(
    "stranger", "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"
)
ACCOUNTS: tuple[DevAccount, ...] = (DEPLOYER, USER, HOST1, HOST2, STRANGER)


def account_of(address: str | None) -> DevAccount:
    """The dev account with this address (a host started with a dev account's key)."""
    for account in ACCOUNTS:
        if address is not None and account.address.lower() == address.lower():
            return account
    raise ValueError(
        f"{address} is not one of the dev accounts: start the host with host_key=HOST1.private_key"
    )


def anvil_binary() -> Path:
    """Path of the anvil executable npm installed for this platform (``make install``)."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        os.uname().machine.lower(), os.uname().machine
    )
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    path = (
        CONTRACTS_DIR / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    )
    if not path.exists():
        raise RuntimeError(
            f"anvil is not installed ({path} missing): run `make install` "
            "(it runs `npm ci --prefix contracts`)"
        )
    return path


@functools.cache
def load_artifact(name: str) -> dict[str, Any]:
    """``contracts/build/<name>.json``: ``{"abi": [...], "bytecode": "0x..."}`` (read once)."""
    data: dict[str, Any] = json.loads((BUILD_DIR / f"{name}.json").read_text())
    return data


_LISTENING = re.compile(r"Listening on (127\.0\.0\.1:\d+)")
_running: set[subprocess.Popen[str]] = set()


@atexit.register
def _kill_leftovers() -> None:  # a safety net: fixtures stop their node themselves
    for proc in list(_running):
        proc.kill()
        proc.wait(timeout=5)


class Anvil:
    """An anvil node on 127.0.0.1 on a free port (chosen by the OS), auto-mining.

    ``start()`` waits at most ``startup_timeout`` seconds for the node to listen and
    raises (with anvil's output) otherwise; ``stop()`` terminates it and waits, killing it
    after 5 s. Use it as a context manager so it stops even when a test fails.
    """

    def __init__(self, *, chain_id: int = ANVIL_CHAIN_ID, startup_timeout: float = 30.0) -> None:
        self.chain_id = chain_id
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.rpc_url = ""
        self.output: collections.deque[str] = collections.deque(maxlen=200)

    def start(self) -> Anvil:
        cmd = [
            str(anvil_binary()),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--chain-id",
            str(self.chain_id),
            "--mnemonic",
            ANVIL_MNEMONIC,
            "--accounts",
            "10",
        ]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.proc = proc
        _running.add(proc)
        found: queue.Queue[str | None] = queue.Queue()

        def read() -> None:  # drains anvil's output for its whole life (the pipe never fills)
            assert proc.stdout is not None
            announced = False
            for line in proc.stdout:
                self.output.append(line.rstrip())
                if not announced and (m := _LISTENING.search(line)):
                    announced = True
                    found.put(m.group(1))
            found.put(None)  # exited

        threading.Thread(target=read, name="anvil-output", daemon=True).start()
        try:
            addr = found.get(timeout=self.startup_timeout)
        except queue.Empty:
            addr = None
        if addr is None:
            self.stop()
            tail = "\n".join(self.output)
            raise RuntimeError(
                f"anvil did not start listening within {self.startup_timeout} s:\n{tail}"
            )
        self.rpc_url = f"http://{addr}"
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        _running.discard(proc)

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Deployment:
    """Addresses of one deployment (checksummed)."""

    model_registry: str
    node_registry: str
    job_marketplace: str
    usdc: str


class LocalChain:
    """Test-side actions on a local chain: deploy, models, hosts, funds, host settlement, time.

    Every method sends from a dev account (``DevAccount``) and waits for the receipt (at
    most ``tx_timeout`` s); a revert raises ``web3.exceptions.ContractLogicError`` with the
    contract's reason.
    """

    def __init__(self, rpc_url: str, *, tx_timeout: float = 30.0) -> None:
        self.rpc_url = rpc_url
        self.tx_timeout = tx_timeout
        self.w3 = Web3(
            Web3.HTTPProvider(
                rpc_url, request_kwargs={"timeout": 10}, exception_retry_configuration=None
            )
        )
        self.deployment: Deployment | None = None
        self._proofs = 0

    # ---- deployment ----

    def _deploy(self, name: str, *args: Any) -> str:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        tx = factory.constructor(*args).transact({"from": DEPLOYER.address})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx, timeout=self.tx_timeout)
        assert receipt["status"] == 1 and receipt["contractAddress"], f"deploying {name} failed"
        return str(receipt["contractAddress"])

    def deploy(self) -> LocalChain:
        """Deploy ModelRegistry, TestUSDC, NodeRegistry and JobMarketplace (as DEPLOYER)."""
        models = self._deploy("ModelRegistry")
        usdc = self._deploy("TestUSDC")
        nodes = self._deploy("NodeRegistry", models)
        market = self._deploy("JobMarketplace", nodes, usdc)
        self.deployment = Deployment(models, nodes, market, usdc)
        return self

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"]
        )

    @property
    def _d(self) -> Deployment:
        if self.deployment is None:
            raise RuntimeError("no contracts: call deploy() first")
        return self.deployment

    @property
    def models(self) -> Contract:
        return self.contract("ModelRegistry", self._d.model_registry)

    @property
    def nodes(self) -> Contract:
        return self.contract("NodeRegistry", self._d.node_registry)

    @property
    def market(self) -> Contract:
        return self.contract("JobMarketplace", self._d.job_marketplace)

    @property
    def usdc(self) -> Contract:
        return self.contract("TestUSDC", self._d.usdc)

    @property
    def usdc_address(self) -> str:
        return self._d.usdc

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    def config(self) -> dict[str, Any]:
        """The chain config (``ChainConfig.from_file`` format)."""
        d = self._d
        return {
            "rpc_url": self.rpc_url,
            "chain_id": self.chain_id,
            "job_marketplace": d.job_marketplace,
            "node_registry": d.node_registry,
            "model_registry": d.model_registry,
            "usdc": d.usdc,
        }

    def write_config(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config()`` as JSON to ``path``; returns it."""
        out = Path(path)
        out.write_text(json.dumps(self.config(), indent=2) + "\n")
        return out

    # ---- transactions ----

    def send(self, fn: Any, sender: DevAccount | str, *, value: int = 0) -> TxReceipt:
        """Send ``contract.functions.x(...)`` from ``sender``; return the (successful) receipt."""
        frm = sender.address if isinstance(sender, DevAccount) else Web3.to_checksum_address(sender)
        tx = fn.transact({"from": frm, "value": value})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx, timeout=self.tx_timeout)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx.hex()} failed: {receipt}")
        return receipt

    def events(self, contract: Contract, event: str, receipt: TxReceipt) -> list[dict[str, Any]]:
        """The ``event`` logs of ``contract`` in ``receipt``, decoded (``args`` as a dict)."""
        logs = contract.events[event]().process_receipt(receipt, errors=EventLogErrorFlags.Discard)
        return [dict(log["args"]) for log in logs]

    # ---- models and hosts ----

    def model_id(self, repo: str, file_name: str) -> bytes:
        """keccak256(bytes(repo + "/" + file_name)), computed locally."""
        return keccak(text=f"{repo}/{file_name}")

    def add_model(
        self, repo: str = SMOLLM2_REPO, file_name: str = SMOLLM2_FILE, sha256: bytes = b"\0" * 32
    ) -> bytes:
        """Approve a model in the ModelRegistry (as DEPLOYER); returns its 32-byte id."""
        self.send(self.models.functions.addModel(repo, file_name, sha256), DEPLOYER)
        return self.model_id(repo, file_name)

    def register_host(
        self,
        host: DevAccount,
        api_url: str,
        models: Sequence[bytes],
        *,
        price_native: int = DEFAULT_PRICE_NATIVE,
        price_stable: int = DEFAULT_PRICE_STABLE,
        public_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TxReceipt:
        """Register ``host`` as an active node at ``api_url`` (e.g. a ReferenceHost's URL).

        ``price_native`` / ``price_stable`` are its minimum prices per 1,000 tokens (the
        fallback of ``getModelPricing``); per-model prices: ``set_model_price``. The
        metadata JSON has the SDK's keys, ``publicKey`` only when ``public_key`` is given
        (compressed secp256k1 hex), updated with ``metadata``.
        """
        meta: dict[str, Any] = {
            "hardware": {"gpu": "none", "vram": 0},
            "capabilities": ["inference", "streaming"],
            "location": "local",
            "maxConcurrent": 4,
            "costPerToken": price_native,
        }
        if public_key is not None:
            meta["publicKey"] = public_key
        meta.update(metadata or {})
        fn = self.nodes.functions.registerNode(
            json.dumps(meta), api_url, list(models), price_native, price_stable
        )
        return self.send(fn, host)

    def register_reference_host(
        self,
        host: _Host,
        models: Sequence[bytes],
        *,
        price_native: int = DEFAULT_PRICE_NATIVE,
        price_stable: int = DEFAULT_PRICE_STABLE,
        metadata: Mapping[str, Any] | None = None,
    ) -> DevAccount:
        """Register a started ``ReferenceHost(..., host_key=HOST1.private_key)`` as a node.

        The node is the dev account of the host's key, its API URL the host's ``url`` and
        its ``publicKey`` the host's encryption key. Returns that account.
        """
        account = account_of(host.host_address)
        self.register_host(
            account,
            host.url,
            models,
            price_native=price_native,
            price_stable=price_stable,
            public_key=host.host_public_key,
            metadata=metadata,
        )
        return account

    def set_model_price(
        self, host: DevAccount, model_id: bytes, price: int, token: str = ETH
    ) -> TxReceipt:
        """The host's price per 1,000 tokens for one model in one token (``ETH`` = 0x0)."""
        return self.send(self.nodes.functions.setModelTokenPricing(model_id, token, price), host)

    def host_price(self, host: DevAccount | str, model_id: bytes, token: str = ETH) -> int:
        addr = host.address if isinstance(host, DevAccount) else host
        return int(self.nodes.functions.getModelPricing(addr, model_id, token).call())

    def set_host_active(self, host: DevAccount, active: bool) -> TxReceipt:
        return self.send(self.nodes.functions.setActive(active), host)

    def unregister_host(self, host: DevAccount) -> TxReceipt:
        return self.send(self.nodes.functions.unregisterNode(), host)

    # ---- funds ----

    def mint_usdc(self, to: DevAccount | str, amount: int) -> TxReceipt:
        """Mint ``amount`` USDC units (1e-6 USDC) to ``to``."""
        addr = to.address if isinstance(to, DevAccount) else to
        return self.send(self.usdc.functions.mint(Web3.to_checksum_address(addr), amount), DEPLOYER)

    def usdc_balance(self, who: DevAccount | str) -> int:
        addr = who.address if isinstance(who, DevAccount) else who
        return int(self.usdc.functions.balanceOf(Web3.to_checksum_address(addr)).call())

    def eth_balance(self, who: DevAccount | str) -> int:
        addr = who.address if isinstance(who, DevAccount) else who
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(addr)))

    def set_eth_balance(self, who: str, wei: int) -> None:
        """Give any address (e.g. a fresh key of a test) ``wei`` (anvil_setBalance)."""
        self._rpc("anvil_setBalance", [Web3.to_checksum_address(who), hex(wei)])

    def deposit_balance(self, who: DevAccount | str, token: str = ETH) -> int:
        """The in-contract balance (deposits + credited refunds) of ``who`` in ``token``."""
        addr = who.address if isinstance(who, DevAccount) else who
        fn = self.market.functions.getDepositBalance(Web3.to_checksum_address(addr), token)
        return int(fn.call())

    def host_earnings(self, host: DevAccount | str, token: str = ETH) -> int:
        addr = host.address if isinstance(host, DevAccount) else host
        fn = self.market.functions.hostEarnings(Web3.to_checksum_address(addr), token)
        return int(fn.call())

    # ---- sessions (the user's side, for contract tests) ----

    def _job_id(self, receipt: TxReceipt) -> int:
        created = self.events(self.market, "SessionJobCreatedForModel", receipt)
        assert len(created) == 1, created
        return int(created[0]["jobId"])

    def create_eth_session(
        self,
        host: DevAccount | str,
        model_id: bytes,
        deposit: int,
        *,
        price: int | None = None,
        max_duration: int = DEFAULT_MAX_DURATION,
        proof_interval: int = DEFAULT_PROOF_INTERVAL,
        proof_timeout_window: int = DEFAULT_PROOF_TIMEOUT_WINDOW,
        user: DevAccount = USER,
    ) -> int:
        """``createSessionJobForModel`` with ``deposit`` wei; price defaults to the host's."""
        addr = host.address if isinstance(host, DevAccount) else host
        price = self.host_price(addr, model_id) if price is None else price
        fn = self.market.functions.createSessionJobForModel(
            addr, model_id, price, max_duration, proof_interval, proof_timeout_window
        )
        return self._job_id(self.send(fn, user, value=deposit))

    def create_usdc_session(
        self,
        host: DevAccount | str,
        model_id: bytes,
        deposit: int,
        *,
        price: int | None = None,
        max_duration: int = DEFAULT_MAX_DURATION,
        proof_interval: int = DEFAULT_PROOF_INTERVAL,
        proof_timeout_window: int = DEFAULT_PROOF_TIMEOUT_WINDOW,
        user: DevAccount = USER,
    ) -> int:
        """``approve`` then ``createSessionJobForModelWithToken`` (USDC units)."""
        addr = host.address if isinstance(host, DevAccount) else host
        token = self.usdc_address
        price = self.host_price(addr, model_id, token) if price is None else price
        self.send(self.usdc.functions.approve(self.market.address, deposit), user)
        fn = self.market.functions.createSessionJobForModelWithToken(
            addr,
            model_id,
            token,
            deposit,
            price,
            max_duration,
            proof_interval,
            proof_timeout_window,
        )
        return self._job_id(self.send(fn, user))

    def session(self, job_id: int) -> dict[str, Any]:
        """``sessionJobs(job_id)`` as a dict keyed by ``SESSION_FIELDS``."""
        values = self.market.functions.sessionJobs(job_id).call()
        return dict(zip(SESSION_FIELDS, values, strict=True))

    # ---- the host's side ----

    def _job_host(self, job_id: int) -> str:
        host = str(self.session(job_id)["host"])
        if host == ZERO_ADDRESS:
            raise ValueError(f"no job {job_id} on chain")
        return host

    def submit_proof(
        self,
        job_id: int,
        tokens: int,
        *,
        host: DevAccount | str | None = None,
        proof_hash: bytes | None = None,
        proof_cid: str = "",
        delta_cid: str = "",
    ) -> TxReceipt:
        """``submitProofOfWork`` as the job's host (or ``host``), claiming ``tokens``."""
        self._proofs += 1
        if proof_hash is None:
            proof_hash = keccak(text=f"proof:{job_id}:{tokens}:{self._proofs}")
        fn = self.market.functions.submitProofOfWork(
            job_id, tokens, proof_hash, proof_cid, delta_cid
        )
        return self.send(fn, host if host is not None else self._job_host(job_id))

    def complete(
        self, job_id: int, *, by: DevAccount | str | None = None, conversation_cid: str = ""
    ) -> TxReceipt:
        """``completeSessionJob`` as the job's host (or ``by``, e.g. the depositor)."""
        fn = self.market.functions.completeSessionJob(job_id, conversation_cid)
        return self.send(fn, by if by is not None else self._job_host(job_id))

    def settle_like_host(
        self, job_id: int, generated_tokens: int, *, conversation_cid: str = ""
    ) -> TxReceipt:
        """What a Fabstir host does when the socket closes (CHAIN.md section 4), at once.

        Proves ``generated_tokens`` minus what is already proven: one proof per full 1,000
        tokens, then the rest when it is at least 100 tokens, or, when nothing was proven
        yet, one first proof padded up to the proof interval; then ``completeSessionJob``
        (without waiting the dispute window). Returns the completion receipt.
        """
        s = self.session(job_id)
        proven, interval = int(s["tokensUsed"]), int(s["proofInterval"])
        unproven = generated_tokens - proven
        claims: list[int] = []
        while unproven >= 1000:
            claims.append(1000)
            unproven -= 1000
        if unproven > 0 and proven == 0 and not claims:
            claims.append(max(unproven, interval))
        elif unproven >= 100:
            claims.append(unproven)
        for tokens in claims:
            self.submit_proof(job_id, tokens)
        return self.complete(job_id, conversation_cid=conversation_cid)

    def trigger_timeout(self, job_id: int, *, by: DevAccount | str = STRANGER) -> TxReceipt:
        """``triggerSessionTimeout`` (anyone may, after startTime + maxDuration)."""
        return self.send(self.market.functions.triggerSessionTimeout(job_id), by)

    # ---- node control ----

    def _rpc(self, method: str, params: list[Any]) -> Any:
        response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response["result"]

    def now(self) -> int:
        """The latest block's timestamp."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def increase_time(self, seconds: int) -> int:
        """Advance the chain's clock by ``seconds`` and mine a block; returns its timestamp."""
        self._rpc("evm_increaseTime", [seconds])
        self._rpc("evm_mine", [])
        return self.now()

    def snapshot(self) -> str:
        """``evm_snapshot``: an id for ``revert``."""
        return str(self._rpc("evm_snapshot", []))

    def revert(self, snapshot_id: str) -> None:
        """``evm_revert`` to ``snapshot_id`` (which is used up)."""
        if not self._rpc("evm_revert", [snapshot_id]):
            raise RuntimeError(f"evm_revert({snapshot_id}) refused")


# ---- pytest fixtures (import them into a conftest.py) ----


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One anvil node for the whole run, stopped at the end."""
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def deployed(anvil: Anvil) -> LocalChain:
    """The contracts deployed once on ``anvil``, with the SmolLM2 model approved."""
    chain = LocalChain(anvil.rpc_url).deploy()
    chain.add_model(SMOLLM2_REPO, SMOLLM2_FILE)
    return chain


@pytest.fixture
def chain(deployed: LocalChain) -> Iterator[LocalChain]:
    """``deployed`` for one test: hosts, sessions, balances and time are reverted after it."""
    snapshot = deployed.snapshot()
    try:
        yield deployed
    finally:
        deployed.revert(snapshot)


@pytest.fixture
def smollm2(deployed: LocalChain) -> bytes:
    """The SmolLM2 model id (approved in ``deployed``)."""
    return deployed.model_id(SMOLLM2_REPO, SMOLLM2_FILE)


@pytest.fixture
def chain_config_file(chain: LocalChain, tmp_path: Path) -> Path:
    """The chain config JSON of ``chain`` (``ChainConfig.from_file`` format)."""
    return chain.write_config(tmp_path / "chain.json")
