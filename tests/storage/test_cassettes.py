"""Portal HTTP traffic of the S5 client, recorded with vcrpy and replayed with no network.

The cassettes in ``cassettes/`` were recorded against a LocalPortal; re-record them with
``FABSTIR_RECORD_CASSETTES=1 pytest tests/storage/test_cassettes.py``. Requests are matched
on method and path only (challenges, multipart boundaries and ports differ per run); the
replies that matter are deterministic: a blob's CID follows from its bytes, and ed25519
registry signatures are deterministic. Tokens, cookies and ``auth_token`` parameters are
scrubbed before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_socket
import vcr

from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import (
    CID,
    BlobNotFoundError,
    Ed25519KeyPair,
    RegistryEntry,
    S5Identity,
    S5PortalClient,
)

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes"
RECORD = os.environ.get("FABSTIR_RECORD_CASSETTES") == "1"
HELLO_CID = "blobb53pfycyq6lwes6ogtnjpmhsc75nucnizzye34dyu2cmnz7s7n6mnbu"  # S5 spec example
SECRET_FIELDS = ("authToken",)
REPLAY_URL = "http://127.0.0.1:5050"  # never contacted: sockets are disabled on replay


def scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    headers = response["headers"]
    for name in list(headers):
        if name.lower() in ("set-cookie", "authorization"):
            headers[name] = ["FILTERED"]
    body = response["body"]["string"]
    if body[:1] == b"{":
        obj = json.loads(body)
        if isinstance(obj, dict) and any(k in obj for k in SECRET_FIELDS):
            obj.update({k: "S5AFILTERED" for k in SECRET_FIELDS if k in obj})
            response["body"]["string"] = json.dumps(obj).encode()
            for name in list(headers):
                if name.lower() == "content-length":
                    headers[name] = [str(len(response["body"]["string"]))]
    return response


RECORDER = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="all" if RECORD else "none",
    match_on=["method", "path"],
    filter_headers=["authorization", "cookie"],
    filter_query_parameters=["auth_token"],
    before_record_response=scrub_response,
)


@contextlib.asynccontextmanager
async def portal_client(cassette: str) -> AsyncIterator[S5PortalClient]:
    """Record against a real LocalPortal, or replay with every network socket blocked."""
    with RECORDER.use_cassette(cassette):
        if RECORD:
            with tempfile.TemporaryDirectory() as tmp:
                async with LocalPortal(tmp) as portal, S5PortalClient(portal.url) as client:
                    yield client
            return
        pytest_socket.disable_socket(allow_unix_socket=True)  # the loop's self-pipe is AF_UNIX
        try:
            with pytest.raises(pytest_socket.SocketBlockedError), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pytest-socket warns before it raises
                socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            async with S5PortalClient(REPLAY_URL, max_attempts=1) as client:
                yield client
        finally:
            pytest_socket.enable_socket()


def identity() -> S5Identity:
    return S5Identity.from_secret(b"cassette test identity, not a secret")


async def test_register_upload_download_known_blob() -> None:
    async with portal_client("s5_upload_download.yaml") as client:
        token = await client.register(identity().portal_account_key_pair())
        assert token.get_secret_value()
        cid = await client.upload(b"Hello, world!")
        assert str(cid) == HELLO_CID
        assert await client.download(cid) == b"Hello, world!"
        assert await client.download(HELLO_CID) == b"Hello, world!"


async def test_registry_set_and_get_verify_signatures() -> None:
    key_pair = Ed25519KeyPair.from_seed(bytes(range(32)))
    entry = RegistryEntry.create(key_pair, CID.parse(HELLO_CID).multihash, 7)
    async with portal_client("s5_registry.yaml") as client:
        await client.register(identity().portal_account_key_pair())
        assert await client.registry_get(key_pair.registry_key) is None
        await client.registry_set(entry)
        got = await client.registry_get(key_pair.registry_key)
        assert got == entry and got.revision == 7 and got.verify()


async def test_missing_blob_is_a_typed_error() -> None:
    async with portal_client("s5_missing_blob.yaml") as client:
        with pytest.raises(BlobNotFoundError) as info:
            await client.download(CID.from_bytes(b"nobody uploaded this"))
        assert info.value.code == "BLOB_NOT_FOUND"


def test_cassettes_hold_no_secrets() -> None:
    files = sorted(CASSETTES.glob("s5_*.yaml"))
    assert len(files) == 3
    for path in files:
        text = path.read_text()
        assert "Bearer S5A" not in text and "s5-auth-token=S5A" not in text
        tokens = [w for w in text.replace('"', " ").split() if w.startswith("S5A")]
        assert set(tokens) <= {"S5AFILTERED"}, path
        assert "auth_token=" not in text
