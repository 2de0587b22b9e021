"""What every ``fabstir`` command shares: the one-line error, secrets read from files,
peer text made safe for the terminal."""

from __future__ import annotations

import argparse
import os
import re
import stat
import textwrap
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is imported where a key is read: `fabstir --help` stays fast
    from pydantic import SecretStr

    from langchain_fabstir.chain import ChainConfig

__all__ = [
    "NETWORKS",
    "CliError",
    "add_chain_options",
    "chain_config",
    "decimal_amount",
    "help_text",
    "money",
    "read_host_key",
    "read_secret_file",
    "read_seed",
    "s5_options",
    "terminal_text",
    "user_key",
    "write_private",
]


class CliError(Exception):
    """An expected failure: ``main`` prints ``fabstir <command>: <message>`` (one line, on
    stderr) and exits with ``exit_code``; ``--debug`` adds the traceback. With a ``code``
    (stable, machine-readable) the message reads ``[CODE] message``."""

    def __init__(self, message: str, *, exit_code: int = 1, code: str | None = None) -> None:
        super().__init__(f"[{code}] {message}" if code else message)
        self.exit_code = exit_code
        self.code = code


_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` text for the terminal: Sphinx roles
    (:class:`~a.b.C` -> ``C``, :func:, :meth:, :mod:, :data:, :attr:, :exc:, :obj:) become
    the name, double backticks are dropped."""
    text = doc or ""

    def name(match: re.Match[str]) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).count("~") else target

    text = _ROLE.sub(name, text).replace("``", "")
    return "\n\n".join(_reflow(par) for par in text.strip().split("\n\n"))


def _reflow(paragraph: str, width: int = 88) -> str:
    """One paragraph re-wrapped (the roles removed shortened its lines); a bulleted list
    keeps one item a line, code (indented or ``>>>``) is kept as it is."""
    lines = paragraph.splitlines()
    if not lines or lines[0].startswith((" ", ">>>")):
        return paragraph
    items: list[str] = []
    for line in lines:
        if line.startswith(("- ", "* ")) or not items or not line.startswith("  "):
            if (
                items
                and not line.startswith(("- ", "* "))
                and not items[-1].startswith(("- ", "* "))
            ):
                items[-1] += " " + line.strip()
                continue
            items.append(line.strip())
        else:
            items[-1] += " " + line.strip()
    return "\n".join(
        textwrap.fill(
            item,
            width,
            break_on_hyphens=False,
            subsequent_indent="  " if item[:2] in ("- ", "* ") else "",
        )
        for item in items
    )


UNPROTECTED_KEY_FILE = "UNPROTECTED_KEY_FILE"
"""The code of a key or seed file others may read (refused, as ssh refuses such a key)."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    r"""``text`` safe to write to a terminal: every C0 and C1 control character (ESC, CSI,
    BEL, CR, backspace...) and DEL removed; newline and tab kept.

    Everything a peer sends (a host's answer tokens, error messages, model names, host
    URLs and names from registries or the chain) goes through this before the CLI prints
    it, so no escape sequence reaches the terminal: no clipboard write (OSC 52), no window
    title (OSC 0), no screen clear, no query the terminal would answer into stdin
    (``ESC[6n``), no carriage return to overwrite the status line with a forged one. A
    sequence split across two tokens is harmless too: its ESC (or CSI) is dropped wherever
    it falls, and what remains is printable text.

    >>> terminal_text("ok\x1b]52;c;ZXZpbA==\x07 \x1b[2J\rfake\x9b6n\tdone\n")
    'ok]52;c;ZXZpbA== [2Jfake6n\tdone\n'
    """
    # (a control character is never printable: most tokens take the fast path)
    return text if text.isprintable() else _CONTROL.sub("", text)


def _refuse_loose(fd: int, path: str | os.PathLike[str], what: str) -> None:
    """Refuse a secret file that group or others may read or write (as ssh does)."""
    if os.name != "posix":  # mode bits mean nothing there
        return
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        where = os.fspath(path)
        raise CliError(
            f"{what} {where}: permissions {mode:04o} are too open (it is a secret: others "
            f"must not read it); run: chmod 600 {where}",
            code=UNPROTECTED_KEY_FILE,
        )


def read_secret_file(path: str | os.PathLike[str], what: str, *, private: bool = True) -> str:
    """The stripped text of a secret file (``CliError`` naming ``what`` if unreadable).

    With ``private`` (keys, seed phrases) a file readable or writable by group or others is
    refused (``UNPROTECTED_KEY_FILE``, with the ``chmod 600`` that fixes it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            if private:
                _refuse_loose(fh.fileno(), path, what)
            text = fh.read(64 * 1024).strip()
    except OSError as exc:
        raise CliError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{what} {os.fspath(path)} is not text") from None
    if not text:
        raise CliError(f"{what} {os.fspath(path)} is empty")
    return text


def read_host_key(
    path: str | None, *, env: str = "FABSTIR_HOST_KEY", strict: bool = True
) -> SecretStr | None:
    """A secp256k1 key (hex) from ``path`` or the variable ``env``, checked, as a secret
    (never printed: a bad key is reported without its value). A file others may read is
    refused unless ``strict`` is false (``keys show`` only warns)."""
    from langchain_fabstir.wire.encryption import parse_private_key

    if path is not None:
        text, where = read_secret_file(path, "key file", private=strict), f"key file {path}"
    else:
        text, where = os.environ.get(env, "").strip(), env
    if not text:
        return None
    try:
        parse_private_key(text)
    except Exception:
        raise CliError(f"the key in {where} is not 32 bytes of hex") from None
    from pydantic import SecretStr

    return SecretStr(text)


def read_seed(path: str | None, *, strict: bool = True) -> SecretStr | None:
    """An S5 seed phrase from ``path`` or ``FABSTIR_S5_SEED`` (its deprecated alias too:
    :func:`~langchain_fabstir.s5.seed_phrase_from_env`), validated (15 words with their
    checksum), as a secret. A file others may read is refused unless ``strict`` is false."""
    from langchain_fabstir.s5 import SEED_ENV, S5Identity, seed_phrase_from_env

    if path is not None:
        text, where = read_secret_file(path, "seed file", private=strict), f"seed file {path}"
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
    from pydantic import SecretStr

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
            # (the value is not echoed: it may hold credentials)
            raise CliError("--rpc-url must be an http:// or https:// URL", exit_code=2)
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
