"""What the client sends to a node session in encrypted mode (sessions/conversation.py)."""

from __future__ import annotations

from langchain_fabstir.host.history import (
    HistoryStore,
    extract_latest_user_message,
    strip_chat_template_markers,
)
from langchain_fabstir.sessions.conversation import (
    continues,
    inline_prompt,
    new_node_session_id,
    plan_turn,
    turn_prompt,
)

S = {"role": "system", "content": "Answer in French."}


def _u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_a_continuing_conversation_sends_the_instructions_and_the_new_message() -> None:
    held = [S, _u("hi"), _a("salut")]
    plan = plan_turn([S, _u("hi"), _a("salut")], "bye", held)
    assert not plan.new_node_session and not plan.inlined
    assert plan.prompt == turn_prompt(["Answer in French."], "bye")
    assert "Answer in French." in plan.prompt and plan.prompt.endswith("bye")


def test_a_window_cut_context_still_continues() -> None:
    turns = [m for i in range(8) for m in (_u(f"q{i}"), _a(f"r{i}"))]
    assert continues([S, *turns], [S, *turns[-9:]])
    assert not continues([S, *turns], [*turns[-9:]])  # the system prompt changed


def test_another_conversation_or_unknown_history_gets_a_fresh_node_session() -> None:
    held = [_u("secret of user A"), _a("noted")]
    plan = plan_turn([], "what do you know?", held)
    assert plan.new_node_session and plan.prompt == "what do you know?"
    assert plan_turn([_u("x"), _a("y")], "z", None).new_node_session
    # a node session known to be empty takes the conversation inlined, no new session
    plan = plan_turn([S, _u("x"), _a("y")], "z", [])
    assert not plan.new_node_session and plan.inlined
    assert plan.prompt == inline_prompt([S, _u("x"), _a("y")], "z")


def test_an_answer_that_occurs_in_the_next_prompt_forces_a_fresh_node_session() -> None:
    held = [_u("say OK"), _a("OK")]
    plan = plan_turn(held, "is it OK now?", held)
    assert plan.new_node_session and plan.inlined


def test_what_a_node_makes_of_the_plans() -> None:
    """Drive the planner against the node's own rules: every turn the model sees the
    instructions, and the whole conversation survives five exchanges and more."""
    store = HistoryStore()
    store.ensure("n")
    held: list[dict[str, str]] = []
    conversation = [S]
    for i in range(7):
        plan = plan_turn(conversation, f"question {i}", held)
        assert not plan.new_node_session
        history = store.context("n")
        effective = extract_latest_user_message(plan.prompt, history)
        model_sees = [strip_chat_template_markers(m["content"]) for m in history]
        model_sees.append(strip_chat_template_markers(effective))
        assert "Answer in French." in model_sees[-1] and f"question {i}" in model_sees[-1]
        answer = f"réponse {i}"
        store.add_turn("n", effective, answer)
        conversation += [_u(f"question {i}"), _a(answer)]
        held = list(conversation)
    assert len(store.context("n")) == 10


def test_node_session_ids_are_new_each_time() -> None:
    ids = {new_node_session_id("7") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("7~") for i in ids)
