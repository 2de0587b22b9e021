"""``local_host()``: the host an example or a notebook should talk to.

``FABSTIR_HOST_URL`` when it is set (a real host, or one you started with
``fabstir host``); otherwise a reference host started in this process on 127.0.0.1 with
the real SmolLM2 model (or the echo engine), stopped when the block ends.

>>> import asyncio
>>> async def demo():
...     async with local_host(engine="echo", env=False) as url:
...         return url.startswith("http://127.0.0.1:")
>>> asyncio.run(demo())
True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, Literal

from langchain_fabstir.host.engines import EchoEngine, Engine, LlamaEngine
from langchain_fabstir.host.server import ReferenceHost

__all__ = ["local_host"]


@contextlib.asynccontextmanager
async def local_host(
    engine: Literal["llama", "echo"] | Engine = "llama", *, env: bool = True, **host_args: Any
) -> AsyncIterator[str]:
    """Yield a host URL: ``FABSTIR_HOST_URL`` (when ``env``) or a local reference host.

    ``host_args`` go to :class:`ReferenceHost` (e.g. ``host_key=...``); the rate limit is
    off unless given.
    """
    url = os.environ.get("FABSTIR_HOST_URL") if env else None
    if url:
        yield url
        return
    owned = isinstance(engine, str)
    chosen: Engine = (
        (LlamaEngine() if engine == "llama" else EchoEngine())
        if isinstance(engine, str)
        else engine
    )
    host_args.setdefault("rate_limit_per_minute", None)
    try:
        async with ReferenceHost(chosen, **host_args) as host:
            yield host.url
    finally:
        if owned:
            chosen.close()
