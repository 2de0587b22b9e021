"""S5 seed phrases and the identity keys derived from them (compatible with s5.js).

A phrase is 15 words from s5.js's 1024-word list (``wordlist.txt``; each word has a unique
3-letter prefix, and only the prefix counts): 12 words of 10 bits and one word of 8 bits
carry 16 bytes of entropy, and two more words carry a 20-bit BLAKE3 checksum.

Derivation (``dhi`` = :func:`~langchain_fabstir.s5.crypto.derive_hash_int`)::

Details and examples: :class:`S5Identity`.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources

from pydantic import SecretStr

from langchain_fabstir.errors import InvalidKeyError, InvalidSeedPhraseError
from langchain_fabstir.s5.cid import blake3_hash
from langchain_fabstir.s5.crypto import derive_hash_int, derive_hash_string
from langchain_fabstir.s5.registry import Ed25519KeyPair

__all__ = [
    "PHRASE_LENGTH",
    "SDK_PRIVATE_KEY_DOMAIN",
    "SEED_ENV",
    "InvalidSeedPhraseError",
    "S5Identity",
    "entropy_to_phrase",
    "generate_phrase",
    "phrase_to_entropy",
    "sdk_private_key_entropy",
    "seed_phrase_from_env",
    "wordlist",
]

SEED_ENV = "FABSTIR_S5_SEED"
"""The environment variable holding the user's S5 seed phrase (CLI, host, examples)."""
_DEPRECATED_SEED_ENV = "FABSTIR_S5_SEED_PHRASE"


def seed_phrase_from_env(environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """The S5 seed phrase in ``FABSTIR_S5_SEED`` (``None`` when unset or blank), as a
    secret; not validated here (:meth:`S5Identity.from_phrase` does).

    ``FABSTIR_S5_SEED_PHRASE``, the name the examples used to read, still works, with a
    ``DeprecationWarning``; when both are set, ``FABSTIR_S5_SEED`` wins.

    >>> seed_phrase_from_env({"FABSTIR_S5_SEED": " fifteen words "})
    SecretStr('**********')
    >>> seed_phrase_from_env({}) is None
    True
    """
    env = os.environ if environ is None else environ
    text = env.get(SEED_ENV, "").strip()
    old = env.get(_DEPRECATED_SEED_ENV, "").strip()
    if old:
        warnings.warn(
            f"{_DEPRECATED_SEED_ENV} is deprecated: name the S5 seed phrase {SEED_ENV}"
            + (f" ({_DEPRECATED_SEED_ENV} is ignored: {SEED_ENV} is set)" if text else ""),
            DeprecationWarning,
            stacklevel=2,
        )
    text = text or old
    return SecretStr(text) if text else None


SEED_LENGTH = 16
SEED_WORDS = 13
CHECKSUM_WORDS = 2
PHRASE_LENGTH = SEED_WORDS + CHECKSUM_WORDS

_TWEAK_MAIN = 0
_TWEAK_PRIVATE = 64
_TWEAK_PORTAL_ACCOUNTS = 65
_TWEAK_HIDDEN_DB = 66
_TWEAK_FILE_SYSTEM = 67


@lru_cache(maxsize=1)
def wordlist() -> tuple[str, ...]:
    """The 1024 words of s5.js's seed phrase dictionary, in order."""
    text = resources.files("langchain_fabstir.s5").joinpath("wordlist.txt").read_text("utf-8")
    words = tuple(w.strip() for w in text.split() if w.strip())
    if len(words) != 1024:  # pragma: no cover - packaging error
        raise RuntimeError("S5 word list must have 1024 words")
    return words


@lru_cache(maxsize=1)
def _prefix_index() -> dict[str, int]:
    return {w[:3]: i for i, w in enumerate(wordlist())}


def _checksum_words(entropy: bytes) -> tuple[int, int]:
    h = blake3_hash(entropy)
    word1 = ((h[0] << 8) + h[1]) >> 6
    word2 = ((((h[1] << 10) & 0xFFFF) + (h[2] << 2)) & 0xFFFF) >> 6
    return word1, word2


def _entropy_to_indices(entropy: bytes) -> list[int]:
    bits = int.from_bytes(entropy, "big")
    indices = [(bits >> (128 - 10 * (i + 1))) & 0x3FF for i in range(12)]
    indices.append(bits & 0xFF)
    return indices


def entropy_to_phrase(entropy: bytes) -> str:
    """The 15-word phrase for 16 bytes of entropy."""
    if len(entropy) != SEED_LENGTH:
        raise ValueError("seed entropy must be 16 bytes")
    words = wordlist()
    indices = _entropy_to_indices(entropy) + list(_checksum_words(entropy))
    return " ".join(words[i] for i in indices)


def generate_phrase() -> str:
    """A new random 15-word seed phrase (16 bytes from ``os.urandom``)."""
    return entropy_to_phrase(os.urandom(SEED_LENGTH))


def phrase_to_entropy(phrase: str) -> bytes:
    """Validate ``phrase`` and return its 16 bytes of entropy.

    Raises :class:`InvalidSeedPhraseError` with the reason if the phrase is not valid.
    """
    words = " ".join(phrase.strip().lower().split()).split(" ")
    if len(words) != PHRASE_LENGTH:
        raise InvalidSeedPhraseError(f"a seed phrase has {PHRASE_LENGTH} words, got {len(words)}")
    index = _prefix_index()
    values: list[int] = []
    for position, word in enumerate(words):
        if len(word) < 3 or word[:3] not in index:
            raise InvalidSeedPhraseError(f"word {position + 1} is not in the S5 word list")
        values.append(index[word[:3]])
    if values[12] >= 256:
        raise InvalidSeedPhraseError("word 13 must be one of the first 256 words of the list")
    bits = 0
    for value in values[:12]:
        bits = (bits << 10) | value
    bits = (bits << 8) | values[12]
    entropy = bits.to_bytes(SEED_LENGTH, "big")
    if tuple(values[13:]) != _checksum_words(entropy):
        raise InvalidSeedPhraseError("the last two words are not a valid checksum")
    return entropy


SDK_PRIVATE_KEY_DOMAIN = "fabstir-s5-seed-from-private-key-v1"
"""Prefix hashed before the 32 key bytes (the SDK's ``deriveEntropyFromPrivateKey``)."""

_KEY_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{64})$")


def sdk_private_key_entropy(private_key: SecretStr | str | bytes) -> bytes:
    """The 16 bytes the Fabstir SDK derives from a private key for its S5 seed:
    ``SHA-256(utf8(SDK_PRIVATE_KEY_DOMAIN) || key32)[:16]`` (``0x`` optional, as the SDK;
    :class:`~langchain_fabstir.errors.InvalidKeyError` for anything but 32 bytes, without
    echoing the key). See :func:`~langchain_fabstir.s5.sdk.sdk_seed_phrase`."""
    if isinstance(private_key, (bytes, bytearray)):
        if len(private_key) != 32:
            raise InvalidKeyError(f"a private key is 32 bytes, got {len(private_key)}")
        key = bytes(private_key)
    elif isinstance(private_key, (str, SecretStr)):
        text = private_key.get_secret_value() if isinstance(private_key, SecretStr) else private_key
        match = _KEY_RE.match(text.strip())
        if match is None:  # the value itself is never echoed
            raise InvalidKeyError(
                "a private key must be 32 bytes of hex (64 hex digits, 0x optional)"
            )
        key = bytes.fromhex(match.group(1))
    else:
        raise InvalidKeyError("a private key is a 0x-hex string, a SecretStr or 32 bytes")
    return hashlib.sha256(SDK_PRIVATE_KEY_DOMAIN.encode("utf-8") + key).digest()[:SEED_LENGTH]


class S5Identity:
    """The keys an S5 user derives from a seed phrase (secret; hidden from ``repr``).

        seed      = blake3(entropy16)
        main      = dhi(seed, 0)
        privSub   = dhi(dhi(main, 64), 0)
        fsRootKey = dhi(privSub, 67)          portalAccountSeed = dhi(privSub, 65)

    The seed must come from a secret (a generated phrase, or entropy derived from a private key),
    never from public data such as a wallet address.

    >>> phrase = ("sign weight spy quality sudden minute pizza great fear "
    ...           "adapt nobody evident control alive crime")
    >>> phrase_to_entropy(phrase).hex()
    'cafe1d4accd7636ab5865140e97d2eb8'
    >>> entropy_to_phrase(phrase_to_entropy(phrase)) == phrase
    True
    >>> ident = S5Identity.from_phrase(phrase)
    >>> len(ident.fs_root_key), "cafe" in repr(ident)
    (32, False)
    """

    __slots__ = ("_fs_root_key", "_hidden_db_key", "_portal_account_seed")

    def __init__(self, entropy: bytes) -> None:
        if len(entropy) != SEED_LENGTH:
            raise ValueError("seed entropy must be 16 bytes")
        seed = blake3_hash(entropy)
        main = derive_hash_int(seed, _TWEAK_MAIN)
        private_sub = derive_hash_int(derive_hash_int(main, _TWEAK_PRIVATE), 0)
        self._fs_root_key = derive_hash_int(private_sub, _TWEAK_FILE_SYSTEM)
        self._portal_account_seed = derive_hash_int(private_sub, _TWEAK_PORTAL_ACCOUNTS)
        self._hidden_db_key = derive_hash_int(private_sub, _TWEAK_HIDDEN_DB)

    @classmethod
    def from_phrase(cls, phrase: SecretStr | str) -> S5Identity:
        """Identity of a 15-word seed phrase (validated; a ``SecretStr`` or a string)."""
        text = phrase.get_secret_value() if isinstance(phrase, SecretStr) else phrase
        return cls(phrase_to_entropy(text))

    @classmethod
    def from_private_key(cls, private_key: SecretStr | str | bytes) -> S5Identity:
        """The identity the Fabstir TypeScript SDK uses for a private-key login.

        The same as ``S5Identity.from_phrase(sdk_seed_phrase(private_key))`` (see
        :func:`~langchain_fabstir.s5.sdk.sdk_seed_phrase`): a Python client and the SDK
        given the same key read and write the same S5 tree. The key is a ``0x``-hex string,
        a ``SecretStr`` or 32 bytes; it is not kept.
        """
        return cls(sdk_private_key_entropy(private_key))

    @classmethod
    def from_secret(cls, secret: bytes, *, context: str = "langchain-fabstir/s5") -> S5Identity:
        """Identity derived from any secret bytes (e.g. a private key), domain-separated.

        Equivalent to ``from_phrase(entropy_to_phrase(e))`` with
        ``e = blake3(blake3(context) || secret)[:16]``, so the phrase can be shown to the user.
        """
        if len(secret) < 16:
            raise ValueError("a secret must have at least 16 bytes")
        return cls(blake3_hash(blake3_hash(context.encode("utf-8")) + secret)[:SEED_LENGTH])

    @classmethod
    def generate(cls) -> tuple[S5Identity, str]:
        """A fresh identity and its seed phrase (show the phrase to the user once)."""
        phrase = generate_phrase()
        return cls.from_phrase(phrase), phrase

    @property
    def fs_root_key(self) -> bytes:
        """``fsRootKey``: the base of every FS5 directory key."""
        return self._fs_root_key

    @property
    def hidden_db_key(self) -> bytes:
        """s5.js's ``hiddenDBKey`` (not used by this package; exposed for completeness)."""
        return self._hidden_db_key

    def portal_account_key_pair(self, tweak: str = "default") -> Ed25519KeyPair:
        """Key pair for portal accounts: ``ed25519(blake3(portalAccountSeed || blake3(tweak)))``.

        s5.js mixes in 32 random bytes stored per portal; this client derives them from
        ``tweak`` instead so that logging in again needs nothing but the phrase. Use a
        different ``tweak`` per portal if accounts on different portals must not be linkable.
        """
        return Ed25519KeyPair.from_seed(
            blake3_hash(self._portal_account_seed + blake3_hash(tweak.encode("utf-8")))
        )

    def derive(self, label: str) -> bytes:
        """A 32-byte application key bound to this identity and ``label``."""
        return derive_hash_string(self._fs_root_key, "app:" + label)

    def __repr__(self) -> str:
        return "S5Identity(<secret>)"
