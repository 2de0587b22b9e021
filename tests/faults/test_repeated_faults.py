"""Faults that repeat: an answer cut again and again, reconnects that break during
``session_init``, and a host that no longer has the answer being resumed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from langchain_fabstir._compat import timeout as within
from langchain_fabstir.errors import HostDisconnectedError
from langchain_fabstir.host import EchoEngine, ReferenceHost
from tests.faults.proxy import CutAfterFrames, PassThrough
from tests.faults.test_resilience import SCRIPT, numbers, proxied

# --- repeated failures -------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_an_answer_cut_every_few_tokens_still_completes_exactly() -> None:
    async with within(20), proxied(EchoEngine(SCRIPT, delay=0.001), max_resumes=100) as rig:
        session = await rig.manager.create_session()
        # Every connection (this one and each reconnect) carries at most 12 frames.
        rig.proxy.set_fault(CutAfterFrames(12), scope="all")
        result = await rig.manager.prompt(session.id, "go", max_tokens=200)
    assert numbers(result.text) == list(range(200))
    modes = {note["mode"] for note in result.metadata["resumes"]}
    assert modes == {"exact"} and result.resumed >= 200 // 12
    offsets = [note["offset"] for note in result.metadata["resumes"]]
    assert (
        offsets == sorted(offsets) and offsets[-1] <= 200
    )  # a cut may fall between the last token and stream_end
    assert rig.host.resumes == result.resumed


@pytest.mark.timeout(30)
async def test_resumes_of_one_answer_stop_at_max_resumes() -> None:
    engine = EchoEngine(SCRIPT, delay=0.001)
    async with within(20), proxied(engine, max_resumes=3, reconnect_attempts=3) as rig:
        session = await rig.manager.create_session()
        rig.proxy.set_fault(CutAfterFrames(12), scope="all")
        with pytest.raises(HostDisconnectedError) as info:
            await rig.manager.prompt(session.id, "go", max_tokens=200)
    assert info.value.details["attempts"] == 3
    assert len(rig.proxy.connections) == 4  # the first socket + 3 resumes


@pytest.mark.timeout(30)
async def test_reconnects_cut_during_session_init_are_retried_then_given_up() -> None:
    async with within(20), proxied(EchoEngine(SCRIPT, delay=0.001), reconnect_attempts=3) as rig:
        session = await rig.manager.create_session()
        rig.proxy.set_fault(CutAfterFrames(1), scope="new")  # greeting, then cut
        rig.proxy.set_fault(CutAfterFrames(20), scope="current")
        with pytest.raises(HostDisconnectedError) as info:
            await rig.manager.prompt(session.id, "go", max_tokens=200)
    assert info.value.details["attempts"] == 3
    assert len(rig.proxy.connections) == 4 and all(c.cut for c in rig.proxy.connections)


@pytest.mark.timeout(30)
async def test_a_reconnect_cut_during_session_init_is_retried() -> None:
    async with within(20), proxied(EchoEngine(SCRIPT, delay=0.001), reconnect_attempts=3) as rig:
        session = await rig.manager.create_session()
        proxy = rig.proxy
        proxy.set_fault(CutAfterFrames(1), scope="new")
        proxy.set_fault(CutAfterFrames(20), scope="current")

        def first_reconnect_cut() -> bool:
            # Runs inside the proxy as counters change: once the first reconnect was
            # cut, later connections pass (no race with the client's backoff).
            if len(proxy.connections) >= 2 and proxy.connections[1].cut:
                proxy.set_fault(PassThrough(), scope="new")
                return True
            return False

        waiter = asyncio.ensure_future(proxy.wait_for(first_reconnect_cut))
        result = await rig.manager.prompt(session.id, "go", max_tokens=200)
        await waiter
    assert numbers(result.text) == list(range(200))
    assert result.resumed == 1 and result.metadata["resumes"][0]["mode"] == "exact"
    assert len(proxy.connections) == 3 and [c.cut for c in proxy.connections] == [True, True, False]


class ForgetfulHost(ReferenceHost):
    """A resume-capable host that keeps no answer: every resume is ``RESUME_NOT_FOUND``
    (as when the grace period expired or the host restarted)."""

    def _remember(self, job: Any, tracker: Any) -> None:
        return None


@pytest.mark.timeout(30)
async def test_an_answer_the_host_no_longer_has_is_continued() -> None:
    async with within(20), proxied(EchoEngine(SCRIPT, delay=0.001), host_cls=ForgetfulHost) as rig:
        session = await rig.manager.create_session()
        rig.proxy.set_fault(CutAfterFrames(30), scope="current")
        result = await rig.manager.prompt(session.id, "go", max_tokens=200)
    # Asked to resume exactly, the host said RESUME_NOT_FOUND: the client continued.
    assert [note["mode"] for note in result.metadata["resumes"]] == ["exact", "continuation"]
    k = result.metadata["resumes"][-1]["offset"]
    assert 0 < k <= 30
    # The echo engine restates the answer from its start: that part is dropped.
    assert numbers(result.text) == list(range(max(k, 200 - k)))
    assert rig.host.resumes == 0 and rig.host.requests[-1].max_tokens == 200 - k
