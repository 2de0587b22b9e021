"""Golden proofs: the tracker's output, byte for byte, as the code before issue 22's
last checkpoint speed-ups made it (``checkpoint_golden.json``, computed with that code).

Each scenario drives a :class:`CheckpointTracker` through one kind of use (streamed
answers cut into partial pieces, pending checkpoints settled by every call that can
settle one, empty deltas, multi-message deltas, odd strings, signatures, clocks in
other zones or with microseconds, a resumed tracker) and records every proof's JSON,
which call returned it, and ``hashed_bytes``. A faster path that changed a single byte
of a proof, or when it comes back, fails here.

Regenerate only for an intended change of the chain:
``python -m tests.unit_tests.test_checkpoint_golden > tests/unit_tests/checkpoint_golden.json``.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from langchain_fabstir.checkpoints import (
    CheckpointBoundary,
    CheckpointError,
    CheckpointProof,
    CheckpointTracker,
    verify_checkpoints,
)

GOLDEN = Path(__file__).with_name("checkpoint_golden.json")
CLIENT_KEY = "0x" + "a1" * 32
SECOND = timedelta(seconds=1)
WORDS = ("tok ", "en. ", "abc ", "déjà", "xyz ", "1234", "fooo", "bar ", "🙂", '"q\\', "\x00\u2028")


def ticking(start: datetime, step: timedelta) -> Callable[[], datetime]:
    """A clock that moves ``step`` on every reading."""
    ticks = iter(range(10**9))
    return lambda: start + step * next(ticks)


class Recorder:
    """Runs tracker calls and writes down what each returned."""

    def __init__(self, tracker: CheckpointTracker) -> None:
        self.tracker = tracker
        self.returned: list[list[Any]] = []
        self.proofs: list[CheckpointProof] = []

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.tracker, name)(*args, **kwargs)
        if isinstance(result, CheckpointProof):
            self.proofs.append(result)
            self.returned.append([len(self.returned), name, result.checkpoint_number])
        elif result is None:
            self.returned.append([len(self.returned), name, None])
        return result

    def record(self) -> dict[str, Any]:
        tracker = self.tracker
        verify_checkpoints(tracker.history(), tracker.proofs)
        return {
            "proofs": [p.to_json() for p in tracker.proofs],
            "returned": [r for r in self.returned if r[2] is not None],
            "calls": len(self.returned),
            "hashed_bytes": tracker.hashed_bytes,
            "tokens": tracker.tokens,
            "conversation_hash": tracker.conversation_hash,
            "pending": tracker.has_pending,
        }


def streamed(
    interval: int, clock: Callable[[], datetime], turns: int = 4, **kwargs: Any
) -> Recorder:
    """The bench's shape: a system prompt, turns of one-token chunks, ``end_message``."""
    tracker = CheckpointTracker("golden-1", checkpoint_interval=interval, clock=clock, **kwargs)
    run = Recorder(tracker)
    run("add_message", "system", "You are a helpful assistant.")
    for turn in range(turns):
        run("add_message", "user", f"Question {turn}: tell me more.")
        run("add_message", "assistant")
        for i in range(23 + 9 * turn):
            run("on_tokens", WORDS[(i * 5 + turn) % len(WORDS)], 1)
        run("end_message")
    return run


def every_call(clock: Callable[[], datetime]) -> Recorder:
    """Pending checkpoints settled by each call that can, empty deltas, odd text."""
    run = Recorder(CheckpointTracker("golden-2", checkpoint_interval=3, clock=clock))
    run("add_message", "system", "Be brief.")
    run("add_message", "user", 'lone \ud800 surrogate, "quotes" and \\ back')
    run("add_message", "assistant")
    for text, n in [("a", 1), ("", 1), ("bc", 2), ("", 0), ("d", 1), ("ef", 1)]:
        run("on_tokens", text, n)
    run("add_tokens", 4)
    run("request_checkpoint")  # pending at the end of the open message
    run("request_checkpoint", 11)  # moves the pending count
    run("append_to_last", "gh")  # settles it as partial
    run("add_tokens", 1)
    run("request_checkpoint")
    run("add_message", "tool", "result 日本")  # settles it as whole
    run("checkpoint")  # multi-message? no: just the tool message, closed
    run("checkpoint")  # the same boundary: an empty delta
    run("add_message", "weird role \x1f", "")
    run("add_message", "user", "two messages")
    run("add_message", "assistant", "at once")
    run("checkpoint", 20)  # three messages in one delta, an explicit count
    run("add_tokens", 10)  # the count goes on past the explicit one
    run("add_message", "assistant")
    for i in range(7):
        run("on_tokens", WORDS[i], 1)
    run("checkpoint", timestamp=datetime(2024, 2, 29, 23, 59, 59, 999999))
    run("add_message", "user", "closed now")
    run("end_message")
    run("add_tokens", 5)
    run("request_checkpoint")  # a closed message: proven at once
    run("on_tokens", "", 3)
    return run


def resumed(clock: Callable[[], datetime]) -> Recorder:
    """A tracker that goes on from another one's history and proofs (stopped mid-answer)."""
    first = streamed(10, clock).tracker
    proofs = first.proofs[:-1]
    run = Recorder(CheckpointTracker.resume("golden-1", first.history(), proofs, clock=clock))
    run.tracker.checkpoint_interval = 4
    run("add_message", "user", "and then?")
    run("add_message", "assistant")
    for i in range(17):
        run("on_tokens", WORDS[i % len(WORDS)], 1)
    run("end_message")
    return run


def scenarios() -> Iterator[tuple[str, Recorder]]:
    utc = datetime(2024, 1, 10, 12, 0, tzinfo=timezone.utc)
    india = timezone(timedelta(hours=5, minutes=30))
    naive = datetime(2030, 5, 1, 1, 2, 3, 456789)
    yield "interval 7, utc ms clock", streamed(7, ticking(utc, timedelta(milliseconds=1500)))
    yield "interval 1, us clock", streamed(1, ticking(utc, timedelta(microseconds=1234567)), 2)
    yield "interval 5, other zone", streamed(5, ticking(utc.astimezone(india), SECOND))
    yield "interval 4, naive clock", streamed(4, ticking(naive, timedelta(microseconds=7)))
    yield "interval 6, signed", streamed(6, ticking(utc, 2 * SECOND), signing_key=CLIENT_KEY)
    yield "every call", every_call(ticking(utc, timedelta(milliseconds=250, microseconds=3)))
    yield "resumed", resumed(ticking(utc, timedelta(seconds=3)))


def golden() -> dict[str, Any]:
    return {name: run.record() for name, run in scenarios()}


def test_the_tracker_makes_the_golden_proofs() -> None:
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = golden()
    assert list(got) == list(want)
    for name in want:
        for key in want[name]:
            assert got[name][key] == want[name][key], f"{name}: {key}"


def validated(proof: CheckpointProof) -> CheckpointProof:
    """``proof`` made again the slow way: ``CheckpointProof(...)`` with validation."""
    fields = {
        "session_id": proof.session_id,
        "checkpoint_number": proof.checkpoint_number,
        "conversation_hash": proof.conversation_hash,
        "token_count": proof.token_count,
        "timestamp": proof.timestamp,
        "boundary": CheckpointBoundary(
            message_index=proof.boundary.message_index, char_offset=proof.boundary.char_offset
        ),
        "start_token": proof.start_token,
        "end_token": proof.end_token,
    }
    made = CheckpointProof(**fields)
    if proof.signature is not None:
        made = made.model_copy(update={"signature": proof.signature, "signer": proof.signer})
    return made


def test_every_proof_is_the_one_validation_makes() -> None:
    """The proofs a tracker returns, and those its ``proofs`` gives later (built from the
    fields it kept), are the validated proofs: equal, same fields set, same types."""
    for name, run in scenarios():
        kept = run.tracker.proofs
        assert run.tracker.proofs == kept and all(
            a is b for a, b in zip(run.tracker.proofs, kept, strict=True)
        ), name  # built once
        assert run.tracker.last_proof is kept[-1]
        by_number = {p.checkpoint_number: p for p in kept}
        for got in [*run.proofs, *kept]:
            want = validated(got)
            assert got == want and got.to_json() == want.to_json(), name
            assert got == by_number[got.checkpoint_number], name
            assert got.model_fields_set == want.model_fields_set, name
            assert got.boundary.model_fields_set == want.boundary.model_fields_set, name
            assert got.__pydantic_extra__ is None and got.__pydantic_private__ is None
            assert got.model_dump() == want.model_dump(), name
            assert [type(v) for v in got.__dict__.values()] == [
                type(v) for v in want.__dict__.values()
            ], name
            assert got.model_fields_set is not kept[0].model_fields_set or got is kept[0]


def test_the_short_way_refuses_what_the_long_way_refuses() -> None:
    """A due checkpoint below the last one's count (an interval changed to a negative
    one after an explicit count ahead of the stream) is a typed error, never a proof
    with ``start_token > end_token``."""
    tracker = CheckpointTracker("s", checkpoint_interval=5)
    tracker.add_message("user", "x")
    tracker.add_message("assistant")
    tracker.checkpoint(token_count=10)
    tracker.add_message("assistant")
    tracker.checkpoint_interval = -100
    with pytest.raises(CheckpointError) as err:
        tracker.on_tokens("a", 1)
    assert err.value.details["reason"] == "bad_args" and len(tracker.proofs) == 1


def test_a_tracker_keeps_a_proofs_fields_not_the_model() -> None:
    """A session's tracker lives as long as the session (on a host: one per session it
    serves); it keeps each unsigned proof's fields (~330 bytes), not the model (~1.9 KB with its
    boundary, dicts and sets), and builds the model when ``proofs`` is read."""
    tracker = CheckpointTracker("memory", checkpoint_interval=10)
    tracker.add_message("user", "go")
    tracker.add_message("assistant")
    words = ["word "] * 10
    for word in words:  # warm: the first message's structures
        tracker.on_tokens(word)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            for word in words:
                tracker.on_tokens(word)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    text = 200 * 10 * 8  # the message's list of pieces grows by a pointer per token
    assert len(tracker.proofs) == 200  # (the 201st is pending)
    assert (kept - text) / 200 < 600, kept


def test_the_default_clock_stamps_utc_milliseconds_of_now() -> None:
    """The default clock's proofs: the golden fields, a UTC timestamp at ms precision."""
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))["interval 7, utc ms clock"]
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    run = streamed(7, CheckpointTracker("x")._clock)
    after = datetime.now(timezone.utc)
    record = run.record()
    for key in ("returned", "calls", "hashed_bytes", "tokens", "conversation_hash", "pending"):
        assert record[key] == want[key]
    for got, expected in zip(run.tracker.proofs, want["proofs"], strict=True):
        stamp = got.timestamp
        assert stamp.tzinfo is timezone.utc and stamp.microsecond % 1000 == 0
        assert before <= stamp <= after
        assert got.to_dict()["timestamp"].endswith("Z")
        same = CheckpointProof.from_json(expected).model_copy(update={"timestamp": stamp})
        assert got == same and got.to_json() == same.to_json()
        assert CheckpointProof.from_json(got.to_json()) == got


_MS_LIMIT = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last datetime


@given(
    readings=st.lists(
        st.tuples(
            st.integers(0, _MS_LIMIT) | st.sampled_from([0, 999, 1000, 1_704_888_000_999]),
            st.integers(0, 999_999),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_default_clock_is_the_system_clock_cut_to_milliseconds(
    readings: list[tuple[int, int]],
) -> None:
    """The default clock gives proofs a timestamp ready as it is (UTC, whole ms), so
    making one validates and converts nothing: each reading of the system clock, cut to
    ms, whatever came before it (the same second, a later one, an earlier one)."""
    import langchain_fabstir.checkpoints.tracker as tracker_module

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for ms, sub_ms in readings:
        reading = ms * 1_000_000 + sub_ms
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tracker_module, "time_ns", lambda reading=reading: reading)
            stamp = tracker_module._utc_now()
        assert stamp == epoch + timedelta(milliseconds=ms)
        assert stamp.tzinfo is timezone.utc and stamp.microsecond % 1000 == 0


if __name__ == "__main__":
    print(json.dumps(golden(), indent=1, ensure_ascii=True))
