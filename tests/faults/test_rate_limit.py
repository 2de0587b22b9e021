"""Rate limits: a "retry after N seconds" is waited out when short, raised when long.

The hosts are hand-written ``websockets`` servers that record when each prompt arrived,
so the wait is measured where it matters (between the two prompts the host saw).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.errors import RateLimitedError
from tests._support.wire import raw_host
from tests.faults.test_resilience import SCRIPT, numbers, send_answer


def limited(message: str, first: int) -> Any:
    """A host that refuses the first ``first`` prompts with ``message``, then answers."""

    async def on_prompt(ws: ServerConnection, msg: dict[str, Any], n: int) -> None:
        if n < first:
            # The deployed hosts' shapes: an error frame without id, then stream_end.
            await ws.send(json.dumps({"type": "error", "error": message}))
            await ws.send(json.dumps({"type": "stream_end", "reason": "error", "tokens_used": 0}))
            return
        await send_answer(ws, msg["id"], SCRIPT[:10])

    return on_prompt


@pytest.mark.timeout(20)
async def test_short_retry_after_is_waited_out_then_the_prompt_succeeds() -> None:
    async with (
        within(10),
        raw_host(limited("Rate limit exceeded, retry after 1 seconds", 1)) as seen,
    ):
        async with SessionManager(host_url=seen.url) as manager:
            session = await manager.create_session()
            result = await manager.prompt(session.id, "hello")
    assert numbers(result.text) == list(range(10)) and result.resumed == 0
    assert len(seen.prompts) == 2 and seen.connections == 1  # same socket, sent again
    assert seen.prompts[1]["request"]["prompt"] == "hello"
    assert seen.arrivals[1] - seen.arrivals[0] >= 0.95  # it waited about the second asked


@pytest.mark.timeout(20)
async def test_retry_after_beyond_max_retry_after_is_raised_at_once() -> None:
    message = "Rate limit exceeded, retry after 60 seconds"
    async with within(5), raw_host(limited(message, 99)) as seen:
        config = SessionConfig(max_retry_after=5)
        async with SessionManager(config, host_url=seen.url) as manager:
            session = await manager.create_session()
            with pytest.raises(RateLimitedError) as info:
                await manager.prompt(session.id, "hello")
    assert info.value.code == "RATE_LIMITED" and info.value.retry_after == 60.0
    assert info.value.is_retryable
    assert len(seen.prompts) == 1


@pytest.mark.timeout(20)
async def test_a_host_that_stays_rate_limited_is_tried_a_bounded_number_of_times() -> None:
    message = "Rate limit exceeded, retry after 20 ms"
    async with within(10), raw_host(limited(message, 99)) as seen:
        config = SessionConfig(reconnect_attempts=3)
        async with SessionManager(config, host_url=seen.url) as manager:
            session = await manager.create_session()
            with pytest.raises(RateLimitedError) as info:
                await manager.prompt(session.id, "hello")
    assert info.value.retry_after == pytest.approx(0.02)
    assert len(seen.prompts) == 4  # the prompt, then 3 waits and tries
    assert all(b - a >= 0.015 for a, b in zip(seen.arrivals, seen.arrivals[1:], strict=False))
