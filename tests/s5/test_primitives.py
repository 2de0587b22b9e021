"""Registry signatures, key derivation, mutable encryption, seed phrases and DirV1 bytes."""

from __future__ import annotations

import blake3
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_fabstir.errors import IntegrityError
from langchain_fabstir.s5.crypto import (
    check_padded_block,
    decrypt_mutable,
    derive_hash_int,
    derive_hash_string,
    encrypt_mutable,
    pad_file_size,
)
from langchain_fabstir.s5.dirv1 import DirRef, DirV1, FileRef, InvalidDirectoryError
from langchain_fabstir.s5.registry import (
    Ed25519KeyPair,
    InvalidRegistryEntryError,
    RegistryEntry,
    signed_message,
)
from langchain_fabstir.s5.seed import (
    InvalidSeedPhraseError,
    S5Identity,
    entropy_to_phrase,
    generate_phrase,
    phrase_to_entropy,
    wordlist,
)

from .conftest import PHRASE

# --- registry -------------------------------------------------------------------------


def test_signed_message_layout() -> None:
    assert signed_message(1, b"ab") == b"\x07" + (1).to_bytes(8, "little") + b"\x02ab"


def test_registry_entry_good_signature_and_forms() -> None:
    kp = Ed25519KeyPair.from_seed(bytes(range(32)))
    entry = RegistryEntry.create(kp, b"\x1e" + bytes(32), revision=7)
    assert entry.pk == b"\xed" + kp.public_key
    assert entry.verify()
    wire = entry.to_wire()
    assert wire[0] == 0x07 and wire[1:34] == entry.pk and wire[-64:] == entry.signature
    assert RegistryEntry.from_wire(wire) == entry
    assert RegistryEntry.from_json(entry.to_json()) == entry


def test_registry_entry_bad_signatures_do_not_verify() -> None:
    kp = Ed25519KeyPair.from_seed(bytes(32))
    entry = RegistryEntry.create(kp, b"data", revision=1)
    other = Ed25519KeyPair.from_seed(b"\x01" * 32)
    forged = [
        entry.with_signature(bytes(64)),
        RegistryEntry(entry.pk, 2, entry.data, entry.signature),  # revision changed
        RegistryEntry(entry.pk, 1, b"datb", entry.signature),  # data changed
        RegistryEntry(other.registry_key, 1, b"data", entry.signature),  # other key
    ]
    for bad in forged:
        assert not bad.verify()
        with pytest.raises(IntegrityError):
            bad.verified()


def test_registry_entry_limits() -> None:
    kp = Ed25519KeyPair.from_seed(bytes(32))
    RegistryEntry.create(kp, bytes(64), 1)
    with pytest.raises(InvalidRegistryEntryError):
        RegistryEntry.create(kp, bytes(65), 1)
    with pytest.raises(InvalidRegistryEntryError):
        RegistryEntry.create(kp, b"", 2**64)
    with pytest.raises(InvalidRegistryEntryError):
        RegistryEntry.from_wire(b"\x07" + bytes(20))
    with pytest.raises(InvalidRegistryEntryError):
        RegistryEntry.from_json({"pk": "!!", "revision": 1, "data": "", "signature": ""})
    with pytest.raises(InvalidRegistryEntryError):
        RegistryEntry.from_json({"pk": "AA", "revision": True, "data": "", "signature": ""})


def test_key_pair_repr_hides_the_seed() -> None:
    seed = bytes(range(32))
    assert seed.hex() not in repr(Ed25519KeyPair.from_seed(seed))


# --- derivation and encryption --------------------------------------------------------


def test_derive_hash_definitions() -> None:
    base = bytes(range(32))
    assert derive_hash_int(base, 67) == blake3.blake3(base + bytes([67]) + bytes(31)).digest()
    tweak = blake3.blake3(b"home").digest()
    assert derive_hash_string(base, "home") == blake3.blake3(base + tweak).digest()


def test_padding_sizes() -> None:
    assert [pad_file_size(n) for n in (1, 4096, 4097, 80 * 1024, 80 * 1024 + 1)] == [
        4096,
        4096,
        8192,
        80 * 1024,
        88 * 1024,
    ]
    assert check_padded_block(8192) and not check_padded_block(8193)


@pytest.mark.parametrize("size", [0, 1, 4050, 4051, 10_000])
def test_mutable_encryption_round_trip_and_padding(size: int) -> None:
    key = bytes(range(32))
    data = bytes(i % 251 for i in range(size))
    blob = encrypt_mutable(data, key)
    assert blob[:2] == b"\x8d\x01"
    assert check_padded_block(len(blob))
    assert decrypt_mutable(blob, key) == data
    assert size < 16 or data not in blob


def test_mutable_encryption_rejects_tampering_and_wrong_key() -> None:
    key = bytes(32)
    blob = bytearray(encrypt_mutable(b"secret", key))
    with pytest.raises(IntegrityError):
        decrypt_mutable(bytes(blob), b"\x01" * 32)
    blob[40] ^= 1
    with pytest.raises(IntegrityError):
        decrypt_mutable(bytes(blob), key)
    with pytest.raises(IntegrityError):
        decrypt_mutable(b"\x00\x01" + bytes(100), key)


# --- seed phrases ---------------------------------------------------------------------


def test_wordlist_is_s5js_list() -> None:
    words = wordlist()
    assert len(words) == 1024 and words[0] == "abandon"
    assert len({w[:3] for w in words}) == 1024


def test_seed_phrase_vector_from_s5js() -> None:
    assert phrase_to_entropy(PHRASE).hex() == "cafe1d4accd7636ab5865140e97d2eb8"
    # only the first three letters count, case and spacing do not
    loose = "  " + " ".join(w[:3].upper() for w in PHRASE.split()) + " "
    assert phrase_to_entropy(loose) == phrase_to_entropy(PHRASE)


def test_generated_phrases_validate() -> None:
    phrase = generate_phrase()
    assert len(phrase.split()) == 15
    assert entropy_to_phrase(phrase_to_entropy(phrase)) == phrase


@pytest.mark.parametrize(
    "phrase",
    [
        "sign weight",
        PHRASE.replace("crime", "abandon"),  # bad checksum
        PHRASE.replace("sign", "xyzzy"),  # unknown word
        PHRASE.replace("control", "zoo"),  # word 13 beyond the first 256
    ],
)
def test_invalid_phrases(phrase: str) -> None:
    with pytest.raises(InvalidSeedPhraseError):
        phrase_to_entropy(phrase)


def test_identity_derivation_follows_s5md() -> None:
    entropy = phrase_to_entropy(PHRASE)
    seed = blake3.blake3(entropy).digest()
    main = derive_hash_int(seed, 0)
    priv_sub = derive_hash_int(derive_hash_int(main, 64), 0)
    ident = S5Identity.from_phrase(PHRASE)
    assert ident.fs_root_key == derive_hash_int(priv_sub, 67)
    assert "S5Identity(<secret>)" == repr(ident)
    assert S5Identity.from_secret(b"k" * 32).fs_root_key != ident.fs_root_key


# --- DirV1 ----------------------------------------------------------------------------


def test_empty_directory_bytes() -> None:
    assert DirV1().encode() == bytes.fromhex("5f5d846653352e70726fa0a0a0")
    assert DirV1.decode(bytes.fromhex("846653352e70726fa0a0a0")) == DirV1()


def test_directory_layout_uses_integer_keys_and_sorted_names() -> None:
    d = DirV1(
        dirs={"b": DirRef(b"\xed" + bytes(32), 5)},
        files={"z": FileRef(b"\x01" * 32, 3, "text/plain", 9), "a": FileRef(b"\x02" * 32, 1)},
    )
    obj = cbor2.loads(d.encode()[2:])
    assert obj[0] == "S5.pro"
    assert list(obj[3]) == ["a", "z"]
    assert obj[3]["z"] == {3: b"\x01" * 32, 4: 3, 6: "text/plain", 7: 9}
    assert obj[2]["b"] == {2: b"\xed" + bytes(32), 7: 5}


def test_unknown_fields_survive_a_round_trip() -> None:
    raw = b"\x5f\x5d" + cbor2.dumps(
        ["S5.pro", {"x": 1}, {}, {"f": {3: bytes(32), 4: 1, 9: [[1, "http://a"]], 22: 3}}]
    )
    d = DirV1.decode(raw)
    assert DirV1.decode(d.encode()) == d
    assert d.encode() == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"\x5f\x5d\xff\xff",
        b"\x5f\x5d" + cbor2.dumps(["S5.pro", {}, {}]),
        b"\x5f\x5d" + cbor2.dumps(["nope", {}, {}, {}]),
        b"\x5f\x5d" + cbor2.dumps(["S5.pro", {}, {}, {"f": {3: b"x", 4: 1}}]),
        b"\x5f\x5d" + cbor2.dumps(["S5.pro", {}, {"d": {2: b"\x00" * 33}}, {}]),
        b"\x5f\x5d" + cbor2.dumps(["S5.pro", {}, {}, {1: {3: bytes(32), 4: 1}}]),
    ],
)
def test_malformed_directories_raise_typed_error(raw: bytes) -> None:
    with pytest.raises(InvalidDirectoryError):
        DirV1.decode(raw)


names = st.text(min_size=1, max_size=20)
file_refs = st.builds(
    FileRef,
    hash=st.binary(min_size=32, max_size=32),
    size=st.integers(0, 2**40),
    media_type=st.none() | st.text(max_size=20),
    timestamp=st.none() | st.integers(0, 2**40),
    timestamp_nanos=st.none() | st.integers(0, 10**9 - 1),
)
dir_refs = st.builds(
    DirRef,
    link=st.sampled_from([b"\xed", b"\x1e"]).flatmap(
        lambda p: st.binary(min_size=32, max_size=32).map(lambda b: p + b)
    ),
    timestamp=st.none() | st.integers(0, 2**40),
)


@settings(max_examples=60)
@given(st.dictionaries(names, dir_refs, max_size=5), st.dictionaries(names, file_refs, max_size=8))
def test_dirv1_round_trip(dirs: dict[str, DirRef], files: dict[str, FileRef]) -> None:
    d = DirV1(dirs=dirs, files=files)
    encoded = d.encode()
    assert DirV1.decode(encoded) == d
    assert DirV1.decode(encoded).encode() == encoded
