"""The fast paths of a history load and of a checkpoint (issue 22, "two figures that got
worse"): each is the slow path's result, exactly, and each keeps its bounds.

- the JSON depth bound: a linear scan (text of escaped quotes made the old one quadratic),
  the same verdict as a character-by-character reference;
- history records: plain messages are built without validation, equal to the validated
  ones; a record is parsed alone, so its depth bound costs O(1);
- checkpoints: a proof built without validation equals the validated one; the delta's
  canonical JSON is written directly, the same text as ``json.dumps``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)
from pydantic import ValidationError

from langchain_fabstir import _json
from langchain_fabstir import chat_message_histories as histories
from langchain_fabstir.checkpoints import CheckpointProof, CheckpointTracker, canonical_json
from langchain_fabstir.checkpoints.hashchain import delta_json
from langchain_fabstir.checkpoints.proof import (
    CheckpointBoundary,
    made_proof,
    recover_proof_signer,
    sign_proof,
)
from langchain_fabstir.errors import IntegrityError

REPO = str(Path(__file__).resolve().parents[2])
SLOW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the JSON depth bound -------------------------------------------------------------------


def reference_depth(text: str) -> int:
    """The deepest nesting a JSON decoder can reach on ``text``: brackets outside strings,
    a string running to its closing quote (or to the end when it has none)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


@SLOW
@given(text=st.text(alphabet='[]{}"\\ a,:é\n', max_size=300), limit=st.integers(0, 12))
def test_the_depth_scan_matches_a_character_by_character_reference(text: str, limit: int) -> None:
    expected = reference_depth(text) > limit
    assert _json.nests_deeper(text, limit) is expected
    assert _json.nests_deeper(text.encode("utf-8"), limit) is expected


def test_the_depth_scan_stops_early_and_spans_chunks() -> None:
    deep = "[" * 200_000 + "]" * 200_000
    assert _json.nests_deeper(deep, 64)
    assert not _json.nests_deeper("[]" * 100_000 + "[" * 64 + "]" * 64, 64)
    assert _json.nests_deeper(b"[]" * 100_000 + b"[" * 65, 64)
    assert not _json.nests_deeper('"' + "[" * 70_000, 64)  # an unterminated string


def test_text_of_escaped_quotes_is_scanned_in_linear_time() -> None:
    # '"\"\"\"...': every quote opened a string the old scan followed to the end: O(n^2),
    # about 25 minutes for these 400 kB (a hostile host's frame or HTTP body).
    code = textwrap.dedent(
        """
        from langchain_fabstir._json import loads_untrusted, too_deep
        text = '"' + '\\\\"' * 200_000 + "[" * 100
        assert not too_deep(text, 64)
        try:
            loads_untrusted(text)
        except ValueError as exc:
            assert "Unterminated string" in str(exc), exc
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- history records --------------------------------------------------------------------


def _reference(record: bytes) -> BaseMessage:
    rec = histories.upgrade_record(json.loads(record))
    return messages_from_dict([rec])[0]


def assert_same_message(got: BaseMessage, want: BaseMessage) -> None:
    assert type(got) is type(want)
    assert got == want
    assert got.model_fields_set == want.model_fields_set
    assert got.__pydantic_extra__ == want.__pydantic_extra__
    assert got.model_dump() == want.model_dump()
    assert got.model_dump_json() == want.model_dump_json()


_text = st.text(max_size=20)
_ids = st.none() | _text
_usage = st.none() | st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 9), "output_tokens": st.integers(0, 9)},
    optional={
        "total_tokens": st.integers(0, 9) | st.booleans(),
        "input_token_details": st.dictionaries(
            st.sampled_from(["audio", "cache_read", "cache_creation", "other"]),
            st.integers(0, 9) | st.booleans(),
        ),
        "output_token_details": st.dictionaries(
            st.sampled_from(["audio", "reasoning"]), st.integers(0, 9)
        ),
        "extra": st.integers(0, 9),
    },
)
_kwargs = st.dictionaries(
    st.sampled_from(["a", "tool_calls", "refusal"]), st.none() | _text | st.just([])
)
_data = st.fixed_dictionaries(
    {
        "content": _text | st.lists(_text | st.just({"type": "text", "text": "x"}), max_size=2),
        "additional_kwargs": _kwargs,
        "response_metadata": st.dictionaries(_text, _text | st.integers(), max_size=2),
        "name": _ids | st.integers(0, 3),
        "id": _ids | st.integers(0, 3),
    },
    optional={
        "tool_calls": st.just([]) | st.just([{"name": "f", "args": {}, "id": "c1"}]),
        "invalid_tool_calls": st.just([]),
        "usage_metadata": _usage,
        "extra_field": st.integers(),
    },
)


@SLOW
@given(
    kind=st.sampled_from(["human", "ai", "system", "tool"]), data=_data, v=st.sampled_from([0, 1])
)
def test_a_decoded_record_is_the_validated_message(kind: str, data: dict[str, Any], v: int) -> None:
    data = {**data, "type": kind}
    if kind == "tool":
        data["tool_call_id"] = "c1"
    if kind != "ai":
        for key in ("tool_calls", "invalid_tool_calls", "usage_metadata"):
            data.pop(key, None)
    record = json.dumps({"type": kind, "data": data, **({"v": v} if v else {})}).encode()
    try:
        want = _reference(record)
    except (ValidationError, TypeError, ValueError):
        with pytest.raises(IntegrityError):
            histories.decode_messages([record])
        return
    assert_same_message(histories.decode_messages([record])[0], want)


@pytest.mark.parametrize(
    "message",
    [
        HumanMessage("hi", id="h1", name="ada"),
        SystemMessage("be brief"),
        AIMessage(
            "yo",
            id="run-1",
            usage_metadata={
                "input_tokens": 1,
                "output_tokens": 2,
                "total_tokens": 3,
                "input_token_details": {"cache_read": 1},
                "output_token_details": {"reasoning": 1},
            },
            response_metadata={"model_name": "m", "finish_reason": "stop"},
        ),
        AIMessage("", tool_calls=[{"name": "f", "args": {"q": 1}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
    ],
)
def test_every_written_message_decodes_to_the_validated_one(message: BaseMessage) -> None:
    record = histories.encode_message(message)
    got = histories.decode_messages([record])[0]
    assert_same_message(got, _reference(record))
    assert got == message


def _plain_records(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        message: BaseMessage = (
            HumanMessage(f"question {i} " * 30)
            if i % 2 == 0
            else AIMessage(
                f"answer [{i}] {{x}} " * 30,
                id=f"run-{i}",
                usage_metadata={"input_tokens": 4, "output_tokens": 8, "total_tokens": 12},
                response_metadata={"model_name": "m", "finish_reason": "stop"},
            )
        )
        out.append(histories.encode_message(message))
    return out


def test_a_history_load_validates_and_scans_only_what_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading 10,000 messages cost 0.8 s where the file peer's 0.3: one depth scan over
    the whole batch and one pydantic validation per message. Plain records need neither:
    each is parsed alone (its bound is O(1)) and built as validation would build it."""
    scans: list[int] = []
    validated: list[str] = []
    real_scan = _json.nests_deeper
    real_from_dict = histories.messages_from_dict

    def scan(text: Any, limit: int = _json.MAX_DEPTH) -> bool:
        scans.append(len(text))
        return real_scan(text, limit)

    def from_dict(dicts: Any) -> list[BaseMessage]:
        validated.extend(d["type"] for d in dicts)
        return real_from_dict(dicts)

    monkeypatch.setattr(_json, "nests_deeper", scan)
    monkeypatch.setattr(histories, "messages_from_dict", from_dict)
    records = _plain_records(200)
    messages = histories.decode_messages(records)
    assert [m.content for m in messages] == [_reference(r).content for r in records]
    assert scans == [] and validated == []
    # a record that is not plain is validated (alone), a deep one is still refused
    odd = histories.encode_message(AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}]))
    assert histories.decode_messages([odd, *records[:2]])[0].tool_calls[0]["name"] == "f"
    assert validated == ["ai"]
    deep = b'{"v":1,"type":"human","data":{"content":' + b"[" * 500 + b"]" * 500 + b"}}"
    with pytest.raises(IntegrityError, match="record 1"):
        histories.decode_messages([records[0], deep])
    assert scans  # the deep record was measured


# --- checkpoints --------------------------------------------------------------------------

_zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), None])


@SLOW
@given(
    session_id=st.text(max_size=8),
    number=st.integers(-1, 10**6),
    digest=st.binary(min_size=32, max_size=32),
    count=st.integers(-1, 10**9),
    start=st.integers(-1, 10**9),
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    zone=_zones,
    boundary=st.tuples(st.integers(-1, 10**6), st.integers(-1, 10**6)),
)
def test_a_made_proof_is_the_validated_proof(
    session_id: str,
    number: int,
    digest: bytes,
    count: int,
    start: int,
    moment: datetime,
    zone: timezone | None,
    boundary: tuple[int, int],
) -> None:
    when = moment if zone is None else moment.replace(tzinfo=zone)
    try:
        want = CheckpointProof(
            session_id=session_id,
            checkpoint_number=number,
            conversation_hash="0x" + digest.hex(),
            token_count=count,
            timestamp=when,
            boundary=CheckpointBoundary(message_index=boundary[0], char_offset=boundary[1]),
            start_token=start,
            end_token=count,
        )
    except ValidationError:
        with pytest.raises(ValidationError):
            made_proof(session_id, number, digest, count, when, boundary, start)
        return
    got = made_proof(session_id, number, digest, count, when, boundary, start)
    assert got == want
    assert got.model_fields_set == want.model_fields_set
    assert got.boundary.model_fields_set == want.boundary.model_fields_set
    assert got.to_dict() == want.to_dict() and got.to_json() == want.to_json()
    assert got.model_dump_json() == want.model_dump_json()
    assert got.timestamp.tzinfo is timezone.utc and got.timestamp == want.timestamp
    key = "0x" + "42" * 32
    assert recover_proof_signer(sign_proof(got, key)) == sign_proof(want, key).signer
    assert sign_proof(got, key) == sign_proof(want, key)


def test_a_checkpoint_runs_no_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proof every 100 tokens cost 1.36x a proof every 10,000 (aim <= 1.2): about half
    of a checkpoint was pydantic validating the fields the tracker had just made."""
    validations: list[dict[str, Any]] = []
    real_init = CheckpointProof.__init__

    def init(self: CheckpointProof, **data: Any) -> None:
        validations.append(data)
        real_init(self, **data)

    monkeypatch.setattr(CheckpointProof, "__init__", init)
    tracker = CheckpointTracker("s-1", checkpoint_interval=3)
    tracker.add_message("user", "count")
    tracker.add_message("assistant")
    for word in ["one", " two", " three", " four", " five", " six", " seven"]:
        tracker.on_tokens(word)
    tracker.checkpoint()
    assert len(tracker.proofs) == 3 and validations == []
    # the proofs are what validation makes of them, and they verify
    for proof in tracker.proofs:
        assert CheckpointProof.from_dict(proof.to_dict()) == proof
    from langchain_fabstir.checkpoints import verify_checkpoints

    verify_checkpoints(tracker.history(), tracker.proofs)


_piece = st.fixed_dictionaries(
    {"role": st.text(max_size=6) | st.integers(0, 3), "content": st.text(max_size=30)},
    optional={"partial": st.sampled_from([True, False, 1]), "extra": st.integers()},
)


@SLOW
@given(delta=st.lists(_piece, max_size=4))
def test_the_delta_json_is_canonical_json(delta: list[dict[str, Any]]) -> None:
    assert delta_json(delta) == canonical_json(delta)


def test_the_delta_json_of_odd_strings_is_canonical_json() -> None:
    odd = ["\ud800 lone", 'quote " back \\ slash', "\x00\x1f\u2028 ✓ 日本", ""]
    for text in odd:
        for partial in (False, True):
            piece: dict[str, Any] = {"role": text, "content": text}
            if partial:
                piece["partial"] = True
            assert delta_json([piece, piece]) == canonical_json([piece, piece])


# --- HTTP clients -----------------------------------------------------------------------


async def test_a_new_http_client_does_not_load_the_ca_bundle_again() -> None:
    """Each S5 access, host call and CLI command makes a client; each one loaded the CA
    bundle into a new TLS context (~25 ms of CPU, ~8% of a 10,000-message history load).
    They share httpx's default context now, verifying exactly as before."""
    import ssl
    import time

    from langchain_fabstir import _http
    from langchain_fabstir.s5 import S5PortalClient

    _http.client()  # the first one builds the context
    start = time.process_time()
    clients = [S5PortalClient("http://127.0.0.1:9") for _ in range(10)]
    clients += [S5PortalClient("https://portal.example") for _ in range(10)]
    spent = time.process_time() - start
    assert spent < 0.15, f"20 clients took {spent:.3f} s of CPU"
    context = _http._tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    for c in clients:
        await c.aclose()
