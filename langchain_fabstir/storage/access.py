"""S5 plumbing shared by the chat history, the LangGraph saver and the conversation store.

* :class:`S5Access` owns one :class:`~langchain_fabstir.s5.S5FileSystem` that lives on the
  package's background event loop (:mod:`langchain_fabstir._sync`). Every storage call runs
  there, so one HTTP connection pool serves sync callers (even inside a running event loop,
  e.g. a notebook) and async callers on any loop alike.
* :class:`SealedLog` is an append-only record log with compaction (see its docstring).

A file system handed in by the user is *cloned* for the background loop (same keys, same
portal token, a new HTTP client): an ``httpx.AsyncClient`` belongs to the loop that first
used it. The clone reaches into three private attributes of ``S5FileSystem``
(``_locks``, ``_linked``, ``_keys_cache``) and uses ``_keys`` to derive path keys; a public
``S5FileSystem.with_client()`` / ``write_key(path)`` would remove that coupling.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from langchain_fabstir._sync import background_loop, run_sync
from langchain_fabstir.errors import RevisionConflictError
from langchain_fabstir.s5 import (
    DirV1,
    FileRef,
    PortalRequestError,
    S5FileSystem,
    S5Identity,
    S5PortalClient,
)
from langchain_fabstir.s5.fs import split_path
from langchain_fabstir.s5.seed import SEED_ENV, seed_phrase_from_env
from langchain_fabstir.storage.sealed_log import LogSnapshot, SealedLog

__all__ = [
    "PORTAL_ENV",
    "LogSnapshot",
    "S5Access",
    "SealedLog",
    "blocking",
    "on_background",
    "update_file",
]

T = TypeVar("T")

PORTAL_ENV = "FABSTIR_PORTAL_URL"
"""The environment variable holding the S5 portal URL (CLI, examples, :meth:`S5Access.from_env`)."""


def _on_background_thread() -> bool:
    loop = background_loop()
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def on_background(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the background loop from any loop (cancellation is forwarded)."""
    if _on_background_thread():
        return await coro
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    return await asyncio.wrap_future(future)


def blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and block until it is done.

    Works from plain threads and from inside a running event loop (that loop is blocked
    meanwhile, so it must not be the one serving the portal). Refuses to run on the
    background loop itself, where it would wait for itself forever.
    """
    if _on_background_thread():
        coro.close()
        raise RuntimeError(
            "a blocking S5 storage call was made on langchain-fabstir's background loop; "
            "use the async method (a*) there"
        )
    return run_sync(coro)


def _clone_client(client: S5PortalClient) -> S5PortalClient:
    return S5PortalClient(
        client.portal_url,
        auth_token=client.auth_token,
        timeout=client._http.timeout,
        max_attempts=client.max_attempts,
        backoff_initial=client.backoff_initial,
        backoff_max=client.backoff_max,
        max_download_bytes=client.max_download_bytes,
        max_concurrent_requests=client.max_concurrent_requests,
    )


def _clone_fs(fs: S5FileSystem, client: S5PortalClient, **flags: bool) -> S5FileSystem:
    clone = copy.copy(fs)
    clone.client = client
    clone._locks = weakref.WeakValueDictionary()
    clone._linked = set(fs._linked)
    clone._keys_cache = dict(fs._keys_cache)
    for name, value in flags.items():
        setattr(clone, name, value)
    return clone


async def _ensure_account(client: S5PortalClient, identity: S5Identity) -> None:
    """Log in or register; a register that loses a race with another process is retried
    (then the login succeeds)."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(3),
        retry=retry_if_exception_type(PortalRequestError),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            await client.ensure_account(identity.portal_account_key_pair())


class S5Access:
    """Where a history, saver or store keeps its data: an S5 file system on one portal.

    The one way to connect to S5. Make one with a constructor and hand it to any of the
    storage classes; they share its HTTP client and login::

        access = S5Access.from_portal(url, seed_phrase=SecretStr(phrase))  # or identity=
        access = S5Access.from_env()      # FABSTIR_PORTAL_URL and FABSTIR_S5_SEED
        access = S5Access.from_fs(fs)     # an authenticated S5FileSystem you hold

        history = S5ChatMessageHistory("session-1", access=access)
        saver = S5CheckpointSaver(access)
        store = S5Store(access)

    The classes' own ``fs=`` / ``portal_url=`` / ``seed_phrase=`` / ``identity=``
    keywords are shorthands for this: they make an access the class owns (and closes);
    a shared one is closed by whoever made it (:meth:`aclose`). The seed phrase is kept
    only as derived keys (never in ``repr``); a given ``fs`` is cloned for the
    package's background loop, where every storage call runs (:func:`on_background`,
    :func:`blocking`), so sync and async callers on any loop share one connection pool.
    Bad arguments are ``ValueError``; a seed phrase that is not one,
    ``InvalidSeedPhraseError``.

    >>> S5Access.from_portal("http://127.0.0.1:1", seed_phrase="not a phrase")
    Traceback (most recent call last):
    ...
    langchain_fabstir.errors.InvalidSeedPhraseError: [INVALID_SEED_PHRASE] ...
    """

    def __init__(
        self,
        fs: S5FileSystem | None = None,
        *,
        portal_url: str | None = None,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
    ) -> None:
        given_secret = seed_phrase is not None or identity is not None
        if fs is not None and (portal_url is not None or given_secret):
            raise ValueError("pass either fs= or portal_url= with seed_phrase=, not both")
        if fs is None and (portal_url is None or not given_secret):
            raise ValueError("pass fs=, or portal_url= together with seed_phrase=")
        if seed_phrase is not None and identity is not None:
            raise ValueError("pass seed_phrase= or identity=, not both")
        if fs is not None and not isinstance(fs, S5FileSystem):
            raise ValueError(
                f"fs= must be an S5FileSystem, not {type(fs).__name__} (an S5Access is "
                "passed as access=)"
            )
        self._source = fs
        self._identity: S5Identity | None = identity
        if identity is None and seed_phrase is not None:
            self._identity = S5Identity.from_phrase(seed_phrase)
        self.portal_url = (fs.client.portal_url if fs is not None else str(portal_url)).rstrip("/")
        self._fs: S5FileSystem | None = None
        self._plain: S5FileSystem | None = None
        self._client: S5PortalClient | None = None
        self._ready = threading.Lock()
        self._login: asyncio.Lock | None = None

    @classmethod
    def from_portal(
        cls,
        portal_url: str,
        *,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
    ) -> S5Access:
        """The account of ``seed_phrase`` (or ``identity``) on ``portal_url``; it is
        registered, or logged in, on first use."""
        if seed_phrase is None and identity is None:
            raise ValueError("from_portal needs seed_phrase= (the 15 words) or identity=")
        return cls(portal_url=portal_url, seed_phrase=seed_phrase, identity=identity)

    @classmethod
    def from_fs(cls, fs: S5FileSystem) -> S5Access:
        """An authenticated file system you already hold (cloned; yours stays untouched)."""
        return cls(fs)

    @classmethod
    def from_env(
        cls, portal_url: str | None = None, *, environ: Mapping[str, str] | None = None
    ) -> S5Access:
        """The portal in ``portal_url`` (default ``FABSTIR_PORTAL_URL``) with the seed
        phrase in ``FABSTIR_S5_SEED``, the variables the CLI and examples read."""
        env = os.environ if environ is None else environ
        url = portal_url or env.get(PORTAL_ENV, "").strip()
        phrase = seed_phrase_from_env(env)
        missing = [name for name, value in ((PORTAL_ENV, url), (SEED_ENV, phrase)) if not value]
        if missing:
            raise ValueError(
                f"S5Access.from_env: set {' and '.join(missing)} (an S5 portal URL, e.g. "
                "from `fabstir portal`, and the user's 15-word S5 seed phrase)"
            )
        return cls(portal_url=url, seed_phrase=phrase)

    @classmethod
    def resolve(
        cls,
        access: S5Access | None = None,
        *,
        fs: S5Access | S5FileSystem | None = None,
        portal_url: str | None = None,
        seed_phrase: SecretStr | str | None = None,
        identity: S5Identity | None = None,
    ) -> tuple[S5Access, bool]:
        """``(access, owned)`` for a class that takes an access or the shorthand keywords:
        the given access (not owned), or one made from the keywords (owned: the class
        closes it). An access in ``fs`` (the saver's and stores' first positional
        argument) counts as ``access``."""
        if isinstance(fs, S5Access):
            if access is not None:
                raise ValueError("pass the S5Access once")
            access, fs = fs, None
        if access is None:
            return cls(fs, portal_url=portal_url, seed_phrase=seed_phrase, identity=identity), True
        if not isinstance(access, S5Access):
            raise ValueError(f"access= must be an S5Access, not {type(access).__name__}")
        if any(v is not None for v in (fs, portal_url, seed_phrase, identity)):
            raise ValueError(
                "pass an S5Access alone: fs=, portal_url=, seed_phrase= and identity= are "
                "a shorthand for making one"
            )
        return access, False

    def __repr__(self) -> str:
        return f"S5Access({self.portal_url!r})"

    async def fs(self) -> S5FileSystem:
        """The file system on the background loop (call it only there)."""
        if self._fs is not None:
            return self._fs
        with self._ready:
            if self._login is None:
                self._login = asyncio.Lock()
        async with self._login:
            if self._fs is None:
                if self._source is not None:
                    self._client = _clone_client(self._source.client)
                    self._fs = _clone_fs(self._source, self._client)
                else:
                    assert self._identity is not None
                    client = S5PortalClient(self.portal_url)
                    try:
                        await _ensure_account(client, self._identity)
                    except BaseException:
                        await client.aclose()
                        raise
                    self._client = client
                    self._fs = S5FileSystem(client, self._identity)
        return self._fs

    async def plain_fs(self) -> S5FileSystem:
        """The same tree, writing files and directories unencrypted (s5.js can read them)."""
        if self._plain is None:
            fs = await self.fs()
            self._plain = _clone_fs(fs, fs.client, encrypt_files=False, encrypt_directories=False)
        return self._plain

    async def write_key(self, path: str) -> bytes:
        """The FS5 write key of the directory ``path`` (the base of a log's keys)."""
        fs = await self.fs()
        return fs._keys(split_path(path)).write_key

    async def file_key(self) -> bytes:
        """The identity's file-content key (a base for application keys)."""
        return (await self.fs())._file_key

    async def run(self, fn: Callable[[S5FileSystem], Awaitable[T]]) -> T:
        """``await fn(fs)`` on the background loop, from any loop."""

        async def call() -> T:
            return await fn(await self.fs())

        return await on_background(call())

    async def aclose(self) -> None:
        """Close the HTTP client this access opened (the caller's own ``fs`` is untouched)."""

        async def close() -> None:
            client, self._client = self._client, None
            self._fs = self._plain = None
            if client is not None:
                await client.aclose()

        if self._client is not None:
            await on_background(close())

    def close(self) -> None:
        """Blocking :meth:`aclose`."""
        if self._client is not None:
            blocking(self.aclose())


class _StaleRead(Exception):
    """The file changed between our read and our swap (retry the whole update)."""


async def update_file(
    fs: S5FileSystem,
    path: str,
    change: Callable[[bytes | None], bytes],
    *,
    media_type: str | None = "application/json",
    max_attempts: int = 12,
) -> bytes:
    """Compare-and-swap the file at ``path``: ``change(old contents or None) -> new``.

    The new contents are uploaded first; the directory entry is swapped only if it still
    names the version that was read (else everything is redone, with tenacity backoff),
    so concurrent updaters never lose each other's changes. Returns the new contents.
    Files are encrypted according to ``fs.encrypt_files``.
    """
    parts = split_path(path, allow_root=False)
    keys = await fs._ensure_dir(parts[:-1])
    name = parts[-1]
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        retry=retry_if_exception_type((_StaleRead, RevisionConflictError)),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            directory, _ = await fs._load(keys)
            old_ref = directory.files.get(name)
            old = None if old_ref is None else await fs._read_content(old_ref)
            new = change(old)
            new_ref = await fs._store_content(new, media_type, fs.encrypt_files)

            def swap(
                d: DirV1, old_ref: FileRef | None = old_ref, new_ref: FileRef = new_ref
            ) -> tuple[bool, None]:
                current = d.files.get(name)
                if (None if current is None else current.hash) != (
                    None if old_ref is None else old_ref.hash
                ):
                    raise _StaleRead
                d.files[name] = new_ref
                return True, None

            await fs._update(keys, swap)
            return new
    raise AssertionError("unreachable")  # pragma: no cover
