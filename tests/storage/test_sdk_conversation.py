"""The SDK's own ``conversation.json``, shared between the TypeScript SDK and Python.

The SDK writes ``home/sessions/{user}/{sessionId}/conversation.json`` with s5.js
``fs.put(path, object)``: CBOR from cbor-x with s5.js's encoder options, plain file, plain
directories, in the tree of the seed it derives from the private key (S5.md 6.1-6.6).
The expected bytes below were produced by cbor-x 1.6.9 configured exactly as s5.js's
``src/fs/dirv1/cbor-config.ts`` (with its ``preprocessValue``) under Node 20, from the
JSON values next to them. The SDK's side of each test writes with the package's own
FS5 ``put`` (shown byte-compatible with s5.js by tests/s5/test_s5js_interop.py), on a
real LocalPortal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import cbor2
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import SecretStr

from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
from langchain_fabstir.errors import IntegrityError, InvalidRequestError
from langchain_fabstir.s5 import DirV1, S5FileSystem, S5Identity, sdk_seed_phrase
from langchain_fabstir.storage.access import S5Access
from langchain_fabstir.storage.conversations import S5ConversationStore
from langchain_fabstir.storage.sdk_format import decode_sdk_object, encode_sdk_object

from .conftest import ThreadedPortal

KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # Anvil #0
USER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # its EIP-55 address, the SDK's {user}

SDK_CONVERSATION: dict[str, Any] = {
    "id": "42",
    "messages": [
        {
            "role": "user",
            "content": "What is S5? ✓",
            "timestamp": 1765000000123,
            "metadata": {"imageCount": 1},
        },
        {"role": "assistant", "content": "A storage network.", "timestamp": 1765000000999},
    ],
    "metadata": {
        "chainId": 84532,
        "model": "CohereForAI/TinyVicuna-1B-32k-GGUF:tiny-vicuna-1b.q4_k_m.gguf",
        "provider": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "endpoint": "http://127.0.0.1:8080",
        "jobId": "42",
        "status": "active",
        "totalTokens": 0,
        "startTime": 1765000000000,
        "encryption": True,
        "config": {
            "depositAmount": "1000000",
            "pricePerToken": "2000",
            "proofInterval": "100",
            "duration": "86400",
        },
    },
    "createdAt": 1765000000000,
    "updatedAt": 1765000001000,
}
SDK_CONVERSATION_CBOR = bytes.fromhex(
    "a569637265617465644174fb4279af232b200000626964623432686d6573736167657382b9000464726f6c65"
    "647573657267636f6e74656e746f576861742069732053353f20e29c936974696d657374616d70fb4279af23"
    "2b27b000686d65746164617461b900016a696d616765436f756e7401b9000364726f6c656961737369737461"
    "6e7467636f6e74656e7472412073746f72616765206e6574776f726b2e6974696d657374616d70fb4279af23"
    "2b5e7000686d65746164617461b9000a67636861696e49641a00014a34656d6f64656c783d436f6865726546"
    "6f7241492f54696e79566963756e612d31422d33326b2d474755463a74696e792d766963756e612d31622e71"
    "345f6b5f6d2e676775666870726f7669646572782a30783730393937393730433531383132646333413031304337"
    "643031623530653064313764633739433868656e64706f696e7475687474703a2f2f3132372e302e302e313a3830"
    "3830656a6f62496462343266737461747573666163746976656b746f74616c546f6b656e730069737461727454"
    "696d65fb4279af232b2000006a656e6372797074696f6ef566636f6e666967b900046d6465706f736974416d"
    "6f756e7467313030303030306d7072696365506572546f6b656e64323030306d70726f6f66496e74657276616c"
    "63313030686475726174696f6e65383634303069757064617465644174fb4279af232b5e8000"
)
# Keys in localeCompare order and JavaScript's own order, integers at the edges of
# 32 bits, floats, a 2**60 BigInt-sized number, nested objects with integer-like keys.
EDGE_VALUES: list[tuple[Any, str]] = [
    (
        {
            "n1": -4294967296,
            "n2": -4294967297,
            "n3": -2147483649,
            "n4": -2147483648,
            "p": 4294967296.0,
            "q": -4294967296.5,
        },
        "a6626e313affffffff626e32fbc1f0000000100000626e333a80000000626e343a7fffffff6170fb41f0"
        "0000000000006171fbc1f0000000080000",
    ),
    (
        {
            "b": 1,
            "a": -5,
            "Z": -70000,
            "é": 2.5,
            "z": [1, {"10": 1, "2": 2, "x": 3, "1": 0}],
            "big": 2**60,
            "neg": -3000000000,
            "f": 4294967295,
            "g": 4294967296,
        },
        "a961612461620163626967fb43b000000000000062c3a9fb400400000000000061661affffffff6167fb41"
        "f0000000000000636e65673ab2d05dff617a8201b9000461310061320262313001617803615a3a0001116f",
    ),
]


def sdk_fs_writer(portal: ThreadedPortal) -> S5Access:
    """The SDK's view of the user's tree: the seed it derives from KEY, plain writes."""
    return S5Access(portal_url=portal.url, identity=S5Identity.from_private_key(KEY))


async def sdk_put(access: S5Access, path: str, data: bytes) -> None:
    async def put(fs: S5FileSystem) -> None:
        await (await access.plain_fs()).put(path, data, media_type="application/json")

    await access.run(put)


async def sdk_get(access: S5Access, path: str) -> bytes | None:
    async def get(fs: S5FileSystem) -> bytes | None:
        return await fs.get(path)

    return await access.run(get)


def conversation_path(session_id: str) -> str:
    return f"home/sessions/{USER}/{session_id}/conversation.json"


@pytest.fixture
async def sdk(portal: ThreadedPortal) -> Any:
    access = sdk_fs_writer(portal)
    yield access
    await access.aclose()


def test_encoder_writes_the_bytes_cbor_x_writes() -> None:
    assert encode_sdk_object(SDK_CONVERSATION) == SDK_CONVERSATION_CBOR
    assert decode_sdk_object(SDK_CONVERSATION_CBOR) == SDK_CONVERSATION
    for value, expected in EDGE_VALUES:
        assert encode_sdk_object(value).hex() == expected
    # what the SDK holds after reading: ms timestamps are JavaScript numbers (CBOR floats),
    # never 64-bit integers (cbor-x would hand the SDK a BigInt)
    raw = cbor2.loads(SDK_CONVERSATION_CBOR)
    assert raw["createdAt"] == 1765000000000.0 and isinstance(raw["createdAt"], float)


def test_decoder_refuses_what_is_neither_cbor_nor_json() -> None:
    with pytest.raises(IntegrityError):
        decode_sdk_object(b"\xff\x00 not cbor, not json")
    with pytest.raises(IntegrityError):
        decode_sdk_object(cbor2.dumps({"a": b"bytes are not JSON"}))
    with pytest.raises(IntegrityError):  # CBOR nested past cbor2's bound: an error, no crash
        decode_sdk_object(b"\x81" * 100_000 + b"\x00")


async def test_a_conversation_the_sdk_saved_loads_in_python(
    portal: ThreadedPortal, sdk: S5Access, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await sdk_put(sdk, conversation_path("42"), SDK_CONVERSATION_CBOR)

    history = S5ChatMessageHistory.from_sdk("42", private_key=SecretStr(KEY), portal_url=portal.url)
    try:
        assert history.path == conversation_path("42")
        messages = await history.aget_messages()
        assert [type(m) for m in messages] == [HumanMessage, AIMessage]
        assert [m.content for m in messages] == ["What is S5? ✓", "A storage network."]
        assert messages[0].response_metadata == {
            "timestamp": 1765000000123,
            "metadata": {"imageCount": 1},
        }
        assert messages[1].response_metadata == {"timestamp": 1765000000999}
        assert await history.acount() == 2
        assert KEY[2:] not in repr(history) and KEY[2:] not in repr(vars(history))
    finally:
        await history.aclose()
    assert KEY[2:] not in caplog.text

    # the conversation store in SDK mode reads it too (the SDK's CBOR, not only JSON)
    store = S5ConversationStore(
        portal_url=portal.url,
        seed_phrase=sdk_seed_phrase(KEY),
        user_address=USER,
        sdk_compatible=True,
    )
    try:
        assert await store.load_conversation("42") == SDK_CONVERSATION
        # appending keeps the SDK's own metadata (its session ran encrypted)
        conv = await store.save_conversation("42", [{"role": "user", "content": "more"}])
        assert conv["metadata"]["encryption"] is True and conv["metadata"]["config"]
    finally:
        await store.aclose()


async def test_what_python_appends_is_what_the_sdk_reads(
    portal: ThreadedPortal, sdk: S5Access
) -> None:
    await sdk_put(sdk, conversation_path("43"), encode_sdk_object({**SDK_CONVERSATION, "id": "43"}))
    history = S5ChatMessageHistory.from_sdk(43, private_key=KEY, portal_url=portal.url)
    try:
        await history.aadd_messages([HumanMessage("Next?"), AIMessage("Yes.", id="run-1")])
    finally:
        await history.aclose()

    stored = await sdk_get(sdk, conversation_path("43"))
    assert stored is not None
    raw = cbor2.loads(stored)
    # byte for byte what s5.js fs.put writes for the value it holds
    assert stored == encode_sdk_object(decode_sdk_object(stored))
    assert list(raw) == ["createdAt", "id", "messages", "metadata", "updatedAt"]
    assert raw["metadata"] == SDK_CONVERSATION["metadata"]  # untouched
    assert raw["createdAt"] == SDK_CONVERSATION["createdAt"]
    assert raw["updatedAt"] > SDK_CONVERSATION["updatedAt"]
    assert isinstance(raw["updatedAt"], float)  # a JavaScript number
    assert raw["messages"][:2] == SDK_CONVERSATION["messages"]
    new = raw["messages"][2:]
    assert [list(m) for m in new] == [
        ["role", "content", "timestamp"],
        ["role", "content", "timestamp", "metadata"],
    ]
    assert [(m["role"], m["content"]) for m in new] == [("user", "Next?"), ("assistant", "Yes.")]
    assert new[1]["metadata"] == {"id": "run-1"}
    assert all(isinstance(m["timestamp"], float) for m in new)

    async def details(fs: S5FileSystem) -> tuple[bool, bytes]:
        plain = await sdk.plain_fs()
        info = await plain.stat(conversation_path("43"))
        assert info is not None and info.media_type == "application/json"
        entry = await fs.client.registry_get(fs.directory_public_key(f"home/sessions/{USER}/43"))
        assert entry is not None
        return info.encrypted, await fs.client.download_hash(entry.data[1:33])

    encrypted, directory = await sdk.run(details)
    assert encrypted is False  # plain, as the SDK writes and reads it
    assert directory[:2] == b"\x5f\x5d"  # a plain DirV1, as s5.js reads it
    assert list(DirV1.decode(directory).files) == ["conversation.json"]


async def test_a_new_conversation_starts_as_the_sdk_starts_one(portal: ThreadedPortal) -> None:
    history = S5ChatMessageHistory.from_sdk("44", private_key=KEY, portal_url=portal.url)
    try:
        history.add_messages([SystemMessage("Be brief."), HumanMessage("hi")])
        assert [m.content for m in history.messages] == ["Be brief.", "hi"]
        history.clear()
        assert history.messages == []
    finally:
        history.close()
    sdk = sdk_fs_writer(portal)
    try:
        stored = await sdk_get(sdk, conversation_path("44"))
    finally:
        await sdk.aclose()
    assert stored is not None
    conv = decode_sdk_object(stored)
    assert set(conv) == {"id", "messages", "metadata", "createdAt", "updatedAt"}
    assert conv["id"] == "44" and conv["messages"] == [] and conv["metadata"] == {}


async def test_two_writers_lose_nothing(portal: ThreadedPortal) -> None:
    """Load-modify-save with compare-and-swap on the registry revision: every append of
    both writers (two separate clients, as two processes) is kept, each in its order."""
    a = S5ChatMessageHistory.from_sdk("45", private_key=KEY, portal_url=portal.url)
    b = S5ChatMessageHistory.from_sdk(
        "45", seed_phrase=sdk_seed_phrase(KEY), user_address=USER.lower(), portal_url=portal.url
    )
    assert a.path == b.path  # the address is spelled as the SDK spells it

    async def writer(h: S5ChatMessageHistory, tag: str) -> None:
        for i in range(6):
            await h.aadd_messages([HumanMessage(f"{tag}{i}")])

    try:
        await asyncio.gather(writer(a, "a"), writer(b, "b"))
        texts = [m.content for m in await a.aget_messages()]
    finally:
        await a.aclose()
        await b.aclose()
    assert len(texts) == 12
    assert [t for t in texts if t[0] == "a"] == [f"a{i}" for i in range(6)]
    assert [t for t in texts if t[0] == "b"] == [f"b{i}" for i in range(6)]


async def test_messages_the_sdk_cannot_hold_are_refused(portal: ThreadedPortal) -> None:
    history = S5ChatMessageHistory.from_sdk("46", private_key=KEY, portal_url=portal.url)
    try:
        for bad in (
            ToolMessage("42", tool_call_id="c1"),
            AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c1"}]),
            HumanMessage([{"type": "image_url", "image_url": {"url": "data:,"}}]),
        ):
            with pytest.raises(InvalidRequestError) as caught:
                await history.aadd_messages([HumanMessage("kept?"), bad])
            assert caught.value.code == "INVALID_REQUEST"
        assert await history.aget_messages() == []  # nothing half-written
        assert KEY[2:] not in repr(history)
    finally:
        await history.aclose()


async def test_a_foreign_file_is_an_integrity_error(portal: ThreadedPortal, sdk: S5Access) -> None:
    await sdk_put(sdk, conversation_path("47"), encode_sdk_object({"id": "47", "messages": 3}))
    history = S5ChatMessageHistory.from_sdk("47", private_key=KEY, portal_url=portal.url)
    try:
        with pytest.raises(IntegrityError):
            await history.aget_messages()
    finally:
        await history.aclose()


async def test_a_python_session_is_saved_as_the_sdk_saves_one(portal: ThreadedPortal) -> None:
    """SessionManager with the SDK's store: the file ``from_sdk`` (and the SDK) reads, and
    ``metadata.encryption`` in the SDK's meaning (the session ran encrypted)."""
    from langchain_fabstir.host import EchoEngine, ReferenceHost
    from langchain_fabstir.sessions import SessionManager

    store = S5ConversationStore(
        portal_url=portal.url,
        seed_phrase=sdk_seed_phrase(KEY),
        user_address=USER,
        sdk_compatible=True,
    )
    host = ReferenceHost(EchoEngine(), rate_limit_per_minute=None, host_key="0x" + "42" * 32)
    try:
        async with (
            host,
            SessionManager(
                host_url=host.url, storage=store, user_address=USER, private_key=KEY
            ) as manager,
        ):
            s = await manager.create_session(job_id=48)
            await manager.prompt(s.id, "hi there")
            assert s.encrypted
        conv = await store.load_conversation("48")
    finally:
        await store.aclose()
    assert conv is not None and conv["metadata"]["encryption"] is True
    history = S5ChatMessageHistory.from_sdk("48", private_key=KEY, portal_url=portal.url)
    try:
        messages = await history.aget_messages()
    finally:
        await history.aclose()
    assert [(m.type, m.content) for m in messages] == [
        ("human", "hi there"),
        ("ai", "Echo: hi there"),
    ]
