"""The S5 seed phrase and keys the Fabstir TypeScript SDK derives (S5.md section 6).

Two checks for every value: the worked example of S5.md 6.4 (computed there by the SDK's
own functions under Node), and an independent re-implementation written here from the
spec with ``hashlib``, the ``blake3`` package, PyNaCl and the word list file itself
(checked against the SHA-256 S5.md gives for it), sharing no code with the package's
derivation.
"""

from __future__ import annotations

import ast
import hashlib
import secrets
from pathlib import Path

import blake3
import nacl.signing
import pytest
from coincurve import PrivateKey
from pydantic import SecretStr

import langchain_fabstir.s5 as s5
from langchain_fabstir.errors import InvalidKeyError
from langchain_fabstir.s5 import (
    S5FileSystem,
    S5Identity,
    S5PortalClient,
    phrase_to_entropy,
    sdk_encryption_key,
    sdk_seed_phrase,
)

S5_DIR = Path(s5.__file__).parent

# --- the worked example (S5.md 6.4; Anvil/Hardhat account #0, a public test key) ---------
KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
CHAIN_ID = 84532
ENTROPY_A = "9d839e45e587f8c4b88be56c94decc03"
INDEXES_A = [630, 57, 913, 485, 543, 908, 302, 139, 917, 713, 311, 716, 3, 622, 621]
BLAKE3_A = "9ba6d6b6d95372da7a2947cf0b0e076bb59de3d51a6331011a14d8546244c414"
PHRASE_A = (
    "often appear toll key magic tissue evident bullet topic push extend quality about object oak"
)
ENTROPY_B = "b740feb078edd32cd0803a19c34743ad"
PHRASE_B = (
    "reduce address uncle bone upper execute sky boy dilemma heel danger soft clear catch height"
)
SIGNATURE_C = (
    "0x65db55c80bd088bbaa374a252108fb8b1292732e9328322e73bde2600db6699b2f524685d43ab9c843e1"
    "874a54cc56709c034957b375bc1d5b0c0c8e80c5589f1b"
)
ENTROPY_C = "ae8988ddbae03eb1a83d2a17b528135a"
PHRASE_C = (
    "portion capital mirror icon they will bird army church girl fence adult bedroom sport during"
)
FS_ROOT_KEY = "6601434c53fd1820f49e61159e125fd0ddc97a69d35c9b024850da4b8f21bd87"
ROOT_WRITE_KEY = "e8a0e0396c5bf84defc3696d393894df32db9af2a61befa4b742082157e029f9"
ROOT_REGISTRY_KEY = "ed4fab099e6cfae60b210906b7038692f6d80546999437b7d727045bc7ded1e8b9"
ROOT_ENCRYPTION_KEY = "e34f6a8a73d958217be45a6d575835c8d840dc76cced17f46a8b366d63695eb2"
HOME_WRITE_KEY = "3eb23af63496728e705990a11560100fd02c3e810c00444d1f97f262665395c4"
HOME_REGISTRY_KEY = "edca295e7366004c9bb553dab0f8690640fec2f72d8f7584f953e74e0bf52a879c"
SESSIONS_WRITE_KEY = "55620036832068afc6a42bd526a8c731caf35f6b92386ce479444f43c680fe16"
SESSIONS_REGISTRY_KEY = "ed03baaa288d225809e557e8ff184144435e4d8dde8b11033e307354655fbf8ffa"
ENC_PRIVATE = "0bbb5341e029b0cd092809963c3a91d16ab1f49cc03d4d192cf80f65dcf2995d"
ENC_PUBLIC = "027090051013700e1ba5a57c9de626363e0ed9808677097cb08638f6f15cdd7ef7"
ENC_ADDRESS = "0xA806a4A23b2795B6A4A46d11b337b9e2A74A3D16"
WORDLIST_SHA256 = "260836041909e645ed22dd17192e976b8bcc298eb3c370da8259c48c85d9bed7"


# --- the independent implementation (from S5.md 6.2, 6.3 and section 3) ------------------


def ref_words() -> list[str]:
    words = (S5_DIR / "wordlist.txt").read_text("utf-8").split()
    assert hashlib.sha256("\n".join(words).encode()).hexdigest() == WORDLIST_SHA256
    return words


def ref_entropy_key(key_hex: str) -> bytes:
    raw = bytes.fromhex(key_hex.removeprefix("0x"))
    return hashlib.sha256(b"fabstir-s5-seed-from-private-key-v1" + raw).digest()[:16]


def ref_entropy_address(address: str, chain_id: int) -> bytes:
    text = address.lower() + "fabstir-s5-seed-v2.1" + str(chain_id)
    return hashlib.sha256(text.encode()).digest()[:16]


def ref_entropy_signature(signature_hex: str) -> bytes:
    return hashlib.sha256(signature_hex.encode()).digest()[:16]


def ref_indexes(entropy: bytes) -> list[int]:
    bits = "".join(f"{b:08b}" for b in entropy)
    words = [int(bits[10 * i : 10 * i + 10], 2) for i in range(12)] + [int(bits[120:], 2)]
    check = "".join(f"{b:08b}" for b in blake3.blake3(entropy).digest()[:3])
    return [*words, int(check[:10], 2), int(check[10:20], 2)]


def ref_phrase(entropy: bytes) -> str:
    words = ref_words()
    return " ".join(words[i] for i in ref_indexes(entropy))


def dhi(base: bytes, tweak: int) -> bytes:
    return blake3.blake3(base + tweak.to_bytes(32, "little")).digest()


def dhs(base: bytes, name: str) -> bytes:
    return blake3.blake3(base + blake3.blake3(name.encode()).digest()).digest()


def registry_key(write_key: bytes) -> str:
    return "ed" + bytes(nacl.signing.SigningKey(write_key).verify_key).hex()


def ref_fs_root(entropy: bytes) -> bytes:
    seed = blake3.blake3(entropy).digest()
    private_sub = dhi(dhi(dhi(seed, 0), 64), 0)
    return dhi(private_sub, 67)


# --- tests -------------------------------------------------------------------------------


def test_worked_example_by_the_independent_implementation() -> None:
    """The reference code reproduces every string of S5.md 6.4 (it is a valid oracle)."""
    entropy = ref_entropy_key(KEY)
    assert entropy.hex() == ENTROPY_A
    assert ref_indexes(entropy) == INDEXES_A
    assert blake3.blake3(entropy).hexdigest() == BLAKE3_A
    assert ref_phrase(entropy) == PHRASE_A
    assert ref_entropy_address(ADDRESS, CHAIN_ID).hex() == ENTROPY_B
    assert ref_phrase(ref_entropy_address(ADDRESS, CHAIN_ID)) == PHRASE_B
    assert ref_entropy_signature(SIGNATURE_C).hex() == ENTROPY_C
    assert ref_phrase(ref_entropy_signature(SIGNATURE_C)) == PHRASE_C
    root = ref_fs_root(entropy)
    assert root.hex() == FS_ROOT_KEY
    fsk = dhi(root, 1)
    assert fsk.hex() == ROOT_WRITE_KEY and registry_key(fsk) == ROOT_REGISTRY_KEY
    assert dhi(fsk, 1).hex() == ROOT_ENCRYPTION_KEY
    home = dhs(fsk, "home")
    assert home.hex() == HOME_WRITE_KEY and registry_key(home) == HOME_REGISTRY_KEY
    sessions = dhs(home, "sessions")
    assert sessions.hex() == SESSIONS_WRITE_KEY and registry_key(sessions) == SESSIONS_REGISTRY_KEY
    enc = hashlib.sha256((PHRASE_A + "fabstir-encryption-key-from-s5-seed-v1").encode()).digest()
    assert enc.hex() == ENC_PRIVATE
    assert PrivateKey(enc).public_key.format(compressed=True).hex() == ENC_PUBLIC


def test_worked_example_phrases() -> None:
    a = sdk_seed_phrase(KEY)
    assert isinstance(a, SecretStr) and PHRASE_A not in repr(a) and PHRASE_A not in str(a)
    assert a.get_secret_value() == PHRASE_A
    assert phrase_to_entropy(PHRASE_A).hex() == ENTROPY_A  # s5.js validates it too
    b = sdk_seed_phrase(address=ADDRESS, chain_id=CHAIN_ID)
    assert b.get_secret_value() == PHRASE_B
    assert sdk_seed_phrase(signature=SIGNATURE_C).get_secret_value() == PHRASE_C
    # the signature as 65 bytes, and as upper-case hex, is the same seed
    raw = bytes.fromhex(SIGNATURE_C[2:])
    assert sdk_seed_phrase(signature=raw).get_secret_value() == PHRASE_C
    assert sdk_seed_phrase(signature=SIGNATURE_C.upper()[2:]).get_secret_value() == PHRASE_C


async def test_worked_example_s5_keys() -> None:
    identity = S5Identity.from_private_key(KEY)
    assert identity.fs_root_key.hex() == FS_ROOT_KEY
    assert S5Identity.from_phrase(sdk_seed_phrase(KEY)).fs_root_key.hex() == FS_ROOT_KEY
    async with S5PortalClient("http://127.0.0.1:9") as client:  # no request is made
        fs = S5FileSystem(client, identity, s5js_compatible=True)
    root = fs._keys(())
    assert root.write_key.hex() == ROOT_WRITE_KEY and root.enc_key.hex() == ROOT_ENCRYPTION_KEY
    assert root.key_pair.registry_key.hex() == ROOT_REGISTRY_KEY
    assert fs._keys(("home",)).write_key.hex() == HOME_WRITE_KEY
    assert fs.directory_public_key("home").hex() == HOME_REGISTRY_KEY
    assert fs._keys(("home", "sessions")).write_key.hex() == SESSIONS_WRITE_KEY
    assert fs.directory_public_key("home/sessions").hex() == SESSIONS_REGISTRY_KEY


def test_worked_example_encryption_key() -> None:
    from langchain_fabstir.checkpoints.signing import address_of
    from langchain_fabstir.wire.encryption import RecoveryKey

    key = sdk_encryption_key(sdk_seed_phrase(KEY))
    assert isinstance(key, SecretStr) and ENC_PRIVATE not in repr(key)
    assert key.get_secret_value() == "0x" + ENC_PRIVATE
    assert sdk_encryption_key(PHRASE_A).get_secret_value() == "0x" + ENC_PRIVATE
    assert RecoveryKey(key.get_secret_value()).public_key == "0x" + ENC_PUBLIC
    assert address_of(key.get_secret_value()) == ENC_ADDRESS
    assert address_of(KEY) == ADDRESS


def test_random_keys_addresses_and_signatures_match_the_reference() -> None:
    for _ in range(64):
        key = secrets.token_bytes(32)
        entropy = ref_entropy_key(key.hex())
        phrase = ref_phrase(entropy)
        for form in (key, key.hex(), "0x" + key.hex(), SecretStr("0x" + key.hex().upper())):
            assert sdk_seed_phrase(form).get_secret_value() == phrase
        identity = S5Identity.from_private_key(SecretStr(key.hex()))
        assert identity.fs_root_key == ref_fs_root(entropy)
        assert S5Identity.from_phrase(phrase).fs_root_key == identity.fs_root_key
        enc = hashlib.sha256((phrase + "fabstir-encryption-key-from-s5-seed-v1").encode())
        assert sdk_encryption_key(SecretStr(phrase)).get_secret_value() == "0x" + enc.hexdigest()

        address = "0x" + secrets.token_hex(20)
        chain = secrets.randbelow(10**6) + 1
        expected = ref_phrase(ref_entropy_address(address, chain))
        assert sdk_seed_phrase(address=address, chain_id=chain).get_secret_value() == expected
        assert sdk_seed_phrase(address=address.upper().replace("0X", "0x"), chain_id=chain) == (
            sdk_seed_phrase(address=address, chain_id=chain)
        )

        signature = "0x" + secrets.token_hex(65)
        expected = ref_phrase(ref_entropy_signature(signature))
        assert sdk_seed_phrase(signature=signature).get_secret_value() == expected


@pytest.mark.parametrize(
    "bad",
    [
        "0x" + "ab" * 31,  # too short
        "0x" + "zz" * 32,  # not hex
        "0X" + "ab" * 32,  # the SDK accepts only a lower-case 0x
        b"\x01" * 31,
    ],
)
def test_malformed_keys_are_typed_errors_that_do_not_echo_them(bad: str | bytes) -> None:
    with pytest.raises(InvalidKeyError) as caught:
        sdk_seed_phrase(bad)
    assert caught.value.code == "INVALID_KEY"
    shown = bad if isinstance(bad, str) else bad.hex()
    assert shown[4:] not in str(caught.value)
    with pytest.raises(InvalidKeyError):
        S5Identity.from_private_key(bad)


def test_argument_errors() -> None:
    with pytest.raises(TypeError):
        sdk_seed_phrase()
    with pytest.raises(TypeError):
        sdk_seed_phrase(KEY, address=ADDRESS, chain_id=1)
    with pytest.raises(InvalidKeyError):
        sdk_seed_phrase(address=ADDRESS)  # no chain id
    with pytest.raises(InvalidKeyError):
        sdk_seed_phrase(address="f39Fd6e51aad88F6F4ce6aB8827279cffFb92266", chain_id=1)
    with pytest.raises(InvalidKeyError):
        sdk_seed_phrase(signature="0x1234")
    with pytest.raises(InvalidKeyError):
        sdk_encryption_key("  ")


def test_the_derivation_imports_no_ethereum_library() -> None:
    """The phrase from a private key needs hashlib and the word list only."""
    for name in ("sdk.py", "seed.py"):
        tree = ast.parse((S5_DIR / name).read_text("utf-8"))
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in modules if m.startswith(("eth_", "web3", "coincurve"))}, name
