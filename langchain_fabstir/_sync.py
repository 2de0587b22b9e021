"""Run the async core from sync code, even inside a running event loop (notebooks).

One daemon thread runs a private event loop; sync callers submit coroutines to it and
block on the result. No ``nest_asyncio``: the caller's loop is never re-entered.

>>> async def answer() -> int:
...     return 42
>>> run_sync(answer())
42
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["background_loop", "iterate_sync", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared background loop (started on first use)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="langchain-fabstir-sync", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result."""
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator from sync code, one item at a time (with backpressure).

    Closing the returned generator (or breaking out of a ``for`` loop over it) closes
    ``agen`` on the background loop, so its cleanup (e.g. ``stream_cancel``) runs.
    """
    loop = background_loop()

    async def step() -> tuple[bool, Any]:
        try:
            return True, await agen.__anext__()
        except StopAsyncIteration:
            return False, None

    finished = False
    try:
        while True:
            ok, item = asyncio.run_coroutine_threadsafe(step(), loop).result()
            if not ok:
                finished = True
                return
            yield item
    finally:
        if not finished:
            closer = getattr(agen, "aclose", None)
            if closer is not None:
                asyncio.run_coroutine_threadsafe(closer(), loop).result()
