"""Checkpoint proofs: the model, the hash chain, the tracker, signatures, host formats."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from eth_keys import keys
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_fabstir.checkpoints import (
    CheckpointError,
    CheckpointProof,
    CheckpointTracker,
    ConversationHasher,
    HostCheckpointDelta,
    address_of,
    canonical_json,
    conversation_deltas,
    conversation_hashes,
    personal_sign,
    proof_signing_payload,
    rebuild_conversation,
    recover_proof_signer,
    sign_host_delta,
    sign_host_index,
    sign_proof,
    verify_checkpoints,
    verify_host_checkpoints,
    verify_host_delta,
    verify_host_index,
    verify_host_signature,
    verify_proof_signature,
)
from langchain_fabstir.checkpoints import hashchain as chain_module

CLIENT_KEY = "0x" + "a1" * 32
HOST_KEY = "0x" + "b2" * 32
OTHER_KEY = "0x" + "c3" * 32
T0 = datetime(2024, 1, 10, 12, 0, tzinfo=timezone.utc)


def fixed_clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    return lambda: T0 + timedelta(seconds=next(ticks))


def spec_hashes(history: list[dict[str, str]], boundaries: list[tuple[int, int]]) -> list[str]:
    """The issue's pseudo-code, transcribed literally: an independent reference."""
    mi, co = 0, 0
    h = bytes(32)
    out = []
    for ei, ec in boundaries:
        delta = []
        while mi <= ei and mi < len(history):
            content = history[mi]["content"]
            stop = len(content) if mi < ei else ec
            piece: dict[str, Any] = {"role": history[mi]["role"], "content": content[co:stop]}
            if stop < len(content):
                piece["partial"] = True
            delta.append(piece)
            if stop < len(content):
                co = stop
                break
            mi, co = mi + 1, 0
        blob = json.dumps(delta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        h = hashlib.sha256(h + blob.encode("utf-8")).digest()
        out.append("0x" + h.hex())
    return out


def run_session(
    interval: int | None, answers: list[list[str]], **kwargs: Any
) -> tuple[CheckpointTracker, list[tuple[int, int, int]]]:
    """Drive a tracker like the session layer does; one token per chunk.

    Returns the tracker and, for every chunk after which the token count is a multiple
    of ``interval``, ``(tokens, message_index, chars)``: where checkpoints must land.
    """
    tracker = CheckpointTracker(
        "sess-1", checkpoint_interval=interval, clock=fixed_clock(), **kwargs
    )
    tracker.add_message("system", "You are terse.")
    expected: list[tuple[int, int, int]] = []
    for turn, chunks in enumerate(answers):
        assert tracker.add_message("user", f"question {turn}") is None
        tracker.add_message("assistant")
        chars = 0
        for text in chunks:
            tracker.on_tokens(text, 1)
            chars += len(text)
            if interval and tracker.tokens % interval == 0:
                expected.append((tracker.tokens, len(tracker.history()) - 1, chars))
        tracker.end_message()
    return tracker, expected


def words(n: int, seed: int = 0) -> list[str]:
    vocab = ["alpha ", "beta ", "γάμμα ", "δ ", "e", "zz ", "🙂 ", "end. "]
    return [vocab[(i * 7 + seed) % len(vocab)] for i in range(n)]


def boundaries(proofs: list[CheckpointProof]) -> list[tuple[int, int]]:
    return [p.boundary.as_tuple() for p in proofs]


# --- the proof model ------------------------------------------------------------------


def make_proof(**overrides: Any) -> CheckpointProof:
    fields: dict[str, Any] = {
        "session_id": "s-1",
        "checkpoint_number": 1,
        "conversation_hash": "0x" + "ab" * 32,
        "token_count": 1000,
        "start_token": 0,
        "end_token": 1000,
        "timestamp": T0,
        "boundary": {"message_index": 2, "char_offset": 17},
    }
    fields.update(overrides)
    return CheckpointProof(**fields)


def test_proof_round_trips_through_dict_and_json_with_camel_case_names() -> None:
    proof = sign_proof(make_proof(), CLIENT_KEY)
    proof = sign_proof(proof, HOST_KEY, field="host_signature")
    data = proof.to_dict()
    assert set(data) == {
        "sessionId",
        "checkpointNumber",
        "conversationHash",
        "tokenCount",
        "timestamp",
        "boundary",
        "startToken",
        "endToken",
        "signature",
        "signer",
        "hostSignature",
    }
    assert data["boundary"] == {"messageIndex": 2, "charOffset": 17}
    assert data["timestamp"] == "2024-01-10T12:00:00.000Z"
    assert CheckpointProof.from_dict(data) == proof
    assert CheckpointProof.from_json(proof.to_json()) == proof
    assert CheckpointProof.from_dict(proof.to_dict(by_alias=False)) == proof
    assert json.loads(proof.to_json()) == data
    assert proof.signer == address_of(CLIENT_KEY)


def test_proof_timestamps_are_utc_with_millisecond_precision() -> None:
    as_ms = make_proof(timestamp=1704888000123)
    assert as_ms.timestamp == T0 + timedelta(milliseconds=123)
    naive = make_proof(timestamp=datetime(2024, 1, 10, 12, 0, 0, 123456))
    assert naive.timestamp == as_ms.timestamp and naive.timestamp.tzinfo == timezone.utc
    plus_one = timezone(timedelta(hours=1))
    other_zone = make_proof(timestamp=datetime(2024, 1, 10, 13, 0, tzinfo=plus_one))
    assert other_zone.timestamp == T0
    assert make_proof(timestamp="2024-01-10T12:00:00Z").timestamp == T0


def test_end_token_defaults_to_token_count_and_ranges_are_checked() -> None:
    data = make_proof().to_dict()
    del data["endToken"]
    assert CheckpointProof.from_dict(data).end_token == 1000
    with pytest.raises(CheckpointError) as err:
        CheckpointProof.from_dict({**data, "startToken": 1001})
    assert err.value.code == "CHECKPOINT_FAILED"
    assert err.value.details["reason"] == "malformed_proof"


@pytest.mark.parametrize(
    "bad",
    [
        {"conversationHash": "0x1234"},
        {"checkpointNumber": 0},
        {"tokenCount": -1},
        {"signature": "0xdeadbeef"},
        {"signer": "not-an-address"},
        {"timestamp": "yesterday"},
        {"boundary": {"messageIndex": -1, "charOffset": 0}},
        {"sessionId": ""},
    ],
)
def test_malformed_proof_data_is_a_checkpoint_error(bad: dict[str, Any]) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint proof"):
        CheckpointProof.from_dict({**make_proof().to_dict(), **bad})


def test_from_json_rejects_garbage_with_a_typed_error() -> None:
    with pytest.raises(CheckpointError):
        CheckpointProof.from_json(b"\xff{not json")


# --- cadence: proofs land at the right boundaries ---------------------------------------


@pytest.mark.parametrize("interval", [1, 3, 7, 50, 64, 200, 1000])
def test_proofs_land_every_interval_at_the_right_boundaries(interval: int) -> None:
    answers = [words(40, 1), words(64, 2), words(129, 3)]  # 233 tokens; 50 < an answer
    tracker, expected = run_session(interval, answers)
    proofs = tracker.proofs
    assert [(p.end_token, *p.boundary.as_tuple()) for p in proofs] == expected
    assert [p.checkpoint_number for p in proofs] == list(range(1, len(proofs) + 1))
    assert [p.start_token for p in proofs] == [0, *(p.end_token for p in proofs)][: len(proofs)]
    assert len(proofs) == 233 // interval
    history = tracker.history()
    assert conversation_hashes(history, boundaries(proofs)) == [p.conversation_hash for p in proofs]
    assert spec_hashes(history, boundaries(proofs)) == [p.conversation_hash for p in proofs]
    verify_checkpoints(history, proofs)
    verify_checkpoints(history, [p.to_dict() for p in proofs])


def test_interval_smaller_than_an_answer_cuts_it_into_partial_pieces() -> None:
    answer = words(120, 5)
    tracker, _ = run_session(50, [answer])
    proofs = tracker.proofs
    assert [p.end_token for p in proofs] == [50, 100]
    deltas = list(conversation_deltas(tracker.history(), boundaries(proofs)))
    # delta 1: system, user, and the first 50 tokens of the answer, marked partial
    assert [piece["role"] for piece in deltas[0]] == ["system", "user", "assistant"]
    assert deltas[0][2] == {"role": "assistant", "content": "".join(answer[:50]), "partial": True}
    assert deltas[1] == [{"role": "assistant", "content": "".join(answer[50:100]), "partial": True}]
    # the end of the answer is proven by an explicit checkpoint, as the session does
    final = tracker.checkpoint()
    assert (final.start_token, final.end_token) == (100, 120)
    last = list(conversation_deltas(tracker.history(), boundaries(tracker.proofs)))[-1]
    assert last == [{"role": "assistant", "content": "".join(answer[100:])}]
    verify_checkpoints(tracker.history(), tracker.proofs)


def test_checkpoint_exactly_at_the_end_of_an_answer_takes_the_whole_message() -> None:
    tracker, _ = run_session(10, [words(10), words(5)])
    first = tracker.proofs[0]
    history = tracker.history()
    assert first.boundary.as_tuple() == (2, len(history[2]["content"]))
    delta = next(conversation_deltas(history, [first.boundary]))
    assert "partial" not in delta[-1]
    verify_checkpoints(history, tracker.proofs)


def test_pending_checkpoint_is_settled_by_the_next_text_or_the_end_of_the_message() -> None:
    tracker = ConversationHasher("s", checkpoint_interval=2, clock=fixed_clock())
    tracker.add_message("user", "hi")
    tracker.add_message("assistant")
    assert tracker.on_tokens("a") is None
    assert tracker.on_tokens("b") is None and tracker.has_pending
    assert tracker.on_tokens("", 1) is None and tracker.has_pending  # no text: still open
    proof = tracker.on_tokens("c")  # settles checkpoint 1 as partial; 4 tokens now
    assert proof is not None and proof.boundary.as_tuple() == (1, 2) and proof.end_token == 2
    assert tracker.has_pending  # 4 >= 2 + 2: due at the end of "abc"
    settled = tracker.add_message("user", "next")
    assert settled is not None and settled.boundary.as_tuple() == (1, 3)
    assert settled.end_token == 4 and not tracker.has_pending
    last = list(conversation_deltas(tracker.history(), boundaries(tracker.proofs)))[-1]
    assert last == [{"role": "assistant", "content": "c"}]  # whole: the message ended
    verify_checkpoints(tracker.history(), tracker.proofs)


def test_explicit_checkpoints_seal_the_message_and_repeat_as_empty_deltas() -> None:
    tracker = CheckpointTracker("s", checkpoint_interval=None, clock=fixed_clock())
    tracker.add_message("user", "hello")
    first = tracker.checkpoint()
    second = tracker.checkpoint()  # nothing new: an empty delta
    assert first.boundary == second.boundary
    assert list(conversation_deltas(tracker.history(), boundaries(tracker.proofs)))[1] == []
    with pytest.raises(CheckpointError) as err:
        tracker.append_to_last("more")
    assert err.value.details["reason"] == "message_closed"
    assert tracker.request_checkpoint() is not None  # closed message: proven at once
    verify_checkpoints(tracker.history(), tracker.proofs)


def test_tracker_refuses_bad_use_with_typed_errors() -> None:
    with pytest.raises(CheckpointError):
        CheckpointTracker("s", checkpoint_interval=0)
    with pytest.raises(CheckpointError):
        CheckpointTracker("")
    tracker = CheckpointTracker("s")
    with pytest.raises(CheckpointError, match="empty"):
        tracker.checkpoint()
    with pytest.raises(CheckpointError):
        tracker.append_to_last("x")
    tracker.add_message("user", "x")
    tracker.add_tokens(5)
    tracker.checkpoint()
    with pytest.raises(CheckpointError):
        tracker.checkpoint(token_count=4)
    with pytest.raises(CheckpointError):
        tracker.add_tokens(-1)
    assert tracker.should_checkpoint(1004) is False and tracker.should_checkpoint(1005) is True
    assert "a1a1" not in repr(CheckpointTracker("s", signing_key=CLIENT_KEY)).lower()


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("msg"), st.sampled_from(["user", "assistant", "system"]), st.text(max_size=6)
        ),
        st.tuples(st.just("tok"), st.text(max_size=4), st.integers(0, 3)),
        st.tuples(st.just("end")),
        st.tuples(st.just("check")),
        st.tuples(st.just("request")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, interval=st.integers(1, 6))
def test_any_sequence_of_tracker_calls_yields_proofs_the_history_verifies(
    ops: list[tuple[Any, ...]], interval: int
) -> None:
    tracker = CheckpointTracker("prop", checkpoint_interval=interval)
    tracker.add_message("system", "s")
    tracker.add_message("assistant")
    for op in ops:
        if op[0] == "msg":
            tracker.add_message(op[1], op[2])
        elif op[0] == "tok":
            try:
                tracker.on_tokens(op[1], op[2])
            except CheckpointError:  # the last message was closed: a new one starts
                tracker.add_message("assistant", op[1])
        elif op[0] == "end":
            tracker.end_message()
        elif op[0] == "check":
            tracker.checkpoint()
        else:
            tracker.request_checkpoint()
    tracker.end_message()
    proofs = tracker.proofs
    history = tracker.history()
    verify_checkpoints(history, proofs)
    assert spec_hashes(history, boundaries(proofs)) == [p.conversation_hash for p in proofs]
    # the deltas, joined, are exactly the proven prefix of the conversation
    if proofs:
        pieces = [p for d in conversation_deltas(history, boundaries(proofs)) for p in d]
        text = "".join(p["content"] for p in pieces)
        mi, co = proofs[-1].boundary.as_tuple()
        prefix = "".join(m["content"] for m in history[:mi]) + history[mi]["content"][:co]
        assert text == prefix


EDGE_HISTORY = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": ""},
]


@pytest.mark.parametrize(
    ("cuts", "last_delta"),
    [
        ([(0, 2), (0, 2)], []),  # equal to the previous boundary: empty
        ([(1, 2), (1, 2)], []),  # same after a partial cut (the pseudo-code would add "")
        ([(0, 2), (1, 0)], [{"role": "assistant", "content": "", "partial": True}]),
        ([(1, 5), (2, 0)], [{"role": "user", "content": ""}]),  # an empty message is whole
        ([(0, 0)], [{"role": "user", "content": "", "partial": True}]),
        (
            [(0, 1), (1, 1)],
            [
                {"role": "user", "content": "i"},
                {"role": "assistant", "content": "H", "partial": True},
            ],
        ),
    ],
)
def test_cutting_edge_cases(cuts: list[tuple[int, int]], last_delta: list[Any]) -> None:
    assert list(conversation_deltas(EDGE_HISTORY, cuts))[-1] == last_delta
    if cuts != [(1, 2), (1, 2)]:
        assert conversation_hashes(EDGE_HISTORY, cuts) == spec_hashes(EDGE_HISTORY, cuts)


@pytest.mark.parametrize(
    ("cuts", "message"),
    [
        ([(1, 3), (1, 2)], "before the previous boundary"),
        ([(0, 2), (0, 1)], "before the previous boundary"),
        ([(0, 3)], "past the end of message 0"),
        ([(3, 0)], "past the last message"),
    ],
)
def test_invalid_boundaries_are_rejected(cuts: list[tuple[int, int]], message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as err:
        list(conversation_deltas(EDGE_HISTORY, cuts))
    assert err.value.details == {"reason": "bad_boundary", "checkpoint_number": len(cuts)}


def test_lone_surrogates_from_a_peer_hash_without_crashing() -> None:
    tracker = CheckpointTracker("s", checkpoint_interval=1)
    tracker.add_message("user", "hi")
    tracker.add_message("assistant")
    tracker.on_tokens(json.loads('"\\ud800"'))  # what a JSON frame can decode to
    tracker.on_tokens("ok")
    proof = tracker.checkpoint()
    verify_checkpoints(tracker.history(), tracker.proofs)
    assert proof.checkpoint_number == 2
    with pytest.raises(CheckpointError):
        personal_sign("\ud800", CLIENT_KEY)


# --- detection of tampering -------------------------------------------------------------


def signed_session() -> tuple[list[dict[str, str]], list[CheckpointProof]]:
    tracker, _ = run_session(20, [words(30, 1), words(45, 2)], signing_key=CLIENT_KEY)
    tracker.checkpoint()
    return tracker.history(), tracker.proofs


def test_a_tampered_message_is_detected_at_the_first_checkpoint_covering_it() -> None:
    history, proofs = signed_session()
    assert len(proofs) == 4
    # message 4 is the second answer; proofs 1 and 2 end inside or before it
    first_covering = next(p for p in proofs if p.boundary.message_index >= 4)
    tampered = [dict(m) for m in history]
    tampered[4]["content"] = "X" + tampered[4]["content"][1:]
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(tampered, proofs)
    assert err.value.details["reason"] == "hash_mismatch"
    assert err.value.details["checkpoint_number"] == first_covering.checkpoint_number
    assert f"checkpoint {first_covering.checkpoint_number}:" in str(err.value)
    # a change after the last boundary is not covered by any proof
    history[-1]["content"] += " (unproven)"
    proofs_before_end = [p for p in proofs if p.boundary.message_index < len(history) - 1]
    verify_checkpoints(history, proofs_before_end)


def test_reordered_deltas_are_detected() -> None:
    history, proofs = signed_session()
    swapped = [proofs[1], proofs[0], *proofs[2:]]
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, swapped)
    assert err.value.details == {"reason": "out_of_order", "checkpoint_number": 2}
    # the same swap with the numbers rewritten: the boundaries now run backwards
    renumbered = [
        proofs[1].model_copy(update={"checkpoint_number": 1, "start_token": 0}),
        proofs[0].model_copy(update={"checkpoint_number": 2, "start_token": 40}),
    ]
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, renumbered)
    assert err.value.details["reason"] == "hash_mismatch"
    assert err.value.details["checkpoint_number"] == 1
    # swapping two messages of the history breaks the chain
    reordered = [history[0], history[3], history[2], history[1], *history[4:]]
    with pytest.raises(CheckpointError, match="checkpoint 1: conversation hash"):
        verify_checkpoints(reordered, proofs)


def test_missing_sessions_gaps_and_truncated_histories_are_detected() -> None:
    history, proofs = signed_session()
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, proofs[1:])
    assert err.value.details["reason"] == "out_of_order"
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history[:3], proofs)
    assert err.value.details["reason"] == "bad_boundary"
    other = proofs[1].model_copy(update={"session_id": "someone-else"})
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, [proofs[0], other])
    assert err.value.details["reason"] == "wrong_session"
    gap = proofs[1].model_copy(update={"start_token": 21})
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, [proofs[0], gap])
    assert err.value.details["reason"] == "token_gap"
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints([{"role": "user"}], proofs)
    assert err.value.details["reason"] == "malformed_history"
    with pytest.raises(CheckpointError, match="checkpoint 1"):
        verify_checkpoints(history, [{"sessionId": "x"}])


def test_history_items_may_be_objects_with_role_and_content() -> None:
    class Msg:
        def __init__(self, role: str, content: str) -> None:
            self.role, self.content = role, content

    history, proofs = signed_session()
    verify_checkpoints([Msg(m["role"], m["content"]) for m in history], proofs)


def test_signatures_verify_and_a_forged_one_is_detected() -> None:
    history, proofs = signed_session()
    client = address_of(CLIENT_KEY)
    assert all(p.signer == client for p in proofs)
    verify_checkpoints(history, proofs, signer=client)
    for proof in proofs:
        assert recover_proof_signer(proof) == client
        verify_proof_signature(proof, client)
    forged = sign_proof(proofs[2], OTHER_KEY)
    forged = forged.model_copy(update={"signer": client})  # claims to be the client
    with pytest.raises(CheckpointError) as err:
        verify_proof_signature(forged, client)
    assert err.value.details["reason"] == "wrong_signer"
    assert err.value.details["recovered"] == address_of(OTHER_KEY)
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, [*proofs[:2], forged, *proofs[3:]], signer=client)
    assert err.value.details["checkpoint_number"] == 3
    # a signed proof whose fields changed afterwards no longer recovers to the signer
    inflated = proofs[0].model_copy(update={"token_count": 999_999})
    with pytest.raises(CheckpointError, match="not by the expected signer"):
        verify_proof_signature(inflated, client)


def test_host_signatures_live_in_host_signature() -> None:
    history, proofs = signed_session()
    host = address_of(HOST_KEY)
    hosted = [sign_proof(p, HOST_KEY, field="host_signature") for p in proofs]
    assert hosted[0].signature == proofs[0].signature  # the client's stays
    verify_checkpoints(history, hosted, signer=address_of(CLIENT_KEY), host_address=host)
    verify_host_signature(hosted[0], host)
    with pytest.raises(CheckpointError) as err:
        verify_host_signature(proofs[0], host)
    assert err.value.details["reason"] == "unsigned"
    with pytest.raises(CheckpointError) as err:
        verify_checkpoints(history, hosted, host_address=address_of(OTHER_KEY))
    assert err.value.details["reason"] == "wrong_signer"


def test_bad_signatures_and_addresses_raise_typed_errors() -> None:
    proof = make_proof()
    with pytest.raises(CheckpointError, match="no signature"):
        recover_proof_signer(proof)
    with pytest.raises(CheckpointError) as err:
        recover_proof_signer(proof, "0x" + "00" * 65)
    assert err.value.details["reason"] == "bad_signature"
    with pytest.raises(CheckpointError):
        recover_proof_signer(proof, b"short")
    with pytest.raises(CheckpointError):
        verify_proof_signature(sign_proof(proof, CLIENT_KEY), "0x1234")
    with pytest.raises(CheckpointError) as err:
        sign_proof(proof, "0x" + "00" * 32)  # zero is not a valid key
    assert "00" * 8 not in str(err.value)


def test_signature_is_eip191_personal_sign_over_the_five_seed_fields() -> None:
    proof = sign_proof(make_proof(), CLIENT_KEY)
    payload = proof_signing_payload(proof)
    assert json.loads(payload) == {
        "sessionId": "s-1",
        "checkpointNumber": 1,
        "conversationHash": "0x" + "ab" * 32,
        "tokenCount": 1000,
        "timestamp": 1704888000000,
    }
    assert payload == canonical_json(json.loads(payload))
    # recover independently of eth-account: keccak of the EIP-191 prefixed text
    data = payload.encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)
    sig = bytes.fromhex(proof.signature[2:])  # type: ignore[index]
    recovered = keys.Signature(sig[:64] + bytes([sig[64] - 27])).recover_public_key_from_msg_hash(
        digest
    )
    assert recovered.to_checksum_address() == address_of(CLIENT_KEY)


# --- incremental cost -------------------------------------------------------------------


class Sha256Spy:
    """Stands in for the ``hashlib`` module of the chain code; counts what is hashed."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @property
    def calls(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def sha256(self, data: bytes = b"") -> Any:
        self.sizes.append(len(data))
        return hashlib.sha256(data)


def long_tracker(messages: int) -> CheckpointTracker:
    tracker = CheckpointTracker("big", checkpoint_interval=None)
    for i in range(messages):
        tracker.add_message("user" if i % 2 else "assistant", "x" * 1000)
    tracker.checkpoint()
    return tracker


def test_checkpoint_work_is_proportional_to_the_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Sha256Spy()
    monkeypatch.setattr(chain_module, "hashlib", spy)
    small, big = long_tracker(10), long_tracker(500)
    assert spy.total > 500 * 1000  # the first checkpoints hash everything once
    growth = []
    for tracker in (small, big):
        before_counter, before_spy = tracker.hashed_bytes, spy.total
        tracker.add_message("user", "one more question")
        tracker.add_message("assistant")
        for _ in range(50):
            tracker.on_tokens("word", 1)
        proof = tracker.checkpoint()
        growth.append((tracker.hashed_bytes - before_counter, spy.total - before_spy))
        delta = list(conversation_deltas(tracker.history(), boundaries(tracker.proofs)))[-1]
        assert growth[-1][0] == 32 + len(canonical_json(delta).encode())
        assert proof.checkpoint_number == 2
    assert growth[0] == growth[1]  # the same delta costs the same, whatever came before
    assert growth[1][1] < 400


def test_streaming_tokens_hashes_nothing_between_checkpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Sha256Spy()
    monkeypatch.setattr(chain_module, "hashlib", spy)
    tracker = CheckpointTracker("s", checkpoint_interval=100)
    tracker.add_message("user", "go")
    tracker.add_message("assistant")
    made = [tracker.on_tokens("abcd", 1) for _ in range(1000)]
    assert spy.calls == sum(p is not None for p in made) == 9  # the 10th is still pending
    assert tracker.hashed_bytes == spy.total
    # each checkpoint hashed its 100 tokens (400 chars) only, never the whole answer
    assert max(spy.sizes) < 32 + 400 + 100


def test_bench_function_runs() -> None:
    from bench.checkpoints import bench_checkpointing

    assert 0 < bench_checkpointing(2000, 100) < 10


# --- resuming ---------------------------------------------------------------------------


@pytest.mark.parametrize("stop_inside_answer", [False, True])
def test_resume_goes_on_from_a_verified_history(stop_inside_answer: bool) -> None:
    tracker, _ = run_session(25, [words(60, 1)])
    if not stop_inside_answer:
        tracker.checkpoint()
    history, proofs = tracker.history(), tracker.proofs
    resumed = CheckpointTracker.resume(
        "sess-1", history, [p.to_dict() for p in proofs], checkpoint_interval=25
    )
    assert resumed.tokens == proofs[-1].end_token
    assert resumed.conversation_hash == proofs[-1].conversation_hash
    resumed.add_message("user", "and then?")
    resumed.add_message("assistant")
    for text in words(30, 4):
        resumed.on_tokens(text)
    resumed.checkpoint()
    assert len(resumed.proofs) > len(proofs)
    verify_checkpoints(resumed.history(), resumed.proofs)
    tampered = [dict(m) for m in history]
    tampered[1]["content"] = "changed"
    with pytest.raises(CheckpointError):
        CheckpointTracker.resume("sess-1", tampered, proofs)
    with pytest.raises(CheckpointError):
        CheckpointTracker.resume("other", history, proofs)


# --- real-host deltas and indexes (PROTOCOL.md section 3) --------------------------------


def host_deltas() -> list[dict[str, Any]]:
    pieces = [
        [
            {"role": "user", "content": "Hi ☃", "timestamp": 1704844800000},
            {
                "role": "assistant",
                "content": "Hello, ",
                "metadata": {"partial": True},
                "timestamp": 1704844801000,
            },
        ],
        [{"role": "assistant", "content": "how are ", "metadata": {"partial": True}}],
        [
            {"role": "assistant", "content": "you?"},
            {"role": "user", "content": "Fine", "timestamp": 1704844805000},
        ],
    ]
    return [
        sign_host_delta(
            {
                "checkpointIndex": i,
                "startToken": i * 1000,
                "endToken": (i + 1) * 1000,
                "sessionId": "123",
                "proofHash": "0x" + f"{i:02x}" * 32,
                "messages": msgs,
            },
            HOST_KEY,
        )
        for i, msgs in enumerate(pieces)
    ]


def host_index(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    return sign_host_index(
        {
            "sessionId": "123",
            "hostAddress": address_of(HOST_KEY).lower(),
            "checkpoints": [
                {
                    "index": d["checkpointIndex"],
                    "proofHash": d["proofHash"],
                    "deltaCid": f"baa{i}",
                    "tokenRange": [d["startToken"], d["endToken"]],
                    "timestamp": 1704844800000 + i,
                    "encrypted": False,
                }
                for i, d in enumerate(deltas)
            ],
        },
        HOST_KEY,
    )


def test_host_delta_good_tampered_and_wrong_signer() -> None:
    host = address_of(HOST_KEY)
    delta = host_deltas()[0]
    text = json.dumps(delta, ensure_ascii=False)  # as fetched: not canonical, with ☃
    parsed = verify_host_delta(text.encode(), host)
    assert isinstance(parsed, HostCheckpointDelta) and parsed.messages[0].content == "Hi ☃"
    assert verify_host_delta(parsed, host) == parsed  # a parsed model verifies too
    assert parsed.host_signature == personal_sign(canonical_json(delta["messages"]), HOST_KEY)
    tampered = json.loads(text)
    tampered["messages"][0]["content"] = "Hi!"
    with pytest.raises(CheckpointError) as err:
        verify_host_delta(tampered, host)
    assert err.value.details["reason"] == "wrong_signer"
    forged = sign_host_delta(delta, OTHER_KEY)
    with pytest.raises(CheckpointError, match="not signed by host"):
        verify_host_delta(forged, host)
    with pytest.raises(CheckpointError) as err:
        verify_host_delta({**delta, "hostSignature": "0x1234"}, host)
    assert err.value.details["reason"] == "bad_signature_format"
    for garbage in (b"{", "[1, 2]", {"checkpointIndex": "x"}):
        with pytest.raises(CheckpointError) as err:
            verify_host_delta(garbage, host)
        assert err.value.details["reason"] == "malformed_delta"


def test_host_index_good_tampered_wrong_signer_and_wrong_host() -> None:
    host = address_of(HOST_KEY)
    deltas = host_deltas()
    index = host_index(deltas)
    parsed = verify_host_index(json.dumps(index), host)
    assert [e.token_range for e in parsed.checkpoints] == [(0, 1000), (1000, 2000), (2000, 3000)]
    tampered = json.loads(json.dumps(index))
    tampered["checkpoints"][1]["deltaCid"] = "baaEVIL"
    with pytest.raises(CheckpointError) as err:
        verify_host_index(tampered, host)
    assert err.value.details["reason"] == "wrong_signer"
    with pytest.raises(CheckpointError) as err:
        verify_host_index(sign_host_index(index, OTHER_KEY), host)
    assert err.value.details["reason"] == "wrong_signer"
    impostor = sign_host_index({**index, "hostAddress": address_of(OTHER_KEY)}, OTHER_KEY)
    with pytest.raises(CheckpointError) as err:
        verify_host_index(impostor, host)
    assert err.value.details["reason"] == "wrong_host"
    twice = sign_host_index({**index, "checkpoints": index["checkpoints"][:1] * 2}, HOST_KEY)
    with pytest.raises(CheckpointError) as err:
        verify_host_index(twice, host)
    assert err.value.details["reason"] == "duplicate_checkpoint"


def test_rebuild_conversation_joins_partial_messages() -> None:
    deltas = host_deltas()
    expected = [
        {"role": "user", "content": "Hi ☃", "timestamp": 1704844800000},
        {"role": "assistant", "content": "Hello, how are you?", "timestamp": 1704844801000},
        {"role": "user", "content": "Fine", "timestamp": 1704844805000},
    ]
    assert rebuild_conversation(deltas) == expected
    assert rebuild_conversation(list(reversed(deltas))) == expected  # sorted by index
    still_streaming = rebuild_conversation(deltas[:2])
    assert still_streaming[-1] == {
        "role": "assistant",
        "content": "Hello, how are ",
        "timestamp": 1704844801000,
        "metadata": {"partial": True},
    }
    assert verify_host_checkpoints(host_index(deltas), deltas, address_of(HOST_KEY)) == expected


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: [d[0], d[2]], "missing_delta"),
        (lambda d: [d[0], d[1], d[1], d[2]], "missing_delta"),
        (lambda d: d[1:], "missing_delta"),
        (
            lambda d: [d[0], {**d[1], "messages": [{"role": "user", "content": "x"}]}, d[2]],
            "bad_continuation",
        ),
        (lambda d: [{**d[0], "messages": list(reversed(d[0]["messages"]))}], "bad_continuation"),
    ],
)
def test_rebuild_conversation_rejects_broken_chains(
    mutate: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], reason: str
) -> None:
    with pytest.raises(CheckpointError) as err:
        rebuild_conversation(mutate(host_deltas()))
    assert err.value.details["reason"] == reason


def test_verify_host_checkpoints_needs_every_delta_and_matching_entries() -> None:
    deltas = host_deltas()
    index = host_index(deltas)
    host = address_of(HOST_KEY)
    with pytest.raises(CheckpointError) as err:
        verify_host_checkpoints(index, deltas[:2], host)
    assert err.value.details["reason"] == "missing_delta"
    lying = sign_host_delta({**deltas[1], "endToken": 5000}, HOST_KEY)
    with pytest.raises(CheckpointError) as err:
        verify_host_checkpoints(index, [deltas[0], lying, deltas[2]], host)
    assert err.value.details["reason"] == "index_mismatch"
    stranger = sign_host_delta({**deltas[1], "checkpointIndex": 7}, HOST_KEY)
    with pytest.raises(CheckpointError) as err:
        verify_host_checkpoints(index, [deltas[0], stranger, deltas[2]], host)
    assert err.value.details["reason"] == "index_mismatch"


def test_a_proof_made_by_tokens_after_a_closed_message_is_returned() -> None:
    # Tokens counted with no text after the answer closed (a host's final usage) cross
    # the interval: the proof is made at once, and on_tokens returns it (it used to be
    # recorded but returned to no one, so no callback heard of it).
    tracker = CheckpointTracker("s", checkpoint_interval=10)
    tracker.add_message("user", "hi")
    tracker.add_message("assistant")
    assert tracker.on_tokens("hello", 4) is None
    assert tracker.end_message() is None
    proof = tracker.on_tokens("", 6)
    assert proof is not None and proof == tracker.last_proof
    assert proof.token_count == 10
