"""Fixtures for tests on a real local EVM (anvil + the project's own contracts).

- ``anvil``: one anvil node for the whole run (127.0.0.1, free port), stopped at the end.
- ``deployed``: the contracts deployed once on it, with the SmolLM2 model approved.
- ``chain``: that deployment for one test; every change the test makes (hosts, sessions,
  balances, time) is undone after it (``evm_snapshot`` / ``evm_revert``).
- ``smollm2``: the SmolLM2 model id (approved in ``deployed``).
- ``chain_config_file``: the chain config JSON of ``chain`` in the test's tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localchain import SMOLLM2_FILE, SMOLLM2_REPO, Anvil, LocalChain


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def deployed(anvil: Anvil) -> LocalChain:
    chain = LocalChain(anvil.rpc_url).deploy()
    chain.add_model(SMOLLM2_REPO, SMOLLM2_FILE)
    return chain


@pytest.fixture
def chain(deployed: LocalChain) -> Iterator[LocalChain]:
    snapshot = deployed.snapshot()
    try:
        yield deployed
    finally:
        deployed.revert(snapshot)


@pytest.fixture
def smollm2(deployed: LocalChain) -> bytes:
    return deployed.model_id(SMOLLM2_REPO, SMOLLM2_FILE)


@pytest.fixture
def chain_config_file(chain: LocalChain, tmp_path: Path) -> Path:
    return chain.write_config(tmp_path / "chain.json")
