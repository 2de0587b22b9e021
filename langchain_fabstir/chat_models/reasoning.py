"""``ChatFabstir(reasoning=...)``: the ``thinking`` field it sends and how the answer's
reasoning is separated (``PROTOCOL.md`` 6.6), checked before anything is sent.

>>> plan = reasoning_plan(True, None)
>>> plan.thinking, plan.keep, plan.opened
('enabled', True, False)
>>> reasoning_plan("high", None).opened
True
>>> reasoning_plan(None, "low") is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langchain_fabstir.chat_models.options import THINKING_LEVELS
from langchain_fabstir.errors import InvalidRequestError
from langchain_fabstir.wire.reasoning import ReasoningSplitter

__all__ = ["REASONING_EFFORTS", "Reasoning", "ReasoningPlan", "check_thinking", "reasoning_plan"]

REASONING_EFFORTS = ("low", "medium", "high")
"""The ``reasoning`` values that name a level (sent as ``thinking`` as they are)."""

Reasoning = bool | Literal["low", "medium", "high"] | None
"""What ``ChatFabstir(reasoning=...)`` takes."""

# Levels at which a GLM-4 node opens the think block in its prompt (its stream then
# starts with reasoning and only "</think>" shows).
_OPENS_IN_PROMPT = frozenset(REASONING_EFFORTS)


@dataclass(frozen=True)
class ReasoningPlan:
    """How one call treats reasoning.

    Attributes:
        thinking: the ``thinking`` value to send.
        keep: return the reasoning (``additional_kwargs["reasoning_content"]`` and a
            ``reasoning`` content block); ``False``: drop it, keep only the answer.
        opened: the node may have opened the think block in its prompt (see
            :class:`~langchain_fabstir.wire.reasoning.ReasoningSplitter`).
    """

    thinking: str
    keep: bool
    opened: bool

    def splitter(self) -> ReasoningSplitter:
        return ReasoningSplitter(opened=self.opened)


def check_thinking(value: Any) -> None:
    """Refuse a ``thinking`` value a node would refuse (before anything is sent)."""
    if value not in THINKING_LEVELS:
        raise InvalidRequestError(
            f"thinking={value!r} is not a thinking mode a Fabstir node takes "
            f"(valid: {', '.join(THINKING_LEVELS)}); a node would answer "
            f"'Invalid thinking mode'. Or use reasoning=True|False|'low'|'medium'|'high'."
        )


def reasoning_plan(reasoning: Any, thinking: str | None) -> ReasoningPlan | None:
    """The plan for ``reasoning`` (the call's, else the model's) given the ``thinking``
    of ``model_kwargs`` or the call (``None``: none). ``reasoning=None``: no plan, the
    text is left as the model wrote it and ``thinking`` is sent only if given.

    - ``True``: ``thinking`` as given, else ``"enabled"``; reasoning returned apart.
    - ``"low" | "medium" | "high"``: that ``thinking`` level; reasoning returned apart.
    - ``False``: ``thinking: "disabled"``; a think block the model still writes is
      dropped.

    A ``thinking`` that contradicts ``reasoning`` (``reasoning=False`` with
    ``thinking="high"``, ``reasoning="low"`` with ``thinking="high"``,
    ``reasoning=True`` with ``thinking="disabled"``) is refused with
    ``InvalidRequestError``, as is any other ``reasoning`` value.
    """
    if reasoning is None:
        return None
    if thinking is not None:
        check_thinking(thinking)
    if reasoning is True:
        level = thinking or "enabled"
        if level == "disabled":
            raise _conflict(reasoning, thinking)
        return ReasoningPlan(level, True, level in _OPENS_IN_PROMPT)
    if reasoning is False:
        if thinking not in (None, "disabled"):
            raise _conflict(reasoning, thinking)
        return ReasoningPlan("disabled", False, False)
    if isinstance(reasoning, str) and reasoning in REASONING_EFFORTS:
        if thinking not in (None, reasoning):
            raise _conflict(reasoning, thinking)
        return ReasoningPlan(reasoning, True, True)
    raise InvalidRequestError(
        f"reasoning={reasoning!r} is not a reasoning setting: use True (think, reasoning "
        "returned apart), False (no thinking), None (leave the text as the model wrote "
        "it) or a level 'low' | 'medium' | 'high'"
    )


def _conflict(reasoning: Any, thinking: str | None) -> InvalidRequestError:
    return InvalidRequestError(
        f"reasoning={reasoning!r} and thinking={thinking!r} (model_kwargs or the call) "
        "contradict each other: give one of them (reasoning decides what thinking is sent)"
    )
