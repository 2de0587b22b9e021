"""CIDs: the S5 spec's example, s5.js's encoding vectors, legacy form, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from langchain_fabstir.s5.cid import CID, InvalidCIDError
from langchain_fabstir.s5.encoding import multibase_decode, multibase_encode

HELLO_B32 = "blobb53pfycyq6lwes6ogtnjpmhsc75nucnizzye34dyu2cmnz7s7n6mnbu"
HELLO_HEX = "f5b821eede5c0b10f2ec4979c69b52f61e42ff5b413519ce09be0f14d098dcfe5f6f98d0d"

# s5.js test/blob_identifier.test.ts: hash 0x1e e40b..., size 5050
VEC_HASH = bytes.fromhex("e40b877081c208036d451b898700b4bf938792ffa3e4426f2bf871aa057d992b")
VEC = {
    "f": "f5b821ee40b877081c208036d451b898700b4bf938792ffa3e4426f2bf871aa057d992bba13",
    "b": "blobb5zalq5yidqqianwukg4jq4aljp4tq6jp7i7eijxsx6drvicx3gjlxijq",
    "z": "z44t3p46N4Fmqc1STusbaEoZ2HeDCFNNFRGys8SJsDvV9kHyMUbt",
    "u": "uW4Ie5AuHcIHCCANtRRuJhwC0v5OHkv-j5EJvK_hxqgV9mSu6Ew",
}


def test_hello_world_example() -> None:
    cid = CID.from_bytes(b"Hello, world!")
    assert cid.size == 13
    assert str(cid) == HELLO_B32
    assert cid.to_string("f") == HELLO_HEX
    assert CID.parse(HELLO_B32) == cid == CID.parse(HELLO_HEX)


@pytest.mark.parametrize("base", ["b", "z", "u", "f"])
def test_every_multibase_form_matches_s5js_vectors(base: str) -> None:
    cid = CID(VEC_HASH, 5050)
    assert cid.to_string(base) == VEC[base]  # type: ignore[arg-type]
    assert CID.parse(VEC[base]) == cid


@pytest.mark.parametrize(
    ("size", "tail"),
    [(0, b"\x00"), (1, b"\x01"), (255, b"\xff"), (256, b"\x00\x01"), (65536, b"\x00\x00\x01")],
)
def test_size_is_little_endian_trimmed(size: int, tail: bytes) -> None:
    raw = CID(bytes(32), size).to_bytes()
    assert raw[:3] == b"\x5b\x82\x1e" and raw[35:] == tail


def test_size_zero_accepts_empty_size_field() -> None:
    raw = b"\x5b\x82\x1e" + bytes(32)
    assert CID.from_cid_bytes(raw) == CID(bytes(32), 0)


def test_legacy_raw_cid_converts_to_blob_form() -> None:
    cid = CID.from_bytes(b"Hello, world!")
    legacy = cid.to_legacy_bytes()
    assert legacy[:2] == b"\x26\x1f"
    parsed = CID.parse(multibase_encode(legacy, "z"))
    assert parsed == cid
    assert str(parsed).startswith("blob")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "xabc",
        "zO0Il",  # not base58
        "f5b82",  # too short
        "f" + "00" * 40,  # unknown type byte
        "f5b821d" + "00" * 33,  # not blake3
        "f5b821e" + "00" * 32 + "00" * 9,  # size field too long
        "u!!!",
        "b1",
    ],
)
def test_malformed_cids_raise_typed_error(text: str) -> None:
    with pytest.raises(InvalidCIDError) as info:
        CID.parse(text)
    assert info.value.code == "INVALID_CID"


def test_cid_rejects_bad_fields() -> None:
    with pytest.raises(InvalidCIDError):
        CID(b"short", 1)
    with pytest.raises(InvalidCIDError):
        CID(bytes(32), -1)


def test_matches_checks_hash_and_size() -> None:
    cid = CID.from_bytes(b"abc")
    assert cid.matches(b"abc")
    assert not cid.matches(b"abd")
    assert not CID(cid.hash, 4).matches(b"abc")


@given(st.binary(max_size=300), st.sampled_from(["b", "z", "u", "f"]))
def test_round_trip_any_content_any_base(data: bytes, base: str) -> None:
    cid = CID.from_bytes(data)
    text = cid.to_string(base)  # type: ignore[arg-type]
    assert text[0] == base
    assert CID.parse(text) == cid
    assert CID.from_cid_bytes(multibase_decode(text)) == cid


@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=2**64 - 1))
def test_round_trip_any_hash_and_size(hash_: bytes, size: int) -> None:
    cid = CID(hash_, size)
    assert CID.parse(cid.to_string("b")) == cid
    assert CID.from_cid_bytes(cid.to_legacy_bytes()) == cid
