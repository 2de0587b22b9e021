"""Storage benchmarks: S5ChatMessageHistory against a local portal, and its file peer.

(a) append latency with 10,000 messages over append latency with 10 (median of 20 single
    appends at each size; the history is built up with bulk appends in between).
    Target <= 2.0: an append must not rewrite the conversation.
(b) seconds to load a 10,000-message history with a fresh history object (cold cache;
    median of 3). Aim < 1 s.
The same two figures for ``langchain_community``'s ``FileChatMessageHistory`` (the peer:
it re-reads and rewrites the whole JSON file on every append) are reported alongside;
its history is built up by writing the file in its own format directly.

Run alone: ``python -m bench.run storage``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, messages_to_dict

from bench.common import entry
from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
from langchain_fabstir.portal import LocalPortal
from langchain_fabstir.s5 import generate_phrase

SMALL, LARGE, SAMPLES = 10, 10_000, 20
BULK = 1000


def conversation(n: int, start: int = 0) -> list[BaseMessage]:
    """Realistic turns: a short question, a longer answer with usage metadata."""
    out: list[BaseMessage] = []
    for i in range(start, start + n):
        if i % 2 == 0:
            out.append(HumanMessage(f"Question {i}: how do S5 registry entries work? " * 2))
        else:
            out.append(
                AIMessage(
                    f"Answer {i}: a registry entry is a small signed record. " * 6,
                    id=f"run-{i}",
                    usage_metadata={"input_tokens": 40, "output_tokens": 80, "total_tokens": 120},
                    response_metadata={"model_name": "bench", "finish_reason": "stop"},
                )
            )
    return out


async def _median_append(append: Callable[[BaseMessage], Awaitable[None]], at: int) -> float:
    times = []
    for message in conversation(SAMPLES, at):
        watch = time.perf_counter()
        await append(message)
        times.append(time.perf_counter() - watch)
    return statistics.median(times)


def _median_append_sync(append: Callable[[BaseMessage], None], at: int) -> float:
    times = []
    for message in conversation(SAMPLES, at):
        watch = time.perf_counter()
        append(message)
        times.append(time.perf_counter() - watch)
    return statistics.median(times)


def _rows(
    name: str, small: float, large: float, load: float, *, peer: bool = False, **details: Any
) -> list[dict[str, Any]]:
    """The two figures; a peer's rows are reported without a pass/fail verdict."""
    ratio = large / small
    return [
        entry(
            f"{name}_append_10k_over_10",
            ratio,
            "ratio",
            target="peer (report)" if peer else "<= 2.0",
            passed=None if peer else ratio <= 2.0,
            append_ms_at_10=round(small * 1000, 2),
            append_ms_at_10k=round(large * 1000, 2),
            **details,
        ),
        entry(
            f"{name}_load_10k",
            load,
            "s",
            target="peer (report)" if peer else "aim < 1.0",
            passed=None if peer else load < 1.0,
            **details,
        ),
    ]


async def s5_history() -> list[dict[str, Any]]:
    phrase = generate_phrase()
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalPortal(tmp) as portal:
            history = S5ChatMessageHistory("bench", portal_url=portal.url, seed_phrase=phrase)

            async def append(message: BaseMessage) -> None:
                await history.aadd_messages([message])

            await history.aadd_messages(conversation(SMALL))
            small = await _median_append(append, SMALL)
            have = SMALL + SAMPLES
            while have < LARGE:
                batch = min(BULK, LARGE - have)
                await history.aadd_messages(conversation(batch, have))
                have += batch
            large = await _median_append(append, LARGE)
            loads = []
            for _ in range(3):
                fresh = S5ChatMessageHistory("bench", portal_url=portal.url, seed_phrase=phrase)
                watch = time.perf_counter()
                loaded = await fresh.aget_messages()
                loads.append(time.perf_counter() - watch)
                assert len(loaded) == LARGE + SAMPLES
                await fresh.aclose()
            await history.aclose()
            blobs = sum(1 for p in (Path(tmp) / "blobs").rglob("*") if p.is_file())
    return _rows(
        "s5_history",
        small,
        large,
        statistics.median(loads),
        messages=LARGE + SAMPLES,
        portal_blobs=blobs,
    )


def file_history_peer() -> list[dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.chat_message_histories import FileChatMessageHistory

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "history.json")
        history = FileChatMessageHistory(path)

        def append(message: BaseMessage) -> None:
            history.add_messages([message])

        history.add_messages(conversation(SMALL))
        small = _median_append_sync(append, SMALL)
        # Build up in the file's own format at once: its add_messages re-reads and
        # rewrites the whole file per message (O(n^2) to reach 10,000).
        have = [*history.messages, *conversation(LARGE - SMALL - SAMPLES, SMALL + SAMPLES)]
        Path(path).write_text(json.dumps(messages_to_dict(have)))
        large = _median_append_sync(append, LARGE)
        loads = []
        for _ in range(3):
            watch = time.perf_counter()
            loaded = FileChatMessageHistory(path).messages
            loads.append(time.perf_counter() - watch)
            assert len(loaded) == LARGE + SAMPLES
        size = Path(path).stat().st_size
    return _rows(
        "file_history_peer",
        small,
        large,
        statistics.median(loads),
        peer=True,
        messages=LARGE + SAMPLES,
        file_bytes=size,
    )


BENCHMARKS = [s5_history, file_history_peer]
