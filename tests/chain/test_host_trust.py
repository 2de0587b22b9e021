"""The paid host is the host that serves (issue 20, items 3 and 5), on the local chain.

A forged NodeRegistry record (an honest host's ``apiUrl``, with or without its
``publicKey``, the attacker's address, a lower price) is refused before paying; a paid
session whose host has no provable key in ``encryption="required"`` pays nothing; a relay
on the path that swaps the greeting's key or forges ``ENCRYPTION_NOT_SUPPORTED`` gets a
typed error and nothing in clear."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from langchain_fabstir import SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.errors import (
    EncryptionUnavailableError,
    HostIdentityError,
    PriceLimitError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.sessions import SessionConfig
from tests.localchain import HOST1, HOST2, SMOLLM2_FILE, SMOLLM2_REPO, USER, LocalChain
from tests.trust_relay import TrustRelay

MODEL = f"{SMOLLM2_REPO}/{SMOLLM2_FILE}"
CHEAP, DEAR = 10**12, 3 * 10**12  # wei per 1,000 tokens
DEPOSIT = Decimal("0.001")
FAST = {"open_timeout": 5, "ack_timeout": 5, "reconnect_attempts": 0}


@pytest.fixture
async def honest() -> AsyncIterator[ReferenceHost]:
    """A keyed reference host (HOST1's key)."""
    async with ReferenceHost(
        EchoEngine(), host_key=HOST1.private_key, rate_limit_per_minute=None
    ) as host:
        yield host


def _spent(chain: LocalChain) -> tuple[int, int]:
    return (
        int(chain.w3.eth.get_transaction_count(USER.address)),
        chain.eth_balance(USER),
    )


def _manager(chain: LocalChain, encryption: str = "auto") -> SessionManager:
    config = SessionConfig(encryption=encryption, **FAST)  # type: ignore[arg-type]
    return SessionManager(
        config, chain=ChainConfig.from_mapping(chain.config()), private_key=USER.private_key
    )


async def test_a_forged_keyed_record_is_never_paid(
    chain: LocalChain, honest: ReferenceHost, smollm2: bytes
) -> None:
    """HOST2 registers the honest host's apiUrl and publicKey at a third of its price:
    "cheapest" pays the honest host (the old client paid HOST2 while HOST1 served), and
    with a price limit only the forgery fits, nothing is paid."""
    chain.register_reference_host(honest, [smollm2], price_native=DEAR)
    chain.register_host(
        HOST2, honest.url, [smollm2], price_native=CHEAP, public_key=honest.host_public_key
    )
    before = _spent(chain)
    async with _manager(chain) as manager:
        with pytest.raises(PriceLimitError):
            await manager.create_session(
                model=MODEL, deposit=DEPOSIT, max_price_per_token=Decimal("0.000000002")
            )
        assert _spent(chain) == before  # nothing paid
        session = await manager.create_session(model=MODEL, deposit=DEPOSIT, policy="cheapest")
        assert session.job_id is not None and session.encrypted
        job = chain.session(session.job_id)
        assert job["host"] == HOST1.address and job["pricePerToken"] == DEAR
        assert (await manager.prompt(session.id, "hi")).text == "Echo: hi"
        await manager.end_session(session.id)


async def test_a_forged_keyless_record_is_refused_by_the_hosts_proof(
    chain: LocalChain, honest: ReferenceHost, smollm2: bytes
) -> None:
    """HOST2 registers the honest host's apiUrl without a key: the host there proves
    HOST1's key (/v1/auth/challenge), not HOST2's, so the record is refused, unpaid."""
    chain.register_host(HOST2, honest.url, [smollm2], price_native=CHEAP)
    before = _spent(chain)
    async with _manager(chain) as manager:
        with pytest.raises(HostIdentityError) as err:
            await manager.create_session(model=MODEL, deposit=DEPOSIT)
    assert err.value.code == "HOST_IDENTITY_MISMATCH"
    assert _spent(chain) == before
    assert not honest.requests


async def test_required_without_a_provable_key_pays_nothing(
    chain: LocalChain, smollm2: bytes
) -> None:
    """A keyless record whose host proves no key, in "required": refused before paying
    (the old client paid, then failed on the socket and had to end the job)."""
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None) as keyless:
        chain.register_host(HOST1, keyless.url, [smollm2], price_native=CHEAP)
        before = _spent(chain)
        async with _manager(chain, "required") as manager:
            with pytest.raises(EncryptionUnavailableError):
                await manager.create_session(model=MODEL, deposit=DEPOSIT)
        assert _spent(chain) == before
        assert not keyless.requests


async def test_a_relay_swapping_the_greeting_key_reads_nothing(
    chain: LocalChain, honest: ReferenceHost, smollm2: bytes
) -> None:
    """Item 5: a host registered without publicKey behind a relay that puts its own key
    and address in the greeting; "required". The host proves HOST1's key before paying;
    on the socket the relay's greeting is HOST_IDENTITY_MISMATCH before any init is sent
    (the old client sealed the init, and its session key, to the relay's key)."""
    async with TrustRelay(honest.url, swap_greeting=True) as relay:
        chain.register_host(HOST1, relay.url, [smollm2], price_native=CHEAP)
        async with _manager(chain, "required") as manager:
            with pytest.raises(HostIdentityError):
                await manager.create_session(model=MODEL, deposit=DEPOSIT)
        assert relay.up == []
    assert not honest.requests


async def test_a_relay_answering_the_challenge_is_refused_before_paying(
    chain: LocalChain, honest: ReferenceHost, smollm2: bytes
) -> None:
    """The same relay also answering /v1/auth/challenge with its own key: the key does
    not recover to the record's address, so nothing is paid."""
    async with TrustRelay(honest.url, swap_greeting=True, answer_challenge=True) as relay:
        chain.register_host(HOST1, relay.url, [smollm2], price_native=CHEAP)
        before = _spent(chain)
        async with _manager(chain, "required") as manager:
            with pytest.raises(HostIdentityError):
                await manager.create_session(model=MODEL, deposit=DEPOSIT)
        assert _spent(chain) == before
        assert relay.up == []


async def test_a_forged_not_supported_on_a_keyed_paid_session_is_an_error(
    chain: LocalChain, honest: ReferenceHost, smollm2: bytes
) -> None:
    """Item 5: a host registered with its key, the client in "auto", a relay answering
    ENCRYPTION_NOT_SUPPORTED: ENCRYPTION_UNAVAILABLE, no plaintext init or prompt (the
    old client fell back to plaintext for a paid session)."""
    async with TrustRelay(honest.url, refuse_encryption=True) as relay:
        chain.register_host(
            HOST1, relay.url, [smollm2], price_native=CHEAP, public_key=honest.host_public_key
        )
        async with _manager(chain) as manager:
            with pytest.raises(EncryptionUnavailableError):
                await manager.create_session(model=MODEL, deposit=DEPOSIT)
        assert relay.refused_inits == 1
        assert relay.sent_types() == ["encrypted_session_init"]
    assert not honest.requests


@pytest.mark.parametrize("attack", ["swap_greeting", "refuse_encryption"])
async def test_a_session_of_an_existing_job_trusts_the_jobs_host(
    chain: LocalChain, honest: ReferenceHost, smollm2: bytes, attack: str
) -> None:
    """create_session(job_id=...) for a job the user made: the job's on-chain host (and its
    record's key) is what the session trusts. A relay that swaps the greeting's key gets
    HOST_IDENTITY_MISMATCH before any init; a forged ENCRYPTION_NOT_SUPPORTED is an error
    in "auto" (the old client trusted the greeting's own address, or fell back to clear)."""
    chain.register_reference_host(honest, [smollm2], price_native=CHEAP)
    job = chain.create_eth_session(HOST1, smollm2, 10**15)
    async with TrustRelay(honest.url, **{attack: True}) as relay:
        async with _manager(chain) as manager:
            expected = (
                HostIdentityError if attack == "swap_greeting" else EncryptionUnavailableError
            )
            with pytest.raises(expected):
                await manager.create_session(job_id=job, host_url=relay.url)
        assert "session_init" not in relay.sent_types()
        assert all('"prompt"' not in frame for frame in relay.up)
    assert not honest.requests
