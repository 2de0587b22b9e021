"""FabstirVectorStore and SessionManager.upload_vectors/search_vectors against the reference
host's host RAG (``uploadVectors``/``searchVectors``, PROTOCOL.md 6.5) with the real
all-MiniLM-L6-v2, and hostile hosts written for the test. Everything on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from langchain_core.documents import Document

from langchain_fabstir import FabstirEmbeddings, FabstirVectorStore, SessionManager
from langchain_fabstir.errors import (
    InvalidRequestError,
    PlaintextFramesRefusedError,
    ProtocolError,
    ResponseTimeoutError,
    VectorStoreError,
)
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.embeddings import MiniLMEmbedder
from tests._support.docs import run_snippets
from tests.conftest import ThreadedHost

HOST_KEY = "0x" + "11" * 32
CAT, KITTEN, TAX, RUST = (
    "The cat sat on the mat.",
    "A kitten dozed upon a carpet.",
    "Quarterly tax filings are due in April.",
    "Rust guarantees memory safety without a garbage collector.",
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder().load()


@pytest.fixture
async def rag_host(minilm: MiniLMEmbedder) -> AsyncIterator[ReferenceHost]:
    async with ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=minilm) as host:
        yield host


@pytest.fixture(scope="module")
def threaded_rag_host(minilm: MiniLMEmbedder) -> Iterator[ReferenceHost]:
    th = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None, embedder=minilm))
    yield th.host
    th.stop()


def _vec(i: int) -> list[float]:
    v = [0.0] * 384
    v[i % 384] = 1.0
    return v


# --- the session layer: frames, limits, errors -------------------------------------------


async def test_upload_and_search_frames(rag_host: ReferenceHost) -> None:
    async with SessionManager(host_url=rag_host.url) as manager:
        s = await manager.create_session()
        vectors = [
            {"id": f"d{i}", "vector": _vec(i), "metadata": {"text": f"t{i}", "n": i}}
            for i in range(2500)
        ]
        result = await manager.upload_vectors(s.id, vectors, replace=True)
        assert (result.uploaded, result.rejected) == (2500, 0)
        assert rag_host.vectors.count(s.id) == 2500
        found = await manager.search_vectors(s.id, _vec(7), k=5, threshold=0.5)
        assert {m.id for m in found.results} == {"d7", "d391", "d775", "d1159", "d1543"}
        assert all(m.score == pytest.approx(1.0) for m in found.results)
        found = await manager.search_vectors(s.id, _vec(7), k=2, threshold=0.5)
        assert len(found.results) == 2
        assert found.total_vectors == 2500
        only = await manager.search_vectors(
            s.id, _vec(7), k=5, metadata_filter={"n": {"$in": [7, 8]}}
        )
        assert [m.id for m in only.results] == ["d7", "d8"]
        # replace=True on the first batch only: a second upload with replace empties first.
        await manager.upload_vectors(s.id, vectors[:10], replace=True)
        assert rag_host.vectors.count(s.id) == 10


async def test_client_checks_limits_before_sending(rag_host: ReferenceHost) -> None:
    async with SessionManager(host_url=rag_host.url) as manager:
        s = await manager.create_session()
        with pytest.raises(InvalidRequestError, match="384"):
            await manager.upload_vectors(s.id, [{"id": "a", "vector": [1.0] * 12}])
        with pytest.raises(InvalidRequestError, match="10240"):
            await manager.upload_vectors(
                s.id, [{"id": "a", "vector": _vec(0), "metadata": {"text": "x" * 11000}}]
            )
        with pytest.raises(InvalidRequestError, match="NaN"):
            await manager.upload_vectors(s.id, [{"id": "a", "vector": [float("nan")] * 384}])
        with pytest.raises(InvalidRequestError, match="k must"):
            await manager.search_vectors(s.id, _vec(0), k=21)
        with pytest.raises(InvalidRequestError, match=r"\$eq and \$in"):
            await manager.search_vectors(s.id, _vec(0), metadata_filter={"n": {"$gt": 1}})
        assert rag_host.vectors.count(s.id) == 0


async def test_host_enforces_node_limits_per_vector(rag_host: ReferenceHost) -> None:
    """Frames sent raw, past the client's checks: the host rejects per vector as nodes do."""
    from websockets.asyncio.client import connect

    async def recv(ws: object) -> str:
        return str(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[attr-defined]

    async with connect(rag_host.ws_url) as ws:
        await recv(ws)  # connected
        await ws.send(json.dumps({"type": "session_init", "session_id": "raw", "chain_id": 1}))
        await recv(ws)
        await ws.send(json.dumps({"type": "uploadVectors", "vectors": []}))
        error = json.loads(await recv(ws))
        assert error == {
            "type": "error",
            "error": "Invalid uploadVectors request: missing field `replace`",
        }
        frame = {
            "type": "uploadVectors",
            "requestId": "b1",
            "replace": False,
            "vectors": [
                {"id": "ok", "vector": _vec(1), "metadata": {}},
                {"id": "short", "vector": [1.0] * 12, "metadata": {}},
                {"id": "fat", "vector": _vec(2), "metadata": {"t": "x" * 11000}},
            ],
        }
        await ws.send(json.dumps(frame))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "uploadVectorsResponse" and reply["requestId"] == "b1"
        assert (reply["status"], reply["uploaded"], reply["rejected"]) == ("partial", 1, 2)
        assert reply["errors"][0].startswith("short: Invalid vector dimensions")
        await ws.send(json.dumps({"type": "searchVectors", "queryVector": _vec(1), "k": 1}))
        found = json.loads(await recv(ws))
        assert [r["id"] for r in found["results"]] == ["ok"] and found["totalVectors"] == 1
    async with connect(rag_host.ws_url) as ws:  # no init: the shared default session
        await recv(ws)
        await ws.send(json.dumps({"type": "searchVectors", "queryVector": _vec(1), "k": 1}))
        assert json.loads(await recv(ws)) == {
            "type": "error",
            "error": "Session default-rag-session not found. Upload vectors first.",
        }


async def test_plaintext_reinit_wipes_vectors_and_the_store_uploads_again(
    rag_host: ReferenceHost,
) -> None:
    store = FabstirVectorStore(host_url=rag_host.url)
    try:
        await store.aadd_texts([CAT, TAX, RUST])
        sid = store._session_id
        assert sid is not None and rag_host.vectors.count(sid) == 3
        # The host drops the socket; the next search reconnects with a plaintext
        # session_init, which wipes the session's vectors (as nodes do): the store sees the
        # count differ, uploads its copy again, and searches once more.
        for conn in list(rag_host.connections):
            await conn.ws.close()
        docs = await store.asimilarity_search("Where did the kitten sleep?", k=1)
        assert [d.page_content for d in docs] == [CAT]
        assert rag_host.vectors.count(sid) == 3
        for conn in list(rag_host.connections):  # and again, before an upload
            await conn.ws.close()
        await store.aadd_texts([KITTEN])
        assert rag_host.vectors.count(sid) == 4
    finally:
        await store.aclose()


async def test_encrypted_session_refuses_clear_frames_unless_opted_in(
    minilm: MiniLMEmbedder,
) -> None:
    async with ReferenceHost(
        EchoEngine(), rate_limit_per_minute=None, embedder=minilm, host_key=HOST_KEY
    ) as host:
        store = FabstirVectorStore(host_url=host.url)
        try:
            with pytest.raises(PlaintextFramesRefusedError) as info:
                await store.aadd_texts([CAT])
            assert info.value.code == "PLAINTEXT_FRAMES_REFUSED"
            assert sum(host.vectors.count(s) for s in list(host.vectors._stores)) == 0
        finally:
            await store.aclose()
        store = FabstirVectorStore(host_url=host.url, allow_plaintext=True)
        try:
            await store.aadd_texts([CAT, TAX])
            manager = store._manager
            assert manager is not None and store._session_id is not None
            assert manager.get_session(store._session_id).encrypted
            found = await store.asimilarity_search_with_score("kitten on a rug", k=2)
            assert found[0][0].page_content == CAT and found[0][1] > found[1][1]
        finally:
            await store.aclose()


# --- the LangChain vector store -----------------------------------------------------------


def test_vectorstore_sync_api(threaded_rag_host: ReferenceHost) -> None:
    emb = FabstirEmbeddings(host_url=threaded_rag_host.url)
    store = FabstirVectorStore.from_texts(
        [CAT, TAX, RUST],
        emb,
        metadatas=[{"topic": "pets"}, {"topic": "money"}, {"topic": "code"}],
        ids=["cat", "tax", "rust"],
        host_url=threaded_rag_host.url,
    )
    try:
        top = store.similarity_search_with_score(KITTEN, k=3)
        assert top[0][0].id == "cat"
        assert top[0][1] > top[1][1] >= top[2][1]
        assert store.similarity_search(KITTEN, k=2, filter={"topic": "money"}) == [
            Document(page_content=TAX, metadata={"topic": "money"}, id="tax")
        ]
        assert store.get_by_ids(["rust", "nope"])[0].page_content == RUST
        retriever = store.as_retriever(search_kwargs={"k": 1})
        assert retriever.invoke("When are taxes due?")[0].id == "tax"
        store.delete(["cat"])
        assert [d.id for d in store.similarity_search(KITTEN, k=3)] != ["cat"]
        assert "cat" not in [d.id for d in store.similarity_search(KITTEN, k=3)]
        assert threaded_rag_host.vectors.count(store._session_id or "") == 2
        with pytest.raises(InvalidRequestError, match="'text'"):
            store.add_texts(["x"], metadatas=[{"text": "clash"}])
    finally:
        store.close()


# --- hostile hosts ---------------------------------------------------------------------------


async def test_store_reports_vectors_the_host_rejected(
    rag_host: ReferenceHost, hostile: tuple[str, dict[str, object]]
) -> None:
    url, behaviour = hostile
    behaviour["reply"] = {
        "type": "uploadVectorsResponse",
        "status": "partial",
        "uploaded": 1,
        "rejected": 1,
        "errors": ["b: Maximum vectors limit reached (100000)"],
    }
    store = FabstirVectorStore(FabstirEmbeddings(host_url=rag_host.url), host_url=url)
    try:
        with pytest.raises(VectorStoreError, match="refused 1 of 2"):
            await store.aadd_texts([CAT, TAX], ids=["a", "b"])
        assert [d.id for d in await store.aget_by_ids(["a", "b"])] == ["a"]
    finally:
        await store.aclose()


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """A host that acks session_init and answers RAG frames as ``behaviour['reply']`` says."""
    behaviour: dict[str, object] = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "connected", "message": "hi"}))
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame["type"] == "session_init":
                ack = {"type": "session_init_ack", "status": "success", "id": frame.get("id")}
                await ws.send_str(json.dumps(ack))
            elif frame["type"] in ("uploadVectors", "searchVectors"):
                reply = behaviour.get("reply")
                if reply == "silent":
                    continue
                for text in behaviour.get("noise", []):  # type: ignore[attr-defined]
                    await ws.send_str(text)
                await ws.send_str(reply if isinstance(reply, str) else json.dumps(reply))
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", behaviour
    await runner.cleanup()


async def test_hostile_replies_are_typed_errors(hostile: tuple[str, dict[str, object]]) -> None:
    url, behaviour = hostile
    async with SessionManager(host_url=url) as manager:
        s = await manager.create_session()
        one = [{"id": "a", "vector": _vec(0)}]
        behaviour["reply"] = {"type": "error", "error": "Upload vectors failed: disk on fire"}
        behaviour["noise"] = [json.dumps({"type": "stream_chunk", "id": "old", "content": "x"})]
        with pytest.raises(VectorStoreError, match="disk on fire") as info:
            await manager.upload_vectors(s.id, one)
        assert info.value.code == "VECTOR_STORE_ERROR"
        behaviour["noise"] = []
        behaviour["reply"] = {"type": "uploadVectorsResponse", "uploaded": 10**9, "rejected": 0}
        with pytest.raises(ProtocolError):
            await manager.upload_vectors(s.id, one)
        behaviour["reply"] = {
            "type": "searchVectorsResponse",
            "results": [{"id": "a", "score": "high"}],
            "totalVectors": 1,
        }
        with pytest.raises(ProtocolError):
            await manager.search_vectors(s.id, _vec(0))
        behaviour["reply"] = "[" * 100_000
        with pytest.raises(ProtocolError):
            await manager.search_vectors(s.id, _vec(0))
        behaviour["reply"] = "silent"
        with pytest.raises(ResponseTimeoutError):
            await manager.search_vectors(s.id, _vec(0), timeout=0.3)
        with pytest.raises(ResponseTimeoutError):
            await asyncio.wait_for(manager.upload_vectors(s.id, one, timeout=0.3), 5)


@pytest.mark.parametrize(
    ("page", "section", "expected"),
    [
        ("docs/vectorstores/fabstir.mdx", None, CAT),
        ("README.md", "## Vector store (host RAG)", True),
    ],
)
def test_doc_snippets_run(
    page: str,
    section: str | None,
    expected: object,
    threaded_rag_host: ReferenceHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FABSTIR_HOST_URL", threaded_rag_host.url)
    namespace = run_snippets(page, section)
    assert namespace["shown"] == expected


async def test_store_on_your_manager_survives_the_session_timeout(
    rag_host: ReferenceHost,
) -> None:
    from langchain_fabstir import SessionConfig

    now = [1000.0]
    manager = SessionManager(
        SessionConfig(session_timeout=60), host_url=rag_host.url, clock=lambda: now[0]
    )
    async with manager:
        s = await manager.create_session()
        store = FabstirVectorStore(
            FabstirEmbeddings(host_url=rag_host.url), manager=manager, session_id=s.id
        )
        await store.aadd_texts([CAT, TAX])
        now[0] += 3600  # idle for an hour: the session timed out
        docs = await store.asimilarity_search("When are taxes due?", k=1)
        assert [d.page_content for d in docs] == [TAX]
        assert rag_host.vectors.count(s.id) == 2
        await store.aclose()  # your manager and session are left alone
        assert manager.get_session(s.id).status == "active"
