"""The answer state machine, fed with frames only: no socket, no event loop, no clock."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from langchain_fabstir.errors import (
    AnswerTooLargeError,
    AnswerTruncatedError,
    ChunkOrderError,
    ChunkReplayError,
    DecryptionFailedError,
    DiffusionUnavailableError,
    EncryptionModeError,
    FabstirError,
    HostError,
    ImageGenerationError,
    InvalidRequestError,
    PromptBlockedError,
    ProtocolError,
    RateLimitedError,
    TokenLimitExceededError,
)
from langchain_fabstir.sessions.answer import (
    AnswerMachine,
    AnswerState,
    Ended,
    Failed,
    HostCheckpoint,
    ImageAnswer,
    Overrun,
    Resumed,
    Text,
    UsageReported,
)
from langchain_fabstir.sessions.sealed import SealedConversation
from langchain_fabstir.wire.encryption import IMAGE_AAD, SessionCipher, xchacha_encrypt

RID = "r-1"


def chunk(text: str, rid: str | None = RID, tokens: int = 1) -> str:
    frame: dict[str, Any] = {"type": "stream_chunk", "content": text, "tokens": tokens}
    if rid is not None:
        frame["id"] = rid
    return json.dumps(frame)


def end(rid: str | None = RID, **extra: Any) -> str:
    frame: dict[str, Any] = {"type": "stream_end", "reason": "complete", "tokens_used": 2}
    if rid is not None:
        frame["id"] = rid
    return json.dumps({**frame, **extra})


def feed(machine: AnswerMachine, *frames: str) -> list[Any]:
    out: list[Any] = []
    for frame in frames:
        out += machine.receive_raw(frame)
    return out


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Text)]


def failure(events: list[Any]) -> FabstirError:
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1, events
    return failed[0].error


# --- states and events ------------------------------------------------------------------


def test_a_plain_answer_goes_through_its_states() -> None:
    m = AnswerMachine(RID, host_url="ws://h", session_id="s", model="m")
    assert m.state is AnswerState.AWAITING_FIRST and m.first
    assert feed(m, chunk("Hel")) == [Text("Hel", 1)]
    assert m.state is AnswerState.STREAMING and not m.first and m.progressed
    assert feed(m, chunk("lo", tokens=2)) == [Text("lo", 2)]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 0}
    events = feed(m, end(usage=usage, vlm_tokens=7))
    assert [type(e) for e in events] == [UsageReported, Ended]
    reported, ended = events
    assert reported.vlm_tokens == 7 and reported.tokens_used == 2
    assert reported.usage is not None and reported.usage.total_tokens == 5  # filled in
    assert ended.result is m.result and not ended.close_socket
    assert m.state is AnswerState.ENDED and m.finished
    r = m.result
    assert (r.text, r.finish_reason, r.tokens_used, r.request_id) == ("Hello", "stop", 2, RID)
    assert m.chunks_received == 2 and m.tokens_received == 3


def test_the_final_empty_chunk_is_no_text() -> None:
    m = AnswerMachine(RID)
    assert feed(m, chunk("", tokens=0)) == []
    assert m.state is AnswerState.STREAMING and m.progressed


def test_frames_of_other_answers_are_ignored_and_are_not_progress() -> None:
    m = AnswerMachine(RID)
    stale = [
        chunk("old", rid="r-0"),
        end(rid="r-0"),
        json.dumps({"type": "error", "id": "r-0", "error": "boom"}),
        json.dumps({"type": "stream_end", "reason": "cancelled"}),  # an earlier cancel's end
        json.dumps({"type": "session_init_ack", "status": "success"}),
        json.dumps({"type": "something_new", "x": 1}),
    ]
    for frame in stale:
        assert m.receive_raw(frame) == [], frame
        assert not m.progressed
    assert m.state is AnswerState.AWAITING_FIRST
    assert texts(feed(m, chunk("ok"), end())) == ["ok"]


def test_a_host_error_fails_the_answer_when_its_end_comes() -> None:
    m = AnswerMachine(RID, host_url="ws://h", session_id="s")
    assert feed(m, json.dumps({"type": "error", "id": RID, "error": "Invalid request"})) == []
    assert m.state is AnswerState.FAILING and not m.first
    error = failure(feed(m, json.dumps({"type": "stream_end", "reason": "error", "id": RID})))
    assert isinstance(error, InvalidRequestError)
    assert error.host_url == "ws://h" and error.session_id == "s"
    assert m.finished  # (the host ended it: the socket is in a known state)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ({"error": "Rate limit exceeded, retry after 2 seconds"}, RateLimitedError),
        ({"code": "TOKEN_LIMIT_EXCEEDED", "message": "too long"}, TokenLimitExceededError),
        ({"error": "kaput"}, HostError),
    ],
)
def test_host_errors_are_typed(frame: dict[str, Any], kind: type[FabstirError]) -> None:
    m = AnswerMachine(RID)
    events = feed(m, json.dumps({"type": "error", **frame}), end(reason="error"))
    assert isinstance(failure(events), kind)


def test_an_end_with_reason_error_and_no_details_fails() -> None:
    m = AnswerMachine(RID)
    assert isinstance(failure(feed(m, chunk("a"), end(reason="error"))), HostError)


def test_an_error_piece_is_held_until_what_follows_says_what_it_was() -> None:
    m = AnswerMachine(RID)
    assert feed(m, chunk("Error: not really")) == []  # held
    assert texts(feed(m, chunk(" text"))) == ["Error: not really", " text"]
    m2 = AnswerMachine(RID)
    error = failure(feed(m2, chunk("Error: out of memory"), end()))
    assert isinstance(error, HostError) and str(error).endswith("out of memory")


def test_host_checkpoints_are_events() -> None:
    m = AnswerMachine(RID)
    proof = {"checkpointNumber": 3, "sig": "x"}
    (event,) = feed(m, json.dumps({"type": "checkpoint", "id": RID, "proof": proof}))
    assert isinstance(event, HostCheckpoint) and event.number == 3 and event.proof == proof
    assert feed(m, json.dumps({"type": "checkpoint", "id": "r-0", "proof": proof})) == []


# --- bad frames -> typed errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[" * 5000,
        json.dumps(["not", "a", "frame", "object"]),
        json.dumps({"type": "stream_chunk", "id": RID, "content": 5}),
        json.dumps({"type": "stream_end", "id": RID, "tokens_used": "many"}),
    ],
)
def test_bad_frames_fail_with_protocol_error(raw: str) -> None:
    m = AnswerMachine(RID, host_url="ws://h")
    error = failure(m.receive_raw(raw))
    assert isinstance(error, ProtocolError) and error.host_url == "ws://h"
    assert m.state is AnswerState.FAILED and not m.finished


def test_an_encrypted_frame_on_a_plaintext_socket_is_refused() -> None:
    m = AnswerMachine(RID)
    error = failure(m.receive_raw(json.dumps({"type": "encrypted_chunk", "payload": {}})))
    assert isinstance(error, EncryptionModeError)


# --- caps -------------------------------------------------------------------------------


def test_past_max_tokens_the_client_stops_the_answer() -> None:
    m = AnswerMachine(RID, max_tokens=4, token_allowance=2)
    events = feed(m, *[chunk("w") for _ in range(7)])
    assert texts(events) == ["w"] * 6
    assert isinstance(events[-1], Overrun) and events[-1].error is None
    assert m.state is AnswerState.STOPPED and m.finished
    assert m.result.finish_reason == "length" and m.result.metadata["host_overran_max_tokens"]


def test_past_max_chars_the_answer_fails() -> None:
    m = AnswerMachine(RID, max_chars=10)
    events = feed(m, chunk("x" * 6), chunk("y" * 6))
    assert isinstance(events[-1], Overrun)
    assert isinstance(events[-1].error, AnswerTooLargeError)
    assert m.state is AnswerState.FAILED


# --- resume and continuation ------------------------------------------------------------


def test_an_exact_resume_waits_for_its_confirmation() -> None:
    m = AnswerMachine(RID)
    feed(m, chunk("a"), chunk("b"))
    resumed = m.reattach(host_url="ws://h2", sealed=None, mode="exact", resume_offset=2)
    assert isinstance(resumed, Resumed) and resumed.note() == {
        "mode": "exact",
        "offset": 2,
        "host_url": "ws://h2",
    }
    assert m.state is AnswerState.AWAITING_RESUME and m.first
    assert feed(m, json.dumps({"type": "stream_resumed", "id": RID, "offset": 2})) == []
    assert m.state is AnswerState.STREAMING
    assert texts(feed(m, chunk("c"), end())) == ["c"]
    assert m.result.text == "abc" and m.result.resumed == 1
    assert m.result.metadata["resumes"] == [resumed.note()]


def test_a_resume_at_the_wrong_offset_or_started_over_is_a_mismatch() -> None:
    for frames in (
        [json.dumps({"type": "stream_resumed", "id": RID, "offset": 0})],
        [chunk("a")],  # started over without confirming
    ):
        m = AnswerMachine(RID)
        feed(m, chunk("a"), chunk("b"))
        m.reattach(host_url="ws://h", sealed=None, mode="exact", resume_offset=2)
        error = failure(feed(m, *frames))
        assert isinstance(error, ProtocolError)
        assert error.details["reason"] == "resume_mismatch"


def test_a_restarting_host_has_what_the_consumer_has_dropped() -> None:
    m = AnswerMachine(RID)
    feed(m, chunk("one "), chunk("two "))
    assert m.reattach(host_url="ws://h", sealed=None) is None  # a plain resend
    events = feed(m, chunk("one "), chunk("tw"), chunk("o three"), end())
    assert texts(events) == ["three"]
    assert m.result.text == "one two three"


def test_a_continuation_that_does_not_restate_keeps_everything() -> None:
    m = AnswerMachine(RID)
    feed(m, chunk("one "))
    resumed = m.reattach(host_url="ws://h", sealed=None, mode="continuation")
    assert resumed is not None and resumed.mode == "continuation" and resumed.offset == 1
    assert texts(feed(m, chunk("one"), chunk("s"), end())) == ["ones"]


def test_a_consumer_stop_is_recorded() -> None:
    m = AnswerMachine(RID)
    feed(m, chunk("a"))
    m.stopped()
    assert m.state is AnswerState.STOPPED and m.result.finish_reason == "cancelled"
    assert feed(m, chunk("late")) == []  # (late frames of a stopped answer)


# --- encrypted frames -------------------------------------------------------------------


class Node:
    """The host side of one session key: seals what a deployed node sends."""

    def __init__(self, key: bytes) -> None:
        self.cipher = SessionCipher(key)
        self.index = 0

    def chunk(self, text: str, rid: str = RID) -> str:
        payload = self.cipher.seal_chunk(text, self.index)
        self.index += 1
        return json.dumps({"type": "encrypted_chunk", "id": rid, "payload": payload})

    def final(self, rid: str = RID, count: bool = False) -> str:
        frame: dict[str, Any] = {
            "type": "encrypted_response",
            "id": rid,
            "payload": self.cipher.seal_final("stop"),
        }
        if count:
            frame["count"] = self.cipher.seal_count(self.index)
        return json.dumps(frame)


def sealed_pair(features: list[str] | None = None) -> tuple[SealedConversation, Node]:
    key = os.urandom(32)
    sealed = SealedConversation(SessionCipher(key), host_url="ws://h", features=features or [])
    return sealed, Node(key)


def sent(sealed: SealedConversation, prompt: str = "hi") -> dict[str, Any]:
    payload = {"type": "prompt", "id": RID, "request": {"prompt": prompt, "session_id": "s"}}
    frame = json.loads(sealed.seal(sealed.plan(payload)))
    assert frame["type"] == "encrypted_message" and prompt not in json.dumps(frame)
    return frame


def test_an_encrypted_answer_is_opened() -> None:
    sealed, node = sealed_pair()
    sent(sealed)
    m = AnswerMachine(RID, sealed=sealed)
    events = feed(m, node.chunk("Hel"), node.chunk("lo"), node.final(), end())
    assert texts(events) == ["Hel", "lo"] and isinstance(events[-1], Ended)
    assert m.result.finish_reason == "stop"
    assert sealed.held == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_encrypted_frames_that_do_not_open_are_typed_errors() -> None:
    sealed, node = sealed_pair()
    sent(sealed)
    other = Node(os.urandom(32))
    m = AnswerMachine(RID, sealed=sealed)
    assert isinstance(failure(feed(m, other.chunk("x"))), DecryptionFailedError)

    sealed, node = sealed_pair()
    sent(sealed)
    m = AnswerMachine(RID, sealed=sealed)
    node.index = 1  # chunk 0 never came
    assert isinstance(failure(feed(m, node.chunk("x"))), ChunkOrderError)

    sealed, node = sealed_pair()
    sent(sealed)
    m = AnswerMachine(RID, sealed=sealed)
    error = failure(feed(m, json.dumps({"type": "stream_chunk", "id": RID, "content": "hi"})))
    assert isinstance(error, EncryptionModeError)  # answer text in clear: refused


def test_a_replayed_answer_is_refused() -> None:
    sealed, node = sealed_pair()
    sent(sealed)
    first = [node.chunk("yes"), node.final()]
    m = AnswerMachine(RID, sealed=sealed)
    assert texts(feed(m, *first, end())) == ["yes"]
    sent(sealed, "again")  # the next prompt; a relay plays the first answer back
    m2 = AnswerMachine(RID, sealed=sealed)
    assert isinstance(failure(feed(m2, first[0])), ChunkReplayError)


def test_an_encrypted_answer_without_its_sealed_final_frame_is_truncated() -> None:
    sealed, node = sealed_pair()
    sent(sealed)
    m = AnswerMachine(RID, sealed=sealed)
    assert isinstance(failure(feed(m, node.chunk("a"), end())), AnswerTruncatedError)


def test_a_sealed_count_short_of_the_chunks_is_truncated() -> None:
    sealed, node = sealed_pair(["chunk_count"])
    sent(sealed)
    m = AnswerMachine(RID, sealed=sealed)
    feed(m, node.chunk("a"))
    node.chunk("dropped on the way")  # sealed, counted, never delivered
    assert isinstance(failure(feed(m, node.final(count=True))), AnswerTruncatedError)


def test_a_host_that_lost_the_answer_says_so_while_a_resume_is_awaited() -> None:
    m = AnswerMachine(RID)
    feed(m, chunk("a"))
    m.reattach(host_url="ws://h", sealed=None, mode="exact", resume_offset=1)
    lost = json.dumps({"type": "error", "id": RID, "code": "RESUME_NOT_FOUND", "message": "gone"})
    assert feed(m, lost) == []
    error = failure(feed(m, end(reason="error")))
    assert isinstance(error, HostError) and error.details["host_code"] == "RESUME_NOT_FOUND"


# --- the node's other frames (PROTOCOL.md 6.2, 6.3, 6.7) --------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def image_frame(node: Node, reply: dict[str, Any], rid: str = RID) -> str:
    nonce = os.urandom(24)
    body = json.dumps(reply).encode()
    payload = {
        "ciphertextHex": xchacha_encrypt(node.cipher.key, nonce, body, IMAGE_AAD).hex(),
        "nonceHex": nonce.hex(),
        "aadHex": IMAGE_AAD.hex(),
    }
    return json.dumps({"type": "encrypted_response", "id": rid, "payload": payload})


def test_an_image_reply_ends_the_answer_alone() -> None:
    sealed, node = sealed_pair()
    sent(sealed)
    m = AnswerMachine(RID, host_url="ws://h", sealed=sealed)
    reply = {"type": "image_generation_result", "image": base64.b64encode(PNG).decode()}
    events = feed(m, image_frame(node, {**reply, "model": "flux", "steps": 4}))
    assert [type(e) for e in events] == [ImageAnswer, Ended]
    image = events[0].image
    assert image.data == PNG and image.mime_type == "image/png" and image.model == "flux"
    assert m.state is AnswerState.ENDED and m.result.images == [image]
    assert sealed.held == []  # (a node stores nothing for an image: what it held before)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("RATE_LIMIT_EXCEEDED", RateLimitedError),
        ("VALIDATION_FAILED", InvalidRequestError),
        ("PROMPT_BLOCKED", PromptBlockedError),
        ("DIFFUSION_SERVICE_UNAVAILABLE", DiffusionUnavailableError),
        ("IMAGE_GENERATION_FAILED", ImageGenerationError),
        ("SOMETHING_NEW", ImageGenerationError),
    ],
)
def test_an_image_error_is_typed_never_a_decryption_failure(
    code: str, kind: type[FabstirError]
) -> None:
    sealed, node = sealed_pair()
    sent(sealed)
    m = AnswerMachine(RID, sealed=sealed)
    reply = {"type": "image_generation_error", "error": {"code": code, "message": "no"}}
    error = failure(feed(m, image_frame(node, reply)))
    assert type(error) is kind and error.details["host_code"] == code
    assert m.finished  # (nothing follows it: the socket is in a known state)


def test_bad_image_replies_are_protocol_errors() -> None:
    for reply in (
        {"type": "image_generation_result", "image": "not base64!"},
        {"type": "image_generation_result", "image": base64.b64encode(b"<svg/>").decode()},
        {"type": "something_else"},
    ):
        sealed, node = sealed_pair()
        sent(sealed)
        m = AnswerMachine(RID, sealed=sealed)
        assert isinstance(failure(feed(m, image_frame(node, reply))), ProtocolError), reply


def test_an_image_reply_sealed_under_the_final_aad_does_not_open() -> None:
    """The AAD decides the kind: a frame that claims the image AAD but was sealed as
    something else fails authentication."""
    sealed, node = sealed_pair()
    sent(sealed)
    forged = json.loads(node.final())
    forged["payload"]["aadHex"] = IMAGE_AAD.hex()
    m = AnswerMachine(RID, sealed=sealed)
    assert isinstance(failure(feed(m, json.dumps(forged))), DecryptionFailedError)


def test_an_image_reply_in_clear_is_not_an_image() -> None:
    m = AnswerMachine(RID)
    reply = {"type": "image_generation_result", "id": RID, "image": base64.b64encode(PNG).decode()}
    assert feed(m, json.dumps(reply)) == [] and m.state is AnswerState.AWAITING_FIRST


@pytest.mark.parametrize(
    "code",
    [
        "MISSING_SESSION_ID",
        "SESSION_KEY_NOT_FOUND",
        "MISSING_PAYLOAD",
        "MISSING_PAYLOAD_FIELDS",
        "INVALID_HEX_ENCODING",
        "INVALID_NONCE_SIZE",
        "DECRYPTION_FAILED",
        "INVALID_UTF8",
        "SESSION_AUTH_DENIED",
    ],
)
def test_node_codes_without_stream_end_fail_at_once(code: str) -> None:
    m = AnswerMachine(RID, host_url="ws://h")
    error = failure(feed(m, json.dumps({"type": "error", "code": code, "message": "m"})))
    assert error.code == code and "ws://h" in str(error)
    assert m.state is AnswerState.FAILED


def test_encryption_failed_waits_for_its_stream_end() -> None:
    m = AnswerMachine(RID)
    assert feed(m, json.dumps({"type": "error", "code": "ENCRYPTION_FAILED", "id": RID})) == []
    error = failure(feed(m, end(reason="error", tokens_used=3)))
    assert error.code == "ENCRYPTION_FAILED" and m.result.tokens_used == 3


def test_vlm_tokens_are_reported() -> None:
    m = AnswerMachine(RID)
    events = feed(m, chunk("a"), end(vlm_tokens=40))
    assert isinstance(events[1], UsageReported) and events[1].vlm_tokens == 40
    assert m.result.vlm_tokens == 40
