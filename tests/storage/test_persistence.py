"""S5ConversationStore: SDK-shaped conversations, saved blobs, share codes."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_fabstir.errors import IntegrityError, ShareCodeError, StorageError
from langchain_fabstir.s5 import CID, DirV1, S5FileSystem, generate_phrase
from langchain_fabstir.s5.crypto import encrypt_mutable
from langchain_fabstir.sessions.models import Message, Session
from langchain_fabstir.sessions.persistence import sdk_metadata
from langchain_fabstir.storage.conversations import S5ConversationStore, export_session
from langchain_fabstir.storage.sdk_format import encode_sdk_object
from langchain_fabstir.storage.share import make_share_code, parse_share_code

from .conftest import ThreadedPortal

USER = "0x1234abcd"


def store(portal: ThreadedPortal, phrase: str, **kw: object) -> S5ConversationStore:
    return S5ConversationStore(
        portal_url=portal.url,
        seed_phrase=phrase,
        user_address=USER,
        **kw,  # type: ignore[arg-type]
    )


def blobs(data_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in (data_dir / "blobs").rglob("*") if p.is_file()]


async def test_conversation_in_sdk_shape_appends_and_merges(
    portal: ThreadedPortal, phrase: str, unique: str
) -> None:
    s = store(portal, phrase)
    session = Session(id=unique, host_url="http://host", model="llama", job_id=9, token_count=5)
    assert await s.load_conversation(unique) is None
    await s.save_conversation(
        unique,
        [Message(role="system", content="be kind"), Message(role="user", content="hi")],
        metadata=sdk_metadata(session, provider="0xhost"),
    )
    conv = await s.save_conversation(
        unique,
        [AIMessage("hello"), {"role": "user", "content": "more", "timestamp": 17}],
        metadata={"status": "ended", "totalTokens": 12},
    )
    loaded = await store(portal, phrase).load_conversation(unique)
    assert loaded == conv
    assert loaded is not None
    assert set(loaded) == {"id", "messages", "metadata", "createdAt", "updatedAt"}
    assert loaded["id"] == unique
    assert [(m["role"], m["content"]) for m in loaded["messages"]] == [
        ("system", "be kind"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "more"),
    ]
    assert all(isinstance(m["timestamp"], int) for m in loaded["messages"])
    assert loaded["messages"][3]["timestamp"] == 17
    md = loaded["metadata"]
    assert md["chainId"] == 84532 and md["model"] == "llama" and md["jobId"] == "9"
    assert md["provider"] == "0xhost" and md["endpoint"] == "http://host"
    assert md["status"] == "ended" and md["totalTokens"] == 12 and md["encryption"] is True
    assert loaded["createdAt"] <= loaded["updatedAt"]
    replaced = await s.save_conversation(unique, [HumanMessage("only")], replace=True)
    assert [m["content"] for m in replaced["messages"]] == ["only"]
    assert s.conversation_path(unique) == f"home/sessions/{USER}/{unique}/conversation.json"
    assert await s.delete_conversation(unique) is True
    assert await s.load_conversation(unique) is None
    await s.aclose()


async def test_encrypted_by_default_plain_when_sdk_compatible(
    portal: ThreadedPortal, phrase: str
) -> None:
    secret = "TOP-SECRET-f00d"
    s = store(portal, phrase)
    await s.save_conversation("enc", [Message(role="user", content=secret)])
    assert not any(secret.encode() in b for b in blobs(portal.data_dir))
    plain = store(portal, phrase, sdk_compatible=True)
    conv = await plain.save_conversation("open", [Message(role="user", content=secret)])
    assert conv["metadata"]["encryption"] is False
    on_disk = [b for b in blobs(portal.data_dir) if secret.encode() in b]
    # the SDK's plain file: CBOR, as s5.js fs.put writes the object
    assert len(on_disk) == 1 and on_disk[0] == encode_sdk_object(conv)
    # the session's directory is a plain DirV1 (5f 5d) listing conversation.json, as s5.js reads

    async def session_dir(fs: S5FileSystem) -> bytes:
        key = fs.directory_public_key(f"home/sessions/{USER}/open")
        entry = await fs.client.registry_get(key)
        assert entry is not None
        return await fs.client.download_hash(entry.data[1:33])

    listing = await plain._access.run(session_dir)
    assert listing[:2] == b"\x5f\x5d" and list(DirV1.decode(listing).files) == ["conversation.json"]
    await s.aclose()
    await plain.aclose()


async def test_concurrent_appenders_lose_no_messages(portal: ThreadedPortal, phrase: str) -> None:
    a, b = store(portal, phrase), store(portal, phrase)

    async def writer(s: S5ConversationStore, tag: str) -> None:
        for i in range(6):
            await s.save_conversation("race", [Message(role="user", content=f"{tag}{i}")])

    await asyncio.gather(writer(a, "a"), writer(b, "b"))
    conv = await a.load_conversation("race")
    assert conv is not None
    texts = [m["content"] for m in conv["messages"]]
    assert len(texts) == 12
    assert [t for t in texts if t[0] == "a"] == [f"a{i}" for i in range(6)]
    assert [t for t in texts if t[0] == "b"] == [f"b{i}" for i in range(6)]
    await a.aclose()
    await b.aclose()


async def test_save_and_load_blobs(portal: ThreadedPortal, phrase: str) -> None:
    s = store(portal, phrase)
    data = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"model": "m"}}
    cid = await s.save_to_s5(data)
    CID.parse(cid)
    assert await store(portal, phrase).load_from_s5(cid) == data
    assert not any(b'"model"' in b for b in blobs(portal.data_dir))
    with pytest.raises(IntegrityError):
        await store(portal, generate_phrase()).load_from_s5(cid)  # another user's key
    await s.aclose()


IMPORTER = textwrap.dedent(
    """
    import asyncio, json, sys
    from langchain_fabstir.storage.conversations import S5ConversationStore
    from langchain_fabstir.s5 import generate_phrase

    async def main():
        store = S5ConversationStore(
            portal_url=sys.argv[1], seed_phrase=generate_phrase(), user_address="0xbob"
        )
        print(json.dumps(await store.import_session(sys.stdin.read().strip())))
        await store.aclose()

    asyncio.run(main())
    """
)


async def test_share_code_imports_in_a_fresh_process(portal: ThreadedPortal, phrase: str) -> None:
    s = store(portal, phrase)
    session = Session(id="shared-1", host_url="http://host", model="llama")
    messages = [Message(role="user", content="hi"), Message(role="assistant", content="yo")]
    export = s.export_session(session, messages)
    code = await s.generate_share_code(export)
    assert code.startswith("fsc1") and str(portal.url) not in code
    assert not any(b"shared-1" in b for b in blobs(portal.data_dir))  # uploaded encrypted
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        IMPORTER,
        portal.url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(code.encode()), 60)
    assert proc.returncode == 0
    imported = json.loads(out)
    assert imported == export
    assert imported["session"]["id"] == "shared-1"
    assert [m["content"] for m in imported["messages"]] == ["hi", "yo"]
    # Two shares of the same export use different keys and blobs.
    assert await s.generate_share_code(export) != code
    await s.aclose()


async def test_bad_share_codes_raise_share_code_error(portal: ThreadedPortal, phrase: str) -> None:
    s = store(portal, phrase)
    code = await s.generate_share_code(export_session({"id": "x"}, []))
    good = parse_share_code(code)
    wrong_key = make_share_code(good.portal_url, good.cid, bytes(32))
    missing = make_share_code(good.portal_url, CID.from_bytes(b"never uploaded"), good.key)
    foreign = CID.parse(await s.save_to_s5({"not": "an export"}))
    key_ok_not_export = make_share_code(good.portal_url, foreign, good.key)

    async def upload(fs: S5FileSystem) -> CID:
        return await fs.client.upload(encrypt_mutable(b"[1, 2]", good.key))

    garbage_cid = await s._access.run(upload)
    not_export = make_share_code(good.portal_url, garbage_cid, good.key)
    for bad in [
        "",
        "hello",
        "fsc1",
        "fsc1!!!",
        code[:-3],
        code + "A",
        "fsc1" + code[5:],
        wrong_key,
        missing,
        key_ok_not_export,
        not_export,
    ]:
        with pytest.raises(ShareCodeError) as info:
            await s.import_session(bad)
        assert info.value.code == "INVALID_SHARE_CODE", bad
    assert (await s.import_session(code))["session"]["id"] == "x"
    assert "key" not in repr(good) and good.key.hex() not in repr(good)
    unreachable = make_share_code("http://127.0.0.1:9", good.cid, good.key)
    with pytest.raises(StorageError) as err:
        await s.import_session(unreachable)
    assert err.value.code == "STORAGE_ERROR"
    await s.aclose()


def test_store_arguments() -> None:
    with pytest.raises(ValueError):
        S5ConversationStore(
            portal_url="http://x", seed_phrase=generate_phrase(), user_address="a/b"
        )
    with pytest.raises(ValueError):
        S5ConversationStore(user_address="0xabc")
    with pytest.raises(ValueError):
        export_session({"model": "no id"}, [])
    with pytest.raises(ValueError):
        export_session({"id": "1"}, [{"role": "tool", "content": "x"}])
