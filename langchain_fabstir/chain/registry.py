"""Hosts and models as the chain records them (NodeRegistry, ModelRegistry), and a discovery
source built on them.

A model is named ``repo/file`` (its Hugging Face repo and GGUF file) or by its id, the
``keccak256`` of that name; :func:`model_id` computes it:

>>> model_id("bartowski/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct-Q4_K_M.gguf")[:10]
'0xe8616ec6'

Everything read from the chain is untrusted input: a host's metadata is JSON of bounded size
(ignored when malformed), its API URL must be an http(s) URL, its public key a secp256k1 key;
a record that fails is skipped with a warning, never fatal for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from langchain_fabstir._eth import keccak256 as keccak
from langchain_fabstir._eth import to_checksum_address
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.chain.client import ChainClient
from langchain_fabstir.discovery.hosts import HostInfo, HostRegistryError, normalize_host_url
from langchain_fabstir.errors import EncryptionError, ModelNotAvailableError
from langchain_fabstir.wire.encryption import address_of_public_key, parse_public_key

__all__ = [
    "NATIVE_TOKEN",
    "ChainHostSource",
    "HostRecord",
    "ModelRecord",
    "PaymentToken",
    "list_hosts",
    "model_id",
    "read_host",
    "resolve_model",
    "token_address",
]

log = logging.getLogger(__name__)

PaymentToken = Literal["ETH", "USDC"]
NATIVE_TOKEN = "0x0000000000000000000000000000000000000000"
"""The token address that means native ETH in prices and jobs."""
MAX_METADATA_BYTES = 16 * 1024
MAX_HOSTS = 256


def model_id(repo: str, file_name: str) -> str:
    """The on-chain id of a model: ``keccak256(bytes(repo + "/" + file_name))`` as 0x-hex."""
    return "0x" + keccak(f"{repo}/{file_name}".encode()).hex()


def token_address(client: ChainClient, token: PaymentToken) -> str:
    """The address prices and jobs use for ``token`` (``0x0`` for ETH)."""
    if token == "ETH":
        return NATIVE_TOKEN
    if token == "USDC":
        return client.config.usdc
    raise ValueError(f"payment_token must be 'ETH' or 'USDC', got {token!r}")


class ModelRecord(BaseModel):
    """A model in the ModelRegistry: ``name`` is ``repo/file_name``."""

    model_config = ConfigDict(frozen=True)

    id: str
    repo: str
    file_name: str
    sha256: str
    active: bool = True

    @property
    def name(self) -> str:
        return f"{self.repo}/{self.file_name}"


class HostRecord(BaseModel):
    """A host as the NodeRegistry records it.

    ``url`` is the normalised API URL (``ws_url`` derives the socket), ``public_key`` the
    compressed secp256k1 key from its metadata (what makes encryption automatic) or ``None``,
    ``price`` the host's price for the model and token asked for, **per 1,000 tokens, in the
    token's base units** (wei, or USDC's 10^-6), as the contract counts it.
    """

    model_config = ConfigDict(frozen=True)

    address: str
    url: str
    active: bool
    staked: int
    models: list[str] = Field(default_factory=list, description="Model ids (0x-hex).")
    model_names: list[str] = Field(default_factory=list, description="`repo/file` names.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    public_key: str | None = None
    min_price_native: int = 0
    min_price_stable: int = 0
    price: int | None = None

    @property
    def ws_url(self) -> str:
        return HostInfo(url=self.url).ws_url

    def host_info(self, model: ModelRecord | None = None) -> HostInfo:
        """This record as discovery's :class:`HostInfo` (models pinned to the chain's list)."""
        names = [*self.model_names, *self.models]
        prices: dict[str, float] = {}
        if model is not None and self.price is not None:
            prices = {model.id: float(self.price), model.name: float(self.price)}
        return HostInfo(
            address=self.address,
            url=self.url,
            models=names,
            models_pinned=True,
            price=float(self.price) if self.price is not None else None,
            prices=prices,
            public_key=self.public_key,
            source="chain",
        )


async def resolve_model(client: ChainClient, model: str) -> ModelRecord:
    """The registry's record of ``model`` (``repo/file``, ``repo:file`` or a 0x id);
    ``MODEL_NOT_AVAILABLE`` when the chain does not know it."""
    text = model.strip()
    if text.startswith("0x") and len(text) == 66:
        mid = text.lower()
    elif "/" in text:
        # ``repo/file`` (the id's own form) or ``repo:file`` (the SDK's and node's form).
        sep = ":" if ":" in text else "/"
        repo, _, file_name = text.rpartition(sep)
        mid = model_id(repo, file_name)
    else:
        raise ModelNotAvailableError(
            f"model {model!r}: name it as 'repo/file' (its Hugging Face repo and GGUF file) "
            "or by its 0x model id, as the ModelRegistry does"
        )
    raw = await client.call(
        client.model_registry.functions.getModel(bytes.fromhex(mid[2:])), "reading a model"
    )
    repo, file_name, sha, _tier, active, _ts = raw
    if not repo and not file_name:
        raise ModelNotAvailableError(
            f"model {model!r} is not in the ModelRegistry at {client.config.model_registry}",
            details={"model_id": mid},
        )
    return ModelRecord(
        id=mid,
        repo=str(repo),
        file_name=str(file_name),
        sha256="0x" + bytes(sha).hex(),
        active=bool(active),
    )


def _metadata(raw: str, address: str) -> dict[str, Any]:
    if not raw:
        return {}
    if len(raw.encode()) > MAX_METADATA_BYTES:
        log.warning("host %s: metadata larger than %d bytes, ignored", address, MAX_METADATA_BYTES)
        return {}
    try:
        value = loads_untrusted(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("host %s: metadata is not JSON, ignored", address)
        return {}
    return value if isinstance(value, dict) else {}


def _public_key(meta: dict[str, Any], address: str) -> str | None:
    key = meta.get("publicKey")
    if not isinstance(key, str) or not key:
        return None
    try:
        return "0x" + parse_public_key(key).hex()
    except EncryptionError:
        log.warning("host %s: publicKey in its metadata is not a secp256k1 key, ignored", address)
        return None


def _key_is_own(key: str | None, address: str) -> bool:
    """Whether ``key`` (when given) hashes to ``address``: a record whose ``publicKey`` is
    another address's key (e.g. an honest host's, copied with its ``apiUrl``) is forged."""
    return key is None or address_of_public_key(key).lower() == address.lower()


def _one_per_url(records: Sequence[HostRecord]) -> list[HostRecord]:
    """One record per API URL. Two records naming one URL cannot both be the host there:
    a record with a (verified) public key is kept over one without, else the one first in
    registry order; the client still makes the host prove the kept record's address
    before paying (:mod:`langchain_fabstir.sessions.trust`)."""
    kept: dict[str, HostRecord] = {}
    for record in records:
        other = kept.get(record.url)
        if other is None:
            kept[record.url] = record
            continue
        if other.public_key is None and record.public_key is not None:
            kept[record.url] = record
        log.warning(
            "hosts %s and %s both register %s: only %s is considered",
            other.address,
            record.address,
            record.url,
            kept[record.url].address,
        )
    return list(kept.values())


async def _host(
    client: ChainClient,
    address: str,
    model: ModelRecord | None,
    token: str,
    names: dict[str, str],
) -> HostRecord | None:
    fns = client.node_registry.functions
    info = await client.call(fns.getNodeFullInfo(address), f"reading host {address}")
    _operator, staked, active, meta_raw, api_url, models, min_native, min_stable = info
    try:
        url = normalize_host_url(str(api_url))
    except HostRegistryError as exc:
        log.warning("host %s: unusable apiUrl on chain (%s), skipped", address, exc.message)
        return None
    meta = _metadata(str(meta_raw), address)
    public_key = _public_key(meta, address)
    if not _key_is_own(public_key, address):
        log.warning(
            "host %s: the publicKey in its metadata is another address's key (a forged "
            "record), skipped",
            address,
        )
        return None
    ids = ["0x" + bytes(m).hex() for m in models][:64]
    price: int | None = None
    if model is not None:
        price = int(
            await client.call(
                fns.getModelPricing(address, bytes.fromhex(model.id[2:]), token),
                f"reading host {address}'s price",
            )
        )
    return HostRecord(
        address=str(to_checksum_address(address)),
        url=url,
        active=bool(active),
        staked=int(staked),
        models=ids,
        model_names=[names[i] for i in ids if i in names],
        metadata=meta,
        public_key=public_key,
        min_price_native=int(min_native),
        min_price_stable=int(min_stable),
        price=price,
    )


async def read_host(client: ChainClient, address: str) -> HostRecord | None:
    """The NodeRegistry record of ``address`` (``None`` when unusable: a bad ``apiUrl``, or
    a ``publicKey`` that is another address's key)."""
    return await _host(client, address, None, NATIVE_TOKEN, {})


async def list_hosts(
    client: ChainClient,
    model: ModelRecord | None = None,
    *,
    token: PaymentToken = "ETH",
    max_hosts: int = MAX_HOSTS,
    concurrency: int = 8,
) -> list[HostRecord]:
    """Active hosts (for ``model`` when given, with their price for it in ``token``), in
    registry order. At most ``max_hosts`` are read; unusable records are skipped."""
    fns = client.node_registry.functions
    if model is None:
        addresses = await client.call(fns.getAllActiveNodes(), "listing active hosts")
    else:
        addresses = await client.call(
            fns.getNodesForModel(bytes.fromhex(model.id[2:])), "listing hosts for the model"
        )
    addresses = list(dict.fromkeys(str(a) for a in addresses))
    if len(addresses) > max_hosts:
        log.warning("the registry lists %d hosts; reading the first %d", len(addresses), max_hosts)
        addresses = addresses[:max_hosts]
    names = {model.id: model.name} if model is not None else {}
    limit = asyncio.Semaphore(concurrency)
    token_addr = token_address(client, token)

    async def one(address: str) -> HostRecord | None:
        async with limit:
            return await _host(client, address, model, token_addr, names)

    found = await asyncio.gather(*(one(a) for a in addresses))
    return [h for h in found if h is not None and h.active]


class ChainHostSource:
    """A discovery source: the active hosts of a NodeRegistry, for one model and token.

    Give it to :class:`~langchain_fabstir.discovery.HostDiscovery` (``sources=[...]``); each
    refresh re-reads the chain. Hosts carry their on-chain price for ``model`` (so
    ``CHEAPEST`` ranks by it), their model list (pinned: a probe adds the host's own names, it
    does not replace the chain's) and their public key.
    """

    name = "chain"

    def __init__(
        self, client: ChainClient, model: str | None = None, *, token: PaymentToken = "ETH"
    ) -> None:
        self.client = client
        self.model = model
        self.token: PaymentToken = token
        self.records: dict[str, HostRecord] = {}
        self.model_record: ModelRecord | None = None

    async def load(self) -> Sequence[HostInfo]:
        if self.model is not None and self.model_record is None:
            self.model_record = await resolve_model(self.client, self.model)
        records = _one_per_url(await list_hosts(self.client, self.model_record, token=self.token))
        self.records = {r.url: r for r in records}
        return [r.host_info(self.model_record) for r in records]
