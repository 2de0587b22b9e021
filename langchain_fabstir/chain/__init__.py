"""The Fabstir network on chain: hosts found in the NodeRegistry, sessions paid on the
JobMarketplace, settlement watched (optional extra ``chain``: ``pip install
'langchain-fabstir[chain]'``, which brings web3.py).

- :class:`ChainConfig` / :data:`BASE_SEPOLIA`: where the contracts are (file, environment).
- :class:`ChainClient`: bounded RPC, locally signed EIP-1559 transactions, typed errors.
- :func:`list_hosts`, :func:`resolve_model`, :class:`ChainHostSource`: discovery.
- :func:`create_session_job`, :func:`settlement`, :class:`SettlementWatcher`,
  :func:`withdraw_refund`: payment and settlement.

Most users never touch these directly: ``SessionManager(chain=..., private_key=...)`` and
``ChatFabstir(chain=..., deposit=...)`` use them. Only the configuration is imported eagerly;
everything else loads web3.py on first use.

>>> from langchain_fabstir.chain import BASE_SEPOLIA
>>> BASE_SEPOLIA.chain_id
84532
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from langchain_fabstir.chain.config import (
    BASE_SEPOLIA,
    CHAIN_CONFIG_ENV,
    RPC_URL_ENV,
    ChainConfig,
    SessionTerms,
)

if TYPE_CHECKING:
    from langchain_fabstir.chain.client import ChainClient
    from langchain_fabstir.chain.funds import DelegateStatus, DepositBalance
    from langchain_fabstir.chain.marketplace import (
        CreatedJob,
        JobStatus,
        SessionJob,
        Settlement,
        SettlementWatcher,
        complete_job,
        create_session_job,
        deposit_balance,
        read_job,
        settlement,
        timeout_job,
        withdraw_refund,
    )
    from langchain_fabstir.chain.registry import (
        ChainHostSource,
        HostRecord,
        ModelRecord,
        PaymentToken,
        list_hosts,
        model_id,
        resolve_model,
    )

__all__ = [
    "BASE_SEPOLIA",
    "CHAIN_CONFIG_ENV",
    "RPC_URL_ENV",
    "ChainClient",
    "ChainConfig",
    "ChainHostSource",
    "CreatedJob",
    "DelegateStatus",
    "DepositBalance",
    "HostRecord",
    "JobStatus",
    "ModelRecord",
    "PaymentToken",
    "SessionJob",
    "SessionTerms",
    "Settlement",
    "SettlementWatcher",
    "complete_job",
    "create_session_job",
    "deposit_balance",
    "list_hosts",
    "model_id",
    "read_job",
    "require_web3",
    "resolve_model",
    "settlement",
    "timeout_job",
    "withdraw_refund",
]

_LAZY = {
    "ChainClient": "client",
    "ChainHostSource": "registry",
    "HostRecord": "registry",
    "ModelRecord": "registry",
    "PaymentToken": "registry",
    "list_hosts": "registry",
    "model_id": "registry",
    "resolve_model": "registry",
    "CreatedJob": "marketplace",
    "DelegateStatus": "funds",
    "DepositBalance": "funds",
    "JobStatus": "marketplace",
    "SessionJob": "marketplace",
    "Settlement": "marketplace",
    "SettlementWatcher": "marketplace",
    "complete_job": "marketplace",
    "create_session_job": "marketplace",
    "deposit_balance": "marketplace",
    "read_job": "marketplace",
    "settlement": "marketplace",
    "timeout_job": "marketplace",
    "withdraw_refund": "marketplace",
}


def require_web3() -> None:
    """Raise ``INVALID_REQUEST`` with the install command when web3.py is missing.

    web3.py is imported through :mod:`langchain_fabstir.chain._web3`, which keeps the
    interpreter's recursion limit as it was (py_ecc, under eth-account, raises it).
    """
    try:
        importlib.import_module("langchain_fabstir.chain._web3")
    except ImportError:
        from langchain_fabstir.errors import InvalidRequestError

        raise InvalidRequestError(
            "on-chain features need web3.py: pip install 'langchain-fabstir[chain]'"
        ) from None


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_web3()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
