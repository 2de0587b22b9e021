"""``fabstir chat``, ``hosts`` and ``jobs`` on a real local chain (anvil + the project's
contracts), driven as a user would: child processes, keys in files, real reference hosts on
127.0.0.1 registered in the NodeRegistry.

The hosts run in the test's event loop, so the CLI runs as an asyncio subprocess writing to
files (never PIPE + communicate), and the synchronous LocalChain helpers run in threads.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import IO

import pytest

from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.cli.conftest import CLI, child_env, run_cli
from tests.localchain import (
    HOST1,
    HOST2,
    SMOLLM2_FILE,
    SMOLLM2_REPO,
    STATUS_ACTIVE,
    USER,
    LocalChain,
)

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"
CHEAP, DEAR = 10**12, 3 * 10**12  # wei per 1,000 tokens
USDC_CHEAP, USDC_DEAR = 1_000, 3_000  # 1e-6 USDC per 1,000 tokens
RUN_TIMEOUT = 120.0


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[ReferenceHost, ReferenceHost]]:
    async with (
        ReferenceHost(EchoEngine(), host_key=HOST1.private_key, rate_limit_per_minute=None) as h1,
        ReferenceHost(EchoEngine(), host_key=HOST2.private_key, rate_limit_per_minute=None) as h2,
    ):
        yield h1, h2


@pytest.fixture
async def market(
    chain: LocalChain, hosts: tuple[ReferenceHost, ReferenceHost], smollm2: bytes
) -> tuple[ReferenceHost, ReferenceHost]:
    """Host 1 is dear, host 2 cheap (ETH and USDC), both registered with their keys."""
    h1, h2 = hosts
    await asyncio.to_thread(
        chain.register_reference_host, h1, [smollm2], price_native=DEAR, price_stable=USDC_DEAR
    )
    await asyncio.to_thread(
        chain.register_reference_host, h2, [smollm2], price_native=CHEAP, price_stable=USDC_CHEAP
    )
    return h1, h2


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The user's key as `fabstir keys new` writes it (0600)."""
    path = tmp_path / "eth.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(USER.private_key + "\n")
    return path


def _run_files(tmp_path: Path, stdin: str, stack: ExitStack) -> tuple[IO[str], ...]:
    """A new run's stdin (holding ``stdin``), stdout and stderr files, opened on ``stack``."""
    base = tmp_path / f"run{len(list(tmp_path.glob('run*.in')))}"
    base.with_suffix(".in").write_text(stdin)
    return (
        stack.enter_context(open(base.with_suffix(".in"))),
        stack.enter_context(open(base.with_suffix(".out"), "w+")),
        stack.enter_context(open(base.with_suffix(".err"), "w+")),
    )


def _read(*files: IO[str]) -> list[str]:
    out = []
    for f in files:
        f.seek(0)
        out.append(f.read())
    return out


async def fabstir(
    tmp_path: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``fabstir ARGS`` (stdin from a file, output to files), bounded in time."""
    with ExitStack() as stack:
        fin, fout, ferr = _run_files(tmp_path, stdin, stack)
        proc = await asyncio.create_subprocess_exec(
            *CLI, *args, stdin=fin, stdout=fout, stderr=ferr, env=env or child_env()
        )
        try:
            code = await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"fabstir {args} did not exit in {RUN_TIMEOUT}s") from None
        out, err = _read(fout, ferr)
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def nonce(chain: LocalChain) -> int:
    return int(chain.w3.eth.get_transaction_count(USER.address))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fabstir chat, paid --------------------------------------------------------------------


async def test_paid_chat_pays_the_cheapest_host_and_shows_cost_and_job(
    chain: LocalChain,
    market: tuple[ReferenceHost, ReferenceHost],
    chain_config_file: Path,
    key_file: Path,
    tmp_path: Path,
) -> None:
    _, cheap = market
    code, out, err = await fabstir(
        tmp_path,
        "chat",
        "--chain-config",
        str(chain_config_file),
        "--key-file",
        str(key_file),
        "--model",
        MODEL,
        "--deposit",
        "0.001",
        "--max-price-per-token",
        "0.000000002",  # 2e12 wei per 1,000 tokens: the cheap host only
        stdin=f"hello chain\n/save {tmp_path / 'paid.json'}\n",
    )
    assert code == 0, err
    # the export names the chain it was paid on
    assert json.loads((tmp_path / "paid.json").read_text())["session"]["chain_id"] == 31337
    started = re.search(r"paid job (\d+) on chain 31337: host (0x\w+) \((\S+)\) at (.+)", out)
    assert started is not None, out
    job_id = int(started.group(1))
    assert started.group(2) == HOST2.address and started.group(3) == cheap.url
    assert started.group(4).startswith("0.000001 ETH per 1,000 tokens, deposit 0.001 ETH")
    # (encrypted: the chat's system prompt rides in front of the message, as on a node)
    assert "Echo: [Instructions" in out and "\nhello chain\n" in out
    assert [r.job_id for r in cheap.requests] == [job_id]  # the job id on the socket

    ended = re.search(rf"session {job_id} ended: (\d+) tokens", out)
    assert ended is not None, out
    tokens = int(ended.group(1))
    assert tokens > 0
    cost = Decimal(tokens * CHEAP) / 10**21  # tokens x price per 1,000 / 1000, in ETH
    status = [line for line in out.splitlines() if line.startswith("[") and "cost" in line]
    assert len(status) == 1 and status[0].endswith(f"encrypted, {cheap.url}, cost {cost:f} ETH]")
    assert f"cost {cost:f} ETH; job {job_id} on chain: active" in out

    job = await asyncio.to_thread(chain.session, job_id)
    assert job["depositor"] == USER.address and job["host"] == HOST2.address
    assert job["deposit"] == 10**15 and job["pricePerToken"] == CHEAP
    assert job["status"] == STATUS_ACTIVE


async def test_paid_chat_refuses_a_price_above_the_limit_sending_nothing(
    chain: LocalChain,
    market: tuple[ReferenceHost, ReferenceHost],
    chain_config_file: Path,
    tmp_path: Path,
) -> None:
    before = await asyncio.to_thread(nonce, chain)
    code, _, err = await fabstir(
        tmp_path,
        "chat",
        "--model",
        MODEL,
        "--deposit",
        "0.001",
        "--max-price-per-token",
        "0.0000000005",  # below both hosts
        stdin="never asked\n",
        env=child_env(
            FABSTIR_CHAIN_CONFIG=str(chain_config_file), FABSTIR_PRIVATE_KEY=USER.private_key
        ),
    )
    assert code == 1
    line = one_line(err)
    assert line.startswith("fabstir chat: [PRICE_ABOVE_LIMIT]") and "nothing was paid" in line
    assert await asyncio.to_thread(nonce, chain) == before
    assert not market[0].requests and not market[1].requests


async def test_paid_chat_errors_are_one_line_with_their_code(
    chain: LocalChain,
    market: tuple[ReferenceHost, ReferenceHost],
    chain_config_file: Path,
    key_file: Path,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    common = ["chat", "--chain-config", str(chain_config_file), "--model", MODEL]
    # The chain is down (--rpc-url replaces the config's RPC).
    down = f"http://127.0.0.1:{closed_port()}"
    code, _, err = await fabstir(
        tmp_path, *common, "--key-file", str(key_file), "--deposit", "0.001", "--rpc-url", down
    )
    assert code == 1 and one_line(err).startswith("fabstir chat: [CHAIN_UNAVAILABLE]")
    assert down in err

    # A fresh key (`fabstir keys new`) with no ETH: insufficient funds, nothing sent.
    code, _, err = await fabstir(
        tmp_path, *common, "--key-file", str(keys_dir / "eth.key"), "--deposit", "0.001"
    )
    assert code == 1 and one_line(err).startswith("fabstir chat: [INSUFFICIENT_FUNDS]")

    # No deposit: a bad command line (exit 2), before any request.
    code, _, err = await fabstir(tmp_path, *common, "--key-file", str(key_file))
    assert code == 2 and "--deposit" in one_line(err)
    assert not market[0].requests and not market[1].requests


# --- fabstir hosts --------------------------------------------------------------------------


async def test_hosts_lists_the_chain_as_a_source_probed(
    chain: LocalChain,
    market: tuple[ReferenceHost, ReferenceHost],
    chain_config_file: Path,
    tmp_path: Path,
) -> None:
    dear, cheap = market
    code, out, err = await fabstir(
        tmp_path,
        "hosts",
        "--chain-config",
        str(chain_config_file),
        "--model",
        f"{SMOLLM2_REPO}:{SMOLLM2_FILE}",  # the SDK's repo:file form
        "--json",
        "--timeout",
        "20",
    )
    assert code == 0, err
    rows = {r["url"]: r for r in json.loads(out)}
    assert set(rows) == {dear.url, cheap.url}
    for host, account, price in ((dear, HOST1, DEAR), (cheap, HOST2, CHEAP)):
        row = rows[host.url]
        assert row["state"] == "healthy" and row["latency_ms"] > 0
        assert row["sources"] == ["chain"] and row["address"] == account.address
        assert row["payment_token"] == "ETH" and row["price_base_units"] == price
        assert Decimal(row["price_per_1k_tokens"]) == Decimal(price) / 10**18
        assert row["encryption"] is True
        assert MODEL in row["models"]

    code, out, err = await fabstir(
        tmp_path,
        "hosts",
        "--payment-token",
        "USDC",
        env=child_env(FABSTIR_CHAIN_CONFIG=str(chain_config_file)),
    )
    assert code == 0, err
    table = out.splitlines()
    assert table[0].split() == [
        "URL",
        "STATE",
        "LATENCY",
        "PRICE/1K",
        "MODELS",
        "ADDRESS",
        "KEY",
        "SOURCE",
    ]
    line = next(t for t in table if t.startswith(cheap.url))
    assert "0.001 USDC" in line and HOST2.address in line and " yes " in line

    wrong = tmp_path / "wrong.json"
    config = json.loads(await asyncio.to_thread(chain_config_file.read_text))
    await asyncio.to_thread(wrong.write_text, json.dumps({**config, "chain_id": 84532}))
    code, _, err = await fabstir(tmp_path, "hosts", "--chain-config", str(wrong))
    assert code == 1 and one_line(err).startswith("fabstir hosts: [WRONG_CHAIN]")


# --- fabstir jobs ---------------------------------------------------------------------------


def test_jobs_show_watch_withdraw_after_the_host_settles(
    chain: LocalChain, smollm2: bytes, chain_config_file: Path, key_file: Path
) -> None:
    chain.register_host(HOST2, "http://127.0.0.1:9", [smollm2], price_native=CHEAP)
    job_id = chain.create_eth_session(HOST2, smollm2, deposit=10**15)
    opts = ["--chain-config", str(chain_config_file)]

    shown = run_cli("jobs", "show", str(job_id), *opts, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["state"] == "active" and not view["settled"]
    assert view["deposit"] == "0.001" and view["price_per_1k_tokens"] == "0.000001"
    assert view["host"] == HOST2.address and view["depositor"] == USER.address
    assert view["past_deadline"] is False

    chain.settle_like_host(job_id, 1500)
    watched = run_cli("jobs", "watch", str(job_id), *opts, "--key-file", str(key_file), "--json")
    assert watched.returncode == 0, watched.stderr
    view = json.loads(watched.stdout)
    assert view["state"] == "completed" and view["settled_by"] == "host"
    refund = 10**15 - view["tokens_used"] * CHEAP // 1000
    assert view["tokens_used"] == 1500 and view["base_units"]["refunded_to_user"] == refund

    text = run_cli("jobs", "show", str(job_id), *opts)
    assert text.returncode == 0 and f"job {job_id}: completed" in text.stdout
    assert "1500 tokens = 0.0000015 ETH" in text.stdout
    assert f"paid by     {USER.address}" in text.stdout  # who paid: the job's depositor

    assert chain.deposit_balance(USER) == refund
    env = child_env(FABSTIR_PRIVATE_KEY=USER.private_key)
    taken = run_cli("jobs", "withdraw", *opts, env=env)
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.strip() == f"withdrew {Decimal(refund) / 10**18:f} ETH to {USER.address}"
    assert chain.deposit_balance(USER) == 0


def test_jobs_watch_settles_a_late_job_with_the_users_key(
    chain: LocalChain, smollm2: bytes, chain_config_file: Path, key_file: Path
) -> None:
    chain.register_host(HOST2, "http://127.0.0.1:9", [smollm2], price_native=CHEAP)
    job_id = chain.create_eth_session(HOST2, smollm2, deposit=10**15)
    opts = ["--chain-config", str(chain_config_file), "--key-file", str(key_file)]

    # Before the deadline the host may still settle: the wait is bounded, one line.
    early = run_cli("jobs", "watch", str(job_id), *opts, "--max-wait", "1", "--poll-interval", "1")
    assert early.returncode == 1
    assert one_line(early.stderr).startswith("fabstir jobs: [RESPONSE_TIMEOUT]")
    assert chain.session(job_id)["status"] == STATUS_ACTIVE

    chain.increase_time(3600 + 300 + 1)  # past start + maxDuration + proofTimeoutWindow
    before = nonce(chain)
    late = run_cli("jobs", "watch", str(job_id), *opts, "--max-wait", "60", "--json")
    assert late.returncode == 0, late.stderr
    view = json.loads(late.stdout)
    assert view["settled"] and view["settled_by"] in ("user", "timeout")
    assert view["past_deadline"] is True
    assert nonce(chain) > before  # the user's key settled it
    # Nothing was proven: all back, less the contract's minimum charge when completed early.
    kept = 100 * CHEAP // 1000 if view["settled_by"] == "user" else 0
    assert view["base_units"]["refunded_to_user"] == 10**15 - kept
