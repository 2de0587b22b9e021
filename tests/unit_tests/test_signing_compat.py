"""EIP-191 signing, recovery, addresses and EIP-55 checksums without eth-account: byte for
byte what eth-account and eth-utils give (they are imported here, in the test only)."""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest
from pydantic import SecretStr

from langchain_fabstir._eth import is_address, keccak256, to_checksum_address
from langchain_fabstir.checkpoints.signing import (
    _account,
    address_of,
    personal_sign,
    recover_personal_signer,
)
from langchain_fabstir.errors import CheckpointError


def _reference() -> Any:
    """eth-account and eth-utils, imported keeping the recursion limit (py_ecc raises it)."""
    limit = sys.getrecursionlimit()
    try:
        import eth_account
        import eth_account.messages
        import eth_utils
    finally:
        sys.setrecursionlimit(limit)
    return eth_account.Account, eth_account.messages.encode_defunct, eth_utils


Account, encode_defunct, eth_utils = _reference()
ref_is_address, ref_keccak, ref_checksum = (
    eth_utils.is_address,
    eth_utils.keccak,
    eth_utils.to_checksum_address,
)
RNG = random.Random(20)
KEYS = [bytes([1] * 32), bytes.fromhex("11" * 32), *(RNG.randbytes(32) for _ in range(6))]
MESSAGES = [
    "",
    "hello",
    "0x" + "ab" * 32,
    "é ü 中文 🎉",
    '{"a":[1,2],"b":"c"}',
    "line\nbreak\r\n\t",
    "x" * 10_000,
]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.hex()[:8])
def test_signatures_and_addresses_equal_eth_accounts(key: bytes) -> None:
    ref = Account.from_key(key)
    for form in (key, "0x" + key.hex(), key.hex(), SecretStr("0x" + key.hex()), ref):
        assert address_of(form) == ref.address
    for text in MESSAGES:
        expected = "0x" + bytes(ref.sign_message(encode_defunct(text=text)).signature).hex()
        assert personal_sign(text, key) == expected
        assert recover_personal_signer(text, expected) == ref.address
        assert Account.recover_message(encode_defunct(text=text), signature=expected) == (
            ref.address
        )


def test_recovery_reads_v_as_eth_account_does() -> None:
    key = KEYS[2]
    sig = bytes.fromhex(personal_sign("v forms", key)[2:])
    v = sig[64]
    for other in (v - 27, v + 8 + 2 * 1, v + 8 + 2 * 100):  # 0/1, EIP-155 v for chains 1, 100
        alt = sig[:64] + bytes([other])
        ref = Account.recover_message(encode_defunct(text="v forms"), signature=alt)
        assert recover_personal_signer("v forms", alt) == ref == address_of(key)
    for bad_v in (2, 26, 29, 34):
        with pytest.raises(CheckpointError) as info:
            recover_personal_signer("v forms", sig[:64] + bytes([bad_v]))
        assert info.value.details["reason"] == "bad_signature"
        with pytest.raises(Exception):  # noqa: B017 - eth-account refuses them too
            Account.recover_message(
                encode_defunct(text="v forms"), signature=sig[:64] + bytes([bad_v])
            )
    for bad in (bytes(64) + b"\x1b", b"\xff" * 64 + b"\x1b"):  # r = s = 0; r, s >= n
        with pytest.raises(CheckpointError):
            recover_personal_signer("x", bad)


def test_checksums_keccak_and_address_checks_equal_eth_utils() -> None:
    for _ in range(200):
        raw = RNG.randbytes(20)
        for form in ("0x" + raw.hex(), raw.hex(), "0x" + raw.hex().upper(), raw):
            assert to_checksum_address(form) == ref_checksum(form)
        data = RNG.randbytes(RNG.randrange(0, 300))
        assert keccak256(data) == ref_keccak(data)
    for value in ("0x" + "ab" * 20, "ab" * 20, "0X" + "AB" * 20, "0x" + "ab" * 19, "xyz", 12):
        assert is_address(value) == ref_is_address(value), value
    with pytest.raises(ValueError):
        to_checksum_address("0x1234")


def test_bad_keys_are_checkpoint_errors_that_never_show_the_key() -> None:
    for bad in (bytes(32), b"\xff" * 32, "0x" + "zz" * 32, b"\x01" * 31, "0x"):
        with pytest.raises(CheckpointError) as info:
            address_of(bad)
        assert info.value.details["reason"] == "bad_private_key"
    signer = _account("0x" + "11" * 32)
    assert "11" * 8 not in repr(signer)
    assert signer.address in repr(signer)
    assert signer.key == bytes.fromhex("11" * 32)
