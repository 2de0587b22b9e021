"""One connection to a chain: bounded reads, locally signed transactions, typed errors.

:class:`ChainClient` wraps web3.py (``AsyncWeb3`` over HTTP) for the Fabstir contracts of a
:class:`~langchain_fabstir.chain.config.ChainConfig`:

Details and examples: :class:`ChainClient`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
from pydantic import SecretStr

from langchain_fabstir._redact import SecretUrl, redact_text
from langchain_fabstir.chain._web3 import (  # web3.py, imported keeping the recursion limit
    Account,
    AsyncHTTPProvider,
    AsyncWeb3,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3Exception,
    Web3RPCError,
    sort_batch_response_by_response_ids,
)
from langchain_fabstir.chain.abi import (
    ERC20_ABI,
    JOB_MARKETPLACE_ABI,
    MODEL_REGISTRY_ABI,
    NODE_REGISTRY_ABI,
)
from langchain_fabstir.chain.config import ChainConfig
from langchain_fabstir.errors import (
    ChainError,
    ChainUnavailableError,
    FabstirError,
    InsufficientFundsError,
    InvalidRequestError,
    TransactionRevertedError,
    WrongChainError,
)

__all__ = ["ChainClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_REVERT_PREFIX = "execution reverted"


def _reason(exc: BaseException) -> str:
    """The contract's revert reason, without the RPC's wrapping."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = str(text)
    if text.startswith(_REVERT_PREFIX):
        text = text[len(_REVERT_PREFIX) :].lstrip(": ").strip()
    return text[:300] or "no reason given"


def _is_funds(exc: BaseException) -> bool:
    return "insufficient funds" in str(exc).lower()


class _TransportError(aiohttp.ClientError):
    """A failed HTTP exchange with the RPC, its text already redacted."""


class _RedactingProvider(AsyncHTTPProvider):
    """web3.py's ``AsyncHTTPProvider`` that never hands the RPC URL's secret to web3.py.

    web3.py logs ``endpoint_uri`` at DEBUG (``web3.providers.AsyncHTTPProvider``, and its
    session cache, ``web3._utils.http_session_manager``) and shows it in ``str(provider)``.
    Here ``endpoint_uri`` is the *redacted* URL; requests are posted to the real one by this
    provider over its own aiohttp session (web3.py's session cache, which logs the URL it is
    given, is not used), and a failed exchange is re-raised as a :class:`_TransportError`
    whose text is redacted (aiohttp's errors quote the URL). aiohttp itself logs no URLs.
    """

    def __init__(self, url: SecretUrl, timeout: float) -> None:
        super().__init__(
            url.redacted,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
            exception_retry_configuration=None,
        )
        self._url = url
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def _client_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # As web3.py does: a fresh connection per request (no stale keep-alive sockets).
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            self._session_loop = loop
        return self._session

    async def _post(self, data: bytes) -> bytes:
        url = self._url.get_secret_value()
        try:
            session = self._client_session()
            async with session.post(url, data=data, **self.get_request_kwargs()) as response:
                if response.status >= 400:
                    raise _TransportError(f"HTTP {response.status} {response.reason or ''}")
                return await response.read()
        except _TransportError:
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise _TransportError(redact_text(text, url)) from None

    async def make_request(self, method: Any, params: Any) -> Any:
        self.logger.debug("RPC request %s to %s", method, self.endpoint_uri)
        return self.decode_rpc_response(await self._post(self.encode_rpc_request(method, params)))

    async def make_batch_request(self, batch_requests: Any) -> Any:
        raw = await self._post(self.encode_batch_rpc_request(batch_requests))
        response = self.decode_rpc_response(raw)
        if not isinstance(response, list):
            return response
        return sort_batch_response_by_response_ids(response)

    async def disconnect(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


class ChainClient:
    """The Fabstir contracts on one chain, read and (with a key) written.

    - every RPC request has a bound (``request_timeout``) and every wait for a receipt too
      (``receipt_timeout``); an endpoint that is down or slow is ``CHAIN_UNAVAILABLE``;
    - before anything is sent the RPC's chain id is checked (``WRONG_CHAIN`` otherwise);
    - transactions are EIP-1559, signed locally with the user's key (a ``SecretStr``; it never
      leaves the process, and is never in a ``repr`` or a log), nonce from the pending count under a
      lock (two payments from one client never share a nonce), gas estimated first so a revert is
      found *before* anything is sent (``TRANSACTION_REVERTED`` with the contract's reason), the
      balance checked against value + gas (``INSUFFICIENT_FUNDS``), the receipt's status checked;
    - the RPC URL may carry credentials (``user:pass@``, a provider's key in the path or query):
      it is shown redacted everywhere (``repr``, error messages and ``details``, logs), and
      web3.py's own loggers only ever see the redacted form (see :class:`_RedactingProvider`).

    >>> from langchain_fabstir.chain.config import BASE_SEPOLIA
    >>> client = ChainClient(BASE_SEPOLIA, private_key="0x" + "11" * 32)
    >>> client.address
    '0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A'
    >>> "11" * 32 in repr(client)
    False

    Args:
        config: the chain and contract addresses.
        private_key: the user's key (hex, or a ``SecretStr``); without it only reads work.
        request_timeout: bound on each RPC request, in seconds.
        receipt_timeout: bound on waiting for a transaction to be mined.
        poll_interval: how often a receipt (and confirmations) are polled.
        gas_margin: factor on the estimated gas (estimates can be a little short).

    Contracts are web3.py ``AsyncContract`` objects: ``node_registry``, ``model_registry``,
    ``job_marketplace``, ``usdc``. Use :meth:`call` and :meth:`transact` around them, so
    errors are typed and waits bounded.
    """

    def __init__(
        self,
        config: ChainConfig,
        private_key: str | SecretStr | None = None,
        *,
        request_timeout: float = 20.0,
        receipt_timeout: float = 180.0,
        poll_interval: float = 1.0,
        gas_margin: float = 1.25,
    ) -> None:
        if request_timeout <= 0 or receipt_timeout <= 0 or poll_interval <= 0:
            raise ValueError("timeouts and poll_interval must be > 0")
        self.config = config
        self.request_timeout = request_timeout
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.gas_margin = gas_margin
        self._key: SecretStr | None = None
        self.address: str | None = None
        if private_key is not None:
            secret = private_key if isinstance(private_key, SecretStr) else SecretStr(private_key)
            if not _KEY_RE.match(secret.get_secret_value().strip()):
                raise InvalidRequestError(
                    "private_key must be 32 bytes of hex (64 hex digits, optionally 0x-prefixed)"
                )
            self._key = SecretStr(secret.get_secret_value().strip())
            self.address = str(Account.from_key(self._key.get_secret_value()).address)
        self.w3: Any = AsyncWeb3(_RedactingProvider(config.rpc_url, request_timeout))
        eth: Any = self.w3.eth
        self.node_registry: Any = eth.contract(address=config.node_registry, abi=NODE_REGISTRY_ABI)
        self.model_registry: Any = eth.contract(
            address=config.model_registry, abi=MODEL_REGISTRY_ABI
        )
        self.job_marketplace: Any = eth.contract(
            address=config.job_marketplace, abi=JOB_MARKETPLACE_ABI
        )
        self.usdc: Any = eth.contract(address=config.usdc, abi=ERC20_ABI)
        self._checked = False
        self._tx_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"ChainClient(chain_id={self.config.chain_id}, rpc_url={self.rpc_url!r}, "
            f"address={self.address!r})"
        )

    @property
    def rpc_url(self) -> str:
        """The RPC URL as it may be shown: credentials redacted (never the secret)."""
        return self.config.rpc_url.redacted

    def _redact(self, text: str) -> str:
        return redact_text(text, self.config.rpc_url.get_secret_value())

    def token_contract(self, address: str) -> Any:
        """An ERC-20 contract at ``address``."""
        return self.w3.eth.contract(address=address, abi=ERC20_ABI)

    # --- bounded requests -----------------------------------------------------------

    def _details(self, **extra: Any) -> dict[str, Any]:
        return {"rpc_url": self.rpc_url, "chain_id": self.config.chain_id, **extra}

    async def _rpc(self, awaitable: Awaitable[T], what: str) -> T:
        """Await one RPC request with its bound, turning failures into typed errors."""
        try:
            return await asyncio.wait_for(awaitable, self.request_timeout)
        except FabstirError:
            raise
        except ContractLogicError as exc:
            reason = self._redact(_reason(exc))
            raise TransactionRevertedError(
                f"{what}: reverted by the contract: {reason}",
                details=self._details(reason=reason),
            ) from None
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ProviderConnectionError) as exc:
            if isinstance(exc, _TransportError):
                detail = str(exc)
            else:
                detail = self._redact(f"{type(exc).__name__}: {exc or 'timed out'}")
            raise ChainUnavailableError(
                f"{what}: the chain RPC {self.rpc_url} did not answer "
                f"({detail}); check the URL or try later",
                details=self._details(),
            ) from None
        except Web3RPCError as exc:
            if _is_funds(exc):
                raise InsufficientFundsError(
                    f"{what}: {self.address} cannot pay: {self._redact(_reason(exc))}",
                    details=self._details(),
                ) from None
            raise ChainError(
                f"{what}: the RPC refused: {self._redact(_reason(exc))}",
                details=self._details(),
            ) from None
        except (Web3Exception, ValueError, TypeError) as exc:
            raise ChainError(
                f"{what}: unexpected answer from the chain: "
                + self._redact(f"{type(exc).__name__}: {exc}"),
                details=self._details(),
            ) from None

    async def ensure_chain(self) -> None:
        """Check once that the RPC answers and serves ``config.chain_id``."""
        if self._checked:
            return
        chain_id = await self._rpc(self.w3.eth.chain_id, "reading the chain id")
        if int(chain_id) != self.config.chain_id:
            raise WrongChainError(
                f"the RPC {self.rpc_url} serves chain {chain_id}, "
                f"not {self.config.chain_id} as configured; nothing was sent",
                details=self._details(rpc_chain_id=int(chain_id)),
            )
        self._checked = True

    async def call(self, fn: Any, what: str) -> Any:
        """``eth_call`` of a contract function (``contract.functions.f(args)``)."""
        await self.ensure_chain()
        return await self._rpc(fn.call(), what)

    async def block_time(self) -> int:
        """The timestamp of the latest block (the chain's clock, not ours)."""
        await self.ensure_chain()
        block = await self._rpc(self.w3.eth.get_block("latest"), "reading the latest block")
        return int(block["timestamp"])

    async def native_balance(self, address: str | None = None) -> int:
        """Wei held by ``address`` (default: the user's)."""
        who = address or self._need_key("reading the balance")
        await self.ensure_chain()
        return int(await self._rpc(self.w3.eth.get_balance(who), "reading the ETH balance"))

    def _need_key(self, what: str) -> str:
        if self.address is None or self._key is None:
            raise InvalidRequestError(
                f"{what} needs the user's key: pass private_key= (or set FABSTIR_PRIVATE_KEY)"
            )
        return self.address

    # --- transactions ---------------------------------------------------------------

    async def transact(self, fn: Any, what: str, *, value: int = 0) -> Any:
        """Sign and send ``fn`` (a contract function call) with ``value`` wei; return the
        receipt once mined (and confirmed). Nothing is sent when the dry run reverts, the
        chain is wrong, or the balance cannot cover ``value`` plus the gas."""
        sender = self._need_key(what)
        await self.ensure_chain()
        async with self._tx_lock:
            params: dict[str, Any] = {"from": sender, "value": value}
            gas = await self._rpc(fn.estimate_gas(params), what)
            gas_limit = int(gas * self.gas_margin) + 1
            block = await self._rpc(self.w3.eth.get_block("latest"), what)
            base_fee = int(block.get("baseFeePerGas") or 0)
            tip = int(await self._rpc(self.w3.eth.max_priority_fee, what))
            max_fee = 2 * base_fee + tip
            balance = await self.native_balance(sender)
            needed = value + gas_limit * max_fee
            if balance < needed:
                raise InsufficientFundsError(
                    f"{what}: {sender} holds {balance} wei, needs up to {needed} wei "
                    f"({value} value + gas); nothing was sent",
                    details=self._details(balance=balance, needed=needed),
                )
            nonce = await self._rpc(self.w3.eth.get_transaction_count(sender, "pending"), what)
            tx = await self._rpc(
                fn.build_transaction(
                    {
                        **params,
                        "nonce": nonce,
                        "gas": gas_limit,
                        "maxFeePerGas": max_fee,
                        "maxPriorityFeePerGas": tip,
                        "chainId": self.config.chain_id,
                        "type": 2,
                    }
                ),
                what,
            )
            assert self._key is not None
            signed = Account.sign_transaction(tx, self._key.get_secret_value())
            tx_hash = await self._rpc(
                self.w3.eth.send_raw_transaction(signed.raw_transaction), what
            )
        receipt = await self._receipt(tx_hash, what)
        if int(receipt["status"]) != 1:
            reason = self._redact(await self._replay_reason(tx, int(receipt["blockNumber"])))
            raise TransactionRevertedError(
                f"{what}: transaction {tx_hash.hex()} reverted: {reason}",
                details=self._details(tx_hash=tx_hash.hex(), reason=reason),
            )
        return receipt

    async def _receipt(self, tx_hash: Any, what: str) -> Any:
        try:
            receipt = await asyncio.wait_for(
                self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_interval
                ),
                self.receipt_timeout + self.request_timeout,
            )
        except (TimeExhausted, asyncio.TimeoutError):
            raise ChainError(
                f"{what}: transaction {tx_hash.hex()} not mined within {self.receipt_timeout} s; "
                "it may still be mined: look it up before paying again",
                details=self._details(tx_hash=tx_hash.hex()),
            ) from None
        except (aiohttp.ClientError, OSError, ProviderConnectionError):
            raise ChainUnavailableError(
                f"{what}: lost the chain RPC while waiting for {tx_hash.hex()}; "
                "it may still be mined: look it up before paying again",
                details=self._details(tx_hash=tx_hash.hex()),
            ) from None
        if self.config.confirmations:
            target = int(receipt["blockNumber"]) + self.config.confirmations
            deadline = asyncio.get_running_loop().time() + self.receipt_timeout
            while int(await self._rpc(self.w3.eth.block_number, what)) < target:
                if asyncio.get_running_loop().time() > deadline:
                    raise ChainError(
                        f"{what}: {self.config.confirmations} confirmations not reached "
                        f"within {self.receipt_timeout} s",
                        details=self._details(tx_hash=tx_hash.hex()),
                    )
                await asyncio.sleep(self.poll_interval)
        return receipt

    async def _replay_reason(self, tx: dict[str, Any], block: int) -> str:
        call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
        try:
            await asyncio.wait_for(self.w3.eth.call(call, block), self.request_timeout)
        except ContractLogicError as exc:
            return _reason(exc)
        except Exception:  # the reason is a courtesy: the revert itself is certain
            return "no reason available"
        return "no reason given"

    async def aclose(self) -> None:
        """Close the HTTP session web3.py keeps (idempotent)."""
        provider = self.w3.provider
        disconnect = getattr(provider, "disconnect", None)
        if disconnect is not None:
            try:
                await disconnect()
            except Exception:  # closing is best effort
                log.debug("closing the chain RPC session failed", exc_info=True)

    async def __aenter__(self) -> ChainClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
