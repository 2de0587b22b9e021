"""A Python S5 client: CIDs, signed registry entries, portal HTTP API and an FS5 file tree.

S5 is content-addressed storage: blobs are named by their BLAKE3 hash (:class:`CID`), and
mutable state lives in small signed registry entries (:class:`RegistryEntry`) that point at
blobs. :class:`S5PortalClient` talks to a portal's HTTP API and checks every hash and
signature; :class:`S5FileSystem` keeps an encrypted, FS5-compatible directory tree on top;
:class:`S5AppendLog` is an append-only record log for chat histories and checkpoints.
``S5FileSystem(..., s5js_compatible=True)`` writes a tree that s5.js reads too (see
:mod:`langchain_fabstir.s5.fs`); :func:`sdk_seed_phrase` and
:meth:`S5Identity.from_private_key` give the phrase and identity the Fabstir TypeScript SDK
derives for a user, :func:`sdk_encryption_key` its second key (:mod:`langchain_fabstir.s5.sdk`).

Quick start (against a local portal)::

    from langchain_fabstir.portal import LocalPortal
    from langchain_fabstir.s5 import S5FileSystem, S5Identity, S5PortalClient

    identity, phrase = S5Identity.generate()          # keep the phrase secret
    async with LocalPortal("./portal-data") as portal, S5PortalClient(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        fs = S5FileSystem(client, identity)
        await fs.put("home/hello.txt", b"hi", media_type="text/plain")
        assert await fs.get("home/hello.txt") == b"hi"
"""

from __future__ import annotations

from langchain_fabstir.s5.cid import CID, InvalidCIDError, blake3_hash
from langchain_fabstir.s5.client import BlobNotFoundError, PortalRequestError, S5PortalClient
from langchain_fabstir.s5.collation import s5js_sort_key
from langchain_fabstir.s5.crypto import (
    decrypt_mutable,
    derive_hash_int,
    derive_hash_string,
    encrypt_mutable,
)
from langchain_fabstir.s5.dirv1 import DirRef, DirV1, FileRef, InvalidDirectoryError
from langchain_fabstir.s5.fs import DirEntry, FileInfo, InvalidPathError, S5FileSystem
from langchain_fabstir.s5.hamt import ShardedDirectoryError
from langchain_fabstir.s5.log import LogRecord, S5AppendLog
from langchain_fabstir.s5.registry import (
    Ed25519KeyPair,
    InvalidRegistryEntryError,
    RegistryEntry,
)
from langchain_fabstir.s5.sdk import SDK_SEED_MESSAGE, sdk_encryption_key, sdk_seed_phrase
from langchain_fabstir.s5.seed import (
    SEED_ENV,
    InvalidSeedPhraseError,
    S5Identity,
    entropy_to_phrase,
    generate_phrase,
    phrase_to_entropy,
    seed_phrase_from_env,
)

__all__ = [
    "CID",
    "SDK_SEED_MESSAGE",
    "SEED_ENV",
    "BlobNotFoundError",
    "DirEntry",
    "DirRef",
    "DirV1",
    "Ed25519KeyPair",
    "FileInfo",
    "FileRef",
    "InvalidCIDError",
    "InvalidDirectoryError",
    "InvalidPathError",
    "InvalidRegistryEntryError",
    "InvalidSeedPhraseError",
    "LogRecord",
    "PortalRequestError",
    "RegistryEntry",
    "S5AppendLog",
    "S5FileSystem",
    "S5Identity",
    "S5PortalClient",
    "ShardedDirectoryError",
    "blake3_hash",
    "decrypt_mutable",
    "derive_hash_int",
    "derive_hash_string",
    "encrypt_mutable",
    "entropy_to_phrase",
    "generate_phrase",
    "phrase_to_entropy",
    "s5js_sort_key",
    "sdk_encryption_key",
    "sdk_seed_phrase",
    "seed_phrase_from_env",
]
