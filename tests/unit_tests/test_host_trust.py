"""The pure parts of host trust (issue 20, items 3 and 5): which record of a URL is kept,
which records are refused before paying, which greeting key is accepted."""

from __future__ import annotations

import pytest
from coincurve import PrivateKey

from langchain_fabstir.chain.registry import HostRecord, _one_per_url
from langchain_fabstir.errors import EncryptionUnavailableError, HostIdentityError
from langchain_fabstir.sessions.trust import HostTrust, key_address, trusted_record_key
from langchain_fabstir.wire.encryption import address_of_public_key, host_public_key
from langchain_fabstir.wire.frames import Connected

HONEST = host_public_key(PrivateKey(b"\x11" * 32))
OTHER = host_public_key(PrivateKey(b"\x22" * 32))
HONEST_ADDRESS = address_of_public_key(HONEST)
OTHER_ADDRESS = address_of_public_key(OTHER)
URL = "http://127.0.0.1:9"


def record(address: str, key: str | None = None, url: str = URL) -> HostRecord:
    return HostRecord(address=address, url=url, active=True, staked=1, public_key=key, price=1)


def test_key_address_is_keccak_of_the_key() -> None:
    assert key_address(HONEST) == HONEST_ADDRESS.lower()
    assert key_address("0x1234") is None and key_address(None) is None


async def test_a_record_with_another_address_key_is_refused() -> None:
    forged = record(OTHER_ADDRESS, HONEST)  # the honest key, the attacker's address
    with pytest.raises(HostIdentityError):
        await trusted_record_key(forged, [], mode="auto", timeout=1)
    honest = record(HONEST_ADDRESS, HONEST)
    assert await trusted_record_key(honest, [], mode="required", timeout=1) == HONEST
    with pytest.raises(EncryptionUnavailableError):  # no key, none provable
        await trusted_record_key(record(HONEST_ADDRESS), [], mode="required", timeout=1)
    assert await trusted_record_key(record(HONEST_ADDRESS), [], mode="auto", timeout=1) is None


def test_one_record_per_url_prefers_a_keyed_one() -> None:
    keyless_first = record(OTHER_ADDRESS)
    keyed = record(HONEST_ADDRESS, HONEST)
    assert _one_per_url([keyless_first, keyed]) == [keyed]
    assert _one_per_url([keyed, keyless_first]) == [keyed]
    first, second = record(HONEST_ADDRESS), record(OTHER_ADDRESS)
    assert _one_per_url([first, second]) == [first]
    elsewhere = record(OTHER_ADDRESS, url="http://127.0.0.1:10")
    assert _one_per_url([first, elsewhere]) == [first, elsewhere]


def test_a_greeting_key_counts_only_for_the_trusted_address() -> None:
    swapped = Connected(host_address=OTHER_ADDRESS, host_public_key=OTHER)
    honest = Connected(host_address=HONEST_ADDRESS, host_public_key=HONEST)
    silent = Connected()
    trust = HostTrust(address=HONEST_ADDRESS)
    assert trust.greeting_key(honest) == HONEST
    assert trust.greeting_key(swapped) is None
    with pytest.raises(HostIdentityError):
        trust.check_greeting(swapped, URL)
    trust.check_greeting(honest, URL)
    trust.check_greeting(silent, URL)  # deployed nodes announce neither
    with pytest.raises(HostIdentityError):  # the caller's key names the expected address
        HostTrust(key=HONEST).check_greeting(swapped, URL)
    HostTrust().check_greeting(swapped, URL)  # nothing trusted: nothing to compare
    with pytest.raises(HostIdentityError):  # a given key that is not the job host's
        HostTrust(key=OTHER, address=HONEST_ADDRESS).check_greeting(silent, URL)
