"""Losing a host for good: SIGKILL mid-answer with a second host known, and hosts without
the ``resume`` extension. The answer then goes on as a *continuation* (the partial answer
is sent back as context and the host is asked to go on with a smaller token budget)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Callable

import pytest

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir._compat import timeout as within
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.discovery import normalize_host_url
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.sessions.models import Session, StreamResult
from langchain_fabstir.sessions.recovery import CONTINUE_PROMPT
from langchain_fabstir.sessions.stream import PromptStream
from tests.faults.proxy import CutAfterFrames
from tests.faults.test_resilience import SCRIPT, numbers, proxied

ECHO_HOST_ARGS = (
    "--engine", "echo", "--script", "|".join(SCRIPT), "--delay", "0.005", "--rate-limit", "0",
)  # fmt: skip


@pytest.fixture
async def two_host_processes() -> AsyncIterator[list[tuple[subprocess.Popen[str], str]]]:
    """Two ``fabstir host`` processes (echo engine, numbered tokens, 5 ms a token)."""
    hosts = await asyncio.gather(
        *(asyncio.to_thread(start_host_process, *ECHO_HOST_ARGS) for _ in range(2))
    )
    try:
        yield list(hosts)
    finally:
        for proc, _ in hosts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in hosts:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def stream_and(
    manager: SessionManager, session: Session, after: int, act: Callable[[], None]
) -> tuple[StreamResult, list[str]]:
    """Stream a 200-token answer, calling ``act()`` once ``after`` pieces arrived."""
    pieces: list[str] = []
    last: PromptStream | None = None
    async for stream, text in manager.open_stream(session.id, "go", max_tokens=200):
        pieces.append(text)
        last = stream
        if len(pieces) == after:
            act()
    assert last is not None
    return last.result, pieces


@pytest.mark.timeout(60)
async def test_sigkill_mid_answer_fails_over_to_the_second_host(
    two_host_processes: list[tuple[subprocess.Popen[str], str]],
) -> None:
    urls = [normalize_host_url(url) for _, url in two_host_processes]
    failovers: list[tuple[str, str]] = []
    async with within(40), SessionManager(SessionConfig(), hosts=urls) as manager:
        manager.on("failover", lambda _s, old, new: failovers.append((old, new)))
        session = await manager.create_session()  # discovery picks one of the two
        first = session.host_url
        assert first in urls
        second = next(u for u in urls if u != first)
        victim = two_host_processes[urls.index(first)][0]

        def kill() -> None:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)

        result, pieces = await stream_and(manager, session, 20, kill)

    assert victim.returncode == -signal.SIGKILL
    assert failovers == [(first, second)]
    assert session.host_url == second and result.host_url == second
    modes = [note["mode"] for note in result.metadata["resumes"]]
    assert result.resumed >= 1 and modes[-1] == "continuation", result.metadata
    # The second host never saw the job: it continued the partial answer from scratch,
    # with the budget that was left. (The echo engine restates the answer from its start:
    # the restatement of what the consumer already had is dropped.)
    k = result.metadata["resumes"][-1]["offset"]
    assert k >= 20
    assert numbers(result.text) == list(range(max(k, 200 - k)))
    assert "".join(pieces) == result.text
    assert result.finish_reason == "length"


class PlainHost(ReferenceHost):
    """A reference host that does not offer the ``resume`` extension (like deployed hosts)."""

    def features(self) -> list[str]:
        return [f for f in super().features() if f != "resume"]


@pytest.mark.timeout(30)
async def test_host_without_resume_gets_a_continuation_prompt() -> None:
    engine = EchoEngine(SCRIPT, delay=0.001)
    async with within(20), proxied(engine, host_cls=PlainHost) as rig:
        session = await rig.manager.create_session(system_prompt="Count.")
        rig.proxy.set_fault(CutAfterFrames(50), scope="current")
        result = await rig.manager.prompt(session.id, "go", max_tokens=200)
        assert rig.proxy.cut_happened.is_set()
        assert result.resumed == 1
        note = result.metadata["resumes"][0]
        assert (note["mode"], note["offset"]) == ("continuation", 50)
        # The echo engine restates the first 50 tokens: dropped, the rest goes on.
        assert numbers(result.text) == list(range(150))
        assert rig.host.resumes == 0
        again = rig.host.requests[-1]
        assert again.prompt == CONTINUE_PROMPT and again.resume is None
        assert again.max_tokens == 150
        assert [(m.role, m.content) for m in again.conversation_context] == [
            ("system", "Count."),
            ("user", "go"),
            ("assistant", "".join(SCRIPT[:50])),
        ]
        # The history holds the user's prompt and the whole (stitched) answer once.
        history = await rig.manager.get_conversation_history(session.id)
        assert [(m.role, m.content) for m in history[1:]] == [
            ("user", "go"),
            ("assistant", result.text),
        ]
