"""ChainConfig from files and the environment, and money conversions (no network)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from langchain_fabstir.chain import BASE_SEPOLIA, ChainConfig
from langchain_fabstir.chain.marketplace import (
    from_base_units,
    parse_amount,
    price_limit,
    to_base_units,
)
from langchain_fabstir.errors import InvalidRequestError

GOOD = {
    "rpc_url": "http://127.0.0.1:8545",
    "chain_id": 31337,
    "job_marketplace": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
    "node_registry": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    "model_registry": "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0",
    "usdc": "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9",
}


def test_from_file_checksums_addresses(tmp_path: Path) -> None:
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(GOOD))
    config = ChainConfig.from_file(path)
    assert config.job_marketplace == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert config.chain_id == 31337 and config.terms.proof_interval == 1000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({**GOOD, "usdc": "0x12"}), "usdc"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "node_registry"}), "node_registry"),
        (json.dumps({**GOOD, "chain_id": -1}), "chain_id"),
        (json.dumps({**GOOD, "private_key": "0x11"}), "private_key"),  # no secrets in configs
    ],
)
def test_bad_files_are_invalid_requests(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "chain.json"
    path.write_text(content)
    with pytest.raises(InvalidRequestError, match=message):
        ChainConfig.from_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="cannot read chain config"):
        ChainConfig.from_file(tmp_path / "nope.json")


def test_environment(tmp_path: Path) -> None:
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(GOOD))
    env = {"FABSTIR_CHAIN_CONFIG": str(path), "FABSTIR_RPC_URL": "http://127.0.0.1:9"}
    config = ChainConfig.from_env(env)
    assert config.chain_id == 31337 and config.rpc_url == "http://127.0.0.1:9"
    assert ChainConfig.from_env({}) == BASE_SEPOLIA


def test_money_is_exact_and_rounds_down() -> None:
    assert to_base_units(Decimal("0.1"), 18) == 10**17
    assert to_base_units("1.2345678", 6) == 1_234_567  # never more than asked
    assert price_limit(Decimal("0.000000001"), 18) == 10**12  # per token -> per 1,000 tokens
    assert from_base_units(10**15, 18) == Decimal("0.001")
    for bad in (0.1, "abc", Decimal("-1"), Decimal("NaN"), "Infinity"):
        with pytest.raises(InvalidRequestError):
            parse_amount(bad, "deposit")  # type: ignore[arg-type]
