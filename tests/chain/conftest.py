"""Fixtures for tests on a real local EVM: see tests/localchain.py."""

from tests.localchain import (  # noqa: F401 (fixtures)
    anvil,
    chain,
    chain_config_file,
    deployed,
    smollm2,
)
