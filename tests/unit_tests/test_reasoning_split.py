"""The reasoning splitter (wire/reasoning.py): the same text split at every position, or
fed one character at a time, always gives the same reasoning and answer as the whole
text; nothing is held back longer than a tag needs."""

from __future__ import annotations

import pytest

from langchain_fabstir.sessions.conversation import continues, plan_turn
from langchain_fabstir.wire.reasoning import (
    THINK_CLOSE,
    ReasoningSplitter,
    answer_of,
    split_reasoning,
)

# (text, opened) -> (reasoning, answer)
CUT = "</think>"[:5]  # a closing tag cut off by the token limit

CASES = [
    (("<think>\nIt is 4.\n</think>\n\n2 + 2 = 4", False), ("It is 4.\n", "2 + 2 = 4")),
    (("<think>a</think>b", False), ("a", "b")),
    (("  \n<think>a <b> </c></think>\n b </think> c", False), ("a <b> </c>", "b </think> c")),
    (("<think></think>Answer", False), ("", "Answer")),
    (("<think>cut off while thinking " + CUT, False), ("cut off while thinking " + CUT, "")),
    (("<think>", False), ("", "")),
    (("Plain answer, no tags.", False), ("", "Plain answer, no tags.")),
    (("\n\nPlain answer", False), ("", "\n\nPlain answer")),
    (("<th", False), ("", "<th")),
    (("<thinking about it", False), ("", "<thinking about it")),
    (("I say </think> as text", False), ("", "I say </think> as text")),
    (("", False), ("", "")),
    # opened=True: the node's prompt may have opened the block (GLM-4)
    (("GLM reasons here\n</think>\nThe answer", True), ("GLM reasons here\n", "The answer")),
    (("<think>tagged anyway</think>ok", True), ("tagged anyway", "ok")),
    (("Harmony: only the answer", True), ("", "Harmony: only the answer")),
    (("  lead</think>", True), ("lead", "")),
    (("x</thin", True), ("", "x</thin")),
    (("a</think>b</think>c", True), ("a", "b</think>c")),
]


def _feed(pieces: list[str], opened: bool) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = ReasoningSplitter(opened=opened)
    out = [splitter.feed(p) for p in pieces]
    out.append(splitter.close())
    return "".join(r for r, _ in out), "".join(a for _, a in out), out


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_whole_text(given: tuple[str, bool], expected: tuple[str, str]) -> None:
    text, opened = given
    assert split_reasoning(text, opened=opened) == expected


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_every_split_position_and_single_characters(
    given: tuple[str, bool], expected: tuple[str, str]
) -> None:
    text, opened = given
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            got = _feed([text[:i], text[i:j], text[j:]], opened)[:2]
            assert got == expected, (text, i, j)
    assert _feed(list(text), opened)[:2] == expected


def test_tags_split_across_chunks() -> None:
    reasoning, answer, out = _feed(["<th", "ink>", "Let me see", "</", "think>", "Paris."], False)
    assert (reasoning, answer) == ("Let me see", "Paris.")
    # each piece comes out as soon as it cannot be part of a tag
    assert out == [
        ("", ""),
        ("", ""),
        ("Let me see", ""),
        ("", ""),
        ("", ""),
        ("", "Paris."),
        ("", ""),
    ]


def test_nothing_held_longer_than_a_tag() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>") == ("", "")
    # reasoning text that cannot begin "</think>" comes out at once
    assert splitter.feed("step one") == ("step one", "")
    # a possible beginning of the close tag is held: at most len("</think>") - 1 chars
    assert splitter.feed(" </think") == (" ", "")
    assert splitter.feed("ing") == ("</thinking", "")
    assert splitter.feed("</think>") == ("", "")
    assert splitter.feed("Answer") == ("", "Answer")
    # after the tag everything passes through untouched
    assert splitter.feed("</think><think>") == ("", "</think><think>")
    for size in range(1, 400):
        s = ReasoningSplitter()
        s.feed("<think>")
        r, _ = s.feed("x" * size + "</thin")
        assert len(r) == size and len(THINK_CLOSE) - 1 >= len("</thin")


def test_untagged_answer_streams_at_once() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("Hello") == ("", "Hello")
    assert splitter.feed(" world") == ("", " world")


def test_opened_holds_until_close_tag_or_end() -> None:
    s = ReasoningSplitter(opened=True)
    assert s.feed("thinking") == ("", "")
    assert s.feed(" more</think>\n") == ("thinking more", "")
    assert s.feed("Answer") == ("", "Answer")
    s = ReasoningSplitter(opened=True)
    assert s.feed("an answer") == ("", "")
    assert s.close() == ("", "an answer")


def test_answer_of() -> None:
    assert answer_of("<think>r</think>\n\nA") == "A"
    assert answer_of("GLM r</think>A") == "A"
    assert answer_of("no tags") == "no tags"


def test_plan_turn_matches_the_raw_answer_the_node_stored() -> None:
    """The node stores the raw answer (think block included); the client keeps the answer
    without its reasoning: the conversation still carries on what the node holds, and
    only the new message is sent."""
    raw = "<think>\nThe user greets me.\n</think>\n\nHello there!"
    user = {"role": "user", "content": "Hi"}
    held = [user, {"role": "assistant", "content": raw}]
    shown = [user, {"role": "assistant", "content": "Hello there!"}]
    assert continues(held, shown)
    plan = plan_turn(shown, "How are you?", held)
    assert (plan.new_node_session, plan.prompt, plan.inlined) == (False, "How are you?", False)
    # a different answer is still a different conversation
    other = [user, {"role": "assistant", "content": "Something else"}]
    assert not continues(held, other)
    # the needle is the raw text the node stored: a prompt quoting it still renews
    plan = plan_turn(shown, f"About {raw.strip()}", held)
    assert plan.new_node_session
