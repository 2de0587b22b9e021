"""``fabstir keys new`` and ``fabstir keys show``: the secrets a user or a host needs.

``keys new`` writes two files, readable by their owner only (0600), into ``--dir``
(default ``$FABSTIR_HOME`` or ``~/.fabstir``), and never replaces an existing one. The
directory is made with mode 0700; an existing one of yours that group or others may write
to is tightened to 0700 (it says so), and a shared one (not yours, or sticky like /tmp) is
refused: whoever can write to the directory could swap the key files.

- ``s5.seed``: a new S5 seed phrase (15 words): the identity conversations and
  published checkpoints are stored under;
- ``eth.key``: a new Ethereum (secp256k1) private key, hex: a user's wallet key, or a
  host's key (``fabstir host --host-key-file``).

``keys delegate --payer 0x...`` writes ``delegate.key``, a new key for an agent that pays
through a payer's allowance (CHAIN.md 6.3), and prints what the payer and the agent run.

Neither secret is printed unless ``--show`` is given; ``keys show`` prints only the
public parts: the Ethereum address and the S5 portal account's public key, and warns
about a file others may read (the commands that use the keys, ``chat --key-file``,
``chat --seed-file``, ``host --host-key-file``, ``jobs --key-file``, refuse such a file,
as ssh refuses an unprotected private key: ``chmod 600 FILE`` fixes it).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from langchain_fabstir.cli._common import (
    CliError,
    help_text,
    read_host_key,
    read_seed,
    write_private,
)

__all__ = ["ETH_FILE", "SEED_FILE", "add_keys_parser", "default_keys_dir", "public_parts"]

SEED_FILE = "s5.seed"
ETH_FILE = "eth.key"
DELEGATE_FILE = "delegate.key"


def default_keys_dir() -> Path:
    """``$FABSTIR_HOME`` or ``~/.fabstir``."""
    home = os.environ.get("FABSTIR_HOME")
    return Path(home).expanduser() if home else Path.home() / ".fabstir"


def public_parts(directory: Path) -> dict[str, Any]:
    """The address of ``eth.key`` and the S5 public identity of ``s5.seed`` (each ``None``
    when its file does not exist)."""
    from langchain_fabstir.checkpoints.signing import address_of
    from langchain_fabstir.s5 import S5Identity

    seed_path, eth_path = directory / SEED_FILE, directory / ETH_FILE
    out: dict[str, Any] = {"dir": str(directory), "address": None, "s5_public_key": None}
    if eth_path.exists():
        key = read_host_key(str(eth_path), strict=False)
        assert key is not None
        out["address"] = address_of(key)
    if seed_path.exists():
        seed = read_seed(str(seed_path), strict=False)
        assert seed is not None
        pair = S5Identity.from_phrase(seed.get_secret_value()).portal_account_key_pair()
        out["s5_public_key"] = "ed25519:" + bytes(pair.public_key).hex()
    if out["address"] is None and out["s5_public_key"] is None:
        raise CliError(f"no keys in {directory}: `fabstir keys new --dir {directory}` makes them")
    return out


def private_dir(directory: Path) -> str | None:
    """Make ``directory`` (0700), or tighten an existing one of the user's that group or
    others may write to (to 0700); refuse (``CliError``) a shared one: not the user's, or
    sticky (as /tmp). Returns what was changed, for the user to read (``None``: nothing)."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is cut by the umask only: make it exact
        return None
    info = directory.stat()
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        raise CliError(f"{directory} is not a directory")
    if not mode & 0o022:
        return None
    mine = not hasattr(os, "geteuid") or info.st_uid == os.geteuid()
    if not mine or mode & stat.S_ISVTX:
        raise CliError(
            f"{directory} is a shared directory (mode {mode:04o}{'' if mine else ', not yours'})"
            ": others could replace key files there; use a directory of your own "
            "(`fabstir keys new` makes ~/.fabstir with mode 0700)"
        )
    directory.chmod(0o700)
    return f"{directory} was writable by others (mode {mode:04o}): tightened to 0700"


def keys_new(args: argparse.Namespace) -> int:
    from coincurve import PrivateKey

    from langchain_fabstir.s5 import generate_phrase

    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    seed_path, eth_path = directory / SEED_FILE, directory / ETH_FILE
    existing = [str(p) for p in (seed_path, eth_path) if p.exists()]
    if existing:
        raise CliError(f"{existing[0]} exists: not replacing a key (use another --dir)")
    try:
        changed = private_dir(directory)
        phrase = generate_phrase()
        key_hex = "0x" + PrivateKey().secret.hex()  # 32 bytes from the OS's CSPRNG
        write_private(seed_path, phrase + "\n")
        write_private(eth_path, key_hex + "\n")
    except FileExistsError as exc:  # made by someone else meanwhile
        raise CliError(f"{exc.filename} exists: not replacing a key") from exc
    except OSError as exc:
        raise CliError(f"cannot write keys in {directory}: {exc.strerror}") from exc
    parts = public_parts(directory)
    if changed:
        print(f"warning: {changed}", file=sys.stderr)
    if args.json:
        if args.show:
            parts = {**parts, "s5_seed": phrase, "eth_key": key_hex}
        print(json.dumps(parts))
        return 0
    print(f"wrote {seed_path} and {eth_path} (mode 0600)")
    print(f"address        {parts['address']}")
    print(f"S5 public key  {parts['s5_public_key']}")
    if args.show:
        print(f"S5 seed        {phrase}")
        print(f"eth key        {key_hex}")
    return 0


def keys_delegate(args: argparse.Namespace) -> int:
    """A new key for an agent paying for ``--payer`` as its delegate (0600, never replaced)."""
    from coincurve import PrivateKey

    from langchain_fabstir._eth import is_address, to_checksum_address
    from langchain_fabstir.checkpoints.signing import address_of

    if not is_address(args.payer):
        raise CliError(f"--payer: not an address: {args.payer!r}")
    payer = to_checksum_address(args.payer)
    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    path = directory / DELEGATE_FILE
    if path.exists():
        raise CliError(f"{path} exists: not replacing a key (use another --dir)")
    try:
        changed = private_dir(directory)
        key_hex = "0x" + PrivateKey().secret.hex()  # 32 bytes from the OS's CSPRNG
        write_private(path, key_hex + "\n")
    except FileExistsError as exc:
        raise CliError(f"{exc.filename} exists: not replacing a key") from exc
    except OSError as exc:
        raise CliError(f"cannot write the key in {directory}: {exc.strerror}") from exc
    if changed:
        print(f"warning: {changed}", file=sys.stderr)
    address = address_of(key_hex)
    if args.json:
        print(json.dumps({"delegate_key_file": str(path), "delegate": address, "payer": payer}))
        return 0
    print(f"wrote {path} (mode 0600)")
    print(f"delegate       {address}")
    print(f"payer          {payer}")
    print("the payer authorizes it (USDC, approve + authorizeDelegate):")
    print(f'  await manager.authorize_delegate("{address}", allowance=Decimal("10"))')
    print("the agent pays with it:")
    print(f'  SessionManager(chain=..., private_key=<{path}>, payer="{payer}")')
    return 0


def keys_show(args: argparse.Namespace) -> int:
    directory = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    parts = public_parts(directory)
    loose = [
        p.name
        for p in (directory / SEED_FILE, directory / ETH_FILE)
        if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    if args.json:
        print(json.dumps({**parts, "readable_by_others": loose}))
        return 0
    print(f"address        {parts['address'] or '-'}")
    print(f"S5 public key  {parts['s5_public_key'] or '-'}")
    for name in loose:
        print(
            f"warning: {directory / name} is readable by others: chmod 600 {directory / name} "
            "(chat, host and jobs refuse it until then)"
        )
    return 0


def add_keys_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser(
        "keys",
        parents=[common],
        help="make or show an S5 seed phrase and an Ethereum key",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = keys.add_subparsers(dest="keys_command", required=True)
    new = what.add_parser(
        "new", parents=[common], help="write a new S5 seed phrase and Ethereum key (0600)"
    )
    show = what.add_parser("show", parents=[common], help="print the public parts")
    delegate = what.add_parser(
        "delegate",
        parents=[common],
        help="write a new key (delegate.key, 0600) for an agent paying for --payer",
    )
    delegate.add_argument("--payer", required=True, help="the address that pays (0x...)")
    delegate.add_argument(
        "--dir", help="where to write delegate.key ($FABSTIR_HOME, else ~/.fabstir)"
    )
    delegate.add_argument("--json", action="store_true", help="print JSON")
    delegate.set_defaults(run_sync=keys_delegate)
    new.add_argument(
        "--dir",
        help="where to write the key files ($FABSTIR_HOME, else ~/.fabstir): made with mode "
        "0700; an existing one of yours writable by others is tightened to 0700, a shared one "
        "(not yours, or sticky like /tmp) is refused",
    )
    show.add_argument("--dir", help="where the key files are ($FABSTIR_HOME, else ~/.fabstir)")
    for p in (new, show):
        p.add_argument("--json", action="store_true", help="print JSON")
    new.add_argument(
        "--show", action="store_true", help="also print the secrets (seed phrase, key)"
    )
    new.set_defaults(run_sync=keys_new)
    show.set_defaults(run_sync=keys_show)
