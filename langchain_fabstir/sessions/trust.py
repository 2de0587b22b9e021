"""Which host key a session trusts, and the proof that the host that serves is the one paid.

A key is trusted when it comes from a trusted source (the caller, the host's on-chain record)
or when it hashes to a trusted address (the record's, i.e. the paid job's host). A key a host
announces over the socket, unauthenticated, proves nothing alone. See :class:`HostTrust`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx

from langchain_fabstir import _http
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.errors import (
    EncryptionError,
    EncryptionUnavailableError,
    FabstirError,
    HostIdentityError,
)
from langchain_fabstir.wire.encryption import (
    address_of_public_key,
    parse_public_key,
    recover_challenge_key,
)

if TYPE_CHECKING:
    from langchain_fabstir.chain.client import ChainClient
    from langchain_fabstir.chain.registry import HostRecord
    from langchain_fabstir.discovery import HostInfo
    from langchain_fabstir.wire.frames import Connected

__all__ = [
    "CHALLENGE_FEATURE",
    "HostTrust",
    "challenge_key",
    "job_trust",
    "key_address",
    "trust_discovered",
    "trusted_paid_host",
]

log = logging.getLogger(__name__)

CHALLENGE_FEATURE = "encryption"
"""The feature (``/v1/version``, ``connected``) with which this project's reference host
announces ``POST /v1/auth/challenge`` (PROTOCOL.md 4.4); deployed nodes do not serve it."""
MAX_CHALLENGE_REPLY = 4096
"""The most bytes of a challenge answer read (it is ~200 bytes of JSON)."""

Mode = Literal["auto", "required", "off"]


def key_address(key: str | None) -> str | None:
    """The lowercase address ``key`` hashes to (keccak of the uncompressed key, last 20
    bytes), or ``None`` when ``key`` is not a secp256k1 public key."""
    if not key:
        return None
    try:
        return address_of_public_key(key).lower()
    except (EncryptionError, ValueError, TypeError):
        return None


def _base_url(host_url: str) -> str:
    base = host_url.rstrip("/").removesuffix("/v1/ws")
    return base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)


async def challenge_key(host_url: str, *, timeout: float) -> str | None:
    """The key the host at ``host_url`` proves it holds: a fresh 32-byte challenge to
    ``POST /v1/auth/challenge``, the key recovered from its signature (compressed 0x-hex).
    ``None`` when the host does not answer with a valid signature within ``timeout`` (the
    route is an extension: deployed nodes answer 404). The answer is read with size and
    depth bounds."""
    challenge = secrets.token_bytes(32)
    url = f"{_base_url(host_url)}/v1/auth/challenge"

    async def ask() -> bytes | None:
        async with (
            _http.client(timeout) as client,
            client.stream("POST", url, json={"challenge": challenge.hex()}) as reply,
        ):
            if reply.status_code != 200:
                return None
            return await _http.read_capped(reply, MAX_CHALLENGE_REPLY)

    try:
        raw = await asyncio.wait_for(ask(), timeout)
        if raw is None:
            return None
        return recover_challenge_key(challenge, loads_untrusted(raw))
    except (
        httpx.HTTPError,
        asyncio.TimeoutError,
        ValueError,
        TypeError,
        UnicodeDecodeError,
        EncryptionError,
    ):
        return None


@dataclass
class HostTrust:
    """What one session trusts about its host.

    - ``key``: the host's public key from a trusted source (the caller's
      ``host_public_key``, the host's on-chain record, or a ``/v1/auth/challenge`` answer
      that recovers to ``address``). The client seals its init to this key only; with it,
      encryption is required (a forged ``ENCRYPTION_NOT_SUPPORTED`` is an error, never a
      plaintext fallback), unless the caller chose ``encryption="off"``.
    - ``address``: the address the serving host must hold the key of (the paid job's host,
      from its on-chain record); a greeting key is accepted only when it hashes to it.
    """

    key: str | None = None
    address: str | None = None

    @property
    def trusted(self) -> bool:
        """Whether a key came from a trusted source (encryption is then required)."""
        return self.key is not None

    def check_greeting(self, greeting: Connected, host_url: str) -> None:
        """Refuse a greeting that names another host than the trusted one: its
        ``host_address``, or the address its ``host_public_key`` hashes to, differs from
        the trusted address (``HOST_IDENTITY_MISMATCH``: a relay, or another host)."""
        by_key, by_record = key_address(self.key), self.address.lower() if self.address else None
        if by_key is not None and by_record is not None and by_key != by_record:
            raise HostIdentityError(
                f"the host public key given for {host_url} is the key of {by_key}, but the "
                f"session's job belongs to {by_record}: nothing was sent",
                host_url=host_url,
                details={"expected": by_record, "key_of": by_key},
            )
        expected = by_key or by_record
        if expected is None:
            return
        named = (greeting.host_address or "").lower() or None
        announced = key_address(greeting.host_public_key)
        for what, value in (("the address", named), ("a public key of", announced)):
            if value is not None and value != expected:
                raise HostIdentityError(
                    f"the host at {host_url} announces {what} {value}, not of "
                    f"{expected}, the host this session trusts (its on-chain record or the "
                    "key you gave): a relay or another host answers there; nothing was sent",
                    host_url=host_url,
                    details={"expected": expected, "announced": value},
                )

    def expected_address(self) -> str | None:
        """The address the serving host must prove (the trusted key's, else ``address``)."""
        return key_address(self.key) or (self.address.lower() if self.address else None)

    def greeting_key(self, greeting: Connected) -> str | None:
        """The greeting's key when it hashes to the trusted address (else ``None``)."""
        expected = self.expected_address()
        announced = greeting.host_public_key
        if expected is None or not announced:
            return None
        return announced if key_address(announced) == expected else None


async def trusted_record_key(
    record: HostRecord, features: Iterable[str], *, mode: Mode, timeout: float
) -> str | None:
    """The key of ``record``'s host that the client may trust, checked before paying.

    A ``publicKey`` that does not hash to the record's address is refused. A host that
    announces the challenge extension must prove the key of the record's address (else the
    record is refused: the URL serves another host). ``mode="required"`` and no key:
    ``ENCRYPTION_UNAVAILABLE`` (nothing paid)."""
    address = record.address.lower()
    key = record.public_key
    if key is not None and key_address(key) != address:
        raise HostIdentityError(
            f"host {record.address}'s on-chain publicKey is the key of another address: "
            "a forged record; nothing was paid",
            host_url=record.url,
            details={"address": record.address},
        )
    if CHALLENGE_FEATURE in set(features):
        proven = await challenge_key(record.url, timeout=timeout)
        if proven is not None:
            if key_address(proven) != address:
                raise HostIdentityError(
                    f"the host at {record.url} holds the key of {key_address(proven)}, not of "
                    f"{record.address} whose record names that URL: a forged record; "
                    "nothing was paid",
                    host_url=record.url,
                    details={"address": record.address, "proven": key_address(proven)},
                )
            key = key or proven
    if key is None and mode == "required":
        raise EncryptionUnavailableError(
            f"host {record.address} ({record.url}) has no publicKey on chain and proves no key "
            "(/v1/auth/challenge): encryption is required, so nothing was paid",
            host_url=record.url,
            details={"address": record.address},
        )
    return key


async def trusted_paid_host(
    records: Sequence[HostRecord],
    features: Mapping[str, Sequence[str]],
    *,
    mode: Mode,
    timeout: float = 10.0,
) -> tuple[HostRecord, str | None]:
    """The first of ``records`` (best first) whose host is who its record says, and its
    trusted key. Raises the last refusal when every record is refused (nothing is paid).
    A refused record is not reported to discovery's circuit breaker: it may name an honest
    host's URL, which must not suffer for it."""
    refused: list[FabstirError] = []
    for record in records:
        try:
            key = await trusted_record_key(
                record, features.get(record.url, ()), mode=mode, timeout=timeout
            )
        except (HostIdentityError, EncryptionUnavailableError) as exc:
            log.warning("host record refused before paying: %s", exc.message)
            refused.append(exc)
            continue
        return record, key
    if not refused:
        raise ValueError("no host records to choose from")
    raise refused[-1]


async def job_trust(client: ChainClient, job_id: int) -> HostTrust:
    """What a session of an existing job trusts: the job's on-chain host address, and the
    key of that host's NodeRegistry record when it has one (and it hashes to the address)."""
    from langchain_fabstir.chain.marketplace import read_job
    from langchain_fabstir.chain.registry import read_host

    job = await read_job(client, job_id)
    record = await read_host(client, job.host)
    return HostTrust(key=record.public_key if record is not None else None, address=job.host)


def trust_discovered(
    hosts: Iterable[HostInfo], keys: dict[str, str], addresses: dict[str, str]
) -> None:
    """Trust what a discovery source declared about the hosts a session may use: a host's
    public key (a chain record's, or one the caller's host list gives) goes into ``keys``
    and, for a chain record, its address into ``addresses`` (both by URL; what is there
    already wins). Keys that are not secp256k1 keys, or that hash to another address than
    the record's, are ignored (with a warning)."""
    for host in hosts:
        address = host.address if host.source == "chain" else None
        if host.public_key:
            own = key_address(host.public_key)
            if own is None or (address is not None and own != address.lower()):
                log.warning("host %s: its declared public key is unusable, ignored", host.url)
            else:
                key = "0x" + parse_public_key(host.public_key).hex()
                keys.setdefault(host.url, key)
        if address:
            addresses.setdefault(host.url, address)
