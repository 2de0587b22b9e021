"""``FabstirVectorStore``: a LangChain vector store in a Fabstir host's session memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from langchain_fabstir._sync import background_loop, run_sync
from langchain_fabstir.errors import HostDisconnectedError, InvalidRequestError, VectorStoreError
from langchain_fabstir.sessions.manager import SessionManager
from langchain_fabstir.sessions.vectors import MAX_K, VectorSearchResult

__all__ = ["FabstirVectorStore"]

T = TypeVar("T")


class FabstirVectorStore(VectorStore):
    """Private RAG in a Fabstir host's session memory (``uploadVectors``/``searchVectors``).

    Texts are embedded with ``embedding`` (default: :class:`~langchain_fabstir.FabstirEmbeddings`
    on the same host, all-MiniLM-L6-v2, 384 dimensions), uploaded into the memory the host
    keeps for one session, and searched there by cosine similarity, as deployed nodes do it
    (PROTOCOL.md 6.5): at most 100,000 vectors, metadata (the text included) at most 10,240
    bytes of JSON per chunk, ``k`` 1..20, scores are cosine similarities (-1..1).

    What is private, and what is not:

    - Private: the vectors live only in that host's memory for this store's session; they are
      not on chain, not in S5, not visible to other sessions or users. They are gone when
      the host restarts (the store then uploads them again from its own copy).
    - Not private: the frames have no encrypted form. The vectors, the metadata (which holds
      each chunk's text, under ``text_key``) and every query vector cross the socket in
      clear, even when the session is end-to-end encrypted, and the host reads them all.
      ``/v1/embed`` is plain JSON too. Use a ``wss://``/``https://`` host you trust.
      On an encrypted session the store refuses to send anything
      (``PLAINTEXT_FRAMES_REFUSED``) unless you pass ``allow_plaintext=True``.

    The store keeps its own copy of what it added (texts, metadata, vectors): nodes have no
    frame to read or delete a vector, so :meth:`get_by_ids` answers from the copy, and
    :meth:`delete` uploads what is left with ``replace`` (O(n) per call). A node wipes a
    session's vectors on a plaintext re-init (a reconnect); when a search finds the host's
    count differs from the copy (or the socket broke), the store uploads the copy again and
    retries once.

    Args:
        embedding: the embeddings (default ``FabstirEmbeddings(host_url=host_url)``); they
            must give 384 dimensions.
        host_url: the host (default ``FABSTIR_HOST_URL``); the store opens its own
            :class:`~langchain_fabstir.SessionManager` and session there on first use.
        manager, session_id: use a session of your own manager instead (async methods then
            run on your event loop; the sync ones on the package's background loop). A
            session idle past ``session_timeout`` is resumed (same job, a new socket).
        allow_plaintext: send the frames on an encrypted session anyway (see above).
        text_key: the metadata field holding each chunk's text (``"text"``, as the SDK).
        upload_timeout, search_timeout: seconds to wait for each reply (the SDK: 30 / 10).

    Example::

        from langchain_fabstir import FabstirVectorStore

        store = FabstirVectorStore(host_url="http://127.0.0.1:8080")
        store.add_texts(["The cat sat on the mat.", "Tax is due in April."])
        docs = store.similarity_search("Where did the cat sit?", k=1)
        retriever = store.as_retriever(search_kwargs={"k": 2})
        store.close()  # ends its session
    """

    def __init__(
        self,
        embedding: Embeddings | None = None,
        *,
        host_url: str | None = None,
        manager: SessionManager | None = None,
        session_id: str | None = None,
        allow_plaintext: bool = False,
        text_key: str = "text",
        upload_timeout: float = 30.0,
        search_timeout: float = 10.0,
    ) -> None:
        if (manager is None) != (session_id is None):
            raise InvalidRequestError("give manager= and session_id= together, or neither")
        if embedding is None:
            from langchain_fabstir.embeddings import FabstirEmbeddings

            embedding = FabstirEmbeddings(host_url=host_url)
        self.embedding = embedding
        self.host_url = host_url
        self.allow_plaintext = allow_plaintext
        self.text_key = text_key
        self.upload_timeout = upload_timeout
        self.search_timeout = search_timeout
        self._manager = manager
        self._session_id = session_id
        self._owned = manager is None
        self._docs: dict[str, tuple[list[float], Document]] = {}
        self._lock: asyncio.Lock | None = None
        self._socket: object | None = None  # the socket the host's copy was sent on

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    # --- where the coroutines run ------------------------------------------------------

    async def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run on the loop the session's socket lives on (the background loop for a store
        that owns its manager)."""
        loop = background_loop()
        if not self._owned or asyncio.get_running_loop() is loop:
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))

    async def _session(self) -> tuple[SessionManager, str]:
        if self._manager is None:
            self._manager = SessionManager(host_url=self.host_url)
        if self._session_id is None:
            session = await self._manager.create_session()
            self._session_id = session.id
        elif not self._manager.is_reusable(self._session_id):
            # Idle past session_timeout: resume it (a new socket; the copy goes again).
            await self._manager.resume_session(self._session_id)
        return self._manager, self._session_id

    async def _new_socket(self, manager: SessionManager, sid: str) -> bool:
        """Whether the session's socket is another one than the copy was sent on (a
        reconnect: on nodes its plaintext re-init wiped the session's vectors)."""
        socket = await manager.connect(sid)
        fresh = self._socket is not None and socket is not self._socket
        self._socket = socket
        return fresh

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # --- adding -------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed ``texts`` and store them in the host's session memory; returns their ids
        (``ids`` or new ones; an existing id is replaced)."""
        return run_sync(self.aadd_texts(texts, metadatas, ids=ids, **kwargs))

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        metas = [dict(m) for m in metadatas] if metadatas is not None else [{} for _ in texts]
        keys = [i if i else uuid.uuid4().hex for i in ids] if ids else None
        keys = keys or [uuid.uuid4().hex for _ in texts]
        if len(metas) != len(texts) or len(keys) != len(texts):
            raise InvalidRequestError("texts, metadatas and ids must have the same length")
        for meta in metas:
            if self.text_key in meta:
                raise InvalidRequestError(
                    f"metadata may not use {self.text_key!r}: the store keeps each text there "
                    "(pass text_key= to use another field)"
                )
        if not texts:
            return []
        vectors = await self.embedding.aembed_documents(texts)
        docs = [
            Document(page_content=t, metadata=m, id=i)
            for t, m, i in zip(texts, metas, keys, strict=True)
        ]
        await self._on_loop(lambda: self._upload(list(zip(vectors, docs, strict=True))))
        return keys

    def _entry(self, vector: list[float], doc: Document) -> dict[str, Any]:
        return {
            "id": doc.id,
            "vector": vector,
            "metadata": {**doc.metadata, self.text_key: doc.page_content},
        }

    async def _upload(self, items: list[tuple[list[float], Document]]) -> None:
        async with self._guard():
            manager, sid = await self._session()
            stale = await self._new_socket(manager, sid) and bool(self._docs)
            try:
                if stale:
                    raise HostDisconnectedError("reconnected since the last upload")
                result = await manager.upload_vectors(
                    sid,
                    [self._entry(v, d) for v, d in items],
                    allow_plaintext=self.allow_plaintext,
                    timeout=self.upload_timeout,
                )
                if await self._new_socket(manager, sid):
                    raise HostDisconnectedError("reconnected during the upload")
            except HostDisconnectedError:
                # The socket broke: the next one's plaintext re-init wipes the session's
                # vectors on nodes, so everything goes again, once (uploads are free).
                before = dict(self._docs)
                for vector, doc in items:
                    assert doc.id is not None
                    self._docs[doc.id] = (list(vector), doc)
                try:
                    await self._resync(manager, sid)
                except BaseException:
                    self._docs = before
                    raise
                return
            refused = {e.split(":", 1)[0] for e in result.errors}
            for vector, doc in items:
                if doc.id not in refused:
                    assert doc.id is not None
                    self._docs[doc.id] = (list(vector), doc)
            if result.rejected:
                raise VectorStoreError(
                    f"the host refused {result.rejected} of {len(items)} chunks: "
                    + "; ".join(result.errors[:3]),
                    details={"errors": result.errors},
                )

    async def _resync(self, manager: SessionManager, sid: str) -> None:
        """Upload the store's copy again, replacing what the host holds."""
        await self._new_socket(manager, sid)
        await manager.upload_vectors(
            sid,
            [self._entry(v, d) for v, d in self._docs.values()],
            replace=True,
            allow_plaintext=self.allow_plaintext,
            timeout=self.upload_timeout,
        )

    # --- reading and deleting -------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids (missing ids are left out), from the store's
        copy: nodes have no frame to read vectors back."""
        return [self._docs[i][1] for i in ids if i in self._docs]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return self.get_by_ids(ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove these ids (all with ``ids=None``): the rest is uploaded with ``replace``."""
        return run_sync(self.adelete(ids, **kwargs))

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        async def run() -> bool:
            async with self._guard():
                if ids is None:
                    self._docs.clear()
                elif not any(i in self._docs for i in ids):
                    return True
                else:
                    for i in ids:
                        self._docs.pop(i, None)
                manager, sid = await self._session()
                await self._resync(manager, sid)
                return True

        return await self._on_loop(run)

    # --- searching ------------------------------------------------------------------------

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` (1..20) chunks most similar to ``query``. ``filter``: ``{"field":
        value}`` or ``{"field": {"$eq"|"$in": ...}}`` on metadata; ``score_threshold=``
        (cosine, -1..1; default: none) drops weaker matches."""
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        found = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [d for d, _ in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """:meth:`similarity_search` with each chunk's cosine similarity (-1..1)."""
        return run_sync(self.asimilarity_search_with_score(query, k, filter, **kwargs))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self.embedding.aembed_query(query)
        return await self._by_vector(vector, k, filter, kwargs.get("score_threshold"))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        found = run_sync(
            self._by_vector(embedding, k, kwargs.get("filter"), kwargs.get("score_threshold"))
        )
        return [d for d, _ in found]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        found = await self._by_vector(
            embedding, k, kwargs.get("filter"), kwargs.get("score_threshold")
        )
        return [d for d, _ in found]

    async def _by_vector(
        self,
        vector: list[float],
        k: int,
        flt: dict[str, Any] | None,
        threshold: float | None,
    ) -> list[tuple[Document, float]]:
        if type(k) is not int or not 1 <= k <= MAX_K:
            raise InvalidRequestError(f"k must be from 1 to {MAX_K} (hosts' limit), got {k!r}")

        async def run() -> list[tuple[Document, float]]:
            async with self._guard():
                if not self._docs:
                    return []  # nothing was added through this store
                manager, sid = await self._session()

                async def search() -> VectorSearchResult:
                    return await manager.search_vectors(
                        sid,
                        vector,
                        k=k,
                        threshold=threshold if threshold is not None else -1.0,
                        metadata_filter=flt,
                        allow_plaintext=self.allow_plaintext,
                        timeout=self.search_timeout,
                    )

                try:
                    if await self._new_socket(manager, sid):
                        raise HostDisconnectedError("reconnected since the last upload")
                    found = await search()
                    stale = found.total_vectors != len(self._docs)
                except VectorStoreError as exc:
                    if "not found" not in exc.message.lower():
                        raise
                    stale = True
                except HostDisconnectedError:  # a new socket: its re-init wiped them
                    stale = True
                if stale:  # the host lost the session's vectors (re-init, restart)
                    await self._resync(manager, sid)
                    found = await search()
                out: list[tuple[Document, float]] = []
                for match in found.results:
                    kept = self._docs.get(match.id)
                    if kept is not None:
                        out.append((kept[1], match.score))
                return out

        return await self._on_loop(run)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (score + 1.0) / 2.0  # cosine -1..1 -> 0..1

    # --- construction and closing ------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> FabstirVectorStore:
        """A new store (``kwargs`` as the constructor's) holding ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> FabstirVectorStore:
        store = cls(embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    async def aclose(self) -> None:
        """End the store's own session and close its manager (a manager you passed in is
        left alone). The host keeps the vectors until it restarts (nodes do)."""

        async def run() -> None:
            if self._owned and self._manager is not None:
                manager, self._manager = self._manager, None
                sid, self._session_id = self._session_id, None
                if sid is not None:
                    await manager.end_session(sid)
                await manager.aclose()

        await self._on_loop(run)

    def close(self) -> None:
        """Sync :meth:`aclose`."""
        run_sync(self.aclose())
