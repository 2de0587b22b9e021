"""Every frame of PROTOCOL.md section 1, parsed and encoded; malformed input is typed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_fabstir.errors import ProtocolError
from langchain_fabstir.wire.frames import (
    EXCERPT_LIMIT,
    Connected,
    ErrorFrame,
    InferenceRequest,
    PromptFrame,
    SessionInit,
    SessionInitAck,
    StreamCancel,
    StreamChunk,
    StreamEnd,
    UnknownFrame,
    encode_frame,
    parse_frame,
)

# The documented examples, verbatim from PROTOCOL.md.
DOCUMENTED: list[tuple[str, type, dict[str, Any]]] = [
    (
        '{"type":"connected","message":"WebSocket connected successfully"}',
        Connected,
        {"message": "WebSocket connected successfully", "features": []},
    ),
    (
        '{"type":"session_init","chain_id":84532,"session_id":"123","jobId":"123",'
        '"user_address":"0xabc","id":"1700000000000-ab12c"}',
        SessionInit,
        {"chain_id": 84532, "session_id": "123", "job_id": 123, "id": "1700000000000-ab12c"},
    ),
    (
        '{"type":"session_init_ack","status":"success","session_id":"123","job_id":123,'
        '"chain_id":84532,"message":"Session initialized successfully","id":"1700000000000-ab12c"}',
        SessionInitAck,
        {"status": "success", "session_id": "123", "job_id": 123, "id": "1700000000000-ab12c"},
    ),
    (
        '{"type":"prompt","chain_id":84532,"jobId":"123","prompt":"Explain async/await",'
        '"request":{"model":"llama-2-13b-chat","prompt":"Explain async/await","max_tokens":500,'
        '"temperature":0.7,"stream":true,"conversation_context":[{"role":"system","content":"s"},'
        '{"role":"user","content":"u"},{"role":"assistant","content":"a"}]},'
        '"id":"1700000000001-cd34e"}',
        PromptFrame,
        {"prompt": "Explain async/await", "id": "1700000000001-cd34e", "job_id": "123"},
    ),
    (
        '{"type":"stream_chunk","content":"Hel","tokens":1,"id":"1700000000001-cd34e"}',
        StreamChunk,
        {"content": "Hel", "tokens": 1, "id": "1700000000001-cd34e"},
    ),
    (
        '{"type":"stream_chunk","content":"","tokens":0,"id":"x"}',
        StreamChunk,
        {"content": "", "tokens": 0},
    ),
    (
        '{"type":"stream_end","reason":"complete","tokens_used":42,"id":"x","finish_reason":"stop",'
        '"usage":{"prompt_tokens":25,"completion_tokens":42,"total_tokens":67,'
        '"context_window_size":32768}}',
        StreamEnd,
        {"reason": "complete", "tokens_used": 42, "finish_reason": "stop"},
    ),
    (
        '{"type":"stream_end","reason":"complete","tokens_used":42}',
        StreamEnd,
        {"reason": "complete", "tokens_used": 42, "usage": None, "finish_reason": None},
    ),
    (
        '{"type":"error","code":"TOKEN_LIMIT_EXCEEDED","message":"too long","prompt_tokens":33500,'
        '"context_window_size":32768,"id":"x"}',
        ErrorFrame,
        {"code": "TOKEN_LIMIT_EXCEEDED", "prompt_tokens": 33500, "context_window_size": 32768},
    ),
    (
        '{"type":"error","error":"Rate limit exceeded, retry after 60 seconds","id":"x"}',
        ErrorFrame,
        {"error": "Rate limit exceeded, retry after 60 seconds"},
    ),
    (
        '{"type":"stream_cancel","session_id":"123","reason":"user_cancelled"}',
        StreamCancel,
        {"session_id": "123", "reason": "user_cancelled"},
    ),
    (
        '{"type":"stream_end","reason":"cancelled","tokens_used":17,"finish_reason":"cancelled",'
        '"session_id":"123"}',
        StreamEnd,
        {"reason": "cancelled", "tokens_used": 17, "session_id": "123", "id": None},
    ),
]


@pytest.mark.parametrize(("raw", "cls", "fields"), DOCUMENTED)
def test_documented_frames_parse_and_round_trip(
    raw: str, cls: type, fields: dict[str, Any]
) -> None:
    frame = parse_frame(raw)
    assert type(frame) is cls
    for key, value in fields.items():
        assert getattr(frame, key) == value, key
    # Encoding and parsing again gives the same frame.
    again = parse_frame(encode_frame(frame))
    assert again == frame


def test_prompt_nested_request_and_effective_request() -> None:
    frame = parse_frame(DOCUMENTED[3][0])
    assert isinstance(frame, PromptFrame) and frame.request is not None
    assert [m.role for m in frame.request.conversation_context] == ["system", "user", "assistant"]
    req = frame.effective_request(session_id="123", job_id=123)
    assert (req.session_id, req.job_id, req.max_tokens) == ("123", 123, 500)
    # `inference` uses the request as it is: no session fields merged in.
    inf = PromptFrame(type="inference", request=frame.request)
    assert inf.effective_request(session_id="123", job_id=123).session_id is None


def test_aliases_are_accepted() -> None:
    a = parse_frame('{"type":"session_init","sessionId":"9","job_id":9,"chainId":"8453"}')
    assert isinstance(a, SessionInit)
    assert (a.session_id, a.job_id, a.chain_id) == ("9", 9, 8453)
    r = InferenceRequest.model_validate(
        {"model": "m", "prompt": "p", "max_tokens": 3, "jobId": 5, "chainId": 1}
    )
    assert (r.job_id, r.chain_id) == (5, 1)


def test_request_fields_real_hosts_reject_are_rejected() -> None:
    # A string job_id inside `request`, or a missing max_tokens, do not deserialize.
    for bad in (
        {"model": "m", "prompt": "p", "max_tokens": 3, "job_id": "5"},
        {"model": "m", "prompt": "p"},
        {"model": "m", "prompt": "p", "max_tokens": "3"},
    ):
        with pytest.raises(ProtocolError):
            parse_frame(json.dumps({"type": "prompt", "request": bad}))


def test_unknown_type_is_an_unknown_frame() -> None:
    frame = parse_frame('{"type":"checkpoint_v9","data":[1,2]}')
    assert isinstance(frame, UnknownFrame)
    assert frame.type == "checkpoint_v9"
    assert frame.model_extra == {"data": [1, 2]}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json", "not valid JSON"),
        ("[1,2,3]", "not a JSON object"),
        ('"text"', "not a JSON object"),
        ('{"content":"x"}', "no string 'type'"),
        ('{"type":7}', "no string 'type'"),
        ('{"type":"stream_chunk","content":5}', "malformed 'stream_chunk'"),
        ('{"type":"stream_end","tokens_used":"many"}', "malformed 'stream_end'"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
def test_malformed_frames_raise_protocol_error(raw: str | bytes, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(raw)
    assert why in info.value.message
    assert info.value.code == "PROTOCOL_ERROR"
    assert "excerpt" in info.value.details


def test_error_excerpt_is_bounded() -> None:
    huge = '{"type":"stream_chunk","content":"x","tokens":"' + "1" * 100_000 + '"}'
    with pytest.raises(ProtocolError) as info:
        parse_frame(huge)
    assert len(info.value.message) < EXCERPT_LIMIT + 200
    assert f"{len(huge)} chars" in info.value.message


def test_encoder_omits_none_and_uses_wire_names() -> None:
    text = encode_frame(SessionInit(session_id="1", job_id=1, id="a"))
    assert json.loads(text) == {
        "type": "session_init",
        "chain_id": 84532,
        "session_id": "1",
        "job_id": 1,
        "id": "a",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
frame_types = st.sampled_from(
    [
        "session_init",
        "prompt",
        "inference",
        "stream_cancel",
        "connected",
        "session_init_ack",
        "stream_chunk",
        "stream_end",
        "error",
        "other",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_random_bytes_only_raise_protocol_error(raw: str | bytes) -> None:
    try:
        parse_frame(raw)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(frame_types, st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_mutated_frames_only_raise_protocol_error(kind: str, fields: dict[str, Any]) -> None:
    raw = json.dumps({**fields, "type": kind})
    try:
        frame = parse_frame(raw)
    except ProtocolError as exc:
        assert exc.details["excerpt"]
    else:
        assert frame.type == kind


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([d[0] for d in DOCUMENTED]), st.data())
def test_documented_frames_with_one_field_mutated(raw: str, data: st.DataObject) -> None:
    obj = json.loads(raw)
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(json_values)
    try:
        parse_frame(json.dumps(obj))
    except ProtocolError:
        pass


def test_hostile_nesting_is_refused_not_a_crash() -> None:
    # 100,000 brackets would overflow the C stack of the JSON decoder (a dependency
    # raises the recursion limit): refused as a typed error before decoding.
    for raw in ("[" * 100_000, '{"a":' * 50_000, b"[" * 100_000):
        with pytest.raises(ProtocolError) as info:
            parse_frame(raw)
        assert "deeper" in info.value.message
    # Brackets inside strings are not nesting.
    frame = parse_frame(json.dumps({"type": "stream_chunk", "content": "[" * 5000, "tokens": 1}))
    assert isinstance(frame, StreamChunk) and frame.content == "[" * 5000
