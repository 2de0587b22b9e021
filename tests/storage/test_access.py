"""One S5 access object (issue 22 item 3): made once, shared by a history, a saver and a
store against a real LocalPortal on 127.0.0.1; the classes' keywords are shorthands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import SecretStr

from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
from langchain_fabstir.langgraph import S5CheckpointSaver, S5Store
from langchain_fabstir.s5 import S5FileSystem, S5Identity, S5PortalClient
from langchain_fabstir.s5.seed import InvalidSeedPhraseError
from langchain_fabstir.storage import S5ConversationStore
from langchain_fabstir.storage.access import S5Access

from .conftest import ThreadedPortal


async def test_one_access_serves_a_history_a_saver_and_a_store(
    portal: ThreadedPortal, phrase: str
) -> None:
    access = S5Access.from_portal(portal.url, seed_phrase=SecretStr(phrase))
    history = S5ChatMessageHistory("s-1", access=access)
    saver = S5CheckpointSaver(access)
    store = S5Store(access)
    conversations = S5ConversationStore(access, user_address="0xabc")
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
    await store.aput(("users", "ada"), "tea", {"likes": "green"})
    assert await saver.aget_tuple({"configurable": {"thread_id": "t"}}) is None
    assert conversations.conversation_path("1").endswith("/0xabc/1/conversation.json")
    # one login, one HTTP client: the three share the access's file system
    fs = await access.run(_same)
    assert all(c._access is access for c in (history, saver, store, conversations))
    assert fs is await access.run(_same)
    # closing a borrower leaves the shared access open; its owner closes it
    await history.aclose()
    await saver.aclose()
    await store.aclose()
    await conversations.aclose()
    assert [m.content for m in await history.aget_messages()] == ["hi", "hello"]
    item = await store.aget(("users", "ada"), "tea")
    assert item is not None and item.value == {"likes": "green"}
    await access.aclose()

    # the same data through the keyword shorthands (each owns, and closes, its access)
    again = S5ChatMessageHistory("s-1", portal_url=portal.url, seed_phrase=phrase)
    assert [m.content for m in await again.aget_messages()] == ["hi", "hello"]
    assert again._owns_access
    await again.aclose()
    store2 = S5Store(portal_url=portal.url, seed_phrase=phrase)
    item = await store2.aget(("users", "ada"), "tea")
    assert item is not None and item.value == {"likes": "green"}
    await store2.aclose()


async def _same(fs: S5FileSystem) -> S5FileSystem:
    return fs


async def test_from_fs_and_from_env(
    portal: ThreadedPortal, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = S5Identity.from_phrase(phrase)
    async with S5PortalClient(portal.url) as client:
        await client.ensure_account(identity.portal_account_key_pair())
        fs = S5FileSystem(client, identity)
        via_fs = S5Access.from_fs(fs)
        await S5ChatMessageHistory("e", access=via_fs).aadd_messages([HumanMessage("x")])
        await via_fs.aclose()
    monkeypatch.setenv("FABSTIR_PORTAL_URL", portal.url)
    monkeypatch.setenv("FABSTIR_S5_SEED", f" {phrase} ")
    monkeypatch.delenv("FABSTIR_S5_SEED_PHRASE", raising=False)
    from_env = S5Access.from_env()
    assert from_env.portal_url == portal.url
    history = S5ChatMessageHistory("e", access=from_env)
    assert [m.content for m in await history.aget_messages()] == ["x"]
    await from_env.aclose()
    # an explicit URL wins over the variable; a mapping replaces the environment
    explicit = S5Access.from_env(portal.url + "/", environ={"FABSTIR_S5_SEED": phrase})
    assert explicit.portal_url == portal.url


def test_bad_arguments_are_refused_with_what_to_pass(phrase: str) -> None:
    with pytest.raises(ValueError, match="FABSTIR_PORTAL_URL and FABSTIR_S5_SEED"):
        S5Access.from_env(environ={})
    with pytest.raises(ValueError, match="FABSTIR_S5_SEED"):
        S5Access.from_env("http://127.0.0.1:1", environ={"FABSTIR_S5_SEED": "  "})
    with pytest.raises(ValueError, match="seed_phrase="):
        S5Access.from_portal("http://127.0.0.1:1")
    with pytest.raises(InvalidSeedPhraseError):
        S5Access.from_portal("http://127.0.0.1:1", seed_phrase="not a phrase")
    with pytest.raises(ValueError, match="not both"):
        S5Access.from_portal(
            "http://127.0.0.1:1", seed_phrase=phrase, identity=S5Identity.from_phrase(phrase)
        )
    with pytest.raises(ValueError, match="S5FileSystem"):
        S5Access.from_fs("http://127.0.0.1:1")  # type: ignore[arg-type]
    access = S5Access.from_portal("http://127.0.0.1:1", seed_phrase=phrase)
    # an access and the shorthand keywords at once: which one was meant is unknowable
    with pytest.raises(ValueError, match="alone"):
        S5ChatMessageHistory("x", access=access, portal_url="http://127.0.0.1:2")
    with pytest.raises(ValueError, match="alone"):
        S5CheckpointSaver(access, seed_phrase=phrase)
    with pytest.raises(ValueError, match="once"):
        S5Store(access, access=access)
    with pytest.raises(ValueError, match="must be an S5Access"):
        S5ChatMessageHistory("x", access="http://127.0.0.1:1")  # type: ignore[arg-type]


def test_the_seed_phrase_is_never_shown(phrase: str) -> None:
    access = S5Access.from_portal("http://127.0.0.1:1", seed_phrase=SecretStr(phrase))
    shown = repr(access) + str(vars(access)) + repr(S5CheckpointSaver(access))
    shown += repr(
        S5Access.from_env(environ={"FABSTIR_PORTAL_URL": "http://x", "FABSTIR_S5_SEED": phrase})
    )
    for word in set(phrase.split()):
        assert word not in shown


def test_the_docs_page_snippet_runs(
    portal: ThreadedPortal, phrase: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "storage" / "s5.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text("utf-8"), re.M | re.S)
    assert blocks
    monkeypatch.setenv("FABSTIR_PORTAL_URL", portal.url)
    monkeypatch.setenv("FABSTIR_S5_SEED", phrase)
    monkeypatch.delenv("FABSTIR_S5_SEED_PHRASE", raising=False)
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{page.name}[python block {number}]", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.strip() == "['hi', 'hello'] {'likes': 'green'}"
