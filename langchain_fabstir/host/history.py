"""The conversation a deployed node keeps per session id in encrypted mode
(``docs/PROTOCOL.md`` section 6.1), as pure functions and a small store, so that the
reference host reads a conversation exactly as a node does.

>>> store = HistoryStore()
>>> store.ensure("7")
True
>>> store.add_turn("7", "Hi", "Hello!")
>>> extract_latest_user_message("User: Hi\\nAssistant: Hello!\\nUser: and you?", store.context("7"))
'User: and you?'
>>> strip_chat_template_markers("<|im_start|>user\\nHi<|im_end|>")
'Hi'
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = [
    "CONTEXT_MESSAGES",
    "MAX_SESSIONS",
    "MAX_SESSION_BYTES",
    "HistoryStore",
    "extract_latest_user_message",
    "strip_chat_template_markers",
]

CONTEXT_MESSAGES = 10
"""Messages of the stored history the model sees (``build_prompt_with_context`` keeps
the last 10 of the last 20: the last 5 exchanges)."""

STORED_WINDOW = 20
"""``get_context_messages`` returns the last 20 stored messages."""

MAX_SESSIONS = 1000
"""Session entries a node keeps (nothing removes them: past this, new ids get none)."""

MAX_SESSION_BYTES = 10 * 1024 * 1024
"""Bytes of history per session; past this a message is not stored (history stops)."""

_MESSAGE_OVERHEAD = 72
"""What the node counts per message besides role and content (``size_of::<Message>()``)."""

_CHANNELS = ("final", "analysis", "commentary")
_ROLES = ("user", "assistant", "system")


def _markers() -> tuple[str, ...]:
    """The markers ``strip_chat_template_markers`` deletes, longest first."""
    harmony = [f"<|start|>{r}<|message|>" for r in _ROLES]
    harmony += [f"<|start|>assistant<|channel|>{c}<|message|>" for c in _CHANNELS]
    harmony += [f"<|channel|>{c}" for c in _CHANNELS]
    harmony += ["<|end|>", "<|start|>", "<|message|>"]
    chatml = [f"<|im_start|>{r}\n" for r in _ROLES] + [f"<|im_start|>{r}" for r in _ROLES]
    chatml += ["<|im_end|>", "<|im_start|>"]
    glm = [f"<|{r}|>\n" for r in (*_ROLES, "observation")]
    glm += [f"<|{r}|>" for r in (*_ROLES, "observation")]
    llama = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
    return tuple(sorted({*harmony, *chatml, *glm, *llama}, key=len, reverse=True))


_MARKERS = _markers()


def strip_chat_template_markers(text: str) -> str:
    """``text`` without the chat-template markers a node deletes from every context
    message and the prompt (Harmony, ChatML, GLM-4, Llama-2), trimmed. Roles are not
    recovered: role words outside the markers (``User:``, ``observation``) stay text.

    >>> strip_chat_template_markers("<|start|>system<|message|>Be brief.<|end|>[INST] Hi [/INST]")
    'Be brief. Hi'
    >>> strip_chat_template_markers("<think>x</think> <|return|>")
    '<think>x</think> <|return|>'
    """
    if "<|" in text or "[" in text or "<<" in text:
        for marker in _MARKERS:
            if marker in text:
                text = text.replace(marker, "")
    return text.strip()


def extract_latest_user_message(prompt: str, history: Sequence[dict[str, str]]) -> str:
    """What a node stores (and shows the model) as the new user turn of ``prompt``, given
    the session's stored ``history``: the text after the first occurrence of the previous
    answer (trimmed), else the whole prompt.

    >>> h = [{"role": "user", "content": "Say OK"}, {"role": "assistant", "content": " OK. "}]
    >>> extract_latest_user_message("Say OK\\nOK.\\nnext", h)
    'next'
    >>> extract_latest_user_message("no needle here", h)
    'no needle here'
    >>> extract_latest_user_message("ends with OK.", h)
    'ends with OK.'
    """
    if not history:
        return prompt
    needle = ""
    for message in reversed(history):
        if message.get("role") == "assistant":
            needle = str(message.get("content", "")).strip()
            break
    if not needle:
        return prompt
    at = prompt.find(needle)
    if at < 0:
        return prompt
    rest = prompt[at + len(needle) :].strip()
    return rest or prompt


class _Entry:
    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: deque[dict[str, str]] = deque(maxlen=STORED_WINDOW)
        self.size = 0


class HistoryStore:
    """The node's ``SessionStore``: history per session id, process-wide (a reconnect
    with the same id finds it), created by an encrypted init only if absent (so it
    survives a re-init), replaced by a plaintext ``session_init`` with the same id, never
    cleared by a disconnect.

    Only what the model can ever see is kept (the last 20 messages), while the bytes a
    node would hold are counted, so the 10 MiB cap takes effect exactly when a node's
    would. Memory stays bounded: ``max_sessions`` x 20 messages.

    Args:
        max_sessions: entries kept (node: 1000; past it new ids get no history).
        max_session_bytes: history bytes per session (node: 10 MiB).
    """

    def __init__(
        self, *, max_sessions: int = MAX_SESSIONS, max_session_bytes: int = MAX_SESSION_BYTES
    ) -> None:
        self.max_sessions = max_sessions
        self.max_session_bytes = max_session_bytes
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def ensure(self, session_id: str) -> bool:
        """The entry for ``session_id``, created if absent and there is room (an
        ``encrypted_session_init``). False: no entry (the store is full)."""
        if session_id in self._entries:
            return True
        if len(self._entries) >= self.max_sessions:
            return False
        self._entries[session_id] = _Entry()
        return True

    def reset(self, session_id: str) -> None:
        """A plaintext ``session_init`` with this id: a fresh, empty entry."""
        if session_id in self._entries or len(self._entries) < self.max_sessions:
            self._entries[session_id] = _Entry()

    def context(self, session_id: str | None) -> list[dict[str, str]]:
        """The messages the model sees before the prompt (the last 10 stored)."""
        entry = self._entries.get(session_id) if session_id is not None else None
        if entry is None:
            return []
        return list(entry.messages)[-CONTEXT_MESSAGES:]

    def add_turn(self, session_id: str | None, user: str, answer: str) -> None:
        """Store a turn (the effective user prompt, then the whole answer); the caller
        stores only non-empty answers. Each message past the byte cap is dropped."""
        entry = self._entries.get(session_id) if session_id is not None else None
        if entry is None:
            return
        for role, content in (("user", user), ("assistant", answer)):
            size = _MESSAGE_OVERHEAD + len(role) + len(content.encode("utf-8", "replace"))
            if entry.size + size > self.max_session_bytes:
                continue
            entry.size += size
            entry.messages.append({"role": role, "content": content})

    def replace(self, session_id: str, messages: Sequence[dict[str, str]]) -> None:
        """Beyond a node (the ``encrypted_context`` extension of a lenient host): the
        session's history becomes ``messages``."""
        self.reset(session_id)
        entry = self._entries.get(session_id)
        if entry is None:
            return
        for m in messages:
            role, content = m["role"], m["content"]
            entry.size += _MESSAGE_OVERHEAD + len(role) + len(content.encode("utf-8", "replace"))
            entry.messages.append({"role": role, "content": content})
