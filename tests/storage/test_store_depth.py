"""A value nested too deep is refused at ``put``; nothing stored becomes unreadable because
of a write (issue 20, item 11). Against a real LocalPortal on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.store.base import PutOp

from langchain_fabstir._json import MAX_VALUE_DEPTH
from langchain_fabstir.errors import ValueTooDeepError
from langchain_fabstir.langgraph import S5Store

from .conftest import ThreadedPortal
from .test_store import Clock


def nested(depth: int) -> dict[str, Any]:
    """A dict nesting ``depth`` dicts (itself included)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_a_too_deep_value_is_refused_and_the_namespace_stays_readable(
    portal: ThreadedPortal, phrase: str
) -> None:
    clock = Clock()
    store = S5Store(portal_url=portal.url, seed_phrase=phrase, clock=clock)
    ns = ("memories", "ada")
    await store.aput(ns, "kept", {"v": 1})
    await store.aput(ns, "short", {"v": 2}, ttl=1)
    await store.aput(("memories", "bob"), "other", {"v": 3})

    with pytest.raises(ValueTooDeepError) as info:
        await store.aput(ns, "deep", nested(450))
    assert info.value.code == "VALUE_TOO_DEEP"
    assert f"at most {MAX_VALUE_DEPTH} levels" in info.value.message
    assert info.value.details["key"] == "deep"
    # In a batch, nothing of it is written.
    with pytest.raises(ValueTooDeepError):
        await store.abatch([PutOp(ns, "also", {"v": 4}), PutOp(ns, "deep", nested(100_000))])
    # A set is a tag around an array in CBOR (two levels): 220 nested sets are within
    # MAX_VALUE_DEPTH but past what the decoder reads back, so they are refused too.
    deep_sets: Any = frozenset({1})
    for _ in range(219):
        deep_sets = frozenset({deep_sets})
    with pytest.raises(ValueTooDeepError):
        await store.aput(ns, "sets", {"s": deep_sets})

    # The deepest value allowed is stored and read back.
    await store.aput(ns, "deepest", nested(MAX_VALUE_DEPTH - 1))

    # Every reader (a fresh instance: nothing cached) reads the namespace, searches,
    # lists and sweeps.
    reader = S5Store(portal_url=portal.url, seed_phrase=phrase, clock=clock)
    kept = await reader.aget(ns, "kept")
    assert kept is not None and kept.value == {"v": 1}
    deepest = await reader.aget(ns, "deepest")
    assert deepest is not None and deepest.value == nested(MAX_VALUE_DEPTH - 1)
    assert await reader.aget(ns, "also") is None
    assert {i.key for i in await reader.asearch(ns)} == {"kept", "short", "deepest"}
    assert {i.key for i in await reader.asearch(("memories",))} == {
        "kept",
        "short",
        "deepest",
        "other",
    }
    assert set(await reader.alist_namespaces()) == {ns, ("memories", "bob")}
    clock.advance(2)
    assert await reader.asweep_ttl() == 1  # "short"
    assert {i.key for i in await reader.asearch(ns)} == {"kept", "deepest"}
    await reader.aclose()
    await store.aclose()


async def test_a_too_deep_message_is_refused_and_the_history_stays_readable(
    portal: ThreadedPortal, phrase: str
) -> None:
    from langchain_core.messages import AIMessage, HumanMessage
    from pydantic import SecretStr

    from langchain_fabstir.chat_message_histories import S5ChatMessageHistory

    def history() -> S5ChatMessageHistory:
        return S5ChatMessageHistory("s-deep", portal_url=portal.url, seed_phrase=SecretStr(phrase))

    writer = history()
    await writer.aadd_messages([HumanMessage("hi")])
    deep = AIMessage("x", additional_kwargs={"k": nested(2000)})
    with pytest.raises(ValueTooDeepError):
        await writer.aadd_messages([HumanMessage("lost with it"), deep])
    await writer.aadd_messages([AIMessage("hello")])
    reader = history()
    assert [m.content for m in await reader.aget_messages()] == ["hi", "hello"]
    await reader.aclose()
    await writer.aclose()
