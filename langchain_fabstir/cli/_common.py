"""What every ``fabstir`` command shares: the one-line error, secrets read from files."""

from __future__ import annotations

import os

from pydantic import SecretStr

__all__ = [
    "CliError",
    "read_host_key",
    "read_secret_file",
    "read_seed",
    "s5_options",
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


def read_seed(path: str | None, *, env: str = "FABSTIR_S5_SEED") -> SecretStr | None:
    """An S5 seed phrase from ``path`` or the variable ``env``, validated (15 words with
    their checksum), as a secret."""
    from langchain_fabstir.s5 import S5Identity

    if path is not None:
        text, where = read_secret_file(path, "seed file"), f"seed file {path}"
    else:
        text, where = os.environ.get(env, "").strip(), env
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
