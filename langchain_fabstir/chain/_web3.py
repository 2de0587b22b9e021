"""web3.py and eth-account, imported in this one place with the recursion limit kept.

eth-account imports eth-keyfile, which imports py_ecc, whose ``__init__`` raises the
interpreter's recursion limit to 100,000 (``sys.setrecursionlimit``). A library must not
change process-wide state, and with that limit a deeply nested document overflows the C
stack (the process dies) instead of raising ``RecursionError``. So every module of this
package takes web3.py's and eth-account's names from here, and the limit found before the
import is put back after it (py_ecc changes it only when first imported). Nothing here uses
py_ecc itself (BLS pairings); transaction signing goes through eth-keys' coincurve backend.
"""

from __future__ import annotations

import sys

_limit = sys.getrecursionlimit()
try:
    from eth_account import Account
    from web3 import AsyncWeb3
    from web3._utils.batching import sort_batch_response_by_response_ids
    from web3.exceptions import (
        ContractLogicError,
        ProviderConnectionError,
        TimeExhausted,
        Web3Exception,
        Web3RPCError,
    )
    from web3.logs import DISCARD
    from web3.providers.rpc import AsyncHTTPProvider
finally:
    sys.setrecursionlimit(_limit)

__all__ = [
    "DISCARD",
    "Account",
    "AsyncHTTPProvider",
    "AsyncWeb3",
    "ContractLogicError",
    "ProviderConnectionError",
    "TimeExhausted",
    "Web3Exception",
    "Web3RPCError",
    "sort_batch_response_by_response_ids",
]
