"""Callback handlers that collect Fabstir checkpoint proofs from LangChain runs.

A Fabstir chat model reports each checkpoint proof in two ways: in the
``response_metadata`` of the streamed chunk that completes it (key
``"fabstir_checkpoint"``: one proof dict, or ``"fabstir_checkpoints"``: a list, which is
also how the final message carries them), and as a LangChain custom event named
``"fabstir_checkpoint"`` wherever a run context exists. The handlers here listen to both
(``on_llm_new_token``, ``on_llm_end``, ``on_custom_event``), parse the proofs into
:class:`~langchain_fabstir.checkpoints.CheckpointProof` objects and keep each one once,
keyed by ``(session_id, checkpoint_number)``. They are thread-safe.

Details and examples: :class:`FabstirCheckpointHandler`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    GenerationChunk,
    LLMResult,
)
from langchain_core.tracers.context import register_configure_hook

from langchain_fabstir.checkpoints import CheckpointError, CheckpointProof

__all__ = [
    "CHECKPOINTS_METADATA_KEY",
    "CHECKPOINT_EVENT",
    "CHECKPOINT_METADATA_KEY",
    "AsyncFabstirCheckpointHandler",
    "FabstirCheckpointHandler",
    "get_fabstir_checkpoint_callback",
    "proofs_from_metadata",
]

logger = logging.getLogger(__name__)

#: Name of the custom event that carries one proof dict.
CHECKPOINT_EVENT = "fabstir_checkpoint"
#: ``response_metadata`` key of the chunk that completes a checkpoint (one proof dict).
CHECKPOINT_METADATA_KEY = "fabstir_checkpoint"
#: ``response_metadata`` key holding a list of proof dicts (the final message). Lists
#: survive LangChain's chunk merging (they concatenate), single dicts do not.
CHECKPOINTS_METADATA_KEY = "fabstir_checkpoints"


def _candidates(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def proofs_from_metadata(metadata: Mapping[str, Any]) -> list[Any]:
    """The raw proof entries (dicts or proofs) a ``response_metadata`` mapping carries."""
    return _candidates(metadata.get(CHECKPOINT_METADATA_KEY)) + _candidates(
        metadata.get(CHECKPOINTS_METADATA_KEY)
    )


class _ProofCollector:
    """The shared state and logic of the sync and async handlers."""

    def __init__(self, on_proof: Callable[[CheckpointProof], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._proofs: dict[tuple[str, int], CheckpointProof] = {}
        self._errors: list[CheckpointError] = []
        self._conflicts: list[tuple[CheckpointProof, CheckpointProof]] = []
        self._on_proof = on_proof

    @property
    def proofs(self) -> list[CheckpointProof]:
        """Every distinct proof seen, in order of arrival."""
        with self._lock:
            return list(self._proofs.values())

    @property
    def errors(self) -> list[CheckpointError]:
        """Proof data that could not be parsed (kept, not raised: a callback must not
        break the run)."""
        with self._lock:
            return list(self._errors)

    @property
    def conflicts(self) -> list[tuple[CheckpointProof, CheckpointProof]]:
        """``(kept, rejected)`` pairs: two proofs with one key but different hashes."""
        with self._lock:
            return list(self._conflicts)

    def proofs_for(self, session_id: str) -> list[CheckpointProof]:
        """One session's proofs, by checkpoint number (ready for ``verify_checkpoints``)."""
        with self._lock:
            found = [p for p in self._proofs.values() if p.session_id == session_id]
        return sorted(found, key=lambda p: p.checkpoint_number)

    @property
    def latest(self) -> CheckpointProof | None:
        """The proof that arrived last, if any."""
        with self._lock:
            return next(reversed(self._proofs.values()), None)

    def clear(self) -> None:
        """Forget everything collected so far."""
        with self._lock:
            self._proofs.clear()
            self._errors.clear()
            self._conflicts.clear()

    def _collect(self, entries: Iterable[Any], *, quiet: bool = False) -> None:
        added: list[CheckpointProof] = []
        for entry in entries:
            try:
                proof = CheckpointProof.from_dict(entry)
            except CheckpointError as exc:
                # A merged chunk can carry a mangled single proof; the list form covers it.
                if not quiet:
                    logger.warning("ignoring malformed checkpoint proof: %s", exc)
                    with self._lock:
                        self._errors.append(exc)
                continue
            with self._lock:
                known = self._proofs.get(proof.key)
                if known is None:
                    self._proofs[proof.key] = proof
                    added.append(proof)
                elif known.conversation_hash != proof.conversation_hash:
                    logger.warning("conflicting checkpoint proofs for %s", proof.key)
                    self._conflicts.append((known, proof))
                else:
                    update = {
                        name: getattr(proof, name)
                        for name in ("signature", "signer", "host_signature")
                        if getattr(known, name) is None and getattr(proof, name) is not None
                    }
                    if update:
                        self._proofs[proof.key] = known.model_copy(update=update)
        if self._on_proof is not None:
            for proof in added:
                self._on_proof(proof)

    def _from_chunk(self, chunk: Any) -> None:
        if isinstance(chunk, ChatGenerationChunk):
            self._collect(proofs_from_metadata(chunk.message.response_metadata))

    def _from_result(self, response: LLMResult) -> None:
        for generations in response.generations:
            for generation in generations:
                if isinstance(generation, ChatGeneration) and isinstance(
                    generation.message, BaseMessage
                ):
                    metadata = generation.message.response_metadata
                    self._collect(_candidates(metadata.get(CHECKPOINTS_METADATA_KEY)))
                    self._collect(_candidates(metadata.get(CHECKPOINT_METADATA_KEY)), quiet=True)

    def _from_event(self, name: str, data: Any) -> None:
        if name == CHECKPOINT_EVENT:
            self._collect(_candidates(data))


class FabstirCheckpointHandler(_ProofCollector, BaseCallbackHandler):
    """Collects checkpoint proofs from chunks, final messages and custom events.

    Attach one to a call::

        handler = FabstirCheckpointHandler()
        llm.invoke("Hello", config={"callbacks": [handler]})
        handler.proofs

    or collect everything in a block, like ``get_usage_metadata_callback()``::

        with get_fabstir_checkpoint_callback() as cb:
            llm.invoke("Hello")
            graph.invoke({"messages": [...]})
        cb.proofs

    To check the proofs against the conversation, hand them to
    :func:`~langchain_fabstir.checkpoints.verify_checkpoints`.

    >>> handler = FabstirCheckpointHandler()
    >>> handler.on_custom_event("fabstir_checkpoint", {"sessionId": "s", "checkpointNumber": 1,
    ...     "conversationHash": "0x" + "00" * 32, "tokenCount": 10, "timestamp": 0,
    ...     "boundary": {"messageIndex": 0, "charOffset": 2}}, run_id=None)
    >>> [p.key for p in handler.proofs]
    [('s', 1)]

    Args:
        on_proof: called once with each new proof, inline in the thread or event loop
            that delivered it: keep it quick.

    Attributes:
        proofs: distinct proofs in order of arrival; ``proofs_for(session_id)``,
            ``latest``, ``errors``, ``conflicts`` and ``clear()`` as well.
    """

    # Cheap, non-blocking and thread-safe: in async runs there is no need to hop to an
    # executor thread for every streamed token.
    run_inline = True

    def __init__(self, on_proof: Callable[[CheckpointProof], None] | None = None) -> None:
        _ProofCollector.__init__(self, on_proof)
        BaseCallbackHandler.__init__(self)

    def __repr__(self) -> str:
        return f"FabstirCheckpointHandler(proofs={len(self.proofs)})"

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        """Nothing to do (declared so LangChain does not fall back to ``on_llm_start``)."""

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Collect a proof from the chunk's ``response_metadata``."""
        self._from_chunk(chunk)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Collect the proofs the final message lists."""
        self._from_result(response)

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        """Collect the proof of a ``fabstir_checkpoint`` custom event."""
        self._from_event(name, data)


class AsyncFabstirCheckpointHandler(_ProofCollector, AsyncCallbackHandler):
    """The async twin of :class:`FabstirCheckpointHandler` (same attributes)."""

    def __init__(self, on_proof: Callable[[CheckpointProof], None] | None = None) -> None:
        _ProofCollector.__init__(self, on_proof)
        AsyncCallbackHandler.__init__(self)

    def __repr__(self) -> str:
        return f"AsyncFabstirCheckpointHandler(proofs={len(self.proofs)})"

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        """Nothing to do (declared so LangChain does not fall back to ``on_llm_start``)."""

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Collect a proof from the chunk's ``response_metadata``."""
        self._from_chunk(chunk)

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Collect the proofs the final message lists."""
        self._from_result(response)

    async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        """Collect the proof of a ``fabstir_checkpoint`` custom event."""
        self._from_event(name, data)


# One context variable per nesting depth, registered with LangChain once each and then
# reused, so that entering the context manager again and again registers nothing new.
_hook_vars: list[ContextVar[FabstirCheckpointHandler | None]] = []
_hook_lock = threading.Lock()


def _free_hook_var(name: str) -> ContextVar[FabstirCheckpointHandler | None]:
    with _hook_lock:
        for free in _hook_vars:
            if free.get() is None:
                return free
        var: ContextVar[FabstirCheckpointHandler | None] = ContextVar(
            f"{name}_{len(_hook_vars)}", default=None
        )
        register_configure_hook(var, inheritable=True)
        _hook_vars.append(var)
        return var


@contextmanager
def get_fabstir_checkpoint_callback(
    name: str = "fabstir_checkpoint_callback",
) -> Generator[FabstirCheckpointHandler, None, None]:
    """Collect the checkpoint proofs of every LangChain run started inside the block.

    Works like ``langchain_core.callbacks.get_usage_metadata_callback()``: the handler is
    attached to every model, chain and graph run configured in this context (threads and
    tasks started from it included); nested blocks each collect what runs inside them.

    Args:
        name: a label for the context variable.

    Yields:
        The :class:`FabstirCheckpointHandler` that collects the proofs.
    """
    var = _free_hook_var(name)
    handler = FabstirCheckpointHandler()
    token = var.set(handler)
    try:
        yield handler
    finally:
        var.reset(token)
