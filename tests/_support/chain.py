"""A reference host that proves and settles its paid sessions itself, as a node does."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.chain.client import ChainClient
from langchain_fabstir.host import Engine, ReferenceHost
from langchain_fabstir.s5 import generate_phrase
from tests.localchain import HOST1, DevAccount, LocalChain


def self_settling_host(
    chain: LocalChain,
    engine: Engine,
    portal_url: str,
    *,
    key: DevAccount = HOST1,
    phrase: str | None = None,
    **options: Any,
) -> ReferenceHost:
    """``ReferenceHost`` with ``key``, its checkpoints on the portal at ``portal_url`` and
    the local ``chain``: it proves every checkpoint on chain and completes a job as soon as
    its last socket closes (``settle_delay=0``: no dispute-window wait). Not started: use
    it with ``async with``, then ``chain.register_reference_host``."""
    return ReferenceHost(
        engine,
        host_key=key.private_key,
        rate_limit_per_minute=None,
        portal_url=portal_url,
        s5_seed_phrase=phrase or generate_phrase(),
        chain=ChainClient(ChainConfig.from_mapping(chain.config()), SecretStr(key.private_key)),
        settle_delay=0,
        **options,
    )
