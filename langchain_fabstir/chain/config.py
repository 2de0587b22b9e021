"""Where the Fabstir contracts live: :class:`ChainConfig` and the :data:`BASE_SEPOLIA` preset.

Addresses change with redeployments, so they come from configuration: the preset, a JSON file
(``ChainConfig.from_file``) or the environment (``ChainConfig.from_env``: ``FABSTIR_CHAIN_CONFIG``
names a file, ``FABSTIR_RPC_URL`` overrides the RPC endpoint).

>>> BASE_SEPOLIA.chain_id, BASE_SEPOLIA.node_registry
(84532, '0x8BC0Af4aAa2dfb99699B1A24bA85E507de10Fd22')
>>> cfg = BASE_SEPOLIA.model_copy(update={"rpc_url": "http://127.0.0.1:8545"})
>>> cfg.rpc_url == "http://127.0.0.1:8545"
True
>>> BASE_SEPOLIA.model_copy(  # doctest: +ELLIPSIS
...     update={"rpc_url": "https://u:pw@rpc.example/v2/0123456789abcdef0123"}
... )
ChainConfig(rpc_url=SecretUrl('https://***@rpc.example/v2/***'), chain_id=84532, ...)
>>> ChainConfig.from_env({"FABSTIR_RPC_URL": "https://rpc.example"}).job_marketplace
'0xD067719Ee4c514B5735d1aC0FfB46FECf2A9adA4'
>>> try:
...     ChainConfig(**{**BASE_SEPOLIA.model_dump(), "usdc": "0x12"})
... except Exception as exc:
...     print(type(exc).__name__)
ValidationError
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import Self

from langchain_fabstir._eth import is_address, to_checksum_address
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir._redact import SecretUrl
from langchain_fabstir.errors import InvalidRequestError

__all__ = [
    "BASE_SEPOLIA",
    "CHAIN_CONFIG_ENV",
    "RPC_URL_ENV",
    "ChainConfig",
    "SessionTerms",
]

CHAIN_CONFIG_ENV = "FABSTIR_CHAIN_CONFIG"
RPC_URL_ENV = "FABSTIR_RPC_URL"
_MAX_CONFIG_BYTES = 64 * 1024


def _checksum(value: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{value!r} is not a 20-byte 0x address")
    return str(to_checksum_address(value))


Address = Annotated[str, AfterValidator(_checksum)]


def _not_empty(value: SecretUrl) -> SecretUrl:
    if not value.get_secret_value().strip():
        raise ValueError("the RPC URL is empty")
    return value


RpcUrl = Annotated[SecretUrl, AfterValidator(_not_empty)]
_RPC_URL: TypeAdapter[SecretUrl] = TypeAdapter(RpcUrl)


class SessionTerms(BaseModel):
    """The terms a paid session job is created with (the SDK's defaults).

    - ``max_duration_s``: how long the job may run (3600 s).
    - ``proof_interval``: tokens between the host's proofs (1000; the contract wants >= 100).
    - ``proof_timeout_window_s``: how long after a missed proof the job may be timed out
      (300 s; the contract allows 60..3600).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_duration_s: int = Field(default=3600, gt=0)
    proof_interval: int = Field(default=1000, ge=100)
    proof_timeout_window_s: int = Field(default=300, ge=60, le=3600)


class ChainConfig(BaseModel):
    """One chain and the Fabstir contracts on it.

    Fields: ``rpc_url`` (JSON-RPC over http(s); a
    :class:`~langchain_fabstir._redact.SecretUrl`: it may carry credentials, so ``repr``,
    ``str`` and JSON show it redacted, ``rpc_url.get_secret_value()`` is the URL; it still
    compares equal to the plain string, and ``rpc_url=`` takes a ``str``), ``chain_id``
    (checked against the RPC before anything is sent), the contract addresses
    ``job_marketplace``, ``node_registry``, ``model_registry``, ``usdc`` (checksummed on
    load), ``terms`` (:class:`SessionTerms`) and ``confirmations`` (blocks to wait after a
    transaction is mined; 0 on a dev chain).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpc_url: RpcUrl = Field(description="JSON-RPC endpoint (http:// or https://).")
    chain_id: int = Field(gt=0, description="The chain id the RPC must report.")
    job_marketplace: Address = Field(description="JobMarketplace contract.")
    node_registry: Address = Field(description="NodeRegistry contract.")
    model_registry: Address = Field(description="ModelRegistry contract.")
    usdc: Address = Field(description="The USDC (ERC-20, 6 decimals) contract.")
    terms: SessionTerms = Field(default_factory=SessionTerms, description="Session job terms.")
    confirmations: int = Field(default=0, ge=0, le=64, description="Blocks to wait after mining.")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied; an ``rpc_url`` given as a ``str`` is validated
        and kept as a secret like one given to the constructor."""
        if update and "rpc_url" in update:
            update = {**update, "rpc_url": _RPC_URL.validate_python(update["rpc_url"])}
        return super().model_copy(update=update, deep=deep)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "chain config") -> ChainConfig:
        """Validate a mapping with the fields above; a bad one is ``INVALID_REQUEST``."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                for e in exc.errors()[:4]
            )
            raise InvalidRequestError(f"{source}: {problems}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ChainConfig:
        """Read a JSON file with the keys ``rpc_url, chain_id, job_marketplace, node_registry,
        model_registry, usdc`` (and optionally ``terms``, ``confirmations``)."""
        where = Path(path)
        try:
            raw = where.read_bytes()[: _MAX_CONFIG_BYTES + 1]
        except OSError as exc:
            raise InvalidRequestError(
                f"{where}: cannot read chain config: {exc.strerror}"
            ) from None
        if len(raw) > _MAX_CONFIG_BYTES:
            raise InvalidRequestError(
                f"{where}: chain config larger than {_MAX_CONFIG_BYTES} bytes"
            )
        try:
            data = loads_untrusted(raw)
        except ValueError as exc:
            raise InvalidRequestError(f"{where}: chain config is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidRequestError(f"{where}: chain config must be a JSON object")
        return cls.from_mapping(data, source=str(where))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, default: ChainConfig | None = None
    ) -> ChainConfig:
        """The configuration the environment names: the file in ``FABSTIR_CHAIN_CONFIG`` (else
        ``default``, else :data:`BASE_SEPOLIA`), with ``FABSTIR_RPC_URL`` as its RPC when set."""
        env = os.environ if environ is None else environ
        path = env.get(CHAIN_CONFIG_ENV)
        config = cls.from_file(path) if path else (default or BASE_SEPOLIA)
        rpc = env.get(RPC_URL_ENV)
        if rpc:
            config = config.model_copy(update={"rpc_url": rpc})
        return config


# Built without validation (the addresses are written in checksum form): validating them
# would load the keccak backend, a tenth of a second, at import. tests check it validates.
BASE_SEPOLIA = ChainConfig.model_construct(
    rpc_url=SecretUrl("https://sepolia.base.org"),
    chain_id=84532,
    job_marketplace="0xD067719Ee4c514B5735d1aC0FfB46FECf2A9adA4",
    node_registry="0x8BC0Af4aAa2dfb99699B1A24bA85E507de10Fd22",
    model_registry="0x1a9d91521c85bD252Ac848806Ff5096bBb9ACDb2",
    usdc="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
)
"""Base Sepolia (chain id 84532, a test network) with the newest published contracts."""
