"""A model's reasoning apart from its answer in the text a host streams (``PROTOCOL.md``
6.6): no frame has a reasoning field; models that think write ``<think>...</think>``
into the text, and a GLM-4 node opens the block in its prompt, so its stream starts with
reasoning and only ``</think>`` shows. :class:`ReasoningSplitter` splits the text as it
arrives; :func:`split_reasoning` splits a whole text the same way.

>>> split_reasoning("<think>\\nIt is 4.\\n</think>\\n\\n2 + 2 = 4")
('It is 4.\\n', '2 + 2 = 4')
"""

from __future__ import annotations

__all__ = ["THINK_CLOSE", "THINK_OPEN", "ReasoningSplitter", "answer_of", "split_reasoning"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_START, _REASONING_START, _REASONING, _MAYBE, _ANSWER_START, _ANSWER = range(6)


def _partial_suffix(text: str, tag: str) -> int:
    """How many trailing characters of ``text`` could begin ``tag`` (at most len - 1)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Splits streamed text into reasoning and answer, piece by piece.

    ``feed(text)`` and ``close()`` return ``(reasoning, answer)``: the text of each kind
    that is now certain (either may be empty). The rule, on the text as a whole:

    - It begins (after whitespace) with ``<think>``: reasoning up to the first
      ``</think>``, the answer after it. A think block that never closes (the token
      budget ran out while thinking) is all reasoning.
    - Otherwise, with ``opened=False``: all answer, as the model wrote it (a later
      ``</think>`` is text). With ``opened=True`` (the node may have opened the block in
      its prompt: GLM-4 at ``thinking`` low, medium or high): reasoning up to the first
      ``</think>`` if one comes, else all answer (a Harmony node at the same levels
      sends only the answer).

    Whitespace at the start of the reasoning and of an answer that follows ``</think>``
    is dropped. What is held back: while a tag may be arriving, at most
    ``len("</think>") - 1`` characters (whitespace at the very start too, until the
    first other character); with ``opened=True`` and no ``<think>`` at the start, the
    text up to ``</think>`` or the end, because until then it cannot be told whether it
    is reasoning or the answer. After ``</think>`` the text passes through untouched.

    >>> s = ReasoningSplitter()
    >>> s.feed("<th"), s.feed("ink>Hm"), s.feed("m</"), s.feed("think> Yes"), s.close()
    (('', ''), ('Hm', ''), ('m', ''), ('', 'Yes'), ('', ''))
    """

    __slots__ = ("_held", "_opened", "_parts", "_state")

    def __init__(self, *, opened: bool = False) -> None:
        self._opened = opened
        self._state = _START
        self._held = ""  # text not yet classified (a tag may be arriving)
        self._parts: list[str] = []  # opened=True: the text before any </think>

    def feed(self, text: str) -> tuple[str, str]:
        state = self._state
        if state == _ANSWER:  # the hot path once the answer runs
            return "", text
        if state == _ANSWER_START:
            text = text.lstrip()
            if text:
                self._state = _ANSWER
            return "", text
        if state == _START:
            held = self._held + text
            lead = held.lstrip()
            if len(lead) < len(THINK_OPEN) and THINK_OPEN.startswith(lead):
                self._held = held  # whitespace, or the beginning of <think>
                return "", ""
            self._held = ""
            if lead.startswith(THINK_OPEN):
                self._state = _REASONING_START
                return self.feed(lead[len(THINK_OPEN) :])
            if not self._opened:
                self._state = _ANSWER
                return "", held
            self._state = _MAYBE
            return self._maybe(held)
        if state == _REASONING_START:
            text = text.lstrip()
            if not text:
                return "", ""
            self._state = _REASONING
            return self._reasoning(text)
        if state == _REASONING:
            return self._reasoning(self._held + text)
        return self._maybe(text)

    def _reasoning(self, text: str) -> tuple[str, str]:
        if "<" not in text:  # no tag, nor the beginning of one (held text starts with "<")
            self._held = ""
            return text, ""
        end = text.find(THINK_CLOSE)
        if end >= 0:
            self._held = ""
            self._state = _ANSWER_START
            return text[:end], self.feed(text[end + len(THINK_CLOSE) :])[1]
        keep = _partial_suffix(text, THINK_CLOSE)
        self._held = text[len(text) - keep :] if keep else ""
        return (text[: len(text) - keep] if keep else text), ""

    def _maybe(self, text: str) -> tuple[str, str]:
        tail = self._held + text
        end = tail.find(THINK_CLOSE)
        if end < 0:
            self._parts.append(text)
            self._held = tail[-(len(THINK_CLOSE) - 1) :]
            return "", ""
        # The close tag ends within this piece: everything before it was reasoning.
        before = "".join(self._parts) + text
        cut = len(before) - (len(tail) - end)
        self._parts, self._held = [], ""
        self._state = _ANSWER_START
        return before[:cut].lstrip(), self.feed(before[cut + len(THINK_CLOSE) :])[1]

    def close(self) -> tuple[str, str]:
        """The end of the text: what was held back, classified."""
        state, held = self._state, self._held
        self._held = ""
        if state == _START:
            self._state = _ANSWER
            return "", held
        if state == _REASONING:
            return held, ""
        if state == _MAYBE:
            text = "".join(self._parts)
            self._parts = []
            return "", text
        return "", ""


def split_reasoning(text: str, *, opened: bool = False) -> tuple[str, str]:
    """``(reasoning, answer)`` of a whole text, by :class:`ReasoningSplitter`'s rule.

    >>> split_reasoning("No tags here.")
    ('', 'No tags here.')
    >>> split_reasoning("Thinking first.</think>Answer.", opened=True)
    ('Thinking first.', 'Answer.')
    """
    splitter = ReasoningSplitter(opened=opened)
    r1, a1 = splitter.feed(text)
    r2, a2 = splitter.close()
    return r1 + r2, a1 + a2


def answer_of(text: str) -> str:
    """The answer part of a text as a client shows it when it separates reasoning (any
    think block removed, whether the model or the node's prompt opened it): what a
    client keeps of an answer whose raw text a node stored (``PROTOCOL.md`` 6.1)."""
    if THINK_CLOSE not in text:
        return text
    return split_reasoning(text, opened=True)[1]
