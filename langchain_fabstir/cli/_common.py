"""What every ``fabstir`` command shares: the one-line error, secrets read from files."""

from __future__ import annotations

import argparse
import os
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

if TYPE_CHECKING:
    from langchain_fabstir.chain import ChainConfig

__all__ = [
    "NETWORKS",
    "CliError",
    "add_chain_options",
    "chain_config",
    "decimal_amount",
    "money",
    "read_host_key",
    "read_secret_file",
    "read_seed",
    "s5_options",
    "user_key",
    "write_private",
]


class CliError(Exception):
    """An expected failure: ``main`` prints ``fabstir <command>: <message>`` (one line, on
    stderr) and exits with ``exit_code``; ``--debug`` adds the traceback."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def read_secret_file(path: str | os.PathLike[str], what: str) -> str:
    """The stripped text of a secret file (``CliError`` naming ``what`` if unreadable)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(64 * 1024).strip()
    except OSError as exc:
        raise CliError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{what} {os.fspath(path)} is not text") from None
    if not text:
        raise CliError(f"{what} {os.fspath(path)} is empty")
    return text


def read_host_key(path: str | None, *, env: str = "FABSTIR_HOST_KEY") -> SecretStr | None:
    """A secp256k1 key (hex) from ``path`` or the variable ``env``, checked, as a secret
    (never printed: a bad key is reported without its value)."""
    from langchain_fabstir.wire.encryption import parse_private_key

    if path is not None:
        text, where = read_secret_file(path, "key file"), f"key file {path}"
    else:
        text, where = os.environ.get(env, "").strip(), env
    if not text:
        return None
    try:
        parse_private_key(text)
    except Exception:
        raise CliError(f"the key in {where} is not 32 bytes of hex") from None
    return SecretStr(text)


def read_seed(path: str | None) -> SecretStr | None:
    """An S5 seed phrase from ``path`` or ``FABSTIR_S5_SEED`` (its deprecated alias too:
    :func:`~langchain_fabstir.s5.seed_phrase_from_env`), validated (15 words with their
    checksum), as a secret."""
    from langchain_fabstir.s5 import SEED_ENV, S5Identity, seed_phrase_from_env

    if path is not None:
        text, where = read_secret_file(path, "seed file"), f"seed file {path}"
    else:
        found = seed_phrase_from_env()
        text, where = (found.get_secret_value() if found else ""), SEED_ENV
    if not text:
        return None
    try:
        S5Identity.from_phrase(text)
    except Exception:
        raise CliError(
            f"the S5 seed phrase in {where} is not valid (15 words of the S5 word list; "
            "`fabstir keys new` makes one)"
        ) from None
    return SecretStr(text)


def s5_options(portal_url: str | None, seed: SecretStr | None, *, command: str) -> bool:
    """Whether S5 is configured: both a portal and a seed, or neither (else ``CliError``)."""
    if portal_url and seed is None:
        raise CliError(
            f"--portal-url needs an S5 seed phrase: --seed-file PATH or FABSTIR_S5_SEED "
            f"(`fabstir keys new` makes one) for {command}"
        )
    return bool(portal_url)


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a new file (``~`` expanded) readable by its owner only (0600);
    never replaces one."""
    path = os.path.expanduser(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


# --- the chain (paid sessions, on-chain hosts, jobs) ------------------------------------

NETWORKS = ("base-sepolia",)
"""``--network`` presets (:data:`~langchain_fabstir.chain.BASE_SEPOLIA`)."""


def add_chain_options(parser: Any) -> None:
    """``--chain-config``, ``--network`` and ``--rpc-url`` (each with its variable)."""
    parser.add_argument(
        "--chain-config",
        metavar="PATH",
        default=os.environ.get("FABSTIR_CHAIN_CONFIG"),
        help="a chain config JSON (rpc_url, chain_id, job_marketplace, node_registry, "
        "model_registry, usdc); default FABSTIR_CHAIN_CONFIG",
    )
    parser.add_argument(
        "--network",
        choices=NETWORKS,
        help="a known network instead of a config file (base-sepolia: the published contracts)",
    )
    parser.add_argument(
        "--rpc-url",
        metavar="URL",
        help="the chain's JSON-RPC endpoint, replacing the config's (default FABSTIR_RPC_URL)",
    )


def chain_config(args: argparse.Namespace, *, required: bool = False) -> ChainConfig | None:
    """The chain the options name: ``--chain-config`` (or ``FABSTIR_CHAIN_CONFIG``), else
    ``--network``; ``--rpc-url`` (or ``FABSTIR_RPC_URL``) replaces its RPC. ``None`` when no
    chain is named (``CliError`` instead when ``required``)."""
    from langchain_fabstir.chain import BASE_SEPOLIA, ChainConfig

    config: ChainConfig | None = None
    if args.chain_config:
        config = ChainConfig.from_file(os.path.expanduser(args.chain_config))
    elif args.network == "base-sepolia":
        config = BASE_SEPOLIA
    if config is None:
        if args.rpc_url or required:
            raise CliError(
                "no chain: give --chain-config PATH (or FABSTIR_CHAIN_CONFIG) or "
                "--network base-sepolia" + (" with --rpc-url" if args.rpc_url else ""),
                exit_code=2,
            )
        return None
    rpc = args.rpc_url or os.environ.get("FABSTIR_RPC_URL", "").strip()
    if rpc:
        if not rpc.startswith(("http://", "https://")):
            raise CliError(f"--rpc-url {rpc!r} must be an http:// or https:// URL", exit_code=2)
        config = config.model_copy(update={"rpc_url": rpc})
    return config


def user_key(args: argparse.Namespace, *, what: str) -> SecretStr:
    """The user's Ethereum key from ``--key-file`` or ``FABSTIR_PRIVATE_KEY`` (never from
    the command line itself); ``CliError`` naming ``what`` needs it when there is none."""
    key = read_host_key(args.key_file, env="FABSTIR_PRIVATE_KEY")
    if key is None:
        raise CliError(
            f"{what} needs your Ethereum key: --key-file PATH (eth.key of `fabstir keys new`) "
            "or FABSTIR_PRIVATE_KEY"
        )
    return key


def decimal_amount(text: str) -> Decimal:
    """An ``argparse`` type: an amount of money as a ``Decimal`` (never a float), >= 0."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite amount >= 0")
    return value


def money(value: Decimal) -> str:
    """A ``Decimal`` amount in plain digits (``0.000000001``, never ``1E-9``).

    >>> money(Decimal("1E-9")), money(Decimal("2.50")), money(Decimal(0))
    ('0.000000001', '2.5', '0')
    """
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
