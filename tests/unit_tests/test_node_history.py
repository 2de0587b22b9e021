"""The node's history rules (PROTOCOL.md 6.1), as the reference host applies them."""

from __future__ import annotations

from langchain_fabstir.host.history import (
    HistoryStore,
    extract_latest_user_message,
    strip_chat_template_markers,
)


def test_markers_of_every_template_are_stripped_and_the_text_trimmed() -> None:
    cases = {
        "<|start|>user<|message|>Hi<|end|>": "Hi",
        "<|start|>assistant<|channel|>final<|message|>Yo<|end|>": "Yo",
        "<|channel|>analysis x": "x",
        "<|im_start|>system\nBe brief<|im_end|>": "Be brief",
        "<|im_start|>userHi": "Hi",
        "<|user|>\nHi<|assistant|>": "Hi",
        "<|observation|>out": "out",
        "[INST] <<SYS>>S<</SYS>> Q [/INST]": "S Q",
    }
    for raw, clean in cases.items():
        assert strip_chat_template_markers(raw) == clean, raw
    # role words and other tags stay text
    assert strip_chat_template_markers(" User: x <think>y</think><|return|> ") == (
        "User: x <think>y</think><|return|>"
    )


def test_the_prompt_is_cut_after_the_previous_answer() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": " Paris. "}]
    assert extract_latest_user_message("Q\nParis.\n next ", history) == "next"
    # not found, or nothing after it: the whole prompt
    assert extract_latest_user_message("other", history) == "other"
    assert extract_latest_user_message("it is Paris.", history) == "it is Paris."
    # no history, or an empty answer: the whole prompt
    assert extract_latest_user_message("x Paris. y", []) == "x Paris. y"
    empty = [{"role": "assistant", "content": "  "}]
    assert extract_latest_user_message("x Paris. y", empty) == "x Paris. y"
    # a short answer is matched at its first occurrence (earlier text leaks in)
    short = [{"role": "assistant", "content": "OK"}]
    assert extract_latest_user_message("say OK or no\nOK\nthen", short) == "or no\nOK\nthen"


def test_store_window_reinit_reset_and_caps() -> None:
    store = HistoryStore(max_sessions=2, max_session_bytes=10_000)
    assert store.ensure("a") and store.ensure("b")
    assert not store.ensure("c")  # full: new ids get no entry
    store.add_turn("c", "u", "x")
    assert store.context("c") == []
    for i in range(8):
        store.add_turn("a", f"u{i}", f"a{i}")
    window = store.context("a")
    assert len(window) == 10 and window[0] == {"role": "user", "content": "u3"}
    assert store.ensure("a") and len(store.context("a")) == 10  # a re-init keeps it
    store.reset("a")  # a plaintext session_init with the same id wipes it
    assert store.context("a") == []
    # past the byte cap a message is not stored: the history stops growing
    store.add_turn("b", "x" * 9_000, "y" * 2_000)
    assert [m["role"] for m in store.context("b")] == ["user"]
    store.add_turn("b", "small", "small")
    assert [m["content"] for m in store.context("b")][1:] == ["small", "small"]
