"""What to send to a node session in encrypted mode, given the conversation and what the
node already holds: a pure planner (see :func:`plan_turn`), used by ``transport.py``.

>>> plan = plan_turn([{"role": "system", "content": "Be brief."}], "Hi", held=[])
>>> plan.new_node_session, plan.prompt.endswith("Hi")
(False, True)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_fabstir.wire.reasoning import THINK_CLOSE, answer_of

__all__ = [
    "ENCRYPTED_CONTEXT_FEATURE",
    "TurnPlan",
    "continues",
    "inline_prompt",
    "new_node_session_id",
    "plan_turn",
    "turn_prompt",
    "with_images",
]

ENCRYPTED_CONTEXT_FEATURE = "encrypted_context"
"""A host that announces it reads ``conversation_context`` inside the ciphertext (this
project's lenient reference host); deployed nodes do not."""

INSTRUCTIONS_HEADING = "[Instructions, in force for the whole conversation]"
CONVERSATION_HEADING = "[Conversation so far]"
MESSAGE_HEADING = "[New message]"

_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class TurnPlan:
    """What to send for one prompt on an encrypted socket.

    Attributes:
        new_node_session: open a fresh node session (a new ``encrypted_session_init``
            with a session id never used before, on the same socket) first: the node's
            history of the current one is not this conversation.
        prompt: the ``prompt`` text to seal.
        inlined: the conversation is inlined in ``prompt`` (a node session with no
            history), rather than left to the node's own history.
    """

    new_node_session: bool
    prompt: str
    inlined: bool


def _split(messages: Messages) -> tuple[list[str], list[dict[str, str]]]:
    system = [m["content"] for m in messages if m.get("role") == "system"]
    others = [m for m in messages if m.get("role") != "system"]
    return system, others


def continues(held: Messages | None, context: Messages) -> bool:
    """Whether ``context`` (the conversation before the new prompt, perhaps cut to the
    host's window) carries on what the node session holds (``held``: the conversation
    as the client sent it and received the answers; ``None``: unknown): the same system
    messages, and its other messages the newest of ``held``'s (none when ``held`` has
    none).

    >>> u, a = {"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}
    >>> continues([u, a], [u, a]), continues([u, a], [a]), continues([u, a], [])
    (True, True, False)
    >>> continues([], []), continues(None, []), continues([u, a], [a, u])
    (True, False, False)

    An answer whose reasoning the client separated (``ChatFabstir(reasoning=True)``)
    carries on the raw answer the node stored:

    >>> raw = {"role": "assistant", "content": "<think>Hm.</think> 2"}
    >>> continues([u, raw], [u, a])
    True
    """
    if held is None:
        return False
    held_system, held_others = _split(held)
    system, others = _split(context)
    if held_system != system:
        return False
    if not others:
        return not held_others
    if len(others) > len(held_others):
        return False
    return all(_same(h, m) for h, m in zip(held_others[-len(others) :], others, strict=True))


def _same(held: dict[str, str], message: dict[str, str]) -> bool:
    """``message`` (as the client has it) is ``held`` (as the node stored it): equal, or
    an assistant answer the client keeps without the reasoning the node stored with it
    (``PROTOCOL.md`` 6.6: the node stores the raw text, think block included)."""
    if held == message:
        return True
    raw = held.get("content", "")
    return (
        held.get("role") == "assistant"
        and message.get("role") == "assistant"
        and THINK_CLOSE in raw
        and message.get("content") == answer_of(raw)
    )


def _instructions(system: Sequence[str]) -> str:
    return "\n\n".join(s.strip() for s in system if s.strip())


def turn_prompt(system: Sequence[str], message: str) -> str:
    """The new message with the instructions (system messages) in front, so that they
    are stored with every turn and stay in force after the first turn leaves the
    node's window. Without instructions: the message as it is.

    >>> turn_prompt([], "Hi")
    'Hi'
    >>> print(turn_prompt(["Be brief."], "Hi"))
    [Instructions, in force for the whole conversation]
    Be brief.
    <BLANKLINE>
    [New message]
    Hi
    """
    instructions = _instructions(system)
    if not instructions:
        return message
    return f"{INSTRUCTIONS_HEADING}\n{instructions}\n\n{MESSAGE_HEADING}\n{message}"


def inline_prompt(context: Messages, message: str) -> str:
    """The whole conversation as one prompt, for a node session that holds nothing:
    instructions, then the earlier messages as ``User:`` / ``Assistant:`` lines, then
    the new message (a node turns it all into one user message).

    >>> print(inline_prompt([{"role": "user", "content": "Hi"},
    ...     {"role": "assistant", "content": "Hello"}], "Bye"))
    [Conversation so far]
    User: Hi
    Assistant: Hello
    <BLANKLINE>
    [New message]
    Bye
    """
    system, others = _split(context)
    if not others:
        return turn_prompt(system, message)
    parts = []
    instructions = _instructions(system)
    if instructions:
        parts.append(f"{INSTRUCTIONS_HEADING}\n{instructions}")
    lines = [
        f"{_ROLE_NAMES.get(m.get('role', ''), m.get('role', '').capitalize())}: {m['content']}"
        for m in others
    ]
    parts.append(CONVERSATION_HEADING + "\n" + "\n".join(lines))
    parts.append(f"{MESSAGE_HEADING}\n{message}")
    return "\n\n".join(parts)


def plan_turn(context: Messages, message: str, held: Messages | None) -> TurnPlan:
    """What to send to a deployed node (no ``encrypted_context`` extension) for
    ``message`` after ``context``, when the node session holds ``held`` (``[]``: nothing,
    a fresh node session; ``None``: unknown).

    - The conversation carries on what the node holds: the new message only, with the
      instructions in front (:func:`turn_prompt`); the node adds its own history.
    - The node session holds nothing: the conversation inlined (:func:`inline_prompt`).
    - Anything else (another conversation, a changed history, a node session whose
      history is unknown, such as after a reconnect): a fresh node session, and the
      conversation inlined there.
    - A node cuts the prompt after the first occurrence of its previous answer; when
      that answer occurs in what would be sent (a short answer such as ``OK``), a fresh
      node session too, so that nothing is cut.

    What a node does to the conversation (``PROTOCOL.md`` 6.1), so nobody is surprised:
    roles are flattened (system messages and inlined turns become text of one user
    message; chat-template markers in any message are deleted); the model sees the
    node's last 10 stored messages (5 exchanges) before the new one, so a turn older
    than that is gone unless the conversation is inlined again (instructions are not:
    they ride with every message); the node adds its own default system message
    (Harmony: date, "Reasoning: medium"). Every fresh node session is a new session id
    under the same job (tokens bill to the job; the session's S5 checkpoints of a
    deployed node are published under the first id it saw); a node keeps at most 1000
    session ids per process, after which new ids get no history (a continued
    conversation would then lose its turns; an inlined one would not).

    >>> u, a = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}
    >>> plan_turn([u, a], "Bye", held=[u, a])
    TurnPlan(new_node_session=False, prompt='Bye', inlined=False)
    >>> plan_turn([], "Bye", held=[u, a]).new_node_session
    True
    >>> plan_turn([u, a], "Hey you", held=[u, a]).new_node_session
    True
    """
    if continues(held, context):
        system, _ = _split(context)
        prompt = turn_prompt(system, message)
        needle = next(
            (m["content"].strip() for m in reversed(held or []) if m.get("role") == "assistant"),
            "",
        )
        if not needle or needle not in prompt:
            return TurnPlan(False, prompt, False)
        return TurnPlan(True, inline_prompt(context, message), True)
    return TurnPlan(held is None or bool(held), inline_prompt(context, message), True)


def with_images(prompt: str, message: str) -> str:
    """An inlined conversation (:func:`inline_prompt`) whose new message carries images:
    the message made the last ``User:`` turn, because a node puts what its vision sidecar
    read into the last ``User:`` turn of a prompt that has one (``PROTOCOL.md`` 6.2),
    which would otherwise be an earlier message. Any other prompt is returned as it is.

    >>> print(with_images(inline_prompt([{"role": "user", "content": "Hi"},
    ...     {"role": "assistant", "content": "Hello"}], "What is this?"), "What is this?"))
    [Conversation so far]
    User: Hi
    Assistant: Hello
    <BLANKLINE>
    [New message]
    User: What is this?
    """
    tail = f"{MESSAGE_HEADING}\n{message}"
    if "\nUser:" not in prompt or not prompt.endswith(tail):
        return prompt
    return prompt[: len(prompt) - len(message)] + "User: " + message


def new_node_session_id(session_id: str) -> str:
    """A node session id never used before, for the session ``session_id``: under a paid
    job a node accepts any session id and bills the job named in the init.

    >>> new_node_session_id("42").startswith("42~")
    True
    """
    return f"{session_id}~{secrets.token_hex(8)}"
